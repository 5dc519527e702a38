#!/usr/bin/env python
"""End-to-end cost of the classification loss in a RetinaNet R50-FPN training step.

Times full training steps (`model.train_step`: data preprocessing, forward, loss, backward,
optimizer update, as mmengine's Runner runs them) of RetinaNet R50-FPN at 800x1344 with three
`loss_cls` variants built from the same initial weights:
  mmdet         mmdet's FocalLoss (mmcv's CUDA op on GPU)
  ours          TritonFocalLoss
  ours-nocheck  TritonFocalLoss with the label-range check off (the default check is
                asynchronous: no host sync; this variant shows it costs nothing)
  zero          a stand-in that costs nothing but the gradient buffer (writes zeros), so that
                step(mmdet) - step(zero) is the loss's share of the step
for batch sizes and precisions given on the command line (fp32, AMP fp16, AMP bf16).
Median over `--steps` steps per variant after `--warmup`, the variants timed in interleaved
rounds (so that drift of clocks and temperature hits all of them alike); appends to a CSV.

  python tools/benchmark_e2e.py --batch 2 8 --precision fp32 fp16 bf16
"""
import argparse
import contextlib
import copy
import csv
import datetime
import os
import os.path as osp
import statistics
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

VARIANTS = ['mmdet', 'ours', 'ours-nocheck', 'zero']


def register_zero_loss():
    from mmdet.registry import MODELS

    @MODELS.register_module(force=True)
    class ZeroCostFocalStandIn(nn.Module):
        """Returns 0 with a gradient of zeros: the cheapest loss that still gives the logits a
        gradient (one memset of the gradient buffer)."""
        use_sigmoid = True

        def __init__(self, **kwargs):
            super().__init__()

        def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
            return pred.reshape(-1)[:1].sum() * 0.0

    return ZeroCostFocalStandIn


@contextlib.contextmanager
def check_mode(variant):
    import mmdet_focal_triton as mft

    mft.set_input_checks('off' if variant == 'ours-nocheck' else 'async')
    try:
        yield
    finally:
        mft.set_input_checks(True)


def make_batch(model, batch, hw, device, seed=0):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(seed)
    h, w = hw
    inputs, samples = [], []
    for _ in range(batch):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        n = 8
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3]) + 16
        inst = InstanceData(bboxes=torch.cat([xy, xy + wh], 1),
                            labels=torch.randint(0, 80, (n,), generator=g))
        s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w),
                                        scale_factor=(1.0, 1.0), batch_input_shape=(h, w)))
        s.gt_instances = inst
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def build(variant, precision, state_dict=None):
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper

    from mmdet_focal_triton.mm_utils import load_mmdet_config

    cfg = load_mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')
    cfg.model.backbone.init_cfg = None  # offline
    lc = cfg.model.bbox_head.loss_cls
    if variant in ('ours', 'ours-nocheck'):
        lc.type = 'TritonFocalLoss'
    elif variant == 'zero':
        cfg.model.bbox_head.loss_cls = dict(type='ZeroCostFocalStandIn', use_sigmoid=True)
    model = MODELS.build(cfg.model)
    if state_dict is None:
        model.init_weights()
    else:
        model.load_state_dict(state_dict)
    model = model.cuda().train()
    optim = dict(optimizer=dict(type='SGD', lr=0.0, momentum=0.9, weight_decay=1e-4))
    if precision == 'fp32':
        optim['type'] = 'OptimWrapper'
    else:
        optim.update(type='AmpOptimWrapper', dtype={'fp16': 'float16', 'bf16': 'bfloat16'}[
            precision], loss_scale='dynamic')
    return model, build_optim_wrapper(model, optim)


def time_step(model, optim_wrapper, data):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.train_step(copy.copy(data), optim_wrapper)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


# kernels that belong to the classification loss, by name: ours (forward, finalize, flag copy,
# backward rescale) and mmcv's (forward and backward; mmdet's weighting / reduction around them
# runs as generic elementwise kernels and is not counted, so its number is a lower bound)
LOSS_KERNELS = {'ours': ('focal_loss_kernel', 'finalize_kernel', 'check_kernel', 'scale_kernel',
                         'Memcpy DtoH (Device -> Pinned)'),
                'mmdet': ('sigmoid_focal_loss_forward', 'sigmoid_focal_loss_backward')}


def loss_gpu_ms(model, optim_wrapper, data, variant, steps):
    """GPU time per step of the loss's own kernels, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    names = LOSS_KERNELS[variant]
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            model.train_step(copy.copy(data), optim_wrapper)
        torch.cuda.synchronize()
    total = sum(e.self_device_time_total for e in prof.key_averages()
                if any(n in e.key for n in names))
    return total / steps / 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', nargs='+', type=int, default=[2, 8])
    ap.add_argument('--precision', nargs='+', default=['fp32', 'fp16', 'bf16'],
                    choices=['fp32', 'fp16', 'bf16'])
    ap.add_argument('--variants', nargs='+', default=VARIANTS, choices=VARIANTS)
    ap.add_argument('--img', nargs=2, type=int, default=[800, 1344], metavar=('H', 'W'))
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--steps', type=int, default=40, help='timed steps per variant')
    ap.add_argument('--rounds', type=int, default=4,
                    help='the timed steps are split into this many interleaved rounds')
    ap.add_argument('--profile-steps', type=int, default=5,
                    help="steps profiled to measure the loss kernels' own GPU time (0: off)")
    ap.add_argument('--out-dir', default='work_dirs/benchmark')
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print('benchmark_e2e needs a CUDA GPU')
        return 1

    from mmdet.utils import register_all_modules
    from rich.progress import track

    import mmdet_focal_triton  # noqa: F401  registers TritonFocalLoss

    register_all_modules()
    register_zero_loss()
    torch.backends.cudnn.benchmark = True
    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = osp.join(args.out_dir, 'e2e.csv')
    new = not osp.exists(csv_path)
    dev = torch.cuda.get_device_name()
    base_model, _ = build('mmdet', 'fp32')
    sd = {k: v.cpu() for k, v in base_model.state_dict().items()}
    del base_model
    results, loss_ms = {}, {}
    with open(csv_path, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['timestamp', 'device', 'torch', 'batch', 'precision',
                                          'variant', 'step_ms', 'peak_mib', 'loss_gpu_ms',
                                          'status', 'error'])
        if new:
            w.writeheader()
        for batch in args.batch:
            for prec in args.precision:
                # every variant is built first, then timed in interleaved rounds, so that clock
                # and thermal drift during the run affect all of them alike
                built, rows, times = {}, {}, {}
                for variant in args.variants:
                    rows[variant] = dict(
                        timestamp=datetime.datetime.now().isoformat(timespec='seconds'),
                        device=dev, torch=torch.__version__, batch=batch, precision=prec,
                        variant=variant, step_ms='', peak_mib='', loss_gpu_ms='', status='ok',
                        error='')
                    try:
                        model, ow = build(variant, prec, sd)
                        data = make_batch(model, batch, tuple(args.img), 'cuda')
                        with check_mode(variant):
                            for _ in range(args.warmup):
                                time_step(model, ow, data)
                        built[variant] = (model, ow, data)
                        times[variant] = []
                    except Exception as e:  # noqa: BLE001  a failing variant is a result
                        rows[variant]['status'] = 'failed'
                        rows[variant]['error'] = (f'{type(e).__name__}: '
                                                  f'{str(e).splitlines()[0][:200]}')
                        model = ow = None
                        torch.cuda.empty_cache()
                for _ in track(range(args.rounds), description=f'batch {batch} {prec}',
                               transient=True):
                    for variant, (model, ow, data) in built.items():
                        with check_mode(variant):
                            torch.cuda.reset_peak_memory_stats()
                            for _ in range(args.steps // args.rounds):
                                times[variant].append(time_step(model, ow, data))
                            peak = torch.cuda.max_memory_allocated() / 2 ** 20
                        rows[variant]['peak_mib'] = f'{peak:.0f}'
                for variant, (model, ow, data) in built.items():
                    if args.profile_steps and variant in LOSS_KERNELS:
                        with check_mode(variant):
                            ms = loss_gpu_ms(model, ow, data, variant, args.profile_steps)
                        rows[variant]['loss_gpu_ms'] = f'{ms:.3f}'
                        loss_ms[(batch, prec, variant)] = ms
                for variant in args.variants:
                    row = rows[variant]
                    if variant in times:
                        ms = statistics.median(times[variant])
                        row['step_ms'] = f'{ms:.2f}'
                        results[(batch, prec, variant)] = ms
                    w.writerow(row)
                    f.flush()
                    print(f"batch {batch} {prec:5s} {variant:13s} "
                          f"{row['step_ms'] or row['error']} ms  peak {row['peak_mib']} MiB  "
                          f"loss kernels {row['loss_gpu_ms'] or '-'} ms", flush=True)
                built = None
                torch.cuda.empty_cache()
    print(f'\nRetinaNet R50-FPN {args.img[0]}x{args.img[1]} training step, median ms ({dev})')
    print(f"{'batch':>5} {'prec':>5} " + ''.join(f'{v:>14}' for v in args.variants) +
          '   step - zero (mmdet, ours)   loss kernels / step (mmdet*, ours)')
    for batch in args.batch:
        for prec in args.precision:
            cells = [results.get((batch, prec, v)) for v in args.variants]
            z = results.get((batch, prec, 'zero'))
            share = []
            for v in ('mmdet', 'ours'):
                t = results.get((batch, prec, v))
                share.append(f'{100 * (t - z) / t:.2f}%' if t and z else 'n/a')
            kshare = []
            for v in ('mmdet', 'ours'):
                t, k = results.get((batch, prec, v)), loss_ms.get((batch, prec, v))
                kshare.append(f'{100 * k / t:.2f}%' if t and k is not None else 'n/a')
            print(f'{batch:>5} {prec:>5} ' + ''.join(
                f'{c:>14.2f}' if c else f"{'failed':>14}" for c in cells) + '   ' +
                ', '.join(share) + '   ' + ', '.join(kshare))
    print('(* mmdet: mmcv\'s two kernels only, its weighting / reduction not counted)')
    print(f'CSV: {csv_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
