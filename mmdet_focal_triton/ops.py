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
import collections
import contextlib
import json
import os
import threading

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
CHECK_MODES = ('async', 'sync', 'off')


def _parse_check_mode(mode) -> str:
    if mode is True or mode in ('1', 'on', 'true'):
        return 'async'
    if mode is False or mode in ('0', 'off', 'false'):
        return 'off'
    if mode in CHECK_MODES:
        return mode
    raise ValueError(f"input check mode must be True/'async', 'sync' or False/'off', got {mode!r}")


_CHECK_MODE = _parse_check_mode(os.environ.get('MMDET_FOCAL_TRITON_CHECK', 'async').lower())


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


def set_input_checks(mode=True) -> None:
    """How labels outside [0, C] (and, with activated=True, probabilities outside [0, 1]) are
    reported. The check itself is fused into the loss kernel: no extra pass over the data.

    - True / 'async' (default): no host synchronisation. The kernel's flag is copied to pinned
      host memory behind the kernel, and the ValueError is raised at the first point where it
      is known without waiting for the GPU: the backward of that loss, or the next call of the
      op (at the latest the next training iteration, since the training loop synchronises when
      it logs), or `check_pending_inputs()`. On CPU tensors it is raised by the call itself.
    - 'sync': raise in the call itself; costs one device-to-host synchronisation per call.
    - False / 'off': no check; labels outside [0, C] then count as background, and nothing reads
      out of bounds.
    Also settable with the environment variable MMDET_FOCAL_TRITON_CHECK=async|sync|off.
    While a CUDA graph is being captured the check is skipped (nothing may be read back then).
    """
    global _CHECK_MODE
    _CHECK_MODE = _parse_check_mode(mode)


def get_input_checks() -> str:
    """The input check mode: 'async', 'sync' or 'off'."""
    return _CHECK_MODE


def input_checks_enabled() -> bool:
    return _CHECK_MODE != 'off'


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


def _raise_bad(flags: int, C: int, deferred: bool = False) -> None:
    """flags: bit 0 = a label outside [0, C], bit 1 = a probability outside [0, 1]."""
    where = (' (found by the asynchronous input check, and raised at the first point after that '
             'call where its result was known without waiting for the GPU; '
             "set_input_checks('sync') raises in the call itself)") if deferred else ''
    if flags & 1:
        raise ValueError(f'target holds class indices outside [0, {C}] (num_classes = {C}; '
                         f'label {C} means background){where}')
    if flags & 2:
        raise ValueError(f'pred must hold probabilities in [0, 1] when activated=True{where}')


# Asynchronous input checks: (pinned host flag, event recorded after its copy, C) per call, oldest
# first. A check is resolved once its event has completed; at most _MAX_PENDING wait unresolved.
_PENDING: collections.deque = collections.deque()
_PENDING_LOCK = threading.Lock()
_MAX_PENDING = 64


class _FlagRing:
    """Pinned host slots and CUDA events for the asynchronous checks of one device, reused in
    turn: no allocation per call. A slot comes back after `size` calls; the queue holds at most
    _MAX_PENDING + 1 < size unresolved entries, so a slot is never reused while pending."""

    def __init__(self, dev: torch.device, size: int = 256):
        self.host = torch.zeros(size, dtype=torch.int32, pin_memory=True)
        self.events = [torch.cuda.Event() for _ in range(size)]
        self.next = 0

    def take(self):
        i = self.next
        self.next = (i + 1) % len(self.events)
        return self.host[i:i + 1], self.events[i]


_RINGS: dict = {}


def _flag_to_host(dev: torch.device, flags: Tensor):
    """Copy `flags` (on `dev`) into a pinned host slot behind the kernels and record an event
    after the copy; returns (host slot, event). On CPU the flag is ready: (flags, None)."""
    if dev.type != 'cuda':
        return flags, None
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    ring = _RINGS.get(idx)
    if ring is None:
        ring = _RINGS[idx] = _FlagRing(dev)
    host, ev = ring.take()
    host.copy_(flags, non_blocking=True)
    ev.record(torch.cuda.current_stream(dev))
    return host, ev


def _defer_check(flags: Tensor, C: int) -> None:
    """Queue the one-element int32 `flags` for `_resolve_checks`, without waiting for it."""
    host, ev = _flag_to_host(flags.device, flags)
    with _PENDING_LOCK:
        _PENDING.append((host, ev, C))
        overflow = len(_PENDING) > _MAX_PENDING
    if overflow:  # bound the queue: wait for the oldest
        _resolve_checks(wait=True, limit=1)
    _resolve_checks()


def _resolve_checks(wait: bool = False, limit: int | None = None) -> None:
    """Read every pending flag whose copy has completed (all of them if `wait`, or the oldest
    `limit`); raise the ValueError of the first bad one (and drop the rest)."""
    done = 0
    while _PENDING and (limit is None or done < limit):
        with _PENDING_LOCK:
            if not _PENDING:
                return
            host, ev, C = _PENDING[0]
            if ev is not None and not ev.query():
                if not wait:
                    return
                ev.synchronize()
            _PENDING.popleft()
        done += 1
        flags = int(host[0])
        if flags:
            with _PENDING_LOCK:
                _PENDING.clear()
            _raise_bad(flags, C, deferred=ev is not None)


def check_pending_inputs(wait: bool = True) -> None:
    """Resolve the asynchronous input checks of earlier calls now (waiting for the GPU if `wait`),
    raising the ValueError of the first one that found bad input."""
    _resolve_checks(wait=wait)


# ---------------------------------------------------------------------------------------------
# Triton launcher
# ---------------------------------------------------------------------------------------------
def _gamma_mode(gamma: float) -> int:
    if gamma == 0.0:
        return 0
    if gamma == 2.0:
        return 2
    return 1


# Launch configuration, per C (through the chunk width) and dtype; see notes/perf.md for how it
# was measured. TUNING overrides it: tools (tools/sweep_tuning.py) set an entry to something other
# than None to try other values.
TUNING = {
    'tile': None,  # BLOCK_R * BLOCK_C elements per chunk
    'block_c': None,  # column chunk width
    'num_warps': None,
    'programs_per_sm': None,  # persistent grid: this many programs per multiprocessor
    'fast_math': None,  # MUFU lg2 / rcp on the GPU (False: the accurate expansions)
    'interpreter_programs': 3,  # grid size under the Triton interpreter (CPU)
}
_DEFAULT_CONFIG = dict(num_warps=8, programs_per_sm=8, fast_math=True)
# Measured best (tools/sweep_tuning.py on an H200, notes/perf.md) per (C, element size); any
# other C takes the rule of `default_block_c` and _DEFAULT_CONFIG.
_MEASURED_CONFIG = {
    (80, 4): dict(block_c=32, tile=1024),
    (1203, 4): dict(tile=2048),
    (1203, 2): dict(block_c=128, tile=2048),
}
_SM_COUNT = {}


def _tuning_from_env() -> None:
    """MMDET_FOCAL_TRITON_TUNING='{"tile": 2048, ...}' overrides TUNING (for sweeps/tests)."""
    raw = os.environ.get('MMDET_FOCAL_TRITON_TUNING')
    if not raw:
        return
    values = json.loads(raw)
    unknown = set(values) - set(TUNING)
    if unknown:
        raise ValueError(f'MMDET_FOCAL_TRITON_TUNING: unknown keys {sorted(unknown)}; '
                         f'known: {sorted(TUNING)}')
    TUNING.update(values)


_tuning_from_env()


def default_block_c(C: int) -> int:
    """The column chunk that pads the fewest lanes, the widest among equals (80 -> 16, five
    chunks; 1203 -> 64, 19 chunks; C <= 16 -> one chunk of next_power_of_2(C))."""
    if C <= 16:
        return triton.next_power_of_2(max(C, 1))
    return min((16, 32, 64, 128), key=lambda w: (triton.cdiv(C, w) * w - C, -w))


def launch_config(C: int, dtype: torch.dtype) -> dict:
    """Block shape (BLOCK_R rows x BLOCK_C columns), warps, grid density and code variants for
    C classes of `dtype`: TUNING, else the measured table, else the defaults (a tile of 2048
    elements for 16-wide chunks and 1024 above)."""
    measured = _MEASURED_CONFIG.get((C, dtype.itemsize), {})
    block_c = TUNING['block_c'] or measured.get('block_c') or default_block_c(C)
    tile = TUNING['tile'] or measured.get('tile') or (2048 if block_c <= 16 else 1024)
    cfg = dict(_DEFAULT_CONFIG)
    cfg.update({k: v for k, v in measured.items() if k in cfg})
    cfg.update({k: v for k, v in TUNING.items() if v is not None and k in cfg})
    cfg.update(block_r=max(1, tile // block_c), block_c=block_c)
    return cfg


def _num_programs(dev: torch.device, num_row_blocks: int, programs_per_sm: int) -> int:
    if dev.type != 'cuda':
        return min(num_row_blocks, TUNING['interpreter_programs'])
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return min(num_row_blocks, _SM_COUNT[idx] * programs_per_sm)


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
    cfg = launch_config(C, pred2.dtype)
    block_r, block_c = cfg['block_r'], cfg['block_c']
    num_row_blocks = triton.cdiv(R, block_r)
    P = _num_programs(dev, num_row_blocks, cfg['programs_per_sm'])
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
            FAST_MATH=bool(cfg['fast_math']) and dev.type == 'cuda', num_warps=cfg['num_warps'])
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
    """grad *= s on a persistent grid (4 programs per SM): when s == 1, as for the gradient of a
    plain sum of losses, the launch costs a few microseconds whatever the size of grad."""
    n = grad.numel()
    if n == 0:
        return
    block = 4096
    programs = _num_programs(grad.device, triton.cdiv(n, block), 4)
    with torch.cuda.device(grad.device) if grad.is_cuda else contextlib.nullcontext():
        K.scale_kernel[(programs,)](grad, s, n, BLOCK=block, num_warps=8)


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
    if _PENDING:
        _resolve_checks()  # earlier calls' asynchronous checks that have completed by now
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
        mode = _CHECK_MODE if check else 'off'
        if mode != 'off' and pred.is_cuda and torch.cuda.is_current_stream_capturing():
            mode = 'off'  # nothing can be read back while a CUDA graph is captured
        loss, grad, bad = _launch(*args, mode != 'off', out_dtype, loss_shape)
        if mode == 'sync':
            _raise_bad(int(bad.item()), C)  # one host synchronisation
        elif mode == 'async':
            _defer_check(bad, C)
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
    return _none_backward_impl(upstream, pred, target, weight, gamma, alpha, grad_scale,
                               weight_mode, index_target, activated)


def _none_backward_impl(upstream, pred, target, weight, gamma, alpha, grad_scale, weight_mode,
                        index_target, activated):
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
    _scale_grad_impl(grad, scale)


def _scale_grad_impl(grad: Tensor, scale: Tensor) -> None:
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


def _backward(ctx, grad_loss, _unused, eager=False):
    """Shared by the custom op's autograd and the eager `FocalLossFunction`: `eager` calls the
    implementations directly instead of through the dispatcher (same kernels, less overhead)."""
    if _PENDING and not torch.compiler.is_compiling():
        _resolve_checks()
    if grad_loss is None:
        return (None,) * (1 + _NON_DIFF_ARGS)
    if ctx.reduction == NONE:
        pred, target, weight = ctx.saved_tensors
        if eager:
            grad = _none_backward_impl(grad_loss, pred, target, weight, *ctx.params)
        else:
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
        if eager:
            _scale_grad_impl(grad, grad_loss)
        else:
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


class FocalLossFunction(torch.autograd.Function):
    """The same forward, context and backward as the custom op, for eager mode.

    Dispatching a Python custom op costs tens of microseconds of host time per call (argument
    binding and schema handling in torch.library), as much as the kernels themselves on a
    small FPN level; `focal_loss` calls this instead when torch.compile is not tracing. Both
    run `_forward_impl` and `_backward`: the results are bitwise the same (tests check it)."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _forward_impl(*inputs[:4], None, *inputs[4:])
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, grad_loss, grad_unused):
        return _backward(ctx, grad_loss, grad_unused, eager=True)


def focal_loss(pred: Tensor, target: Tensor, weight: Tensor | None, avg_factor: Tensor | None,
               gamma: float, alpha: float, grad_scale: float, out_scale: float, reduction: int,
               weight_mode: int, index_target: bool, activated: bool, write_grad: bool,
               check: bool, out_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(loss, grad) as `torch.ops.mmdet_focal_triton.focal_loss`, differentiable in `pred`:
    the registered op under torch.compile (opaque, no graph break), `FocalLossFunction` in
    eager mode."""
    args = (pred, target, weight, avg_factor, gamma, alpha, grad_scale, out_scale, reduction,
            weight_mode, index_target, activated, write_grad, check, out_dtype)
    if torch.compiler.is_compiling() or _FORCE_OP:
        return torch.ops.mmdet_focal_triton.focal_loss(*args)
    return FocalLossFunction.apply(*args)


_FORCE_OP = False  # tests: route eager calls through the registered op as well
