"""PyTorch implementation of the Gaussian focal loss: the CPU path (and a second reference for
the Triton kernels). The same math as `kernels/gaussian_focal.py`, evaluated in fp32 (float64
when pred is float64)."""
import torch
from torch import Tensor

from .checks import LABEL_BIT, raise_bad
from .spec import GaussianFocalSpec
from .torch_common import EPS, check_now, power, reduce_and_scale, weigh


def _f(s: Tensor, c: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """(f(s), f'(s)) of f(s) = s ** alpha * -log(1 - s), given c = 1 - s."""
    one = c == 1
    L = torch.where(one, -1.0, torch.log(c)) / torch.where(one, -1.0, c - 1)  # -log(c) / s
    sa = power(s, alpha)
    return sa * s * L, sa * (1 / c + alpha * L)


def elementwise(p: Tensor, t: Tensor, alpha: float, gamma: float, pos_weight: float,
                neg_weight: float, neg_only: bool) -> tuple[Tensor, Tensor]:
    """Elementwise (loss, d loss / dp): pos_weight * -log(p) * (1 - p) ** alpha where t == 1
    (nowhere if `neg_only`), neg_weight * -log(1 - p) * p ** alpha * (1 - t) ** gamma elsewhere
    (and at t == 1 too when gamma == 0); written as factor * f(s) with s = p or 1 - p (the
    kernel's docstring)."""
    pos = torch.zeros_like(p, dtype=torch.bool) if neg_only else t == 1
    f, df = _f(torch.where(pos, 1 - p, p), torch.where(pos, p, 1 - p), alpha)
    factor = torch.where(pos, pos_weight, neg_weight * power(1 - t, gamma))
    live = factor != 0
    loss = torch.where(live, factor * f, 0.0)
    d = torch.where(live, factor * df, 0.0)
    d = torch.where(pos, -d, d)
    if gamma == 0 and not neg_only and neg_weight != 0:  # (1 - t) ** 0 = 1 at t == 1 too
        fn, dfn = _f(p, 1 - p, alpha)
        loss = loss + torch.where(pos, neg_weight * fn, 0.0)
        d = d + torch.where(pos, neg_weight * dfn, 0.0)
    return loss, d


def forward(pred: Tensor, target: Tensor, weight: Tensor | None, pos_inds: Tensor | None,
            pos_labels: Tensor | None, avg_factor: Tensor | None, upstream: Tensor | None,
            alpha: float, gamma: float, pos_weight: float, neg_weight: float, scale: float,
            spec: GaussianFocalSpec, out_dtype: torch.dtype,
            loss_shape: tuple) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) as the Triton launcher computes them (contiguous inputs of any shape; the
    pos_inds form with (N, C) pred); the input checks raise in the call."""
    cdt = torch.float64 if pred.dtype == torch.float64 else torch.float32
    if spec.check:
        check_now(pred.reshape(pred.shape[0], -1), target, False, True)
    p = pred.to(cdt)
    loss, dp = elementwise(p, target.to(cdt), alpha, gamma, pos_weight, neg_weight,
                           spec.neg_only)
    loss, dp = weigh(loss, dp, weight if spec.weighted else None)
    if upstream is not None:  # backward of 'none'
        return None, (dp * scale * upstream.to(cdt)).to(pred.dtype)
    if pos_inds is None:
        return reduce_and_scale(loss, dp, scale, avg_factor, spec.reduction, spec.write_grad,
                                out_dtype, loss_shape, pred.dtype)
    out, grad = reduce_and_scale(loss, dp, scale, avg_factor, spec.reduction, spec.write_grad,
                                 cdt, loss_shape, pred.dtype)
    N, C = pred.shape
    rows, cols = pos_inds.long(), pos_labels.long()
    inside = (rows >= 0) & (rows < N) & (cols >= 0) & (cols < C)
    if not bool(inside.all()):
        if spec.check:
            raise_bad(LABEL_BIT, 0)
        rows, cols = rows[inside], cols[inside]  # checks off: left out, as the kernel does
    lp, dpp = elementwise(p[rows, cols], torch.ones((), dtype=cdt), alpha, 0.0, 1.0, 0.0, False)
    norm = pos_weight * scale
    if avg_factor is not None:
        norm = norm / (avg_factor + EPS).to(cdt).reshape(())
    out = (out + lp.sum() * norm).to(out_dtype)
    if grad is not None:
        grad.index_put_((rows, cols), (dpp * norm).to(grad.dtype), accumulate=True)
    return out, grad
