"""Host time of one loss + backward: what a call costs the CPU that issues it.

Method. At the shapes a detector trains with, the GPU work of a loss is tens of microseconds, so
what a training step pays is the time the host spends issuing the call. We time the loop
``pred.grad = None; loss(pred, target, weight, avg_factor=af).backward()`` with no
synchronisation inside it: the GPU is synchronised before the timer starts, a block of `iters`
calls is timed on the host clock, and the host time per call is the block's time / iters, the
median over several blocks. Blocks must be short enough that the GPU's launch queue never fills
(then the host would wait for the GPU and we would time the GPU): `iters` is at most 50, and is
fitted per implementation and shape by doubling it from 5 while the host time per call stays
within 1.25x of that of 5-call blocks (a filling queue shows as a jump). After each block the GPU
is synchronised again: (host loop + that wait) / iters is the wall time per call of back-to-back
calls. The GPU (kernel) time per call comes from torch.profiler, in one session after all host
timing of the run (`profiling.ProfileWindows`), so that no profiler state touches the host
timing. Implementations and reference patterns (`references.py`) are measured in one run, on one
host, so their ratios carry over to other hosts where absolute numbers do not.
"""
from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

from .environment import synchronize

PROBE_ITERS = 5
TOLERANCE = 1.25
_clock = time.perf_counter  # (tests replace it)


@dataclass(frozen=True)
class HostTime:
    host_us: float  # host time per call, median over blocks (no synchronisation in a block)
    wall_us: float  # (host loop + final synchronisation) per call, median over blocks
    iters: int      # calls per block
    blocks: int     # blocks timed


def _block(step, sync, iters: int) -> tuple[float, float]:
    """(host, wall) µs per call of one block of `iters` calls."""
    sync()
    t0 = _clock()
    for _ in range(iters):
        step()
    t1 = _clock()
    sync()
    t2 = _clock()
    return (t1 - t0) / iters * 1e6, (t2 - t0) / iters * 1e6


def fit_iters(step, sync, max_iters: int = 50, probe: int = PROBE_ITERS,
              tolerance: float = TOLERANCE) -> int:
    """The largest block size up to `max_iters`, doubling from `probe`, whose host time per
    call stays within `tolerance` x that of `probe`-call blocks: beyond it, the launch queue
    filled and the host waited for the GPU."""
    if max_iters <= probe:
        return max_iters
    ref = min(_block(step, sync, probe)[0] for _ in range(2))
    n = probe
    while n < max_iters:
        m = min(2 * n, max_iters)
        if _block(step, sync, m)[0] > tolerance * ref:
            break
        n = m
    return n


def host_time(step, sync, iters: int = 50, min_blocks: int = 5, max_blocks: int = 20,
              budget_s: float = 0.3) -> HostTime:
    """Time blocks of `iters` calls of `step` (see the module docstring): at least `min_blocks`,
    then more until `budget_s` seconds have passed, at most `max_blocks`."""
    host, wall = [], []
    start = _clock()
    while len(host) < max_blocks and (len(host) < min_blocks or _clock() - start < budget_s):
        h, w = _block(step, sync, iters)
        host.append(h)
        wall.append(w)
    return HostTime(statistics.median(host), statistics.median(wall), iters, len(host))


def loss_backward_step(fn, inputs, avg_factor: str = 'float'):
    """One iteration of the measured loop on a family's ``make_inputs`` tuple. `avg_factor`:
    'float' (a Python number, as RetinaNet passes it) or 'tensor' (a 0-d device tensor, as
    DETR-family heads pass it)."""
    pred, target, weight, af = inputs
    af = float(af) if avg_factor == 'float' else af

    def step():
        pred.grad = None
        fn(pred, target, weight, avg_factor=af).backward()
    return step


def measure_host(fn, inputs, device: str, avg_factor: str = 'float', max_iters: int = 50,
                 min_blocks: int = 5, max_blocks: int = 20, budget_s: float = 0.3,
                 warmup: int = 3) -> dict:
    """Host and wall time per loss + backward of `fn` on `inputs`; a dict of CSV columns."""
    pred, target, weight, af = inputs
    out = fn(pred, target, weight, avg_factor=float(af) if avg_factor == 'float' else af)
    if not bool(out.isfinite().all()):  # compile / first call outside timing; checks it runs
        raise FloatingPointError(f'non-finite loss {out}')
    out.backward()
    del out
    step = loss_backward_step(fn, inputs, avg_factor)
    sync = lambda: synchronize(device)
    for _ in range(warmup):
        step()
    iters = fit_iters(step, sync, max_iters)
    gc.collect()
    t = host_time(step, sync, iters, min_blocks, max_blocks, budget_s)
    pred.grad = None
    return dict(host_us=t.host_us, wall_us=t.wall_us, iters=t.iters, blocks=t.blocks)


def paired_ratio(step_a, step_b, sync, iters: int, pairs: int = 15) -> float:
    """Host time of `step_a` over that of `step_b`, from `pairs` back-to-back pairs of blocks
    (the order alternating): the median of the per-pair ratios, in which the host's drift
    between blocks cancels. The implementations' separate medians are taken seconds apart on a
    host whose speed drifts by tens of percent (seen on the GPU machine)."""
    ratios = []
    for i in range(pairs):
        if i % 2:
            b = _block(step_b, sync, iters)[0]
            a = _block(step_a, sync, iters)[0]
        else:
            a = _block(step_a, sync, iters)[0]
            b = _block(step_b, sync, iters)[0]
        ratios.append(a / b)
    return statistics.median(ratios)
