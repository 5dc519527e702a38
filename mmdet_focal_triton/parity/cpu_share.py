"""A CPU training that shares its cores: torch's threads follow the cores other processes leave.

PyTorch's CPU kernels run on an OpenMP pool whose threads busy-wait between parallel regions.
With another busy process on the same cores, each thread of the pool waits for one that is not
scheduled, and an iteration of the parity's RetinaNet took 3.5-6x longer on 2 cores beside a
2-thread PyTorch process (1.4-2.3 s instead of 0.36-0.44 s; 28x in a whole `make parity`).
One thread fewer (0.84-1.03 s), OpenMP's passive wait (0.82-0.88 s) or a short spin
(``GOMP_SPINCOUNT=1000``: 0.55-0.88 s) keep it within ~2x, but the last two cost 10-20 % when
the machine is free, and they must be set before torch starts. Measured 2026-12-04, docs/parity.md.

``CpuShare.update()`` reads how much CPU time the machine spent (``/proc/stat``) and how much
of it was this process's (``os.times``) since the last call, and sets ``torch.set_num_threads``
to the cores left: all of them (the pool's default) while the machine is free, fewer while
other processes use some. ``CpuShareHook`` calls it every few iterations of a training. On a
machine without ``/proc/stat`` it does nothing.
"""
from __future__ import annotations

import math
import os
import time

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

_STAT = '/proc/stat'


def read_cpu_times(path: str = _STAT) -> tuple[float, float, float] | None:
    """(wall s, CPU s spent by every process on every core, CPU s of this process), or None
    where ``path`` cannot be read."""
    try:
        with open(path) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != 'cpu':
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    own = os.times()
    return time.monotonic(), busy / os.sysconf('SC_CLK_TCK'), own.user + own.system


class CpuShare:
    """Chooses torch's thread count from the cores other processes used since the last call.

    Args:
        cores: the cores this process may use (default: its affinity mask's size).
        max_threads: the most threads to use (default: torch's thread count when built).
        reader: a ``read_cpu_times``-like callable (tests pass their own).
        set_threads: applies a thread count (default ``torch.set_num_threads``).
    """

    def __init__(self, cores: int | None = None, max_threads: int | None = None,
                 reader=None, set_threads=None):
        import torch

        self.cores = cores or len(os.sched_getaffinity(0))
        self.max_threads = max_threads or torch.get_num_threads()
        self.threads = self.max_threads
        self._read = reader or read_cpu_times
        self._set = set_threads or torch.set_num_threads
        self._last = self._read()
        self.changes = []  # (others' cores, new thread count)

    def update(self) -> int:
        """Measure, maybe change the thread count; returns the thread count in use."""
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None or now[0] - last[0] <= 0:
            return self.threads
        wall = now[0] - last[0]
        others = max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / wall
        want = max(1, min(self.max_threads, math.floor(self.cores - others + 0.5)))
        if want != self.threads:
            self._set(want)
            self.threads = want
            self.changes.append((round(others, 2), want))
        return self.threads

    def restore(self) -> None:
        """Back to ``max_threads`` (the next training starts as this one did)."""
        if self.threads != self.max_threads:
            self._set(self.max_threads)
            self.threads = self.max_threads


@HOOKS.register_module()
class CpuShareHook(Hook):
    """Every ``interval`` training iterations on CPU, ``CpuShare.update()`` (module docstring):
    torch's threads follow the cores other processes leave to this training."""

    priority = 'LOWEST'

    def __init__(self, interval: int = 5):
        self.interval = interval
        self.share = None

    def before_train(self, runner) -> None:
        self.share = CpuShare()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.share is not None and self.every_n_train_iters(runner, self.interval):
            before = self.share.threads
            threads = self.share.update()
            if threads != before:
                runner.logger.info(f'CpuShareHook: other processes use '
                                   f'{self.share.changes[-1][0]:.1f} of {self.share.cores} '
                                   f'cores: {threads} torch thread(s)')

    def after_train(self, runner) -> None:
        if self.share is not None:
            self.share.restore()
