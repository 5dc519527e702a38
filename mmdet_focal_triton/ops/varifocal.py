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

from . import torch_varifocal
from .backend import use_triton
from .fused_op import FusedLossOp, elementwise_loss_shape, empty_result, new_outputs
from .launcher import Kernel, current_stream, device_guard, dummy, int_class, workspace
from .quality_focal import EPS, _misaligned, mod_mode
from .spec import NONE, VarifocalSpec
from .tuning import launch_config, num_programs

_KERNEL = None  # launcher.Kernel of kernels.varifocal.varifocal_loss_kernel


def _kernel() -> Kernel:
    global _KERNEL
    if _KERNEL is None:
        from ..kernels.varifocal import varifocal_loss_kernel

        _KERNEL = Kernel(varifocal_loss_kernel)
    return _KERNEL


def _launch(pred2: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
            upstream: Tensor | None, alpha: float, gamma: float, scale: float,
            spec: VarifocalSpec, flags: int, out_dtype: torch.dtype, loss_shape: tuple,
            device_index: int):
    """Run the fused kernel on (R, C)-shaped pred2 / target / weight: returns (loss, grad)."""
    R, C = pred2.shape
    dev = pred2.device
    cfg = launch_config(C, pred2.dtype)
    block_r, block_c = cfg['block_r'], cfg['block_c']
    num_row_blocks = -(-R // block_r)
    P = num_programs(device_index, num_row_blocks, cfg['programs_per_sm'])
    stream = current_stream(device_index)
    backward_of_none = upstream is not None
    reduce = spec.reduction != NONE and not backward_of_none
    write_loss = spec.reduction == NONE and not backward_of_none
    write_grad = spec.write_grad or backward_of_none
    loss, grad = new_outputs(pred2, loss_shape, out_dtype, backward_of_none, write_grad)
    dmy = dummy(device_index, dev)
    if reduce:
        ws = workspace(device_index, stream, P, dev)
        partial, counter = ws.partial, ws.counter
    else:
        partial = counter = dmy
    if weight is None:
        sw, wmode = (0, 0), 0
    else:  # a single row's / column's stride is never used: 0 keeps the key canonical
        sw = (0 if R == 1 else weight.stride(0), 0 if C == 1 else weight.stride(1))
        wmode = 1 if sw[1] == 0 else 2
    # Contiguous inputs get canonical strides (a function of C); weights broadcast per row,
    # per column or for all have fixed strides too: with the dtypes and alignments they make the
    # key of the compiled kernel (launcher.py). Anything else takes Triton's JIT path.
    if (pred2.is_contiguous() and target.is_contiguous() and C < 2 ** 31
            and (upstream is None or upstream.is_contiguous())
            and sw in ((0, 0), (1, 0), (0, 1), (C, 1))):
        sx = st = (C, 1)
        su = sx if backward_of_none else (0, 0)
        key = (device_index, flags, backward_of_none, mod_mode(gamma), C, int_class(R),
               int_class(num_row_blocks), pred2.dtype, target.dtype,
               None if weight is None else weight.dtype, sw,
               None if upstream is None else upstream.dtype,
               None if avg_factor is None else avg_factor.dtype, out_dtype,
               _misaligned(pred2, target, weight, upstream, avg_factor))
    else:
        sx, st = pred2.stride(), target.stride()
        su = upstream.stride() if backward_of_none else (0, 0)
        key = None
    args = (
        pred2, sx[0], sx[1], target, st[0], st[1],
        dmy if weight is None else weight, sw[0], sw[1],
        upstream if backward_of_none else dmy, su[0], su[1],
        loss if write_loss else dmy,
        grad if write_grad else dmy,
        loss if reduce else dmy, partial, counter,
        dmy if avg_factor is None else avg_factor,
        R, C, num_row_blocks, alpha, gamma, scale, EPS,
        spec.iou_weighted, wmode, mod_mode(gamma), avg_factor is not None, backward_of_none,
        write_loss, reduce, write_grad, C % block_c == 0, block_r, block_c, 1024,
        bool(cfg['fast_math']) and device_index >= 0,
    )
    with device_guard(device_index):
        _kernel().launch(key, P, stream, args, cfg['options'])
    return loss, grad


def forward_impl(pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
                 alpha: float, gamma: float, scale: float, flags: int, out_dtype: torch.dtype,
                 upstream: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) for any pred shape: the reduced or elementwise loss (None when `upstream` is
    given: the backward of 'none'), and d loss / d pred (times `upstream`) or None."""
    spec = VarifocalSpec.unpack(flags)
    R = pred.shape[0]
    C = pred.numel() // R if R else pred.shape[1:].numel()
    pred2 = pred if pred.dim() == 2 else pred.reshape(R, C)
    tgt = target if target.dim() == 2 else target.reshape(R, C)
    w = weight if weight is None or weight.dim() == 2 else weight.reshape(R, C)
    up = upstream if upstream is None or upstream.dim() == 2 else upstream.reshape(R, C)
    loss_shape = elementwise_loss_shape(spec, pred, avg_factor)
    if R * C == 0:  # empty input: no launch
        return empty_result(pred, spec.reduction, spec.write_grad, scale, out_dtype,
                            loss_shape, upstream)
    if use_triton(pred):
        loss, grad = _launch(pred2, tgt, w, avg_factor, up, alpha, gamma, scale, spec, flags,
                             out_dtype, loss_shape, pred.get_device())
    else:
        loss, grad = torch_varifocal.forward(pred2, tgt, w, avg_factor, up, alpha, gamma, scale,
                                             spec, out_dtype, loss_shape)
    if grad is not None and pred.dim() != 2:
        grad = grad.view(pred.shape)
    return loss, grad


FORCE_OP = False  # tests: route eager calls through the registered op as well
# the torch.library op `mmdet_focal_triton::varifocal_loss` (+ its 'none' backward), its
# autograd, and the eager VarifocalLossFunction; calling it gives the loss
varifocal_loss = FusedLossOp(
    'varifocal_loss', 'Tensor pred, Tensor target, Tensor? weight, Tensor? avg_factor',
    'float alpha, float gamma, float scale', VarifocalSpec, lambda *a: forward_impl(*a),
    elementwise_loss_shape, lambda: FORCE_OP)
VarifocalLossFunction = varifocal_loss.Function
