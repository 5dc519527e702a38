"""The quality-focal-loss operator (mmdet's `QualityFocalLoss`): one forward that returns the loss
and writes the gradient.

`quality_focal_loss(pred, target, score, weight, avg_factor, beta, scale, flags, out_dtype)`
returns the loss: reduced, or one value per row for 'none' (mmdet sums each row over the classes
before the weight and the reduction). `pred` is (R, C); `target` holds class indices (R,) with
`score` (R,) the quality of the labelled class (mmdet's `(labels, scores)` targets), or a dense
(R, C) quality target with `score` None; `weight` is None or one value per row (a stride-0 view
for one weight for all); `flags` packs a `QualityFocalSpec`. Dispatch, launch and autograd
follow `ops/focal.py`: the Triton kernel (`kernels/quality_focal.py`, launched directly by
`launcher.Kernel`) or the PyTorch implementation (`torch_quality_focal.py`);
`fused_op.FusedLossOp` makes the eager `QualityFocalLossFunction` and the registered op
`torch.ops.mmdet_focal_triton.quality_focal_loss` (opaque, with a fake implementation).
"""
import torch
from torch import Tensor

from . import checks, launcher, torch_quality_focal
from .fused_op import FusedLossOp, new_outputs, run_forward
from .launcher import dtype_of, exponent_mode, int_class, misaligned, variant
from .spec import NONE, QualityFocalSpec
from .torch_common import EPS

_kernel = launcher.lazy_kernel('quality_focal', 'quality_focal_loss_kernel')


class _Variant(launcher.RowsVariant):
    KERNEL, SPEC = _kernel, QualityFocalSpec

    def constexprs(self, spec, backward_of_none, check, mod, has_af):
        self.st = (1, 0) if spec.index_target else self.sx  # of the targets (sx: of pred)
        return (spec.index_target, spec.activated, spec.weighted, mod, has_af, backward_of_none,
                self.write_loss, self.reduce, self.write_grad, check)

    def args(self, ptrs, call):
        X, T, S, W, UP, LOSS, GRAD, OUT, PARTIAL, COUNTER, FLAG, AF = ptrs
        sx, st, ss, sw, su, R, C, num_row_blocks, beta, scale = call
        return (X, sx[0], sx[1], T, st[0], st[1], S, ss, W, sw, UP, su, LOSS, GRAD, OUT, PARTIAL,
                COUNTER, FLAG, AF, R, C, num_row_blocks, beta, scale, EPS, *self.tail)


_VARIANTS: dict = launcher.clear_on_retune({})


def _launch(pred2: Tensor, target: Tensor, score: Tensor | None, weight: Tensor | None,
            avg_factor: Tensor | None, upstream: Tensor | None, beta: float, scale: float,
            spec: QualityFocalSpec, flags: int, out_dtype: torch.dtype, loss_shape: tuple,
            device_index: int):
    """Run the fused kernel on (R, C)-shaped pred2: returns (loss, grad)."""
    R, C = pred2.shape
    backward_of_none = upstream is not None
    check = spec.check and checks._MODE != 'off'
    # one-row vectors: the stride of a single row is never used, 0 keeps the key canonical
    ss = 0 if score is None or R == 1 else score.stride(0)
    sw = 0 if weight is None or R == 1 else weight.stride(0)
    su = 0 if upstream is None or R == 1 else upstream.stride(0)
    # Contiguous inputs (the training case) get canonical strides, a function of C and the
    # flags: with the dtypes, alignments and the vectors' strides (0 or 1) they make the key of
    # the compiled kernel (launcher.py). Anything else takes Triton's JIT path.
    canonical = (pred2.is_contiguous() and target.is_contiguous() and ss in (0, 1)
                 and sw in (0, 1) and su in (0, 1))
    vkey = (device_index, flags, backward_of_none, check, C, pred2.dtype, canonical,
            exponent_mode(beta), avg_factor is not None)
    v = variant(_VARIANTS, vkey, _Variant, pred2.device)
    d = v.dummy_ptr
    ptrs = (pred2.data_ptr(), target.data_ptr(), d if score is None else score.data_ptr(),
            d if weight is None else weight.data_ptr(),
            d if upstream is None else upstream.data_ptr(),
            d if avg_factor is None else avg_factor.data_ptr())
    num_row_blocks = -(-R // v.block)
    if canonical:
        sx, st = v.sx, v.st
        key = (vkey, int_class(R), int_class(num_row_blocks), target.dtype, dtype_of(score),
               dtype_of(weight), dtype_of(upstream), dtype_of(avg_factor), out_dtype, ss, sw, su,
               misaligned(ptrs))
    else:
        sx = pred2.stride()
        st = (target.stride(0), 0) if spec.index_target else target.stride()
        key = None
    loss, grad = new_outputs(pred2, loss_shape, out_dtype, backward_of_none, v.write_grad)
    v.launch(key, num_row_blocks, device_index,
             (pred2, target, score, weight, upstream, avg_factor), ptrs, loss, grad,
             (sx, st, ss, sw, su, R, C, num_row_blocks, beta, scale))
    if check and checks._MODE == 'sync':
        checks.wait_and_poll(device_index)
    return loss, grad


def forward_impl(pred: Tensor, target: Tensor, score: Tensor | None, weight: Tensor | None,
                 avg_factor: Tensor | None, beta: float, scale: float, flags: int,
                 out_dtype: torch.dtype,
                 upstream: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) for (R, C) pred: the reduced or per-row loss (None when `upstream`, one value
    per row, is given: the backward of 'none'), and d loss / d pred (times `upstream`) or None."""
    spec = QualityFocalSpec.unpack(flags)
    call = (pred, target, score, weight, avg_factor, upstream, beta, scale, spec)
    return run_forward(pred, spec, call, _launch, torch_quality_focal.forward, flags, scale,
                       out_dtype, _loss_shape(spec, pred, avg_factor), upstream)


def _loss_shape(spec, pred, avg_factor) -> tuple:
    """One value per row for 'none' (mmdet sums each row over the classes); reduced: avg_factor's
    shape (a (1,) avg_factor gives a (1,) loss, as in mmdet), else ()."""
    if spec.reduction == NONE:
        return pred.shape[:1]
    return avg_factor.shape if avg_factor is not None else ()


FORCE_OP = False  # tests: route eager calls through the registered op as well
# the torch.library op `mmdet_focal_triton::quality_focal_loss` (+ its 'none' backward), its
# autograd, and the eager QualityFocalLossFunction; calling it gives the loss
quality_focal_loss = FusedLossOp(
    'quality_focal_loss',
    'Tensor pred, Tensor target, Tensor? score, Tensor? weight, Tensor? avg_factor',
    'float beta, float scale', QualityFocalSpec, lambda *a: forward_impl(*a), _loss_shape,
    lambda: FORCE_OP)
QualityFocalLossFunction = quality_focal_loss.Function
