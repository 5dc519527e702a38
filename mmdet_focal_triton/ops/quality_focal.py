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

from . import checks, torch_quality_focal
from .backend import use_triton
from .fused_op import FusedLossOp, empty_result, new_outputs
from .launcher import Kernel, current_stream, device_guard, dummy, int_class, workspace
from .spec import NONE, QualityFocalSpec
from .tuning import launch_config, num_programs

EPS = float(torch.finfo(torch.float32).eps)  # mmdet's avg_factor epsilon
_KERNEL = None  # launcher.Kernel of kernels.quality_focal.quality_focal_loss_kernel


def _kernel() -> Kernel:
    global _KERNEL
    if _KERNEL is None:
        from ..kernels.quality_focal import quality_focal_loss_kernel

        _KERNEL = Kernel(quality_focal_loss_kernel)
    return _KERNEL


def mod_mode(expo: float) -> int:
    """The kernels' MOD_MODE for an exponent: 0 (== 0), 2 (== 2), 1 (any other)."""
    return 0 if expo == 0.0 else 2 if expo == 2.0 else 1


def _misaligned(*tensors) -> int:
    """One bit per tensor (None: 0) whose data is not 16-byte aligned: part of a launch key,
    since Triton specialises each pointer on its own alignment."""
    bits = 0
    for i, t in enumerate(tensors):
        if t is not None and t.data_ptr() & 15:
            bits |= 1 << i
    return bits


def _launch(pred2: Tensor, target: Tensor, score: Tensor | None, weight: Tensor | None,
            avg_factor: Tensor | None, upstream: Tensor | None, beta: float, scale: float,
            spec: QualityFocalSpec, flags: int, out_dtype: torch.dtype, loss_shape: tuple,
            device_index: int):
    """Run the fused kernel on (R, C)-shaped pred2: returns (loss, grad)."""
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
    check = spec.check and checks._MODE != 'off'
    loss, grad = new_outputs(pred2, loss_shape, out_dtype, backward_of_none, write_grad)
    dmy = dummy(device_index, dev)
    if reduce:
        ws = workspace(device_index, stream, P, dev)
        partial, counter = ws.partial, ws.counter
    else:
        partial = counter = dmy
    index = spec.index_target
    # one-row vectors: the stride of a single row is never used, 0 keeps the key canonical
    sw = 0 if weight is None or R == 1 else weight.stride(0)
    su = 0 if upstream is None or R == 1 else upstream.stride(0)
    ss = 0 if score is None or R == 1 else score.stride(0)
    # Contiguous inputs (the training case) get canonical strides, a function of C and the
    # flags: with the dtypes, alignments and the vectors' strides (0 or 1) they make the key of
    # the compiled kernel (launcher.py). Anything else takes Triton's JIT path.
    if (pred2.is_contiguous() and target.is_contiguous() and C < 2 ** 31 and sw in (0, 1)
            and su in (0, 1) and ss in (0, 1)):
        sx = (C, 1)
        st = (1, 0) if index else sx
        key = (device_index, flags, check, backward_of_none, mod_mode(beta), C, int_class(R),
               int_class(num_row_blocks), pred2.dtype, target.dtype,
               None if score is None else score.dtype, None if weight is None else weight.dtype,
               None if upstream is None else upstream.dtype,
               None if avg_factor is None else avg_factor.dtype, out_dtype, sw, su, ss,
               _misaligned(pred2, target, score, weight, upstream, avg_factor))
    else:
        sx = pred2.stride()
        st = (target.stride(0), 0) if index else target.stride()
        key = None
    args = (
        pred2, sx[0], sx[1], target, st[0], st[1],
        dmy if score is None else score, ss,
        dmy if weight is None else weight, sw,
        dmy if upstream is None else upstream, su,
        loss if write_loss else dmy,
        grad if write_grad else dmy,
        loss if reduce else dmy, partial, counter,
        checks.flag_arg(device_index) if check else dmy,
        dmy if avg_factor is None else avg_factor,
        R, C, num_row_blocks, beta, scale, EPS,
        index, spec.activated, spec.weighted, mod_mode(beta), avg_factor is not None,
        backward_of_none, write_loss, reduce, write_grad, check, C % block_c == 0, block_r,
        block_c, 1024, bool(cfg['fast_math']) and device_index >= 0,
    )
    with device_guard(device_index):
        _kernel().launch(key, P, stream, args, cfg['options'])
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
    R, C = pred.shape
    loss_shape = _loss_shape(spec, pred, avg_factor)
    if R * C == 0:  # empty input: no launch
        return empty_result(pred, spec.reduction, spec.write_grad, scale, out_dtype,
                            loss_shape, upstream)
    if use_triton(pred):
        device_index = pred.get_device()
        checks.poll(device_index)  # earlier calls' input checks, if their kernels reported
        return _launch(pred, target, score, weight, avg_factor, upstream, beta, scale, spec,
                       flags, out_dtype, loss_shape, device_index)
    return torch_quality_focal.forward(pred, target, score, weight, avg_factor, upstream, beta,
                                       scale, spec, out_dtype, loss_shape)


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
