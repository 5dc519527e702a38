#!/usr/bin/env python
"""Sweep the launch configuration (ops.TUNING) of the fused kernels on the GPU.

For each shape / dtype, times loss + backward (the training case) and the forward without
gradient for every combination given, and prints a table sorted by time, with the fraction of
the measured copy bandwidth. Used to choose the defaults recorded in notes/perf.md.
  python tools/sweep_tuning.py --shapes 2.4Mx80 300kx1203 --dtypes fp32 bf16 \\
      --tile 1024 2048 4096 --warps 4 8 16 --programs-per-sm 2 4 8
"""
import argparse
import itertools
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from benchmark import DTYPES, copy_bandwidth, fused_bytes, make_inputs, parse_shape  # noqa: E402


def kernel_ms(fn, pred, iters=20):
    """GPU time per call of everything fn launches (sum of kernel durations, torch.profiler):
    excludes launch gaps and host overhead."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    pred.grad = None
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
            pred.grad = None
        torch.cuda.synchronize()
    total_us = sum(e.self_device_time_total for e in prof.key_averages())
    return total_us / iters / 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--shapes', nargs='+', default=['2.4Mx80', '300kx1203'])
    ap.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=list(DTYPES))
    ap.add_argument('--tile', nargs='+', type=int, default=[2048])
    ap.add_argument('--warps', nargs='+', type=int, default=[8])
    ap.add_argument('--programs-per-sm', nargs='+', type=int, default=[4],
                    help='0 = one program per row block (no persistent loop)')
    ap.add_argument('--top', type=int, default=8, help='rows of each table to print')
    args = ap.parse_args(argv)
    from triton.testing import do_bench

    import mmdet_focal_triton as mft
    from mmdet_focal_triton import TritonFocalLoss, ops

    loss_fn = TritonFocalLoss()
    bw = copy_bandwidth('cuda')
    print(f'{torch.cuda.get_device_name()}: copy {bw:.0f} GB/s')
    for shape in args.shapes:
        name, N, C = parse_shape(shape)
        for dt in args.dtypes:
            dtype = DTYPES[dt]
            pred, lab, w, af = make_inputs(N, C, dtype, 'cuda')
            rows = []
            defaults = dict(ops.TUNING)
            for tile, warps, ppsm in itertools.product(args.tile, args.warps,
                                                        args.programs_per_sm):
                ops.TUNING.update(tile=tile, num_warps=warps, programs_per_sm=ppsm or 10 ** 9)

                def fb():
                    loss_fn(pred, lab, w, avg_factor=af).backward()

                def fw():
                    with torch.no_grad():
                        loss_fn(pred, lab, w, avg_factor=af)
                try:
                    mft.set_input_checks(False)  # kernel time without the host sync
                    k_fb = kernel_ms(fb, pred)
                    k_fw = kernel_ms(fw, pred)
                    t_nc = do_bench(fb, warmup=25, rep=100, grad_to_none=[pred],
                                    return_mode='median')
                    mft.set_input_checks(True)
                    t_fb = do_bench(fb, warmup=25, rep=100, grad_to_none=[pred],
                                    return_mode='median')
                except Exception as e:  # noqa: BLE001
                    print(f'  {tile} {warps} {ppsm}: {type(e).__name__} {e}')
                    continue
                finally:
                    mft.set_input_checks(True)
                frac = fused_bytes(N, C, dtype, 'fwd_bwd') / (k_fb * 1e-3) / 1e9 / bw
                frac_fw = fused_bytes(N, C, dtype, 'fwd_nograd') / (k_fw * 1e-3) / 1e9 / bw
                rows.append((k_fb, k_fw, frac, frac_fw, tile, warps, ppsm, t_nc, t_fb))
            ops.TUNING.update(defaults)
            rows.sort()
            print(f'\n{name} {dt}: GPU kernel ms (fwd_bwd, fwd_nograd), fraction of copy bw, '
                  'config, wall ms of fwd_bwd (checks off, on)', flush=True)
            for r in rows[:args.top]:
                print(f'  {r[0]:.4f} {r[1]:.4f}  {r[2]:.3f} {r[3]:.3f}  tile={r[4]} '
                      f'warps={r[5]} ppsm={r[6]}  wall {r[7]:.4f} {r[8]:.4f}')
            pred = lab = w = af = None
            torch.cuda.empty_cache()
    return 0


if __name__ == '__main__':
    sys.exit(main())
