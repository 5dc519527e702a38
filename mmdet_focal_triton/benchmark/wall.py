"""Wall time and memory of forward / backward modes (the default benchmark).

Modes: `fwd` (forward with autograd recording, pred requires grad), `fwd_bwd` (forward +
backward), `bwd` (= fwd_bwd - fwd), `fwd_nograd` (inference). Times are medians of
`triton.testing.do_bench` on CUDA (torch.utils.benchmark on CPU); memory is the peak allocated
during fwd_bwd above what was allocated before it (the gradient included).
"""
from __future__ import annotations

import torch

from .timing import bench_ms

MODES = ('fwd', 'fwd_nograd', 'fwd_bwd', 'bwd')


def peak_mib(fn, device) -> float:
    """Peak memory allocated while `fn` runs, above what was allocated before it; NaN on CPU."""
    if device != 'cuda':
        return float('nan')
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def measure_wall(fn, inputs, device, quick=False) -> list[dict]:
    """One dict (mode, ms, peak_mib) per mode for `fn` on `inputs` (pred, target, weight,
    avg_factor as a tensor)."""
    pred, target, weight, af = inputs

    def fwd():
        return fn(pred, target, weight, avg_factor=af)

    def fwd_bwd():
        fn(pred, target, weight, avg_factor=af).backward()

    def fwd_nograd():
        with torch.no_grad():
            return fn(pred, target, weight, avg_factor=af)

    out = fwd()  # compile / first call outside timing; also checks it runs
    if not torch.isfinite(out).all():
        raise FloatingPointError(f'non-finite loss {out.item()}')
    out.backward()
    pred.grad = None
    del out
    res = {'fwd': bench_ms(fwd, device, quick=quick),
           'fwd_nograd': bench_ms(fwd_nograd, device, quick=quick),
           'fwd_bwd': bench_ms(fwd_bwd, device, grad_to_none=[pred], quick=quick)}
    res['bwd'] = max(res['fwd_bwd'] - res['fwd'], 0.0)
    pred.grad = None
    peak = peak_mib(fwd_bwd, device)
    pred.grad = None
    return [dict(mode=m, ms=ms, peak_mib=peak if m == 'fwd_bwd' else float('nan'))
            for m, ms in res.items()]
