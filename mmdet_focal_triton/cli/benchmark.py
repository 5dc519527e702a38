"""Benchmark the fused losses against their peers; append rows to a CSV and plot from it.

--loss focal (default, RetinaNet's levels), qfl (QualityFocalLoss: RTMDet-s / GFL levels), vfl
(VarifocalLoss: VFNet), gaussian (GaussianFocalLoss: CenterNet's heatmaps). Each family's module
under mmdet_focal_triton/benchmark/losses/ lists its implementations and shapes (--help lists
their names): ours (and ours-nocheck, the label check off), mmdet's loss (mmcv's CUDA op for
FocalLoss on CUDA, mmdet-py: its Python path), compile (torch.compile of that path), and
torchvision for the focal loss. A failing implementation is recorded with its error, not hidden.
Reference patterns (host mode's default set; any mode with --impls):
  floor         autograd.Function: one trivial Triton launch in the forward (which allocates a
                gradient-sized buffer and a 0-d output) and one in the backward (returns it)
  floor-nobwd   the same without the launch in the backward
  sigmoid-sum   x.sigmoid().sum()
  zero          the end-to-end benchmark's zero-cost stand-in, pred.reshape(-1)[:1].sum() * 0.0

Every implementation of a loss computes the same mean loss of (N, C) logits with the targets,
weights and avg_factor that the loss's heads pass (focal: class indices with background = C,
per-anchor weights, as a RetinaNet head does).

--mode wall (default): `fwd` (forward with autograd recording), `fwd_bwd` (forward + backward),
`bwd` (= fwd_bwd - fwd), `fwd_nograd` (inference). Medians of `triton.testing.do_bench` on CUDA
(torch.utils.benchmark on CPU); memory is the peak allocated during fwd_bwd above what was
allocated before it (the gradient included). GB/s counts the bytes a fused kernel must move over
the measured time; `frac_copy` divides it by the copy bandwidth measured at the start of the run.

--mode host: what one loss + backward costs the host that issues it. The loop
`x.grad = None; loss(x, labels, w, avg_factor=af).backward()` runs with no synchronisation
inside: the GPU is synchronised, a block of calls is timed on the host clock, the GPU is
synchronised again; host us = block time / calls, wall us = (block + final wait) / calls, each
the median over several blocks. A block has at most 50 calls, fewer where the launch queue would
fill (the block size is doubled from 5 while the host time per call stays within 1.25x of that
of 5-call blocks). GPU us = the device time of the kernels per call, from torch.profiler in one
session after all host timing. Every implementation and reference pattern is measured in the
same run, so the ratio ours / floor pattern holds on any host. af is a Python float (as
RetinaNet passes it) unless --avg-factor tensor.

Examples:
  python tools/benchmark.py                                   # wall mode, full set on the GPU
  python tools/benchmark.py --mode host                       # host mode, full set on the GPU
  python tools/benchmark.py --loss qfl --mode host            # the quality focal loss
  python tools/benchmark.py --shapes 2.4Mx80 --dtypes bf16 --impls ours compile
  python tools/benchmark.py --device cpu --quick              # a tiny CPU run (CI)
  python tools/benchmark.py --plot-only --csv work_dirs/benchmark/results.csv
"""
import argparse
import os
import os.path as osp
import signal
import sys
import time

from mmdet_focal_triton.benchmark import (
    DTYPES,
    FLOOR,
    BenchConfig,
    available_impls,
    copy_bandwidth,
    fused_bytes,
    get_family,
    host_table,
    make_inputs,
    parse_shape,
    plot_run,
    run_benchmark,
    wall_table,
)
from mmdet_focal_triton.benchmark.console import (
    RunProgress,
    make_console,
    quiet_warnings,
    report_warnings,
)
from mmdet_focal_triton.benchmark.losses import families
from mmdet_focal_triton.benchmark.report import failures

# the developer scripts under tools/dev import DTYPES, copy_bandwidth, ... from here
__all__ = ['DTYPES', 'copy_bandwidth', 'fused_bytes', 'make_inputs', 'parse_shape', 'main']


def parse_args(argv):
    impls = sorted({n for f in families() for n in available_impls(f)})
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n', 1)[1])
    ap.add_argument('--mode', default='wall', choices=['wall', 'host'])
    ap.add_argument('--loss', default='focal', choices=sorted(families()))
    ap.add_argument('--device', default='auto', choices=['auto', 'cuda', 'cpu'])
    ap.add_argument('--impls', nargs='+', default=None, choices=impls,
                    help='default: every implementation (host mode: and every reference '
                         'pattern); on CPU: ours, mmdet-py (+ the reference patterns)')
    ap.add_argument('--dtypes', nargs='+', default=None, choices=list(DTYPES),
                    help='default: fp32 fp16 bf16 (host mode: fp32 bf16; CPU: fp32)')
    ap.add_argument('--shapes', nargs='+', default=None,
                    help='e.g. 2.4Mx80 300kx1203 (default on CUDA, focal: RetinaNet levels at '
                         'batch 2 and 16 for 800x1344, 2.4Mx80, 300kx1203; qfl: RTMDet-s levels '
                         'at batch 32, GFL levels at batch 2; vfl: VFNet at batch 2 and 16; on '
                         'CPU: two small shapes)')
    ap.add_argument('--quick', action='store_true', help='tiny shapes, short timing (CI)')
    ap.add_argument('--avg-factor', default='float', choices=['float', 'tensor'],
                    help='host mode: avg_factor as a Python float or a 0-d device tensor')
    ap.add_argument('--host-iters', type=int, default=None,
                    help='host mode: most calls per timed block (default 50; --quick 3)')
    ap.add_argument('--host-blocks', type=int, default=None,
                    help='host mode: fewest timed blocks (default 5; --quick 3)')
    ap.add_argument('--host-budget', type=float, default=0.3,
                    help='host mode: seconds of timed blocks per measurement beyond the fewest')
    ap.add_argument('--out-dir', default='work_dirs/benchmark')
    ap.add_argument('--csv', default=None, help='CSV to append to (default OUT_DIR/results.csv)')
    ap.add_argument('--plot-only', action='store_true', help='only redraw the PNGs from the CSV')
    ap.add_argument('--verbose', action='store_true', help='show every warning as it comes')
    args = ap.parse_args(argv)
    if args.impls:
        bad = [i for i in args.impls if i not in available_impls(args.loss)]
        if bad:
            ap.error(f'--impls {bad} are not implementations of the {args.loss} loss')
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # a run stopped by `timeout` still prints what it measured


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.time()
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = args.csv or osp.join(args.out_dir, 'results.csv')
    console = make_console()
    fam = get_family(args.loss)
    order = list(available_impls(args.loss))
    if args.plot_only:
        console.print('\n'.join(plot_run(csv_path, args.out_dir, order=order)))
        return 0
    quick = args.quick
    cfg = BenchConfig(
        loss=args.loss, mode=args.mode, impls=args.impls, dtypes=args.dtypes,
        shapes=[parse_shape(s) for s in args.shapes] if args.shapes else None,
        device=args.device, quick=quick, avg_factor=args.avg_factor,
        host_iters=args.host_iters or (3 if quick else 50),
        host_blocks=args.host_blocks or (3 if quick else 5),
        host_budget_s=0.0 if quick else args.host_budget)
    with quiet_warnings(args.verbose) as caught:
        import mmdet_focal_triton  # noqa: F401  (registers the loss, patches mmengine)

        with RunProgress(console) as progress:
            rows = run_benchmark(cfg, csv_path, progress,
                                 log=lambda m: console.print(m, markup=False, highlight=False))
    impls = list(dict.fromkeys(r['impl'] for r in rows))
    dev = rows[0]['device'] if rows else ''
    if args.mode == 'host':
        console.print(host_table(rows, impls, fam.ours, FLOOR, dev))
    else:
        console.print(wall_table(rows, impls, dev))
    for line in failures(rows):
        console.print(f'  {line}', markup=False, highlight=False)
    report_warnings(caught, console)
    if not rows:  # interrupted before the first row: nothing to plot
        console.print(f'no rows measured; run time {time.time() - t0:.0f} s', markup=False)
        return 1
    pngs = plot_run(csv_path, args.out_dir, rows[0]['run_id'], order)
    console.print(f'CSV: {csv_path}\nplot: {", ".join(pngs)}\n'
                  f'run time {time.time() - t0:.0f} s', markup=False, highlight=False)
    return 0


if __name__ == '__main__':
    sys.exit(main())
