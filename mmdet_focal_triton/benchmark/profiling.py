"""GPU (kernel) time of callables from torch.profiler: per call, the sum of the device time of the
kernels, memsets and copies they launch, and how many they launch; optionally only the kernels
whose names contain given fragments (a loss's own kernels inside a training step).

Many measurements share one profiler session (`ProfileWindows`): each is bracketed on the GPU by
two marker kernels, and the session's device activities, in execution order, are split at the
markers. One session for a whole run keeps CUPTI's per-session costs out of the measurements
(each session re-initialises CUPTI; some CUPTI versions lose or misdate the first kernel records
of every session after the first, a loss that grows by one record per session: pytorch/pytorch
issue 192021); a burst of markers at the start of the session absorbs any such head loss. CUPTI
is torn down when the session ends (TEARDOWN_CUPTI=1, unless set), so that host timing after a
session pays no profiler cost (pytorch/pytorch issue 144455).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch

BEGIN, END = 'window_begin_kernel', 'window_end_kernel'
HEAD_MARKERS = 64


@dataclass(frozen=True)
class DeviceTime:
    ms: float        # device time per call
    launches: float  # device activities (kernels, memsets, copies) per call


NAN = DeviceTime(float('nan'), float('nan'))


def split_windows(activities) -> list[list]:
    """Device activities `(name, start_us, duration_us)` -> the lists between each BEGIN marker
    and the next END marker, in time order (activities outside windows are dropped)."""
    windows, current = [], None
    for name, _, dur in sorted(activities, key=lambda a: a[1]):
        if BEGIN in name:
            current = []
        elif END in name:
            if current is not None:
                windows.append(current)
            current = None
        elif current is not None:
            current.append((name, dur))
    return windows


def window_time(window, iters: int, names=None) -> DeviceTime:
    acts = [dur for name, dur in window if not names or any(n in name for n in names)]
    return DeviceTime(ms=sum(acts) / iters / 1e3, launches=len(acts) / iters)


_MARKERS = []


def _markers():
    """Two Triton kernels that store one value each: the window brackets."""
    if not _MARKERS:
        import triton
        import triton.language as tl

        @triton.jit
        def window_begin_kernel(Out):
            tl.store(Out, 1.0)

        @triton.jit
        def window_end_kernel(Out):
            tl.store(Out, 2.0)

        _MARKERS.extend([window_begin_kernel, window_end_kernel])
    return _MARKERS


class ProfileWindows:
    """One torch.profiler session (CUDA activity) holding many measurements:

        with ProfileWindows() as pw:
            pw.measure('a', fn_a, iters=10)
            pw.measure('b', fn_b, iters=10, names=('focal_loss_kernel',))
        pw.results['a']  # DeviceTime per call

    Without a GPU (or with `enabled=False`) nothing is run and every result is NaN. If the
    markers found do not match the measurements, every result is NaN and `error` says why."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.results: dict = {}
        self.error = ''
        self._keys = []
        self._prof = None

    def __enter__(self):
        if not (self.enabled and torch.cuda.is_available()):
            return self
        from torch.profiler import ProfilerActivity, profile

        os.environ.setdefault('TEARDOWN_CUPTI', '1')
        begin, end = _markers()
        self._buf = torch.zeros(1, device='cuda')
        begin[(1,)](self._buf)  # compiled outside the session
        end[(1,)](self._buf)
        torch.cuda.synchronize()
        self._prof = profile(activities=[ProfilerActivity.CUDA])
        self._prof.__enter__()
        for _ in range(HEAD_MARKERS):
            end[(1,)](self._buf)
        torch.cuda.synchronize()
        return self

    def measure(self, key, fn, iters: int = 10, names=None, between=None) -> None:
        """`iters` calls of `fn` (after one outside the window), `between()` after each."""
        if self._prof is None:
            self.results[key] = NAN
            return
        begin, end = _markers()
        fn()
        if between:
            between()
        torch.cuda.synchronize()
        begin[(1,)](self._buf)
        for _ in range(iters):
            fn()
            if between:
                between()
        end[(1,)](self._buf)
        torch.cuda.synchronize()
        self._keys.append((key, iters, names))

    def __exit__(self, *exc):
        if self._prof is None:
            return
        from torch.autograd import DeviceType

        torch.cuda.synchronize()
        self._prof.__exit__(*exc)
        if exc[0] is not None:
            return
        acts = [(e.name, e.time_range.start, e.time_range.elapsed_us())
                for e in self._prof.events() if e.device_type == DeviceType.CUDA]
        windows = split_windows(acts)
        if len(windows) < len(self._keys):
            self.error = (f'profiler: {len(windows)} marked windows for {len(self._keys)} '
                          'measurements; GPU times not reported')
            self.results.update({k: NAN for k, _, _ in self._keys})
            return
        windows = windows[len(windows) - len(self._keys):]
        for (key, iters, names), w in zip(self._keys, windows):
            self.results[key] = window_time(w, iters, names)


def device_time(fn, iters: int = 10, names=None, between=None) -> DeviceTime:
    """GPU time per call of `fn` in a session of its own (see `ProfileWindows`)."""
    with ProfileWindows() as pw:
        pw.measure(0, fn, iters, names, between)
    return pw.results.get(0, NAN)
