"""PyTorch implementation of the quality focal loss: the CPU path (and a second reference for the
Triton kernel). The same math as `kernels/quality_focal.py`, evaluated in fp32 (float64 when
pred is float64). Class-index targets are expanded to the dense quality target (the score at
the label, 0 elsewhere): with t = 0 the element formula is exactly the negative term, so one
formula serves both target forms."""
import torch
from torch import Tensor

from .spec import QualityFocalSpec
from .torch_common import check_now, reduce_and_scale


def modulate(bce: Tensor, dbce: Tensor, d: Tensor, dd, expo: float):
    """bce * |d| ** expo and its derivative dbce * |d|**expo + expo * |d|**expo * dd * bce / d
    (0 where d == 0)."""
    if expo == 0.0:
        return bce, dbce
    if expo == 2.0:
        mod = d * d
        return bce * mod, dbce * mod + 2.0 * bce * d * dd
    nz = d != 0
    mod = d.abs().pow(expo)
    ratio = bce / torch.where(nz, d, torch.ones_like(d))
    return bce * mod, dbce * mod + torch.where(nz, expo * mod * dd * ratio, torch.zeros_like(d))


def logit_terms(x: Tensor, t: Tensor):
    """(BCEWithLogits(x, t), sigmoid(x) - t, sigmoid'(x)), accurate for any finite x."""
    lp = torch.log1p(torch.exp(-x.abs()))
    p = torch.sigmoid(x)
    q = torch.sigmoid(-x)
    bce = torch.where(x >= 0, x * (1 - t), -x * t) + lp
    d = torch.where(t >= 0.5, (1 - t) - q, p - t)
    return bce, d, p * q


def prob_terms(p: Tensor, t: Tensor):
    """torch's binary_cross_entropy(p, t) (logs clamped at -100), its derivative, and p - t."""
    bce = -(t * torch.log(p).clamp_min(-100) + (1 - t) * torch.log1p(-p).clamp_min(-100))
    dbce = (p - t) / torch.clamp_min(p * (1 - p), 1e-12)
    return bce, dbce, p - t


def elementwise(x: Tensor, t: Tensor, beta: float, activated: bool):
    """Elementwise (loss, d loss / d pred) of BCE(x, t) * |p - t| ** beta."""
    if activated:
        bce, dbce, d = prob_terms(x, t)
        return modulate(bce, dbce, d, 1.0, beta)
    bce, d, dd = logit_terms(x, t)
    return modulate(bce, d, d, dd, beta)


def forward(pred2: Tensor, target: Tensor, score: Tensor | None, weight: Tensor | None,
            avg_factor: Tensor | None, upstream: Tensor | None, beta: float, scale: float,
            spec: QualityFocalSpec, out_dtype: torch.dtype,
            loss_shape: tuple) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) for (R, C)-shaped pred2, as the Triton launcher computes them: the reduced or
    per-row loss, and the gradient (times the per-row `upstream` when given: the backward of
    'none')."""
    R, C = pred2.shape
    if spec.check:
        check_now(pred2, target, spec.index_target, spec.activated)
    cdt = torch.float64 if pred2.dtype == torch.float64 else torch.float32
    x = pred2.to(cdt)
    if spec.index_target:  # labels outside [0, C) match no column: background
        hit = target[:, None] == torch.arange(C, device=x.device)
        t = torch.where(hit, score.to(cdt)[:, None], torch.zeros((), dtype=cdt, device=x.device))
    else:
        t = target.to(cdt)
    loss, dx = elementwise(x, t, beta, spec.activated)
    row_loss = loss.sum(dim=1)
    if spec.weighted:
        w = weight.to(cdt)
        row_loss = row_loss * w
        dx = dx * w[:, None]
    if upstream is not None:  # backward of 'none'
        return None, (dx * scale * upstream.to(cdt)[:, None]).to(pred2.dtype)
    return reduce_and_scale(row_loss, dx, scale, avg_factor, spec.reduction, spec.write_grad,
                            out_dtype, loss_shape, pred2.dtype)
