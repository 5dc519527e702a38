"""What the PyTorch implementations of the losses (the CPU path) share: the input check, done in
the call, and the reduction and normalisation of an elementwise (or per-row) loss and its
gradient, as the Triton kernels do them."""
import torch
from torch import Tensor

from .autograd import grad_buffer_dtype
from .checks import LABEL_BIT, PROB_BIT, raise_bad
from .spec import NONE

EPS = float(torch.finfo(torch.float32).eps)  # mmdet's avg_factor epsilon


def power(base: Tensor, e: float) -> Tensor:
    """base ** e, with the kernels' special cases: 1 for e == 0 (also at base 0), base * base
    for e == 2."""
    if e == 0.0:
        return torch.ones_like(base)
    if e == 2.0:
        return base * base
    return base.pow(e)


def weigh(loss: Tensor, d: Tensor, weight: Tensor | None) -> tuple[Tensor, Tensor]:
    """An elementwise loss and its derivative times `weight` (None: unchanged)."""
    if weight is None:
        return loss, d
    w = weight.to(loss.dtype)
    return loss * w, d * w


def check_now(pred2: Tensor, target: Tensor, index_target: bool, activated: bool) -> None:
    """Raise the ValueError of labels outside [0, C] (class-index targets) or probabilities
    outside [0, 1] (activated inputs) in the call itself."""
    C = pred2.shape[1]
    bits = 0
    if index_target and bool(((target < 0) | (target > C)).any()):
        bits |= LABEL_BIT
    if activated and bool(((pred2 < 0) | (pred2 > 1)).any()):
        bits |= PROB_BIT
    raise_bad(bits, C)


def reduce_and_scale(loss: Tensor, dx: Tensor, scale: float, avg_factor: Tensor | None,
                     reduction: int, write_grad: bool, out_dtype: torch.dtype, loss_shape,
                     pred_dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
    """(loss, grad) from the weighted loss (elementwise, or per row) and its derivative: the
    loss times `scale`, reduced ('none' keeps it) and divided by (avg_factor + eps) when given;
    the gradient, when asked, with the same factors, in `grad_buffer_dtype(pred_dtype)`."""
    # mmdet's (avg_factor + eps), evaluated by torch in avg_factor's dtype (float32 for an
    # integer tensor), as mmdet's weight_reduce_loss does: it matters for float64 losses
    den = None if avg_factor is None else (avg_factor + EPS).to(loss.dtype)
    if reduction == NONE:
        out = (loss * scale).reshape(loss_shape).to(out_dtype)
    else:
        total = loss.sum() * scale
        if den is not None:
            total = total / den
        out = total.reshape(loss_shape).to(out_dtype)
    grad = None
    if write_grad:
        g = dx * scale
        if den is not None:
            g = g / den.reshape(())
        grad = g.to(grad_buffer_dtype(pred_dtype))
    return out, grad
