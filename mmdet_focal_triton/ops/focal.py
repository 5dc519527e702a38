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
from .backend import use_triton
from .fused_op import FusedLossOp, elementwise_loss_shape, empty_result, new_outputs
from .launcher import Kernel, clear_on_retune, current_stream, device_guard, int_class, workspace
from .spec import NONE, WEIGHT_ELEM, WEIGHT_NONE, WEIGHT_ROW, FocalSpec
from .tuning import FLAT_MAX_C, launch_config, num_programs

EPS = float(torch.finfo(torch.float32).eps)  # mmdet's avg_factor epsilon
_KERNELS = {}  # 'rows' / 'flat' -> launcher.Kernel of kernels/focal.py, created on first use


def _kernel(layout: str) -> Kernel:
    k = _KERNELS.get(layout)
    if k is None:
        from ..kernels import focal as K

        fn = K.focal_loss_flat_kernel if layout == 'flat' else K.focal_loss_kernel
        k = _KERNELS[layout] = Kernel(fn)
    return k


class _Variant:
    """Everything about a launch that depends only on what the call computes (flags, C, dtype,
    device, whether the inputs are contiguous and aligned): layout, launch configuration, grid
    bound, the kernel's compile-time arguments. Built once per variant, so that a call only adds
    its tensors and sizes."""

    def __init__(self, device_index, flags, check, backward_of_none, gamma_mode, C, dtype,
                 fast, device):
        spec = FocalSpec.unpack(flags)
        cfg = launch_config(C, dtype)
        self.flat = fast and cfg['layout'] == 'flat' and C < FLAT_MAX_C
        self.kernel = _kernel('flat' if self.flat else 'rows')
        self.block = cfg['flat_block'] if self.flat else cfg['block_r']
        self.options = cfg['options']
        self.max_programs = num_programs(device_index, 2 ** 62, cfg['programs_per_sm'])
        self.reduce = spec.reduction != NONE and not backward_of_none
        self.write_loss = spec.reduction == NONE and not backward_of_none
        self.write_grad = spec.write_grad or backward_of_none
        self.dummy = torch.zeros(4, dtype=torch.float32, device=device)  # unread pointers
        self.flag = checks.flag_arg(device_index) if check else self.dummy
        self.dummy_ptr, self.flag_ptr = self.dummy.data_ptr(), self.flag.data_ptr()
        fast_math = bool(cfg['fast_math']) and device_index >= 0
        # the compile-time arguments, but HAS_AF, which the call supplies
        self.head = (spec.index_target, spec.activated, spec.weight_mode, gamma_mode)
        if self.flat:
            self.tail = (backward_of_none, self.write_loss, self.reduce, self.write_grad, check,
                         cfg['flat_block'], 1024, 1024, fast_math)
        else:
            self.tail = (backward_of_none, self.write_loss, self.reduce, self.write_grad, check,
                         C % cfg['block_c'] == 0, cfg['block_r'], cfg['block_c'], 1024,
                         fast_math)
        sx = (C, 1)
        st = (1, 0) if spec.index_target else sx
        sw = ((0, 0) if spec.weight_mode == WEIGHT_NONE else (1, 0)
              if spec.weight_mode == WEIGHT_ROW else sx)
        su = sx if backward_of_none else (0, 0)
        self.strides = (sx, st, sw, su)  # of contiguous inputs: a function of C alone

    def args(self, ptrs: tuple, strides, R: int, C: int, num_blocks: int, gamma: float,
             alpha: float, scale: float, has_af: bool) -> tuple:
        """The kernel's parameters in order. `ptrs`: X, T, W, UP, LOSS, GRAD, OUT, PARTIAL,
        COUNTER, FLAG, AF, as tensors or as ints."""
        if self.flat:
            return (*ptrs, R, C, 1.0 / C, num_blocks, gamma, alpha, scale, EPS, *self.head,
                    has_af, *self.tail)
        (sx, st, sw, su) = strides
        return (ptrs[0], sx[0], sx[1], ptrs[1], st[0], st[1], ptrs[2], sw[0], sw[1], ptrs[3],
                su[0], su[1], *ptrs[4:], R, C, num_blocks, gamma, alpha, scale, EPS,
                *self.head, has_af, *self.tail)


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
    vkey = (device_index, flags, check, backward_of_none, gamma_mode, C, pred2.dtype, fast)
    v = _VARIANTS.get(vkey)
    if v is None:
        v = _VARIANTS[vkey] = _Variant(*vkey, pred2.device)
    num_blocks = -(-(R * C if v.flat else R) // v.block)
    P = min(num_blocks, v.max_programs)
    stream = current_stream(device_index)
    dev = pred2.device
    loss, grad = new_outputs(pred2, loss_shape, out_dtype, backward_of_none, v.write_grad)
    ws = workspace(device_index, stream, P, dev) if v.reduce else None
    has_af = avg_factor is not None
    entry = None
    if fast:
        key = (vkey, int_class(R), int_class(num_blocks), target.dtype,
               None if weight is None else weight.dtype,
               None if upstream is None else upstream.dtype,
               None if avg_factor is None else avg_factor.dtype, out_dtype)
        entry = v.kernel.compiled.get(key)
    if entry is not None:  # the direct launch: pointers as ints
        d = v.dummy_ptr
        ptrs = (px, pt, pw or d, pu or d, loss.data_ptr() if v.write_loss else d,
                grad.data_ptr() if v.write_grad else d, loss.data_ptr() if v.reduce else d,
                ws.partial_ptr if ws else d, ws.counter_ptr if ws else d, v.flag_ptr, paf or d)
        with device_guard(device_index):
            v.kernel.run(entry, P, stream, v.args(ptrs, v.strides, R, C, num_blocks, gamma,
                                                  alpha, scale, has_af))
    else:  # Triton's JIT launch: compiles (and, when fast, caches the kernel under `key`)
        d = v.dummy
        ptrs = (pred2, target, d if weight is None else weight, upstream if backward_of_none
                else d, loss if v.write_loss else d, grad if v.write_grad else d,
                loss if v.reduce else d, ws.partial if ws else d, ws.counter if ws else d,
                v.flag, d if avg_factor is None else avg_factor)
        if fast:
            strides = v.strides
        else:
            strides = (pred2.stride(),
                       (target.stride(0), 0) if spec.index_target else target.stride(),
                       ((0, 0) if weight is None else (weight.stride(0), 0)
                        if spec.weight_mode == WEIGHT_ROW else weight.stride()),
                       upstream.stride() if backward_of_none else (0, 0))
            key = None
        with device_guard(device_index):
            v.kernel.launch(key, P, stream, v.args(ptrs, strides, R, C, num_blocks, gamma,
                                                   alpha, scale, has_af), v.options)
    if check and checks._MODE == 'sync':
        checks.wait_and_poll(device_index)
    return loss, grad


def forward_impl(pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
                 gamma: float, alpha: float, scale: float, flags: int, out_dtype: torch.dtype,
                 upstream: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
    """(loss, grad) for any pred shape: the reduced or elementwise loss (None when `upstream` is
    given: the backward of 'none'), and d loss / d pred (times `upstream`) or None."""
    spec = FocalSpec.unpack(flags)
    R = pred.shape[0]
    C = pred.numel() // R if R else pred.shape[1:].numel()
    pred2 = pred if pred.dim() == 2 else pred.reshape(R, C)
    tgt = target if spec.index_target or target.dim() == 2 else target.reshape(R, C)
    w = weight if spec.weight_mode != WEIGHT_ELEM or weight.dim() == 2 else weight.reshape(R, C)
    up = upstream if upstream is None or upstream.dim() == 2 else upstream.reshape(R, C)
    loss_shape = elementwise_loss_shape(spec, pred, avg_factor)
    if R * C == 0:  # empty input: no launch
        return empty_result(pred, spec.reduction, spec.write_grad, scale, out_dtype,
                            loss_shape, upstream)
    if use_triton(pred):
        device_index = pred.get_device()
        checks.poll(device_index)  # earlier calls' input checks, if their kernels reported
        loss, grad = _launch(pred2, tgt, w, avg_factor, up, gamma, alpha, scale, spec, flags,
                             out_dtype, loss_shape, device_index)
    else:
        loss, grad = torch_focal.forward(pred2, tgt, w, avg_factor, up, gamma, alpha, scale,
                                         spec, out_dtype, loss_shape)
    if grad is not None and pred.dim() != 2:
        grad = grad.view(pred.shape)
    return loss, grad


FORCE_OP = False  # tests: route eager calls through the registered op as well
# the torch.library op `mmdet_focal_triton::focal_loss` (+ its 'none' backward), its autograd,
# and the eager FocalLossFunction; calling it gives the loss, differentiable in `pred`
focal_loss = FusedLossOp(
    'focal_loss', 'Tensor pred, Tensor target, Tensor? weight, Tensor? avg_factor',
    'float gamma, float alpha, float scale', FocalSpec, lambda *a: forward_impl(*a),
    elementwise_loss_shape, lambda: FORCE_OP)
FocalLossFunction = focal_loss.Function
