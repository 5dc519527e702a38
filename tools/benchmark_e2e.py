#!/usr/bin/env python
"""End-to-end cost of the classification loss in a RetinaNet R50-FPN training step.

Times full training steps (`model.train_step`: data preprocessing, forward, loss, backward,
optimizer update, as mmengine's Runner runs them) of RetinaNet R50-FPN at 800x1344 with three
`loss_cls` variants built from the same initial weights:
  mmdet         mmdet's FocalLoss (mmcv's CUDA op on GPU)
  ours          TritonFocalLoss
  ours-nocheck  TritonFocalLoss with the label-range check (one host sync per call) off
  zero          a stand-in that costs nothing but the gradient buffer (writes zeros), so that
                step(mmdet) - step(zero) is the loss's share of the step
for batch sizes and precisions given on the command line (fp32, AMP fp16, AMP bf16).
Median over `--steps` steps after `--warmup`; appends to a CSV.

  python tools/benchmark_e2e.py --batch 2 8 --precision fp32 fp16 bf16
"""
import argparse
import copy
import csv
import datetime
import os
import os.path as osp
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


def time_steps(model, optim_wrapper, data, warmup, steps):
    for _ in range(warmup):
        model.train_step(copy.copy(data), optim_wrapper)
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_step(copy.copy(data), optim_wrapper)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--batch', nargs='+', type=int, default=[2, 8])
    ap.add_argument('--precision', nargs='+', default=['fp32', 'fp16', 'bf16'],
                    choices=['fp32', 'fp16', 'bf16'])
    ap.add_argument('--variants', nargs='+', default=VARIANTS, choices=VARIANTS)
    ap.add_argument('--img', nargs=2, type=int, default=[800, 1344], metavar=('H', 'W'))
    ap.add_argument('--warmup', type=int, default=5)
    ap.add_argument('--steps', type=int, default=20)
    ap.add_argument('--out-dir', default='work_dirs/benchmark')
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print('benchmark_e2e needs a CUDA GPU')
        return 1

    from mmdet.utils import register_all_modules

    import mmdet_focal_triton as mft

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
    results = {}
    with open(csv_path, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=['timestamp', 'device', 'torch', 'batch', 'precision',
                                          'variant', 'step_ms', 'peak_mib', 'status', 'error'])
        if new:
            w.writeheader()
        for batch in args.batch:
            for prec in args.precision:
                for variant in args.variants:
                    mft.set_input_checks(variant != 'ours-nocheck')
                    row = dict(timestamp=datetime.datetime.now().isoformat(timespec='seconds'),
                               device=dev, torch=torch.__version__, batch=batch, precision=prec,
                               variant=variant, step_ms='', peak_mib='', status='ok', error='')
                    try:
                        model, ow = build(variant, prec, sd)
                        data = make_batch(model, batch, tuple(args.img), 'cuda')
                        torch.cuda.reset_peak_memory_stats()
                        ms = time_steps(model, ow, data, args.warmup, args.steps)
                        row['step_ms'] = f'{ms:.2f}'
                        row['peak_mib'] = f'{torch.cuda.max_memory_allocated() / 2**20:.0f}'
                        results[(batch, prec, variant)] = ms
                    except Exception as e:  # noqa: BLE001  a failing variant is a result
                        row['status'] = 'failed'
                        row['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
                    finally:
                        mft.set_input_checks(True)
                        model = ow = None
                        torch.cuda.empty_cache()
                    w.writerow(row)
                    f.flush()
                    print(f"batch {batch} {prec:5s} {variant:13s} "
                          f"{row['step_ms'] or row['error']} ms  peak {row['peak_mib']} MiB",
                          flush=True)
    print(f'\nRetinaNet R50-FPN {args.img[0]}x{args.img[1]} training step, median ms ({dev})')
    print(f"{'batch':>5} {'prec':>5} " + ''.join(f'{v:>14}' for v in args.variants) +
          '   loss share (mmdet, ours)')
    for batch in args.batch:
        for prec in args.precision:
            cells = [results.get((batch, prec, v)) for v in args.variants]
            z = results.get((batch, prec, 'zero'))
            share = []
            for v in ('mmdet', 'ours'):
                t = results.get((batch, prec, v))
                share.append(f'{100 * (t - z) / t:.2f}%' if t and z else 'n/a')
            print(f'{batch:>5} {prec:>5} ' + ''.join(
                f'{c:>14.2f}' if c else f"{'failed':>14}" for c in cells) + '   ' +
                ', '.join(share))
    print(f'CSV: {csv_path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
