"""The focal-loss operator: one forward that returns the loss and writes the gradient.

`focal_loss(pred, target, weight, avg_factor, gamma, alpha, scale, flags, out_dtype)` returns the
loss (reduced, or elementwise for 'none'); `flags` packs a `FocalSpec`. It dispatches to the
Triton kernel (`kernels/focal.py`, launched directly by `launcher.Kernel`) or to the PyTorch
implementation (`torch_focal.py`), and is differentiable in `pred`: `fused_op.FusedLossOp`
registers the op `torch.ops.mmdet_focal_triton.focal_loss` (opaque to torch.compile, with a fake
implementation: no graph break) and makes the eager `FocalLossFunction`, both around
`forward_impl` and the glue of `autograd.py`.

Host cost of one call, what it is made of: argument checks (functional.py), one autograd
Function, the output and gradient allocations, a tuple key and a dict lookup, one direct kernel
launch (the reduction is finished inside the kernel), and a memory read of the input-check flag.
"""
import torch
from torch import Tensor

from . import checks, torch_focal
from .fused_op import (
    FusedLossOp,
    as_rows,
    elementwise_loss_shape,
    new_outputs,
    rows_of,
    run_forward,
)
from .launcher import Variant, clear_on_retune, dtype_of, int_class, lazy_kernel, variant
from .spec import WEIGHT_ELEM, WEIGHT_NONE, WEIGHT_ROW, FocalSpec
from .torch_common import EPS
from .tuning import FLAT_MAX_C, launch_config

_KERNELS = {'rows': lazy_kernel('focal', 'focal_loss_kernel'),  # kernels/focal.py's, by layout
            'flat': lazy_kernel('focal', 'focal_loss_flat_kernel')}


class _Variant(Variant):
    """Launch data of one variant (launcher.Variant): layout, launch configuration, the kernel's
    compile-time arguments and the canonical strides of contiguous inputs, all a function of the
    variant key (flags, C, dtype, device, whether the inputs are contiguous and aligned)."""

    def __init__(self, device_index, flags, check, backward_of_none, gamma_mode, has_af, C,
                 dtype, fast, device):
        spec = FocalSpec.unpack(flags)
        cfg = launch_config(C, dtype)
        flat = fast and cfg['layout'] == 'flat' and C < FLAT_MAX_C
        super().__init__(_KERNELS['flat' if flat else 'rows'](), cfg,
                         cfg['flat_block'] if flat else cfg['block_r'], device_index, device, spec,
                         backward_of_none, check=check)
        self.flat = flat
        fast_math = bool(cfg['fast_math']) and device_index >= 0
        head = (spec.index_target, spec.activated, spec.weight_mode, gamma_mode, has_af,
                backward_of_none, self.write_loss, self.reduce, self.write_grad, check)
        if flat:
            self.tail = (*head, cfg['flat_block'], 1024, 1024, fast_math)
        else:
            self.tail = (*head, C % cfg['block_c'] == 0, cfg['block_r'], cfg['block_c'], 1024,
                         fast_math)
        sx = (C, 1)
        st = (1, 0) if spec.index_target else sx
        sw = ((0, 0) if spec.weight_mode == WEIGHT_NONE else (1, 0)
              if spec.weight_mode == WEIGHT_ROW else sx)
        su = sx if backward_of_none else (0, 0)
        self.strides = (sx, st, sw, su)  # of contiguous inputs: a function of C alone

    def args(self, ptrs, call):
        """`ptrs`: X, T, W, UP, LOSS, GRAD, OUT, PARTIAL, COUNTER, FLAG, AF."""
        strides, R, C, num_blocks, gamma, alpha, scale = call
        if self.flat:
            return (*ptrs, R, C, 1.0 / C, num_blocks, gamma, alpha, scale, EPS, *self.tail)
        (sx, st, sw, su) = strides
        return (ptrs[0], sx[0], sx[1], ptrs[1], st[0], st[1], ptrs[2], sw[0], sw[1], ptrs[3],
                su[0], su[1], *ptrs[4:], R, C, num_blocks, gamma, alpha, scale, EPS, *self.tail)


_VARIANTS: dict = clear_on_retune({})


def _launch(pred2: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
            upstream: Tensor | None, gamma: float, alpha: float, scale: float, spec: FocalSpec,
            flags: int, out_dtype: torch.dtype, loss_shape: tuple, device_index: int):
    """Run the fused kernel on (R, C)-shaped pred2: returns (loss, grad)."""
    R, C = pred2.shape
    gamma_mode = 0 if gamma == 0.0 else 2 if gamma == 2.0 else 1
    backward_of_none = upstream is not None
    check = spec.check and checks._MODE != 'off'
    # Contiguous, 16-byte aligned inputs (the training case) take the cached, directly launched
    # kernel: canonical strides, a function of C alone, so that the variant, the size classes and
    # the dtypes make the key of the compiled kernel (launcher.py). Anything else takes Triton's
    # JIT path with its real strides.
    px, pt = pred2.data_ptr(), target.data_ptr()
    pw = 0 if weight is None else weight.data_ptr()
    pu = 0 if upstream is None else upstream.data_ptr()
    paf = 0 if avg_factor is None else avg_factor.data_ptr()
    fast = (((px | pt | pw | pu | paf) & 15) == 0 and pred2.is_contiguous()
            and target.is_contiguous() and (weight is None or weight.is_contiguous())
            and (upstream is None or upstream.is_contiguous()))
    vkey = (device_index, flags, check, backward_of_none, gamma_mode, avg_factor is not None, C,
            pred2.dtype, fast)
    v = variant(_VARIANTS, vkey, _Variant, pred2.device)
    num_blocks = -(-(R * C if v.flat else R) // v.block)
    if fast:
        strides = v.strides
        key = (vkey, int_class(R), int_class(num_blocks), target.dtype, dtype_of(weight),
               dtype_of(upstream), dtype_of(avg_factor), out_dtype)
    else:
        strides = (pred2.stride(),
                   (target.stride(0), 0) if spec.index_target else target.stride(),
                   ((0, 0) if weight is None else (weight.stride(0), 0)
                    if spec.weight_mode == WEIGHT_ROW else weight.stride()),
                   upstream.stride() if backward_of_none else (0, 0))
        key = None
    d = v.dummy_ptr
    loss, grad = new_outputs(pred2, loss_shape, out_dtype, backward_of_none, v.write_grad)
    v.launch(key, num_blocks, device_index, (pred2, target, weight, upstream, avg_factor),
             (px, pt, pw or d, pu or d, paf or d), loss, grad,
             (strides, R, C, num_blocks, gamma, alpha, scale))
    if check and checks._MODE == 'sync':
        checks.wait_and_poll(device_index)
    return loss, grad


def forward_impl(pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
                 gamma: float, alpha: float, scale: float, flags: int, out_dtype: torch.dtype,
                 upstream: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) for any pred shape: the reduced or elementwise loss (None when `upstream` is
    given: the backward of 'none'), and d loss / d pred (times `upstream`) or None."""
    spec = FocalSpec.unpack(flags)
    R, C = rows_of(pred)
    tgt = target if spec.index_target else as_rows(target, R, C)
    w = as_rows(weight, R, C) if spec.weight_mode == WEIGHT_ELEM else weight
    call = (as_rows(pred, R, C), tgt, w, avg_factor, as_rows(upstream, R, C), gamma, alpha, scale,
            spec)
    return run_forward(pred, spec, call, _launch, torch_focal.forward, flags, scale, out_dtype,
                       elementwise_loss_shape(spec, pred, avg_factor), upstream)


FORCE_OP = False  # tests: route eager calls through the registered op as well
# the torch.library op `mmdet_focal_triton::focal_loss` (+ its 'none' backward), its autograd,
# and the eager FocalLossFunction; calling it gives the loss, differentiable in `pred`
focal_loss = FusedLossOp(
    'focal_loss', 'Tensor pred, Tensor target, Tensor? weight, Tensor? avg_factor',
    'float gamma, float alpha, float scale', FocalSpec, lambda *a: forward_impl(*a),
    elementwise_loss_shape, lambda: FORCE_OP)
FocalLossFunction = focal_loss.Function
