"""Deliberately wrong variants of our loss, to prove that a parity run catches them.

``FaultInjectionHook(fault)`` makes every ``TritonFocalLoss`` of the model slightly wrong when
training starts; the parity run's checks must then fail. The faults are the small mistakes a
port of mmdet's loss could make:

- ``alpha``: alpha 0.26 instead of the configured 0.25;
- ``gamma``: gamma 2.05 instead of 2.0;
- ``loss_weight``: loss_weight x 1.001;
- ``background``: on one level (the first loss call of every iteration: RetinaNet's P3), the
  background label ``C`` is taken as class 0.

Only the module computing our loss changes: what the head passes is untouched, so
``FocalLossCheckHook`` (which records the head's inputs) compares the wrong result with mmdet's
formula on the right inputs.
"""
from __future__ import annotations

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

FAULTS = {
    'alpha': 'alpha 0.26 instead of 0.25',
    'gamma': 'gamma 2.05 instead of 2.0',
    'loss_weight': 'loss_weight x 1.001',
    'background': 'background labels (= C) taken as class 0 on one level (the first call of '
                  'each iteration)',
}


def _loss_modules(model) -> list:
    from ..focal_loss import TritonFocalLoss

    model = model.module if is_model_wrapper(model) else model
    return [m for m in model.modules() if isinstance(m, TritonFocalLoss)]


class FaultInjectionHook(Hook):
    """Applies ``fault`` (a key of ``FAULTS``) to every ``TritonFocalLoss`` in before_train."""

    priority = 'VERY_HIGH'  # after FocalLossCheckHook ('HIGHEST') has read the parameters

    def __init__(self, fault: str, level: int = 0) -> None:
        if fault not in FAULTS:
            raise ValueError(f'unknown fault {fault!r}; choose from {sorted(FAULTS)}')
        self.fault = fault
        self.level = level
        self._calls = 0
        self.applied = 0

    def before_train(self, runner) -> None:
        for m in _loss_modules(runner.model):
            self.apply(m)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._calls = 0

    def apply(self, module) -> None:
        self.applied += 1
        if self.fault == 'alpha':
            module.alpha = 0.26
        elif self.fault == 'gamma':
            module.gamma = 2.05
        elif self.fault == 'loss_weight':
            module.loss_weight = module.loss_weight * 1.001
        else:
            forward = module.forward

            def background_as_class_0(pred, target, *args, **kwargs):
                call = self._calls
                self._calls += 1
                if call == self.level and pred.dim() != target.dim():
                    target = torch.where(target == pred.shape[-1], torch.zeros_like(target),
                                         target)
                return forward(pred, target, *args, **kwargs)

            module.forward = background_as_class_0
