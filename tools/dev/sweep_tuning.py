#!/usr/bin/env python
"""Sweep the launch configuration (ops/tuning.py: TUNING) of the fused kernels on the GPU.

For each shape / dtype, times loss + backward (the training case) and the forward without
gradient for every combination given, and prints a table sorted by time, with the fraction of
the measured copy bandwidth. Used to choose the defaults recorded in notes/perf.md.
  python tools/dev/sweep_tuning.py --shapes 2.4Mx80 300kx1203 --dtypes fp32 bf16 \\
      --tile 1024 2048 4096 --block-c 16 32 64 128 --warps 4 8 --programs-per-sm 4 8 \\
      --fast-math 0 1 --maxnreg 0 128
"""
import argparse
import itertools
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/ (benchmark helpers)
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # repo root

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


SWEPT = ('layout', 'flat_block', 'tile', 'block_c', 'num_warps', 'programs_per_sm', 'fast_math',
         'maxnreg')


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--shapes', nargs='+', default=['2.4Mx80', '300kx1203'])
    ap.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'], choices=list(DTYPES))
    ap.add_argument('--layout', nargs='+', default=['default'],
                    choices=['default', 'rows', 'flat'])
    ap.add_argument('--flat-block', nargs='+', type=int, default=[0],
                    help='elements per block of the flat layout; 0: the default')
    ap.add_argument('--tile', nargs='+', type=int, default=[0], help='0: the default per C')
    ap.add_argument('--block-c', nargs='+', type=int, default=[0], help='0: the default per C')
    ap.add_argument('--warps', nargs='+', type=int, default=[8])
    ap.add_argument('--programs-per-sm', nargs='+', type=int, default=[8],
                    help='0 = one program per row block (no persistent loop)')
    ap.add_argument('--fast-math', nargs='+', type=int, default=[1], choices=[0, 1],
                    help='MUFU lg2 / rcp (1) or the accurate expansions (0)')
    ap.add_argument('--maxnreg', nargs='+', type=int, default=[-1],
                    help='register cap per thread; 0: none, -1: the default rule')
    ap.add_argument('--top', type=int, default=8, help='rows of each table to print')
    ap.add_argument('--csv', help='append every measured row to this CSV file')
    args = ap.parse_args(argv)
    from triton.testing import do_bench

    import mmdet_focal_triton as mft
    from mmdet_focal_triton import TritonFocalLoss
    from mmdet_focal_triton.ops import tuning

    loss_fn = TritonFocalLoss()
    bw = copy_bandwidth('cuda')
    dev_name = torch.cuda.get_device_name()
    print(f'{dev_name}: copy {bw:.0f} GB/s')
    grid = [dict(zip(SWEPT, combo)) for combo in itertools.product(
        args.layout, args.flat_block, args.tile, args.block_c, args.warps, args.programs_per_sm,
        args.fast_math, args.maxnreg)]
    # the other layout's block parameters do not apply: drop those duplicates
    grid = [g for g in grid if not (g['layout'] == 'flat' and (g['tile'] or g['block_c']))
            and not (g['layout'] == 'rows' and g['flat_block'])]
    out_rows = []
    for shape in args.shapes:
        name, N, C = parse_shape(shape)
        for dt in args.dtypes:
            dtype = DTYPES[dt]
            pred, lab, w, af = make_inputs(N, C, dtype, 'cuda')
            rows = []
            for g in grid:
                tuning.set_tuning(layout=None if g['layout'] == 'default' else g['layout'],
                                  flat_block=g['flat_block'] or None,
                                  tile=g['tile'] or None, block_c=g['block_c'] or None,
                                  num_warps=g['num_warps'],
                                  programs_per_sm=g['programs_per_sm'] or 10 ** 9,
                                  fast_math=bool(g['fast_math']),
                                  maxnreg=None if g['maxnreg'] < 0 else g['maxnreg'])

                def fb():
                    loss_fn(pred, lab, w, avg_factor=af).backward()

                def fw():
                    with torch.no_grad():
                        loss_fn(pred, lab, w, avg_factor=af)
                try:
                    mft.set_input_checks(False)  # kernel time without reading the flag
                    k_fb = kernel_ms(fb, pred)
                    k_fw = kernel_ms(fw, pred)
                    t_off = do_bench(fb, warmup=25, rep=100, grad_to_none=[pred],
                                     return_mode='median')
                    mft.set_input_checks('async')
                    t_async = do_bench(fb, warmup=25, rep=100, grad_to_none=[pred],
                                       return_mode='median')
                    mft.check_pending_inputs()
                except Exception as e:  # noqa: BLE001
                    print(f'  {g}: {type(e).__name__} {str(e)[-300:]}')
                    continue
                finally:
                    mft.set_input_checks(True)
                cfg = tuning.launch_config(C, dtype)
                frac = fused_bytes(N, C, dtype, 'fwd_bwd') / (k_fb * 1e-3) / 1e9 / bw
                frac_fw = fused_bytes(N, C, dtype, 'fwd_nograd') / (k_fw * 1e-3) / 1e9 / bw
                shape_desc = (f"flat {cfg['flat_block']}" if cfg['layout'] == 'flat' else
                              f"rows {cfg['block_r']}x{cfg['block_c']}")
                desc = (f"{shape_desc} warps={cfg['num_warps']} "
                        f"ppsm={g['programs_per_sm']}{' fast' if cfg['fast_math'] else ''} "
                        f"maxnreg={cfg['options'].get('maxnreg', 0)}")
                rows.append((k_fb, k_fw, frac, frac_fw, desc, t_off, t_async))
                out_rows.append(dict(device=dev_name, shape=name, dtype=dt, config=desc,
                                     kernel_fwd_bwd_ms=k_fb, kernel_fwd_ms=k_fw,
                                     frac_copy_bw=frac, wall_nocheck_ms=t_off,
                                     wall_async_check_ms=t_async))
            tuning.reset_tuning()
            rows.sort()
            print(f'\n{name} {dt}: GPU kernel ms (fwd_bwd, fwd_nograd), fraction of copy bw, '
                  'config, wall ms of fwd_bwd (checks off, async)', flush=True)
            for r in rows[:args.top]:
                print(f'  {r[0]:.4f} {r[1]:.4f}  {r[2]:.3f} {r[3]:.3f}  {r[4]}  '
                      f'wall {r[5]:.4f} {r[6]:.4f}')
            pred = lab = w = af = None
            torch.cuda.empty_cache()
    if args.csv and out_rows:
        import csv
        new = not osp.exists(args.csv)
        with open(args.csv, 'a', newline='') as f:
            wr = csv.DictWriter(f, fieldnames=list(out_rows[0]))
            if new:
                wr.writeheader()
            wr.writerows(out_rows)
    return 0


if __name__ == '__main__':
    sys.exit(main())
