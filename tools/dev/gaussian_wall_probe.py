#!/usr/bin/env python
"""Why can GaussianFocalLoss's loss + backward take longer under tools/benchmark.py's wall mode
than its host mode says a call costs? On an H100 (2026-12-05), CenterNet batch 16 fp32: wall
mode 0.547 ms (forward alone 0.118 ms), host mode 226 µs of host time and 227 µs of wall time
per call, 112 µs of GPU time. The two modes differ in three ways, each varied here on one
problem, side by side for this checkout and (`--baseline DIR`, made by
`tools/dev/make_baseline.sh REV DIR`) an older version of the op:
  avg_factor   a 0-d device tensor (wall mode) or a Python float (host mode's default)
  wall fwd / fwd_bwd   wall mode itself (benchmark/wall.py: do_bench, L2 flushed before each
                       call, the gradient reset)
  host-mode host / wall  host mode itself (benchmark/host.py: calls back to back, no flush)
  synced               each call synchronised, no flush (median of 50)
  events / ahead       do_bench's own loop written out (L2 flushed, CUDA events around each
                       call, median of 100), without and with a 2 ms GPU sleep queued before
                       each call's start event: with the head start the host has enqueued the
                       whole call before the GPU reaches it, so `ahead` is the GPU's time alone,
                       and `events` - `ahead` is the host time the GPU waited for
then a torch.profiler table of 10 flushed calls (CPU and GPU time per op) per version.
  python tools/dev/gaussian_wall_probe.py --baseline .baseline [--batch 16]
"""
import argparse
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # repo root


def _versions(baseline):
    from mmdet_focal_triton import TritonGaussianFocalLoss

    mods = {'this': TritonGaussianFocalLoss(alpha=2.0, gamma=4.0)}
    if baseline:
        sys.path.insert(0, baseline)
        from mft_old import TritonGaussianFocalLoss as Old

        mods['baseline'] = Old(alpha=2.0, gamma=4.0)
    return mods


def _timings(mod, inputs, af_kind: str) -> dict:
    """ms per call: wall mode's fwd / fwd_bwd (`benchmark.wall.measure_wall`), host mode's host
    and wall time (`benchmark.host.measure_host`), and the median of 50 synchronised calls."""
    from mmdet_focal_triton.benchmark.host import loss_backward_step, measure_host
    from mmdet_focal_triton.benchmark.wall import measure_wall

    pred, target, weight, af = inputs
    wall_inputs = (pred, target, weight, af if af_kind == 'tensor' else float(af))
    wall = {r['mode']: r['ms'] for r in measure_wall(mod, wall_inputs, 'cuda')}
    host = measure_host(mod, inputs, 'cuda', avg_factor=af_kind)
    step = loss_backward_step(mod, inputs, af_kind)
    ts = []
    for _ in range(50):
        torch.cuda.synchronize()
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    ev = {f'events{suffix}': _event_ms(step, ahead) for suffix, ahead in (('', 0), (' ahead', 2))}
    pred.grad = None
    return {'wall fwd': wall['fwd'], 'wall fwd_bwd': wall['fwd_bwd'],
            'host-mode host': host['host_us'] / 1e3, 'host-mode wall': host['wall_us'] / 1e3,
            'synced': sorted(ts)[len(ts) // 2] * 1e3, **ev}


def _event_ms(step, ahead_ms: float, reps: int = 100) -> float:
    """Median ms between CUDA events around `step()`, L2 flushed before each call (as do_bench),
    after a GPU sleep of `ahead_ms` (0: none) queued before the start event."""
    from triton.runtime import driver

    cache = driver.active.get_empty_cache_for_benchmark()
    cycles = int(ahead_ms * 2e6)  # at most 2 GHz SM clock: at least ahead_ms
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
             for _ in range(reps)]
    torch.cuda.synchronize()
    for start, end in pairs:
        driver.active.clear_cache(cache)
        if cycles:
            torch.cuda._sleep(cycles)
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    ts = sorted(s.elapsed_time(e) for s, e in pairs)
    return ts[len(ts) // 2]


def _profile(mod, pred, target, af) -> str:
    from torch.profiler import ProfilerActivity, profile
    from triton.runtime import driver

    cache = driver.active.get_empty_cache_for_benchmark()  # do_bench's own L2 flush

    def step():
        pred.grad = None
        driver.active.clear_cache(cache)
        mod(pred, target, weight=None, avg_factor=af).backward()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages()
    return '\n'.join(table.table(sort_by=key, row_limit=12, max_name_column_width=48)
                     for key in ('self_cpu_time_total', 'self_device_time_total'))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n', 1)[1])
    ap.add_argument('--baseline', default=None, help='folder holding mft_old/ (renamed ops)')
    ap.add_argument('--batch', type=int, default=16, help="CenterNet's batch (80 x 128 x 128 "
                    'heatmaps each)')
    ap.add_argument('--no-profile', action='store_true')
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        ap.error('needs a CUDA device (triton.testing.do_bench, CUDA events)')
    from mmdet_focal_triton.benchmark.losses.gaussian_focal import HW, make_inputs

    inputs = make_inputs(args.batch * HW, 80, torch.float32, 'cuda')
    pred, target, _, af = inputs
    mods = _versions(args.baseline)
    print(f'{torch.cuda.get_device_name()}: CenterNet b{args.batch} fp32, ms per loss + backward')
    for name, mod in mods.items():
        for af_kind in ('tensor', 'float'):
            r = _timings(mod, inputs, af_kind)
            print(f'{name:8s} avg_factor {af_kind:6s} ' + '  '.join(
                f'{k} {v:.3f}' for k, v in r.items()), flush=True)
    if not args.no_profile:
        for name, mod in mods.items():
            print(f'== torch.profiler, {name}: 10 calls, L2 flushed before each, avg_factor '
                  'tensor')
            print(_profile(mod, pred, target, af), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
