"""The varifocal-loss operator (mmdet's `VarifocalLoss`): one forward that returns the loss and
writes the gradient.

`varifocal_loss(pred, target, weight, avg_factor, alpha, gamma, scale, flags, out_dtype)` returns
the loss (reduced, or elementwise for 'none'); `target` has pred's shape; `weight` is None or a
tensor of pred's shape, possibly a broadcast view (0 strides: one weight per row, per column, or
for all); `flags` packs a `VarifocalSpec`. Dispatch, launch and autograd follow `ops/focal.py`:
the Triton kernel (`kernels/varifocal.py`, launched directly by `launcher.Kernel`) or the
PyTorch implementation (`torch_varifocal.py`); `fused_op.FusedLossOp` makes the eager
`VarifocalLossFunction` and the registered op `torch.ops.mmdet_focal_triton.varifocal_loss`.
"""
import torch
from torch import Tensor

from . import launcher, torch_varifocal
from .fused_op import (
    FusedLossOp,
    as_rows,
    elementwise_loss_shape,
    new_outputs,
    rows_of,
    run_forward,
)
from .launcher import dtype_of, exponent_mode, int_class, misaligned, variant
from .spec import VarifocalSpec
from .torch_common import EPS

_kernel = launcher.lazy_kernel('varifocal', 'varifocal_loss_kernel')


class _Variant(launcher.RowsVariant):
    KERNEL, SPEC = _kernel, VarifocalSpec

    def constexprs(self, spec, backward_of_none, check, mod, has_af, wmode):
        self.su = self.sx if backward_of_none else (0, 0)  # of upstream (sx: of pred, target)
        return (spec.iou_weighted, wmode, mod, has_af, backward_of_none, self.write_loss,
                self.reduce, self.write_grad)

    def args(self, ptrs, call):
        X, T, W, UP, LOSS, GRAD, OUT, PARTIAL, COUNTER, AF = ptrs
        sx, st, sw, su, R, C, num_row_blocks, alpha, gamma, scale = call
        return (X, sx[0], sx[1], T, st[0], st[1], W, sw[0], sw[1], UP, su[0], su[1], LOSS, GRAD,
                OUT, PARTIAL, COUNTER, AF, R, C, num_row_blocks, alpha, gamma, scale, EPS,
                *self.tail)


_VARIANTS: dict = launcher.clear_on_retune({})


def _launch(pred2: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
            upstream: Tensor | None, alpha: float, gamma: float, scale: float,
            spec: VarifocalSpec, flags: int, out_dtype: torch.dtype, loss_shape: tuple,
            device_index: int):
    """Run the fused kernel on (R, C)-shaped pred2 / target / weight: returns (loss, grad)."""
    R, C = pred2.shape
    backward_of_none = upstream is not None
    if weight is None:
        sw, wmode = (0, 0), 0
    else:  # a single row's / column's stride is never used: 0 keeps the key canonical
        sw = (0 if R == 1 else weight.stride(0), 0 if C == 1 else weight.stride(1))
        wmode = 1 if sw[1] == 0 else 2
    # Contiguous inputs get canonical strides (a function of C); weights broadcast per row,
    # per column or for all have fixed strides too: with the dtypes and alignments they make the
    # key of the compiled kernel (launcher.py). Anything else takes Triton's JIT path.
    canonical = (pred2.is_contiguous() and target.is_contiguous()
                 and (upstream is None or upstream.is_contiguous())
                 and sw in ((0, 0), (1, 0), (0, 1), (C, 1)))
    vkey = (device_index, flags, backward_of_none, None, C, pred2.dtype, canonical,
            exponent_mode(gamma), avg_factor is not None, wmode)
    v = variant(_VARIANTS, vkey, _Variant, pred2.device)
    d = v.dummy_ptr
    ptrs = (pred2.data_ptr(), target.data_ptr(), d if weight is None else weight.data_ptr(),
            d if upstream is None else upstream.data_ptr(),
            d if avg_factor is None else avg_factor.data_ptr())
    num_row_blocks = -(-R // v.block)
    if canonical:
        sx = st = v.sx
        su = v.su
        key = (vkey, int_class(R), int_class(num_row_blocks), target.dtype, dtype_of(weight), sw,
               dtype_of(upstream), dtype_of(avg_factor), out_dtype, misaligned(ptrs))
    else:
        sx, st = pred2.stride(), target.stride()
        su = upstream.stride() if backward_of_none else (0, 0)
        key = None
    loss, grad = new_outputs(pred2, loss_shape, out_dtype, backward_of_none, v.write_grad)
    v.launch(key, num_row_blocks, device_index, (pred2, target, weight, upstream, avg_factor),
             ptrs, loss, grad, (sx, st, sw, su, R, C, num_row_blocks, alpha, gamma, scale))
    return loss, grad


def forward_impl(pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
                 alpha: float, gamma: float, scale: float, flags: int, out_dtype: torch.dtype,
                 upstream: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) for any pred shape: the reduced or elementwise loss (None when `upstream` is
    given: the backward of 'none'), and d loss / d pred (times `upstream`) or None."""
    spec = VarifocalSpec.unpack(flags)
    R, C = rows_of(pred)
    call = (as_rows(pred, R, C), as_rows(target, R, C), as_rows(weight, R, C), avg_factor,
            as_rows(upstream, R, C), alpha, gamma, scale, spec)
    return run_forward(pred, spec, call, _launch, torch_varifocal.forward, flags, scale, out_dtype,
                       elementwise_loss_shape(spec, pred, avg_factor), upstream)


FORCE_OP = False  # tests: route eager calls through the registered op as well
# the torch.library op `mmdet_focal_triton::varifocal_loss` (+ its 'none' backward), its
# autograd, and the eager VarifocalLossFunction; calling it gives the loss
varifocal_loss = FusedLossOp(
    'varifocal_loss', 'Tensor pred, Tensor target, Tensor? weight, Tensor? avg_factor',
    'float alpha, float gamma, float scale', VarifocalSpec, lambda *a: forward_impl(*a),
    elementwise_loss_shape, lambda: FORCE_OP)
VarifocalLossFunction = varifocal_loss.Function
