"""Deliberately wrong variants of our losses, to prove that a parity run catches them.

``FaultInjectionHook(fault)`` makes every loss module of ours to which ``fault`` applies slightly
wrong when training starts; the parity run's checks must then fail. The faults are the small
mistakes a port of mmdet's loss could make, per loss (``FAULTS_BY_LOSS``):

``FocalLoss`` (``FAULTS``, RetinaNet):

- ``alpha``: alpha 0.26 instead of the configured 0.25;
- ``gamma``: gamma 2.05 instead of 2.0;
- ``loss_weight``: loss_weight x 1.001;
- ``background``: on one level (the first loss call of every iteration: RetinaNet's P3), the
  background label ``C`` is taken as class 0.

``QualityFocalLoss`` (``QUALITY_FOCAL_FAULTS``, RTMDet):

- ``beta``: beta 2.05 instead of 2.0;
- ``loss_weight``: loss_weight x 1.001;
- ``score``: on one level (the first loss call of every iteration: RTMDet's stride 8), the
  positives' quality scores are taken as 1 (hard targets instead of the IoU scores).

There is no "background as class 0" fault for QualityFocalLoss: it could not be detected, and
it is harmless. A positive of class 0 with quality score 0 has exactly the loss of a negative,
``BCE(x, 0) * sigmoid(x) ** beta``, so relabelling the background as class 0 with the
background's score (0) changes nothing. ``VarifocalLoss`` has no faults here (no parity model
uses it).

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
QUALITY_FOCAL_FAULTS = {
    'beta': 'beta 2.05 instead of 2.0',
    'loss_weight': 'loss_weight x 1.001',
    'score': "the positives' quality scores taken as 1 (hard targets) on one level (the first "
             'call of each iteration)',
}
FAULTS_BY_LOSS = {'FocalLoss': FAULTS, 'QualityFocalLoss': QUALITY_FOCAL_FAULTS}
ALL_FAULTS = tuple(sorted({f for faults in FAULTS_BY_LOSS.values() for f in faults}))


def applicable_faults(loss_types) -> dict:
    """``{fault: description}`` of the faults that apply to any of ``loss_types`` (mmdet's
    names, e.g. ``['QualityFocalLoss']``)."""
    out = {}
    for t in loss_types:
        for fault, desc in FAULTS_BY_LOSS.get(t, {}).items():
            out.setdefault(fault, desc)
    return out


def check_fault(fault: str, loss_types) -> str:
    """The description of ``fault`` for a model with ``loss_types``; ValueError naming the
    applicable faults when it does not apply."""
    faults = applicable_faults(loss_types)
    if fault not in faults:
        known = '' if fault in ALL_FAULTS else f' (faults: {", ".join(ALL_FAULTS)})'
        raise ValueError(
            f"fault {fault!r} does not apply to {' + '.join(loss_types) or 'this model'}"
            f"{known}; the faults for it: {', '.join(sorted(faults)) or 'none'}")
    return faults[fault]


def _loss_modules(model) -> list:
    """(module, mmdet's loss type) of every loss module of ours in ``model``."""
    from .reference import our_loss_modules

    model = model.module if is_model_wrapper(model) else model
    return [(m, ref.loss_type) for _, m, ref in our_loss_modules(model)]


def _hard_scores(pred: torch.Tensor, target):
    """``target`` with the positives' quality scores set to 1: the scores of a
    ``(labels, scores)`` pair where the label is a class, or the non-zero entries of a dense
    target."""
    if isinstance(target, (tuple, list)):
        labels, scores = target
        pos = (labels >= 0) & (labels < pred.shape[-1])
        return type(target)((labels, torch.where(pos, torch.ones_like(scores), scores)))
    return torch.where(target > 0, torch.ones_like(target), target)


class FaultInjectionHook(Hook):
    """Applies ``fault`` (a key of ``FAULTS_BY_LOSS[loss type]``) in before_train to every loss
    module of ours whose loss it applies to (ValueError if it applies to none)."""

    priority = 'VERY_HIGH'  # after FocalLossCheckHook ('HIGHEST') has read the parameters

    def __init__(self, fault: str, level: int = 0) -> None:
        if fault not in ALL_FAULTS:
            raise ValueError(f'unknown fault {fault!r}; choose from {list(ALL_FAULTS)}')
        self.fault = fault
        self.level = level
        self._calls = 0
        self.applied = 0

    def before_train(self, runner) -> None:
        modules = _loss_modules(runner.model)
        types = sorted({t for _, t in modules})
        check_fault(self.fault, types)
        for m, t in modules:
            if self.fault in FAULTS_BY_LOSS.get(t, {}):
                self.apply(m)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._calls = 0

    def apply(self, module) -> None:
        """Make ``module`` (a loss of ours that the fault applies to) wrong."""
        self.applied += 1
        if self.fault == 'alpha':
            module.alpha = 0.26
        elif self.fault == 'gamma':
            module.gamma = 2.05
        elif self.fault == 'beta':
            module.beta = 2.05
        elif self.fault == 'loss_weight':
            module.loss_weight = module.loss_weight * 1.001
        elif self.fault == 'background':
            forward = module.forward

            def background_as_class_0(pred, target, *args, **kwargs):
                call = self._calls
                self._calls += 1
                if call == self.level and pred.dim() != target.dim():
                    target = torch.where(target == pred.shape[-1], torch.zeros_like(target),
                                         target)
                return forward(pred, target, *args, **kwargs)

            module.forward = background_as_class_0
        else:  # 'score'
            forward = module.forward

            def hard_scores(pred, target, *args, **kwargs):
                call = self._calls
                self._calls += 1
                if call == self.level:
                    target = _hard_scores(pred, target)
                return forward(pred, target, *args, **kwargs)

            module.forward = hard_scores
