"""mmdet's focal loss as references: its own python code, and the same formula in float64.

Two ways to evaluate mmdet 3.3.0's ``FocalLoss`` on given inputs, with the gradient:

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

Both take the arguments of ``FocalLoss.forward`` plus the module's parameters
(``FocalLossParams``), and neither uses this package's loss code.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

EPS = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss: sum / (avg_factor + eps)
REDUCTIONS = ('none', 'mean', 'sum')


@dataclasses.dataclass(frozen=True)
class FocalLossParams:
    """The constructor arguments of mmdet's ``FocalLoss`` that define its result."""

    gamma: float = 2.0
    alpha: float = 0.25
    reduction: str = 'mean'
    loss_weight: float = 1.0
    activated: bool = False

    @classmethod
    def from_module(cls, module) -> FocalLossParams:
        """From an mmdet ``FocalLoss`` or a ``TritonFocalLoss`` (the same attributes)."""
        return cls(gamma=float(module.gamma), alpha=float(module.alpha),
                   reduction=module.reduction, loss_weight=float(module.loss_weight),
                   activated=bool(module.activated))

    @classmethod
    def from_config(cls, loss_cfg: dict) -> FocalLossParams:
        """From a ``dict(type='FocalLoss', ...)`` config: mmdet's defaults for what it omits."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in loss_cfg.items() if k in fields})


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


def loss_and_grad(fn, pred, target, weight=None, avg_factor=None, reduction_override=None, *,
                  params: FocalLossParams = FocalLossParams(), grad_output=None):
    """(loss, d loss / d pred) of ``fn(pred, ...)`` on a detached copy of ``pred``.

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
