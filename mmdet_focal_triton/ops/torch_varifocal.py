"""PyTorch implementation of the varifocal loss: the CPU path (and a second reference for the
Triton kernel). The same math as `kernels/varifocal.py`, evaluated in fp32 (float64 when pred is
float64)."""
import torch
from torch import Tensor

from .spec import VarifocalSpec
from .torch_common import reduce_and_scale, weigh
from .torch_quality_focal import logit_terms, modulate


def elementwise(x: Tensor, t: Tensor, alpha: float, gamma: float, iou_weighted: bool):
    """Elementwise (loss, d loss / dx): BCE(x, t) * t (or 1) where t > 0, and
    alpha * BCE(x, t) * |sigmoid(x) - t| ** gamma elsewhere."""
    bce, d, dd = logit_terms(x, t)
    lneg, dneg = modulate(bce, d, d, dd, gamma)
    pos = t > 0
    fw = t if iou_weighted else torch.ones_like(t)
    return torch.where(pos, fw * bce, alpha * lneg), torch.where(pos, fw * d, alpha * dneg)


def forward(pred2: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
            upstream: Tensor | None, alpha: float, gamma: float, scale: float,
            spec: VarifocalSpec, out_dtype: torch.dtype,
            loss_shape: tuple) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) for (R, C)-shaped pred2 (target, weight, upstream of the same shape; weight
    may be a broadcast view), as the Triton launcher computes them."""
    cdt = torch.float64 if pred2.dtype == torch.float64 else torch.float32
    loss, dx = elementwise(pred2.to(cdt), target.to(cdt), alpha, gamma, spec.iou_weighted)
    loss, dx = weigh(loss, dx, weight if spec.weighted else None)
    if upstream is not None:  # backward of 'none'
        return None, (dx * scale * upstream.to(cdt)).to(pred2.dtype)
    return reduce_and_scale(loss, dx, scale, avg_factor, spec.reduction, spec.write_grad,
                            out_dtype, loss_shape, pred2.dtype)
