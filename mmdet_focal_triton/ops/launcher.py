"""Launching Triton kernels for the cost of one driver call, and their per-stream workspace.

Triton's JIT launch (`kernel[grid](*args)`) binds and specialises every argument, builds and
hashes a cache key and looks the compiled kernel up on every call: 10-20 µs of host time per
launch for the ~40 arguments of the loss kernel, more than the kernel itself on a small FPN
level. `Kernel.launch` does that once per *specialisation key*, which the caller builds cheaply
from what it already knows (the call's flags, C, dtypes, the alignment of the user's tensors),
keeps the compiled kernel, and from then on hands the arguments straight to the compiled
kernel's launcher (what Triton's JIT itself calls last).

The caller guarantees that equal keys mean equal Triton specialisations: everything Triton
specialises on (an integer's value being 1 or a multiple of 16 and its width, a pointer's
16-byte alignment, dtypes, None) must be a function of the key; `int_class` gives an integer's
class in one expression. (Marking row counts `do_not_specialize` instead would save those
terms but costs the loss kernel 30 registers at C = 1203: knowing that R is a multiple of 16
lets the compiler share row masks.) Calls for which no such key is cheap (non-contiguous
tensors) pass `key=None` and take Triton's JIT path, which is always correct.

Under the Triton interpreter (TRITON_INTERPRET=1, CPU tensors: how CI runs the kernels) every
launch takes the JIT path.
"""
import contextlib

import torch

from .backend import INTERPRETER
from .checks import flag_arg
from .spec import NONE
from .tuning import ON_RETUNE, launch_config, num_programs

_KERNELS = []  # every Kernel, for clear_cache()
_CACHES = []  # per-variant launch data of the ops, for clear_cache()


def clear_on_retune(cache: dict) -> dict:
    """Register a cache of launch data that a change of launch configuration invalidates."""
    _CACHES.append(cache)
    return cache


def clear_cache() -> None:
    """Forget the compiled kernels and launch data (after a change of launch configuration)."""
    for k in _KERNELS:
        k.compiled.clear()
    for c in _CACHES:
        c.clear()


ON_RETUNE.append(clear_cache)


class Kernel:
    """A `triton.jit` function with a cache of its compiled specialisations, launched directly.

    `launch(key, grid, stream, args, options)`: `args` are all the kernel's parameters, in
    order, constexprs included (their values are ignored by the direct launch: they are compiled
    in); `options` the compile options (num_warps, maxnreg, ...); `stream` is the current
    stream's handle (`current_stream`). The caller has made the tensors' device the current CUDA
    device. `compiled.get(key)` tells the caller whether the direct launch will be taken; it can
    then pass pointers as ints (`data_ptr()`), which the launcher takes as they are, instead of
    tensors, whose pointer it asks the driver to validate one by one. (The first launch of a key
    must get tensors: Triton reads their dtypes and alignment to compile.)"""

    def __init__(self, fn):
        self.fn = fn
        self.compiled = {}  # key -> (launcher, function handle, packed metadata)
        self.direct = not INTERPRETER  # False: Triton's internals did not accept a direct launch
        self.direct_launches = 0  # counted, so that tests can tell which path ran
        _KERNELS.append(self)

    def launch(self, key, grid: int, stream: int, args: tuple, options: dict) -> None:
        entry = self.compiled.get(key) if key is not None else None
        if entry is not None:
            self.run(entry, grid, stream, args)
            return
        compiled = self.fn[(grid,)](*args, **options)
        if key is not None and self.direct:
            self._keep(key, compiled)

    def run(self, entry, grid: int, stream: int, args: tuple) -> None:
        """The direct launch of a compiled entry (from `compiled`)."""
        run, function, metadata = entry
        run(grid, 1, 1, stream, function, metadata, None, None, None, *args)
        self.direct_launches += 1

    def _keep(self, key, compiled) -> None:
        try:  # the attributes Triton's JITFunction.run launches with (triton 3.x)
            self.compiled[key] = (compiled.run, compiled.function, compiled.packed_metadata)
        except AttributeError:  # pragma: no cover - a Triton whose internals differ: JIT only
            self.direct = False


class lazy_kernel:  # noqa: N801 (used as a function: `_kernel = lazy_kernel(...)`, `_kernel()`)
    """The `Kernel` of `kernels/<module>.py`'s `name`, imported and wrapped on first call
    (importing triton's kernels costs time the CPU path does not need); `loaded` is it, or None
    while nothing has asked for it."""

    def __init__(self, module: str, name: str):
        self.module, self.name, self.loaded = module, name, None

    def __call__(self) -> Kernel:
        if self.loaded is None:
            import importlib

            package = __package__.rsplit('.', 1)[0]
            fn = getattr(importlib.import_module(f'{package}.kernels.{self.module}'), self.name)
            self.loaded = Kernel(fn)
        return self.loaded


def variant(cache: dict, key: tuple, cls, device):
    """The launch data of `key` in `cache`, made by ``cls(*key, device)`` on first use."""
    v = cache.get(key)
    if v is None:
        v = cache[key] = cls(*key, device)
    return v


class Workspace:
    """Per (device, stream): the fp32 partial sums of a persistent grid and the int32 arrival
    counter of the in-kernel reduction (zero between launches: the last program re-arms it).
    Kernels on one stream run in order, so they can share it; another stream gets its own."""

    __slots__ = ('partial', 'counter', 'capacity', 'partial_ptr', 'counter_ptr')

    def __init__(self, capacity: int, device) -> None:
        buf = torch.zeros(capacity + 4, dtype=torch.int32, device=device)
        self.counter = buf[:1]
        self.partial = buf[4:].view(torch.float32)  # 16-byte aligned
        self.capacity = capacity
        self.partial_ptr, self.counter_ptr = self.partial.data_ptr(), self.counter.data_ptr()


_WORKSPACES: dict = {}


def workspace(device_index: int, stream: int, programs: int, device) -> Workspace:
    ws = _WORKSPACES.get((device_index, stream))
    if ws is None or ws.capacity < programs:
        ws = _WORKSPACES[(device_index, stream)] = Workspace(max(programs, 2048), device)
    return ws


def int_class(v: int) -> int:
    """How Triton's JIT specialises an int argument: 1 (== 1: compiled in as a constant),
    16 (a multiple of 16), 0 (neither); +64 when it needs 64 bits."""
    return (1 if v == 1 else 16 if v % 16 == 0 else 0) + (64 if not -2 ** 31 <= v < 2 ** 31 else 0)


def misaligned(ptrs: tuple) -> int:
    """One bit per pointer (an int, 0 for none) that is not 16-byte aligned: part of a launch
    key, since Triton specialises each pointer argument on its alignment. 0 in the training case
    (one OR of all of them)."""
    acc = 0
    for p in ptrs:
        acc |= p
    if not acc & 15:
        return 0
    return sum(1 << i for i, p in enumerate(ptrs) if p & 15)


def exponent_mode(e: float, specials: tuple = (0.0, 2.0)) -> int:
    """A kernel's compile-time mode of an exponent: its value where the kernel has a special
    case for it (`specials`: 0 and 2, and 4 for the Gaussian focal loss), else 1 (any)."""
    return int(e) if e in specials else 1


def dtype_of(t):
    """A tensor argument's dtype in a launch key (None for none)."""
    return None if t is None else t.dtype


_DUMMIES: dict = {}


def dummy(device_index: int, device) -> torch.Tensor:
    """Per device, an aligned fp32 tensor for the pointer arguments a kernel variant ignores."""
    t = _DUMMIES.get(device_index)
    if t is None:
        t = _DUMMIES[device_index] = torch.zeros(4, dtype=torch.float32, device=device)
    return t


_NO_GUARD = contextlib.nullcontext()


def device_guard(device_index: int):
    """Make the CUDA device current for a launch: a no-op context when it already is (or for
    CPU tensors, device -1)."""
    if device_index < 0 or device_index == torch._C._cuda_getDevice():
        return _NO_GUARD
    return torch.cuda.device(device_index)


def current_stream(device_index: int) -> int:
    return torch._C._cuda_getCurrentRawStream(device_index) if device_index >= 0 else 0


class Variant:
    """The launch data of one variant of a fused loss's kernel: what depends only on what a call
    computes before it allocates anything (the loss's flags, C, the dtype, the device, whether
    the inputs have canonical strides). Each loss subclasses it with `args`, the kernel's
    parameters in order, and caches one per variant key, so that a call only adds its tensors
    and sizes.

    Every fused kernel takes its pointer arguments in one order: the inputs it reads (pred,
    targets, weights, the upstream gradient of 'none'), then LOSS, GRAD, OUT, PARTIAL, COUNTER,
    the check FLAG (for the losses that check their inputs), and AF (the avg_factor tensor).
    `launch` assembles them, as ints for the direct launch of a cached kernel and as tensors for
    Triton's JIT launch (which compiles, and caches the kernel under the call's key)."""

    def __init__(self, kernel: Kernel, cfg: dict, block: int, device_index: int, device,
                 spec, backward_of_none: bool, check: bool | None):
        self.kernel = kernel
        self.options = cfg['options']
        self.block = block  # rows (or elements) per block of the persistent grid
        self.max_programs = num_programs(device_index, 2 ** 62, cfg['programs_per_sm'])
        # what the launch writes: the forward of a reduced loss its sum and (when asked) the
        # gradient; of 'none' the loss; the backward of 'none' the gradient times upstream
        none = spec.reduction == NONE
        self.reduce = not none and not backward_of_none
        self.write_loss = none and not backward_of_none
        self.write_grad = spec.write_grad or backward_of_none
        self.device = device
        self.dummy = dummy(device_index, device)  # the pointer arguments a variant ignores
        self.dummy_ptr = self.dummy.data_ptr()
        # check None: the kernel has no FLAG argument
        self.flag = () if check is None else (flag_arg(device_index) if check else self.dummy,)
        self.flag_ptr = tuple(t.data_ptr() for t in self.flag)

    def args(self, ptrs: tuple, call: tuple) -> tuple:  # pragma: no cover - abstract
        """The kernel's parameters in order, from its pointer arguments `ptrs` (tensors or
        ints) and what the loss's `_launch` passed as `call`."""
        raise NotImplementedError

    def launch(self, key, num_blocks: int, device_index: int, inputs: tuple, ptrs: tuple,
               loss, grad, call: tuple) -> None:
        """Launch the kernel on a persistent grid over `num_blocks` blocks. `inputs`: the
        kernel's input pointer arguments and AF last, as tensors (None where unread); `ptrs`:
        the same as ints (the dummy's where unread); loss, grad: the outputs (or None); `key`:
        the compiled kernel's key (None: Triton's JIT path, e.g. for non-canonical strides)."""
        P = min(num_blocks, self.max_programs)
        stream = current_stream(device_index)
        ws = workspace(device_index, stream, P, self.device) if self.reduce else None
        entry = self.kernel.compiled.get(key) if key is not None else None
        if entry is not None:  # the direct launch: pointers as ints
            d = self.dummy_ptr
            lp = d if loss is None else loss.data_ptr()
            outs = (lp if self.write_loss else d, grad.data_ptr() if self.write_grad else d,
                    lp if self.reduce else d, ws.partial_ptr if ws else d,
                    ws.counter_ptr if ws else d, *self.flag_ptr)
            args = self.args(ptrs[:-1] + outs + ptrs[-1:], call)
            with device_guard(device_index):
                self.kernel.run(entry, P, stream, args)
            return
        d = self.dummy
        ins = tuple(d if t is None else t for t in inputs)
        outs = (loss if self.write_loss else d, grad if self.write_grad else d,
                loss if self.reduce else d, ws.partial if ws else d, ws.counter if ws else d,
                *self.flag)
        args = self.args(ins[:-1] + outs + ins[-1:], call)
        with device_guard(device_index):
            self.kernel.launch(key, P, stream, args, self.options)


class RowsVariant(Variant):
    """A `Variant` of a row-block kernel (quality focal, varifocal): its launch configuration
    for (C, dtype), and `tail`, the compile-time arguments that end its argument list: the
    loss's (`constexprs`), then the block shape (EVEN_C, BLOCK_R, BLOCK_C, BLOCK_P, FAST_MATH:
    kernels/common.py). A loss sets `KERNEL` (its `lazy_kernel`) and `SPEC`; its variant key
    is (device_index, flags, backward_of_none, check, C, dtype, canonical, *its constexprs).
    check None: the kernel has no FLAG argument."""

    KERNEL = None  # the loss's lazy_kernel
    SPEC = None  # the loss's spec class (spec.py)

    def __init__(self, device_index: int, flags: int, backward_of_none: bool,
                 check: bool | None, C: int, dtype, canonical: bool, *rest):
        *consts, device = rest  # `variant()` appends the device to the key
        spec = self.SPEC.unpack(flags)
        cfg = launch_config(C, dtype)
        super().__init__(self.KERNEL(), cfg, cfg['block_r'], device_index, device, spec,
                         backward_of_none, check=check)
        block_args = (C % cfg['block_c'] == 0, cfg['block_r'], cfg['block_c'], 1024,
                      bool(cfg['fast_math']) and device_index >= 0)
        self.sx = (C, 1)  # canonical strides of a contiguous (R, C) tensor
        self.tail = self.constexprs(spec, backward_of_none, check, *consts) + block_args

    def constexprs(self, spec, backward_of_none: bool, check, *consts) -> tuple:
        """The loss's own compile-time arguments, in its kernel's order."""
        raise NotImplementedError  # pragma: no cover - abstract
