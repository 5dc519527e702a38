"""End-to-end cost of the classification loss in a detector's training step.

Times full training steps (`model.train_step`: data preprocessing, forward, loss, backward,
optimizer update, as mmengine's Runner runs them) of a detector (--model):
  retinanet     RetinaNet R50-FPN at 800x1344 (FocalLoss; default batches 2 and 8)
  rtmdet-tiny   RTMDet-tiny at 640x640 (QualityFocalLoss; mmdet's config
                rtmdet/rtmdet_tiny_8xb32-300e_coco.py, BN instead of SyncBN; default batch 32)
no pretrained weights, with `loss_cls` variants built from the same initial weights:
  mmdet         mmdet's loss of the config (FocalLoss: mmcv's CUDA op on GPU; QualityFocalLoss:
                Python)
  ours          our class of that loss (TritonFocalLoss, TritonQualityFocalLoss)
  ours-nocheck  the same with the label-range check off (the default check is asynchronous: no
                host sync; this variant shows what it costs)
  zero          a stand-in that costs nothing but the gradient of the logits (zeros), so that
                step(mmdet) - step(zero) is the loss's share of the step
for batch sizes and precisions given on the command line (fp32, AMP fp16, AMP bf16).
Median over `--steps` steps per variant after `--warmup`, the variants timed in `--rounds`
interleaved rounds in a rotated order (so that drift of clocks, temperature and the shared host
hits all of them alike); step - zero with its 95 % interval over the paired rounds ('not
resolved' where it holds 0), the GPU time of each loss's own kernels per step from
torch.profiler; appends to OUT_DIR/e2e.csv.

  python tools/benchmark_e2e.py --batch 2 8 --precision fp32 fp16 bf16
  python tools/benchmark_e2e.py --model rtmdet-tiny --batch 32 --precision fp32 bf16
  python tools/benchmark_e2e.py --device cpu --img 64 96 --batch 1 --precision fp32 \\
      --warmup 1 --steps 2 --rounds 2          # a tiny CPU run (CI)
"""
import argparse
import os
import os.path as osp
import signal
import sys
import time

from mmdet_focal_triton.benchmark import (
    E2E_FIELDS,
    E2E_VARIANTS,
    E2EConfig,
    append_csv,
    e2e_table,
    run_e2e,
)
from mmdet_focal_triton.benchmark.console import (
    RunProgress,
    make_console,
    quiet_logs,
    quiet_warnings,
    report_warnings,
)
from mmdet_focal_triton.benchmark.e2e import MODELS, summarize
from mmdet_focal_triton.benchmark.report import failures


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # a run stopped by `timeout` still prints what it measured


def main(argv=None):
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.time()
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n', 1)[1])
    ap.add_argument('--model', default='retinanet', choices=list(MODELS))
    ap.add_argument('--batch', nargs='+', type=int, default=None,
                    help="default: the model's (retinanet: 2 8; rtmdet-tiny: 32)")
    ap.add_argument('--precision', nargs='+', default=['fp32', 'fp16', 'bf16'],
                    choices=['fp32', 'fp16', 'bf16'])
    ap.add_argument('--variants', nargs='+', default=list(E2E_VARIANTS),
                    choices=list(E2E_VARIANTS))
    ap.add_argument('--img', nargs=2, type=int, default=None, metavar=('H', 'W'),
                    help="default: the model's (retinanet: 800 1344; rtmdet-tiny: 640 640)")
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--steps', type=int, default=60, help='timed steps per variant')
    ap.add_argument('--rounds', type=int, default=20,
                    help='the timed steps are split into this many interleaved rounds (the '
                         "variants' order rotated each round); step - zero gets its 95 %% "
                         'interval from the paired round medians')
    ap.add_argument('--profile-steps', type=int, default=5,
                    help="steps profiled to measure the loss kernels' own GPU time (0: off)")
    ap.add_argument('--device', default='cuda', choices=['cuda', 'cpu'],
                    help='cpu: only to check the tool (tiny --img); fp32 only')
    ap.add_argument('--out-dir', default='work_dirs/benchmark')
    ap.add_argument('--verbose', action='store_true', help='show every warning as it comes')
    args = ap.parse_args(argv)
    import torch

    if args.device == 'cuda' and not torch.cuda.is_available():
        print('benchmark_e2e needs a CUDA GPU (or --device cpu to check the tool)')
        return 1
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = osp.join(args.out_dir, 'e2e.csv')
    cfg = E2EConfig(model=args.model, batches=tuple(args.batch or ()) or None,
                    precisions=tuple(args.precision), variants=tuple(args.variants),
                    img=tuple(args.img) if args.img else None, warmup=args.warmup,
                    steps=args.steps, rounds=args.rounds, profile_steps=args.profile_steps,
                    device=args.device).resolved()
    spec = MODELS[cfg.model]
    console = make_console()
    with quiet_warnings(args.verbose) as caught, quiet_logs(args.verbose), \
            RunProgress(console) as progress:
        rows = run_e2e(cfg, lambda rs: append_csv(csv_path, rs, E2E_FIELDS), progress)
    results, loss_ms, shares = summarize(rows)
    dev = rows[0]['device'] if rows else ''
    console.print(e2e_table(results, loss_ms, cfg.batches, cfg.precisions, cfg.variants,
                            f'{spec.title} {cfg.img[0]}x{cfg.img[1]} training step, '
                            f'median ms ({dev})', shares))
    console.print(spec.note, markup=False, highlight=False)
    for line in failures([dict(r, impl=r['variant'], dtype=r['precision']) for r in rows]):
        console.print(f'  {line}', markup=False, highlight=False)
    report_warnings(caught, console)
    console.print(f'CSV: {csv_path}\nrun time {time.time() - t0:.0f} s', markup=False,
                  highlight=False)
    return 0


if __name__ == '__main__':
    sys.exit(main())
