"""Wall time of a callable (triton.testing.do_bench on CUDA, torch.utils.benchmark on CPU) and
the device's copy bandwidth (the denominator of 'fraction of copy bandwidth')."""
from __future__ import annotations

import torch


def bench_ms(fn, device, grad_to_none=None, quick=False):
    """Median ms per call of `fn` (each call synchronised; L2 flushed between calls on CUDA)."""
    if device == 'cuda':
        from triton.testing import do_bench

        return do_bench(fn, warmup=25 if not quick else 5, rep=100 if not quick else 20,
                        grad_to_none=grad_to_none, return_mode='median')
    from torch.utils.benchmark import Timer

    def run():
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        fn()
    fn()  # warm-up
    m = Timer(stmt='run()', globals={'run': run}).blocked_autorange(
        min_run_time=0.05 if quick else 0.5)
    return m.median * 1e3


def copy_bandwidth(device):
    """Device-to-device copy bandwidth (bytes read + written per second), GB/s; NaN on CPU."""
    if device != 'cuda':
        return float('nan')
    from triton.testing import do_bench

    n = 1 << 28  # 1 GiB of fp32
    x = torch.empty(n, device=device).normal_()
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode='median')
    x = y = None  # free the 2 GiB before the benchmark
    return 2 * 4 * n / (ms * 1e-3) / 1e9
