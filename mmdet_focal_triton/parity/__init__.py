"""Parity of our focal-family losses with mmdet's: checks you can run from Python.

    from mmdet_focal_triton.parity import run_parity
    report = run_parity(device='cpu', iters=50, work_dir='work_dirs/parity')
    report = run_parity(device='cpu', model='rtmdet-tiny')    # QualityFocalLoss
    report['status']            # 'pass' | 'fail' | 'reference_failed'

- ``run_parity`` / ``ParityOptions``: train a detector (``model``: 'retinanet' with FocalLoss,
  'rtmdet-tiny' with QualityFocalLoss) with mmdet's loss and with ours from the same weights and
  data, check every call of ours against mmdet's formula in float64, and compare the trainings
  (``tools/parity.py`` is its command line).
- ``run_ddp_parity`` / ``DDPParityOptions``: the same loss on 1 and 2 processes through
  ``tools/dist_train.sh`` (``tools/ddp_parity.py``).
- ``FocalLossCheckHook`` (alias ``LossCheckHook``): the per-call check of TritonFocalLoss,
  TritonQualityFocalLoss and TritonVarifocalLoss as an mmengine hook, for any training
  (``custom_hooks = [dict(type='FocalLossCheckHook')]``); ``check_call`` for one call.
- ``mmdet_focal_loss`` / ``float64_focal_loss`` / ``FocalLossParams``: mmdet's formula as its own
  code and in float64, the references; ``REFERENCES``: the same per loss of the family
  (``QualityFocalLossParams``, ``VarifocalLossParams``, ...).
- ``FAULTS``: deliberately wrong variants of our FocalLoss (``run_parity(fault='alpha')`` must
  fail); ``FAULTS_BY_LOSS``: per loss type (QualityFocalLoss: beta, loss_weight, score).
- ``run_accuracy_study``: ours vs mmdet vs float64 on random cases (docs/accuracy.md;
  ``python -m mmdet_focal_triton.parity.accuracy``).
"""
from .check import FocalLossCheckHook, LossCheckHook, check_call
from .ddp import DDPParityOptions, run_ddp_parity
from .faults import FAULTS, FAULTS_BY_LOSS
from .reference import (
    REFERENCES,
    FocalLossParams,
    QualityFocalLossParams,
    VarifocalLossParams,
    float64_focal_loss,
    mmdet_focal_loss,
)
from .run import ParityOptions, run_parity

__all__ = ['run_parity', 'ParityOptions', 'run_ddp_parity', 'DDPParityOptions',
           'FocalLossCheckHook', 'LossCheckHook', 'check_call', 'FAULTS', 'FAULTS_BY_LOSS',
           'REFERENCES', 'FocalLossParams', 'QualityFocalLossParams', 'VarifocalLossParams',
           'mmdet_focal_loss', 'float64_focal_loss', 'run_accuracy_study']


def __getattr__(name):
    if name == 'run_accuracy_study':  # not imported eagerly: it is also a ``python -m`` entry
        from .accuracy import run_accuracy_study

        return run_accuracy_study
    raise AttributeError(name)
