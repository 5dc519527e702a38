"""PyTorch implementation of the focal loss: the CPU path (and the reference the Triton kernels
are tested against besides float64). The same math as `kernels/focal.py`, evaluated in fp32
(float64 when pred is float64), without building a one-hot matrix."""
import torch
from torch import Tensor

from .spec import WEIGHT_ELEM, WEIGHT_ROW, FocalSpec
from .torch_common import check_now, power, reduce_and_scale


def _hard_math(x: Tensor, positive: bool, gamma: float, alpha: float):
    """Loss and dloss/dx where every element of x has the same 0/1 target."""
    z = -x if positive else x
    # softplus(z) = max(z, 0) + log1p(exp(-|z|)); not torch's softplus, which returns z itself
    # above z = 20: 1e-10 off in float64 (float64 inputs are computed in float64 here)
    bce = torch.clamp_min(z, 0) + torch.log1p(torch.exp(-z.abs()))
    pt = torch.sigmoid(z)
    mod = power(pt, gamma)
    aw = alpha if positive else 1.0 - alpha
    loss = aw * bce * mod
    dz = aw * mod * (pt + gamma * bce * torch.sigmoid(-z))
    return loss, (-dz if positive else dz)


def _soft_math(x: Tensor, y: Tensor, gamma: float, alpha: float):
    bce = torch.clamp_min(x, 0) - x * y + torch.log1p(torch.exp(-x.abs()))
    p = torch.sigmoid(x)
    q = torch.sigmoid(-x)
    pt = q * y + p * (1 - y)
    mod = power(pt, gamma)
    aw = alpha * y + (1 - alpha) * (1 - y)
    loss = aw * bce * mod
    safe = torch.where(pt > 0, pt, torch.ones_like(pt))
    ratio = torch.where(pt > 0, p * q / safe, torch.zeros_like(pt))
    dx = aw * ((p - y) * mod + bce * gamma * mod * (1 - 2 * y) * ratio)
    return loss, dx


def _prob_math(p: Tensor, y: Tensor, gamma: float, alpha: float):
    bce = -(y * torch.log(p).clamp_min(-100) + (1 - y) * torch.log1p(-p).clamp_min(-100))
    pt = (1 - p) * y + p * (1 - y)
    mod = power(pt, gamma)
    aw = alpha * y + (1 - alpha) * (1 - y)
    loss = aw * bce * mod
    dbce = (p - y) / torch.clamp_min(p * (1 - p), 1e-12)
    if gamma == 0.0:
        dmod = torch.zeros_like(p)
    elif gamma == 1.0:
        dmod = 1 - 2 * y
    else:
        dmod = gamma * pt.pow(gamma - 1) * (1 - 2 * y)
    return loss, aw * (dbce * mod + bce * dmod)


def elementwise(pred2, target, gamma, alpha, index_target, activated):
    """Elementwise (loss, dloss/dx) in the compute dtype, without building a one-hot matrix."""
    cdt = torch.float64 if pred2.dtype == torch.float64 else torch.float32
    x = pred2.to(cdt)
    R, C = x.shape
    if not index_target:
        y = target.to(cdt)
        return (_prob_math if activated else _soft_math)(x, y, gamma, alpha)
    if activated:
        # probability inputs: evaluate the negative everywhere, then the positive entries
        zeros = torch.zeros((), dtype=cdt, device=x.device)
        loss, dx = _prob_math(x, zeros, gamma, alpha)
    else:
        loss, dx = _hard_math(x, False, gamma, alpha)
    rows = torch.nonzero((target >= 0) & (target < C)).squeeze(1)
    cols = target[rows].long()
    if rows.numel():
        xp = x[rows, cols]
        if activated:
            lp, dp = _prob_math(xp, torch.ones((), dtype=cdt, device=x.device), gamma, alpha)
        else:
            lp, dp = _hard_math(xp, True, gamma, alpha)
        loss[rows, cols] = lp
        dx[rows, cols] = dp
    return loss, dx



def forward(pred2: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
            upstream: Tensor | None, gamma: float, alpha: float, scale: float, spec: FocalSpec,
            out_dtype: torch.dtype, loss_shape: tuple) -> tuple[Tensor, Tensor | None]:
    """(loss, grad) for (R, C)-shaped pred2, as the Triton launcher computes them: the reduced or
    elementwise loss, and the gradient (times `upstream` when given: the backward of 'none')."""
    R, C = pred2.shape
    if spec.check:
        check_now(pred2, target, spec.index_target, spec.activated)
    loss, dx = elementwise(pred2, target, gamma, alpha, spec.index_target, spec.activated)
    if spec.weight_mode == WEIGHT_ROW:
        w = weight.to(loss.dtype)[:, None]
    elif spec.weight_mode == WEIGHT_ELEM:
        w = weight.to(loss.dtype)
    else:
        w = None
    if w is not None:
        loss = loss * w
        dx = dx * w
    if upstream is not None:  # backward of 'none'
        return None, (dx * scale * upstream.to(dx.dtype)).to(pred2.dtype)
    return reduce_and_scale(loss, dx, scale, avg_factor, spec.reduction, spec.write_grad,
                            out_dtype, loss_shape, pred2.dtype)
