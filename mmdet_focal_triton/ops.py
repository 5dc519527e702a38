"""The focal-loss operator: Triton launcher, PyTorch (CPU) path, torch.library op, autograd.

`torch.ops.mmdet_focal_triton.focal_loss` is a custom op (opaque to torch.compile, with a fake
implementation, so a compiled function that calls it has no graph break). Its forward returns the
loss and, when asked (`compute_grad`), the gradient with respect to `pred`, already multiplied by
weight, normalisation and loss weight. The autograd backward then only rescales that buffer in
place by the upstream gradient (`scale_grad_`, a no-op pass when the upstream gradient is 1), so
the peak memory of loss + backward is the gradient buffer itself. For reduction 'none' the forward
writes the elementwise loss and the backward recomputes the gradient in one fused pass.

Device dispatch: CUDA tensors run the Triton kernels of `kernels.py`; CPU tensors run a PyTorch
implementation of the same math (`_torch_focal`), or the Triton kernels through the Triton
interpreter when `TRITON_INTERPRET=1` and the backend is forced to 'triton' (see `set_backend`).
"""
import contextlib
import os

import torch
from torch import Tensor

try:  # triton is optional on CPU-only machines
    import triton

    from . import kernels as K

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    triton = None
    K = None
    HAS_TRITON = False

EPS = float(torch.finfo(torch.float32).eps)  # mmdet's avg_factor epsilon
REDUCTIONS = {'none': 0, 'mean': 1, 'sum': 2}
NONE, MEAN, SUM = 0, 1, 2
WEIGHT_NONE, WEIGHT_ROW, WEIGHT_ELEM = 0, 1, 2

# ---------------------------------------------------------------------------------------------
# backend selection and input checks
# ---------------------------------------------------------------------------------------------
_BACKEND = os.environ.get('MMDET_FOCAL_TRITON_BACKEND', 'auto')
_CHECK_INPUTS = os.environ.get('MMDET_FOCAL_TRITON_CHECK', '1') != '0'


def set_backend(name: str) -> None:
    """'auto' (Triton on CUDA, PyTorch on CPU), 'triton' (Triton everywhere: on CPU tensors this
    needs TRITON_INTERPRET=1 set before triton is imported) or 'torch' (PyTorch everywhere)."""
    global _BACKEND
    if name not in ('auto', 'triton', 'torch'):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {name!r}")
    _BACKEND = name


def get_backend() -> str:
    return _BACKEND


@contextlib.contextmanager
def backend(name: str):
    """Context manager form of `set_backend`."""
    old = _BACKEND
    set_backend(name)
    try:
        yield
    finally:
        set_backend(old)


def set_input_checks(enabled: bool) -> None:
    """Turn the validation of label range / probability range on or off (default on).

    The check is fused into the loss kernel (no extra pass over the data) but reading its result
    costs one device-to-host synchronisation per call. With checks off there is no host sync;
    labels outside [0, C] then count as background and nothing reads out of bounds.
    Also settable with the environment variable MMDET_FOCAL_TRITON_CHECK=0.
    """
    global _CHECK_INPUTS
    _CHECK_INPUTS = bool(enabled)


def input_checks_enabled() -> bool:
    return _CHECK_INPUTS


def _use_triton(t: Tensor) -> bool:
    if _BACKEND == 'torch':
        return False
    if t.is_cuda:
        if not HAS_TRITON:
            raise RuntimeError('mmdet_focal_triton needs the `triton` package for CUDA tensors')
        return True
    if _BACKEND == 'triton':
        if not HAS_TRITON or os.environ.get('TRITON_INTERPRET') != '1':
            raise RuntimeError("backend 'triton' on CPU tensors needs triton and "
                               'TRITON_INTERPRET=1')
        return True
    return False


def _raise_bad(flags: int, C: int) -> None:
    """flags: bit 0 = a label outside [0, C], bit 1 = a probability outside [0, 1]."""
    if flags & 1:
        raise ValueError(f'target holds class indices outside [0, {C}] (num_classes = {C}; '
                         f'label {C} means background)')
    if flags & 2:
        raise ValueError('pred must hold probabilities in [0, 1] when activated=True')


# ---------------------------------------------------------------------------------------------
# Triton launcher
# ---------------------------------------------------------------------------------------------
def _gamma_mode(gamma: float) -> int:
    if gamma == 0.0:
        return 0
    if gamma == 2.0:
        return 2
    return 1


# Launch configuration; see notes/perf.md for how these were measured. Tools may override
# entries (tools/sweep_tuning.py) to try others.
TUNING = {
    'tile': None,  # BLOCK_R * BLOCK_C elements per chunk; None: chosen per C by `block_shape`
    'num_warps': 8,
    'programs_per_sm': 8,  # persistent grid: this many programs per multiprocessor
    'block_c': None,  # column chunk width; None: chosen per C by `block_shape`
    'interpreter_programs': 3,  # grid size under the Triton interpreter (CPU)
}
_SM_COUNT = {}


def _max_programs(dev: torch.device) -> int:
    if dev.type != 'cuda':
        return TUNING['interpreter_programs']
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNT[idx] * TUNING['programs_per_sm']


def block_shape(C: int) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C) for C classes: the column chunk pads the fewest lanes, the widest
    among equals (80 -> 16, five chunks; 1203 -> 64, 19 chunks; C <= 16 -> one chunk).
    Rows fill a tile of 2048 elements for chunks of 16 and 1024 above (the measured best on
    an H200, notes/perf.md)."""
    if TUNING['block_c']:
        block_c = TUNING['block_c']
    elif C <= 16:
        block_c = triton.next_power_of_2(max(C, 1))
    else:
        block_c = min((16, 32, 64, 128), key=lambda w: (triton.cdiv(C, w) * w - C, -w))
    tile = TUNING['tile'] or (2048 if block_c <= 16 else 1024)
    return max(1, tile // block_c), block_c


def _as_2d(t: Tensor, R: int, C: int) -> Tensor:
    """View `t` (numel R*C) as (R, C) without a copy when its strides allow it."""
    if t.dim() == 2 and t.shape[0] == R and t.shape[1] == C:
        return t
    return t.reshape(R, C)


def _strides(t: Tensor | None, per_row: bool) -> tuple[int, int]:
    if t is None:
        return 0, 0
    return (t.stride(0), 0) if per_row else (t.stride(0), t.stride(1))


def _launch(pred2, target, weight, avg_factor, upstream, gamma, alpha, grad_scale, out_scale,
            reduction, weight_mode, index_target, activated, write_grad, check, out_dtype,
            loss_shape):
    """Run the fused kernels on (R, C)-shaped pred2. Returns (loss, grad, flags tensor)."""
    R, C = pred2.shape
    dev = pred2.device
    block_r, block_c = block_shape(C)
    num_row_blocks = triton.cdiv(R, block_r)
    P = min(num_row_blocks, _max_programs(dev))
    write_loss = reduction == NONE and upstream is None
    write_partial = reduction != NONE
    loss = torch.empty(loss_shape if write_loss else (0,), dtype=out_dtype, device=dev)
    grad = torch.empty((R, C) if write_grad else (0,), dtype=pred2.dtype, device=dev)
    partial = torch.empty(P if write_partial else 0, dtype=torch.float32, device=dev)
    bad = torch.empty(P if check else 0, dtype=torch.int32, device=dev)
    dummy = pred2  # never dereferenced where its flag is off
    has_af = isinstance(avg_factor, Tensor)
    with torch.cuda.device(dev) if dev.type == 'cuda' else contextlib.nullcontext():
        K.focal_loss_kernel[(P,)](
            pred2, pred2.stride(0), pred2.stride(1),
            target, *_strides(target, index_target),
            weight if weight is not None else dummy, *_strides(weight, weight_mode == WEIGHT_ROW),
            upstream if upstream is not None else dummy, *_strides(upstream, False),
            loss if write_loss else dummy, grad if write_grad else dummy,
            partial if write_partial else dummy, bad if check else dummy,
            avg_factor if has_af else dummy,
            R, C, num_row_blocks, float(gamma), float(alpha), float(grad_scale), EPS,
            INDEX_TARGET=index_target, ACTIVATED=activated, WEIGHT_MODE=weight_mode,
            GAMMA_MODE=_gamma_mode(gamma), HAS_AF=has_af, UPSTREAM=upstream is not None,
            WRITE_LOSS=write_loss, WRITE_PARTIAL=write_partial, WRITE_GRAD=write_grad,
            CHECK=check, EVEN_C=C % block_c == 0, BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=TUNING['num_warps'])
        bad_total = None
        fblock = min(max(triton.next_power_of_2(P), 16), 4096)
        if write_partial:
            out = torch.empty(loss_shape, dtype=out_dtype, device=dev)
            bad_total = torch.empty(1 if check else 0, dtype=torch.int32, device=dev)
            K.finalize_kernel[(1,)](
                partial, bad if check else partial, P, out,
                bad_total if check else partial, avg_factor if has_af else partial,
                float(out_scale), EPS, HAS_AF=has_af, CHECK=check, BLOCK=fblock, num_warps=4)
            loss = out
        elif check:
            bad_total = torch.empty(1, dtype=torch.int32, device=dev)
            K.check_kernel[(1,)](bad, P, bad_total, BLOCK=fblock, num_warps=4)
    return loss, grad, bad_total


def _scale_grad_triton(grad: Tensor, s: Tensor) -> None:
    n = grad.numel()
    if n == 0:
        return
    block = 4096
    with torch.cuda.device(grad.device) if grad.is_cuda else contextlib.nullcontext():
        K.scale_kernel[(triton.cdiv(n, block),)](grad, s, n, BLOCK=block, num_warps=8)


# ---------------------------------------------------------------------------------------------
# PyTorch implementation of the same math (CPU path; float64 when pred is float64)
# ---------------------------------------------------------------------------------------------
def _pow(base: Tensor, gamma: float) -> Tensor:
    if gamma == 0.0:
        return torch.ones_like(base)
    if gamma == 2.0:
        return base * base
    return base.pow(gamma)


def _hard_math(x: Tensor, positive: bool, gamma: float, alpha: float):
    """Loss and dloss/dx where every element of x has the same 0/1 target."""
    z = -x if positive else x
    bce = torch.nn.functional.softplus(z)
    pt = torch.sigmoid(z)
    mod = _pow(pt, gamma)
    aw = alpha if positive else 1.0 - alpha
    loss = aw * bce * mod
    dz = aw * mod * (pt + gamma * bce * torch.sigmoid(-z))
    return loss, (-dz if positive else dz)


def _soft_math(x: Tensor, y: Tensor, gamma: float, alpha: float):
    bce = torch.clamp_min(x, 0) - x * y + torch.log1p(torch.exp(-x.abs()))
    p = torch.sigmoid(x)
    q = torch.sigmoid(-x)
    pt = q * y + p * (1 - y)
    mod = _pow(pt, gamma)
    aw = alpha * y + (1 - alpha) * (1 - y)
    loss = aw * bce * mod
    safe = torch.where(pt > 0, pt, torch.ones_like(pt))
    ratio = torch.where(pt > 0, p * q / safe, torch.zeros_like(pt))
    dx = aw * ((p - y) * mod + bce * gamma * mod * (1 - 2 * y) * ratio)
    return loss, dx


def _prob_math(p: Tensor, y: Tensor, gamma: float, alpha: float):
    bce = -(y * torch.log(p).clamp_min(-100) + (1 - y) * torch.log1p(-p).clamp_min(-100))
    pt = (1 - p) * y + p * (1 - y)
    mod = _pow(pt, gamma)
    aw = alpha * y + (1 - alpha) * (1 - y)
    loss = aw * bce * mod
    dbce = (p - y) / torch.clamp_min(p * (1 - p), 1e-12)
    if gamma == 0.0:
        dmod = torch.zeros_like(p)
    elif gamma == 1.0:
        dmod = 1 - 2 * y
    else:
        dmod = gamma * pt.pow(gamma - 1) * (1 - 2 * y)
    return loss, aw * (dbce * mod + bce * dmod)


def _torch_focal(pred2, target, gamma, alpha, index_target, activated):
    """Elementwise (loss, dloss/dx) in the compute dtype, without building a one-hot matrix."""
    cdt = torch.float64 if pred2.dtype == torch.float64 else torch.float32
    x = pred2.to(cdt)
    R, C = x.shape
    if not index_target:
        y = target.to(cdt)
        return (_prob_math if activated else _soft_math)(x, y, gamma, alpha)
    if activated:
        # probability inputs: evaluate the negative everywhere, then the positive entries
        zeros = torch.zeros((), dtype=cdt, device=x.device)
        loss, dx = _prob_math(x, zeros, gamma, alpha)
    else:
        loss, dx = _hard_math(x, False, gamma, alpha)
    rows = torch.nonzero((target >= 0) & (target < C)).squeeze(1)
    cols = target[rows].long()
    if rows.numel():
        xp = x[rows, cols]
        if activated:
            lp, dp = _prob_math(xp, torch.ones((), dtype=cdt, device=x.device), gamma, alpha)
        else:
            lp, dp = _hard_math(xp, True, gamma, alpha)
        loss[rows, cols] = lp
        dx[rows, cols] = dp
    return loss, dx


def _torch_forward(pred2, target, weight, avg_factor, upstream, gamma, alpha, grad_scale,
                   out_scale, reduction, weight_mode, index_target, activated, write_grad,
                   check, out_dtype, loss_shape):
    R, C = pred2.shape
    if check:
        flags = 0
        if index_target and bool(((target < 0) | (target > C)).any()):
            flags |= 1
        if activated and bool(((pred2 < 0) | (pred2 > 1)).any()):
            flags |= 2
        _raise_bad(flags, C)
    loss, dx = _torch_focal(pred2, target, gamma, alpha, index_target, activated)
    if weight_mode == WEIGHT_ROW:
        w = weight.to(loss.dtype)[:, None]
    elif weight_mode == WEIGHT_ELEM:
        w = weight.to(loss.dtype)
    else:
        w = None
    if w is not None:
        loss = loss * w
        dx = dx * w
    grad = torch.empty((0,), dtype=pred2.dtype, device=pred2.device)
    if upstream is not None:  # backward of 'none'
        grad = (dx * grad_scale * upstream.to(dx.dtype)).to(pred2.dtype)
        return torch.empty((0,), dtype=out_dtype, device=pred2.device), grad
    if reduction == NONE:
        out = (loss * grad_scale).reshape(loss_shape).to(out_dtype)
    else:
        total = loss.sum() * out_scale
        if isinstance(avg_factor, Tensor):
            total = total / (avg_factor.to(total.dtype) + EPS)
        out = total.reshape(loss_shape).to(out_dtype)
    if write_grad:
        g = dx * grad_scale
        if isinstance(avg_factor, Tensor):
            g = g / (avg_factor.to(g.dtype).reshape(()) + EPS)
        grad = g.to(pred2.dtype)
    return out, grad


# ---------------------------------------------------------------------------------------------
# torch.library registration
# ---------------------------------------------------------------------------------------------
def _forward_impl(pred, target, weight, avg_factor, upstream, gamma, alpha, grad_scale,
                  out_scale, reduction, weight_mode, index_target, activated, write_grad,
                  check, out_dtype):
    R, C = pred.shape[0], pred.shape[1:].numel()
    pred2 = _as_2d(pred, R, C)
    tgt = target if index_target else _as_2d(target, R, C)
    w = weight
    if weight_mode == WEIGHT_ELEM:
        w = _as_2d(weight, R, C)
    up = _as_2d(upstream, R, C) if upstream is not None else None
    if reduction == NONE:
        loss_shape = tuple(pred.shape)
    else:
        loss_shape = tuple(avg_factor.shape) if isinstance(avg_factor, Tensor) else ()
    if R * C == 0:  # empty input: no launch
        empty_grad = torch.zeros(pred.shape if (write_grad or upstream is not None) else (0,),
                                 dtype=pred.dtype, device=pred.device)
        if upstream is not None:
            return torch.empty((0,), dtype=out_dtype, device=pred.device), empty_grad
        if reduction == NONE:
            loss = torch.empty(loss_shape, dtype=out_dtype, device=pred.device)
        elif out_scale != out_scale:  # 'mean' of nothing: NaN, as torch.mean (and mmdet)
            loss = torch.full(loss_shape, float('nan'), dtype=out_dtype, device=pred.device)
        else:
            loss = torch.zeros(loss_shape, dtype=out_dtype, device=pred.device)
        return loss, empty_grad
    args = (pred2, tgt, w, avg_factor, up, gamma, alpha, grad_scale, out_scale, reduction,
            weight_mode, index_target, activated, write_grad or upstream is not None)
    if _use_triton(pred):
        loss, grad, bad = _launch(*args, check, out_dtype, loss_shape)
        if check and bad is not None and bad.numel():
            _raise_bad(int(bad.item()), C)  # the one host sync
    else:
        loss, grad = _torch_forward(*args, check, out_dtype, loss_shape)
    if grad.numel():
        grad = grad.view(pred.shape)
    return loss, grad


@torch.library.custom_op('mmdet_focal_triton::focal_loss', mutates_args=())
def focal_loss_op(pred: Tensor, target: Tensor, weight: Tensor | None,
                  avg_factor: Tensor | None, gamma: float, alpha: float, grad_scale: float,
                  out_scale: float, reduction: int, weight_mode: int, index_target: bool,
                  activated: bool, write_grad: bool, check: bool,
                  out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Forward: (loss, grad) where grad is d(loss)/d(pred) if write_grad, else an empty tensor."""
    return _forward_impl(pred, target, weight, avg_factor, None, gamma, alpha, grad_scale,
                         out_scale, reduction, weight_mode, index_target, activated, write_grad,
                         check, out_dtype)


@focal_loss_op.register_fake
def _(pred, target, weight, avg_factor, gamma, alpha, grad_scale, out_scale, reduction,
      weight_mode, index_target, activated, write_grad, check, out_dtype):
    if reduction == NONE:
        shape = pred.shape
    else:
        shape = avg_factor.shape if avg_factor is not None else ()
    loss = pred.new_empty(shape, dtype=out_dtype)
    grad = pred.new_empty(pred.shape if write_grad else (0,))
    return loss, grad


@torch.library.custom_op('mmdet_focal_triton::focal_loss_none_backward', mutates_args=())
def focal_loss_none_backward_op(upstream: Tensor, pred: Tensor, target: Tensor,
                                weight: Tensor | None, gamma: float, alpha: float,
                                grad_scale: float, weight_mode: int, index_target: bool,
                                activated: bool) -> Tensor:
    """Backward of reduction='none': upstream * d(loss)/d(pred), recomputed in one pass."""
    return _forward_impl(pred, target, weight, None, upstream, gamma, alpha, grad_scale, 1.0,
                         NONE, weight_mode, index_target, activated, True, False,
                         upstream.dtype)[1]


@focal_loss_none_backward_op.register_fake
def _(upstream, pred, target, weight, gamma, alpha, grad_scale, weight_mode, index_target,
      activated):
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


@torch.library.custom_op('mmdet_focal_triton::scale_grad_', mutates_args=('grad',))
def scale_grad_(grad: Tensor, scale: Tensor) -> None:
    """grad *= scale (one element), in place; costs no pass over grad when scale == 1."""
    if _use_triton(grad):
        _scale_grad_triton(grad, scale)
    else:
        grad.mul_(scale.reshape(()).to(grad.dtype))


@scale_grad_.register_fake
def _(grad, scale):
    return None


_NON_DIFF_ARGS = 14  # focal_loss_op's inputs after pred


def _setup_context(ctx, inputs, output):
    (pred, target, weight, avg_factor, gamma, alpha, grad_scale, out_scale, reduction,
     weight_mode, index_target, activated, write_grad, check, out_dtype) = inputs
    ctx.reduction = reduction
    ctx.mark_non_differentiable(output[1])
    if reduction == NONE:
        ctx.save_for_backward(pred, target, weight)
        ctx.params = (gamma, alpha, grad_scale, weight_mode, index_target, activated)
    else:
        ctx.write_grad = write_grad
        ctx.save_for_backward(output[1])
        # Also kept (as another tensor object on the same memory) for a second backward
        # (retain_graph=True): the first one rescales the saved buffer in place, after which
        # unpacking it trips the version check. A separate object keeps the returned gradient's
        # reference count at one, so autograd adopts it as .grad instead of copying it.
        ctx.grad_buf = output[1].detach()
        ctx.first_scale = None
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_loss, _unused):
    if grad_loss is None:
        return (None,) * (1 + _NON_DIFF_ARGS)
    if ctx.reduction == NONE:
        pred, target, weight = ctx.saved_tensors
        grad = torch.ops.mmdet_focal_triton.focal_loss_none_backward(
            grad_loss, pred, target, weight, *ctx.params)
        return (grad,) + (None,) * _NON_DIFF_ARGS
    if not ctx.write_grad:
        raise RuntimeError('the focal loss forward ran without computing its gradient (pred did '
                           'not require grad, or grad mode was off)')
    if ctx.first_scale is None:
        # the usual case: the buffer already holds d loss / d pred; rescale it in place
        (grad,) = ctx.saved_tensors
        ctx.first_scale = grad_loss
        if type(grad) is not Tensor or torch.compiler.is_compiling():
            # traced by torch.compile / AOTAutograd: a functional multiply, which the compiler
            # fuses (it cannot trace an in-place update of a tensor saved by the forward)
            return ((grad * grad_loss.reshape(())).to(grad.dtype),) + (None,) * _NON_DIFF_ARGS
        torch.ops.mmdet_focal_triton.scale_grad_(grad, grad_loss)
        return (grad,) + (None,) * _NON_DIFF_ARGS
    # a second backward through the same graph (retain_graph=True): the buffer was scaled by
    # the first upstream gradient; exact when that was 1 (or a power of two)
    grad = ctx.grad_buf
    cdt = torch.promote_types(grad.dtype, torch.float32)
    ratio = (grad_loss.to(cdt) / ctx.first_scale.to(cdt)).reshape(())
    return ((grad.to(cdt) * ratio).to(grad.dtype),) + (None,) * _NON_DIFF_ARGS


torch.library.register_autograd('mmdet_focal_triton::focal_loss', _backward,
                                setup_context=_setup_context)
