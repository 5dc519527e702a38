"""mmdet's focal-family losses as references: their own python code, and in float64.

``FocalLoss`` (RetinaNet, ...): two ways to evaluate mmdet 3.3.0's ``FocalLoss`` on given inputs,
with the gradient:

- ``mmdet_focal_loss``: mmdet's own code, ``py_sigmoid_focal_loss`` / ``py_focal_loss_with_prob``
  (plus ``weight_reduce_loss``) called the way ``FocalLoss.forward`` calls them on CPU (class
  indices become a one-hot matrix), in the inputs' dtype, on their device. On CUDA this is
  mmdet's python formula, not mmcv's CUDA op (which ``FocalLoss`` would pick for class indices).
- ``float64_focal_loss``: the same formula transcribed and evaluated in float64, with one
  rewrite that changes nothing mathematically: ``1 - sigmoid(x)`` is computed as
  ``sigmoid(-x)``. In float64, ``1 - sigmoid(x)`` rounds to 0 above x ~ 36.7, where
  ``pt ** gamma`` has an infinite derivative for gamma < 1 (the NaN gradient mmdet has in
  fp32 above x ~ 16.6, docs/accuracy.md); ``sigmoid(-x)`` is exact there. This is the
  reference of SPEC §3 ("correct" = within 1e-5 of it in fp32).

``QualityFocalLoss`` (GFL, RTMDet, TOOD, ...) and ``VarifocalLoss`` (VFNet): mmdet 3.3.0's are
pure PyTorch, so their references are mmdet's loss modules themselves, built with the same
constructor arguments (``QualityFocalLossParams``, ``VarifocalLossParams``):

- ``mmdet_quality_focal_loss`` / ``mmdet_varifocal_loss``: the module on the inputs as they are
  (float targets, the scores of a ``(labels, scores)`` pair included, in pred's dtype);
- ``float64_quality_focal_loss`` / ``float64_varifocal_loss``: the module on float64 copies of
  pred, the float targets, weight and avg_factor: the float64 evaluation of mmdet's formula,
  literally (its ``eps`` of ``weight_reduce_loss`` is float32's, as in mmdet). It is exact for
  beta (QFL) / gamma (VFL) >= 1: below 1, ``|score - sigmoid(x)| ** beta`` has an infinite
  derivative where the two meet, and mmdet's formula itself gives NaN gradients there.

``REFERENCES`` is the per-loss table (mmdet's type -> our class name, parameters, float64 and
mmdet functions); ``reference_for`` finds the entry of a parameters object, a module or a type
name. All functions take the arguments of the loss's ``forward`` plus the module's parameters
(``params=``); none uses this package's loss code.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

EPS = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss: sum / (avg_factor + eps)
REDUCTIONS = ('none', 'mean', 'sum')


@dataclasses.dataclass(frozen=True, kw_only=True)
class _LossParams:
    """The constructor arguments that every loss of the family has, and ``from_module`` /
    ``from_config`` for the frozen dataclasses of each loss's arguments (keywords only)."""

    reduction: str = 'mean'
    loss_weight: float = 1.0

    @classmethod
    def from_module(cls, module):
        """From mmdet's loss module or ours (the same attributes, named as the arguments)."""
        return cls(**{f.name: type(f.default)(getattr(module, f.name))
                      for f in dataclasses.fields(cls)})

    @classmethod
    def from_config(cls, loss_cfg: dict):
        """From a ``dict(type=..., ...)`` loss config: mmdet's defaults for what it omits."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in loss_cfg.items() if k in fields})


@dataclasses.dataclass(frozen=True, kw_only=True)
class FocalLossParams(_LossParams):
    """The constructor arguments of mmdet's ``FocalLoss`` that define its result."""

    gamma: float = 2.0
    alpha: float = 0.25
    activated: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class QualityFocalLossParams(_LossParams):
    """The constructor arguments of mmdet's ``QualityFocalLoss``."""

    use_sigmoid: bool = True
    beta: float = 2.0
    activated: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class VarifocalLossParams(_LossParams):
    """The constructor arguments of mmdet's ``VarifocalLoss``."""

    use_sigmoid: bool = True
    alpha: float = 0.75
    gamma: float = 2.0
    iou_weighted: bool = True


def _reduction(params: FocalLossParams, reduction_override: str | None) -> str:
    if reduction_override not in (None, *REDUCTIONS):
        raise ValueError(f'reduction_override must be None or one of {REDUCTIONS}, got '
                         f'{reduction_override!r}')
    return reduction_override or params.reduction


def _dense(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class indices (N,) with background = C -> the (N, C) one-hot matrix mmdet builds."""
    if pred.dim() == target.dim():
        return target
    num_classes = pred.size(1)
    return F.one_hot(target.long(), num_classes=num_classes + 1)[:, :num_classes]


def mmdet_focal_loss(pred, target, weight=None, avg_factor=None, reduction_override=None, *,
                     params: FocalLossParams = FocalLossParams()) -> torch.Tensor:
    """mmdet 3.3.0's own python focal loss on these inputs, as they are (dtype, device)."""
    from mmdet.models.losses.focal_loss import py_focal_loss_with_prob, py_sigmoid_focal_loss

    reduction = _reduction(params, reduction_override)
    fn = py_focal_loss_with_prob if params.activated else py_sigmoid_focal_loss
    target = target if params.activated else _dense(pred, target)
    return params.loss_weight * fn(pred, target, weight, gamma=params.gamma, alpha=params.alpha,
                                   reduction=reduction, avg_factor=avg_factor)


def float64_focal_loss(pred, target, weight=None, avg_factor=None, reduction_override=None, *,
                       params: FocalLossParams = FocalLossParams()) -> torch.Tensor:
    """The formula of ``mmdet_focal_loss`` evaluated in float64, stable for any finite logit."""
    reduction = _reduction(params, reduction_override)
    x = pred.double()
    y = _dense(pred, target).double()
    a, g = params.alpha, params.gamma
    if params.activated:  # pred holds probabilities: plain BCE on them (log clamped at -100)
        pt = (1 - x) * y + x * (1 - y)
        loss = F.binary_cross_entropy(x, y, reduction='none')
    else:
        pt = torch.sigmoid(-x) * y + torch.sigmoid(x) * (1 - y)  # = (1 - p) * y + p * (1 - y)
        loss = F.binary_cross_entropy_with_logits(x, y, reduction='none')
    loss = loss * (a * y + (1 - a) * (1 - y)) * pt.pow(g)
    if weight is not None:
        w = weight.double()
        if w.shape != loss.shape:
            w = w.view(-1, 1) if w.size(0) == loss.size(0) else w.reshape(loss.size(0), -1)
        loss = loss * w
    if avg_factor is None:
        loss = {'none': loss, 'mean': loss.mean(), 'sum': loss.sum()}[reduction]
    elif reduction == 'mean':
        af = avg_factor.double() if isinstance(avg_factor, torch.Tensor) else avg_factor
        loss = loss.sum() / (af + EPS)
    elif reduction != 'none':
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return params.loss_weight * loss


def _cast(v, dtype: torch.dtype):
    """Floating tensors (also inside a ``(labels, scores)`` pair) cast to ``dtype``; the rest
    (class indices, python numbers, None) as it is."""
    if isinstance(v, (tuple, list)):
        return type(v)(_cast(x, dtype) for x in v)
    if isinstance(v, torch.Tensor) and v.is_floating_point():
        return v.to(dtype)
    return v


def _module_loss(loss_type: str, params, pred, target, weight, avg_factor, reduction_override):
    """mmdet's loss module ``loss_type`` built with ``params``, called on these inputs."""
    from mmdet.models import losses

    _reduction(params, reduction_override)
    module = getattr(losses, loss_type)(**dataclasses.asdict(params))
    return module(pred, target, weight, avg_factor=avg_factor,
                  reduction_override=reduction_override)


def mmdet_quality_focal_loss(pred, target, weight=None, avg_factor=None,
                             reduction_override=None, *,
                             params: QualityFocalLossParams = QualityFocalLossParams()):
    """mmdet 3.3.0's ``QualityFocalLoss`` module on these inputs, in pred's dtype."""
    return _module_loss('QualityFocalLoss', params, pred, _cast(target, pred.dtype), weight,
                        avg_factor, reduction_override)


def float64_quality_focal_loss(pred, target, weight=None, avg_factor=None,
                               reduction_override=None, *,
                               params: QualityFocalLossParams = QualityFocalLossParams()):
    """mmdet 3.3.0's ``QualityFocalLoss`` module on float64 copies of the inputs: the float64
    evaluation of its formula (exact for beta >= 1)."""
    f64 = torch.float64
    return _module_loss('QualityFocalLoss', params, pred.double(), _cast(target, f64),
                        _cast(weight, f64), _cast(avg_factor, f64), reduction_override)


def mmdet_varifocal_loss(pred, target, weight=None, avg_factor=None, reduction_override=None,
                         *, params: VarifocalLossParams = VarifocalLossParams()):
    """mmdet 3.3.0's ``VarifocalLoss`` module on these inputs, in pred's dtype."""
    return _module_loss('VarifocalLoss', params, pred, _cast(target, pred.dtype), weight,
                        avg_factor, reduction_override)


def float64_varifocal_loss(pred, target, weight=None, avg_factor=None, reduction_override=None,
                           *, params: VarifocalLossParams = VarifocalLossParams()):
    """mmdet 3.3.0's ``VarifocalLoss`` module on float64 copies of the inputs: the float64
    evaluation of its formula (exact for gamma >= 1)."""
    f64 = torch.float64
    return _module_loss('VarifocalLoss', params, pred.double(), _cast(target, f64),
                        _cast(weight, f64), _cast(avg_factor, f64), reduction_override)


@dataclasses.dataclass(frozen=True)
class LossReference:
    """One loss of the family: mmdet's type, our class, its parameters and its references."""

    loss_type: str  # mmdet's class and config type, e.g. 'QualityFocalLoss'
    ours: str  # our class, e.g. 'TritonQualityFocalLoss'
    params: type  # the dataclass of its constructor arguments
    float64: Callable  # the float64 evaluation of mmdet's formula: the reference
    mmdet: Callable  # mmdet's own code in the inputs' precision: reported

    def our_class(self) -> type:
        import mmdet_focal_triton

        return getattr(mmdet_focal_triton, self.ours)

    def mmdet_class(self) -> type:
        from mmdet.models import losses

        return getattr(losses, self.loss_type)


REFERENCES = {r.loss_type: r for r in (
    LossReference('FocalLoss', 'TritonFocalLoss', FocalLossParams, float64_focal_loss,
                  mmdet_focal_loss),
    LossReference('QualityFocalLoss', 'TritonQualityFocalLoss', QualityFocalLossParams,
                  float64_quality_focal_loss, mmdet_quality_focal_loss),
    LossReference('VarifocalLoss', 'TritonVarifocalLoss', VarifocalLossParams,
                  float64_varifocal_loss, mmdet_varifocal_loss),
)}


def reference_for(obj) -> LossReference:
    """The ``REFERENCES`` entry of a parameters object, a loss module (mmdet's or ours: ours
    subclass mmdet's) or a type name (``'QualityFocalLoss'``, ``'mmdet.QualityFocalLoss'`` or
    ours, ``'TritonQualityFocalLoss'``)."""
    if isinstance(obj, str):
        name = obj[len('mmdet.'):] if obj.startswith('mmdet.') else obj
        for r in REFERENCES.values():
            if name in (r.loss_type, r.ours):
                return r
        raise KeyError(f'{obj!r} is not a loss of the focal family ({sorted(REFERENCES)})')
    for r in REFERENCES.values():
        if isinstance(obj, r.params):
            return r
    if isinstance(obj, torch.nn.Module):
        for r in REFERENCES.values():
            if isinstance(obj, r.mmdet_class()):
                return r
    raise TypeError(f'no reference for {type(obj).__name__}: not a loss of the focal family '
                    f'({sorted(REFERENCES)}) nor its parameters')


def our_loss_modules(model) -> list:
    """``(name, module, REFERENCES entry)`` of every loss module of ours in ``model``."""
    classes = {r.loss_type: r.our_class() for r in REFERENCES.values()}
    return [(name, m, REFERENCES[t]) for name, m in model.named_modules()
            for t, cls in classes.items() if isinstance(m, cls)]


def loss_and_grad(fn, pred, target, weight=None, avg_factor=None, reduction_override=None, *,
                  params=FocalLossParams(), grad_output=None):
    """(loss, d loss / d pred) of ``fn(pred, ..., params=params)`` on a detached copy of
    ``pred`` (any reference above, with its parameters).

    ``grad_output``: the upstream gradient (default: ones, i.e. the gradient of the sum of the
    loss's elements); given in another dtype, it is cast to the loss's.
    """
    x = pred.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = fn(x, target, weight, avg_factor, reduction_override, params=params)
        go = torch.ones_like(loss) if grad_output is None else \
            grad_output.to(device=loss.device, dtype=loss.dtype).reshape(loss.shape)
        (grad,) = torch.autograd.grad(loss, x, go, allow_unused=True)
    if grad is None:  # an empty pred
        grad = torch.zeros_like(x)
    return loss.detach(), grad.detach()


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64; ||out - ref|| when ref is all zeros; inf when out is
    not finite where ref is (a NaN or inf that the reference does not have)."""
    out = out.detach().double().reshape(ref.shape).to(ref.device)
    ref = ref.detach().double()
    if out.numel() == 0:
        return 0.0
    if not bool(torch.isfinite(out).all()):
        return float('inf')
    den = float(ref.norm())
    num = float((out - ref).norm())
    return num / den if den > 0 else num
