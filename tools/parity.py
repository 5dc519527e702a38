#!/usr/bin/env python
"""Train the same RetinaNet twice, with mmdet's FocalLoss and with TritonFocalLoss, and compare.

    python tools/parity.py                       # CPU default: R18-FPN, 320 px (see the config)
    python tools/parity.py --device cuda         # GPU default: R50-FPN at (1333, 800)
    python tools/parity.py --device cuda --amp bf16 --losses ours

Both runs start from bit-identical weights (the first run's initial state_dict is loaded into
the second, and checked by digest), see the same images in the same order with the same
augmentation (seeded sampler, all RNGs reseeded right before the first iteration), and use
deterministic cuDNN. The only difference is the loss module: the second config is the first
after ``mmdet_focal_triton.swap_focal_loss``. Per-iteration ``loss_cls`` / ``loss_bbox`` are
recorded by a hook; after training both models are evaluated on the val split with mmdet's
CocoMetric.

The data is the synthetic shapes dataset of ``mmdet_focal_triton.datasets`` (generated on first
use into the cache, then reused). The backbone starts from random init: no pretrained weights
(no network here), so the mAPs are those of a model trained from scratch for a few iterations.

Why the verdict is not "every iteration within rtol": training a network is chaotic. Two runs
whose losses differ only by fp32 rounding (~1e-7) drift apart by a roughly constant factor per
iteration (measured ~1.2x per iteration for R50 at lr 0.01 on an H100 / H200, where the same
loss run twice is bit-identical), so after a few hundred iterations they are different, equally
good, trajectories, whatever the loss implementation. `--control perturbed` shows it: mmdet's
own FocalLoss, with its loss_weight changed by 2^-20, drifts the same way. So the run checks:

  1. the initial weights are bit-identical, and every recorded loss is finite;
  2. iteration 1 (same weights, same batch: only the loss op differs): the relative difference
     |a-b|/max(|a|,|b|) of loss_cls and of loss_bbox <= --first-rtol (SPEC: 1e-5 fp32);
  3. the same per-iteration relative difference <= --rtol over the first --horizon iterations
     (default 20), while the two trajectories are still coupled;
  4. first update: ||dW_ours - dW_mmdet|| / ||dW_mmdet|| <= --update-rtol, where dW is the change
     of all weights in iteration 1: the gradient of the whole network, through the loss;
  5. trend: the means of loss_cls and loss_bbox over the last 25 % of the iterations agree within
     --trend-rtol (both runs learn the same way).

The largest per-iteration relative difference over all iterations, the final weight difference
and both mAPs are reported too. Outputs in ``--work-dir`` (default work_dirs/parity):
``report.json`` (every number, the settings, the config, versions, device, tolerances, verdict),
``summary.md`` (a table), ``loss_curves.png`` and one sub-folder per run with mmengine's logs.

Exit code: 0 = pass; 1 = fail (a check above, a non-finite loss, or our run failed);
2 = no comparison possible because the mmdet run failed while ours completed (e.g. bf16, which
mmcv's CUDA focal loss does not implement; use ``--losses ours``). With ``--losses ours`` or
``--losses mmdet`` one model is trained, and it passes when it completes with finite losses.
Default tolerances per device and precision: see TOLERANCES.
"""
import argparse
import copy
import datetime
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / 'configs' / 'parity' / 'retinanet_r18_fpn_synthetic_cpu.py'
GPU_CONFIG = REPO / 'configs' / 'parity' / 'retinanet_r50_fpn_synthetic_gpu.py'

# Default tolerances, keyed by (device type, precision); each can be overridden on the command
# line. Measured on the default runs (CPU: R18 config, 400 iterations; CUDA: R50 config on an
# H100 and an H200, 300 iterations):
# - first_rtol (iteration 1: same weights, same batch, so only the loss op differs): the loss
#   values agree to fp32 rounding; measured 0 on CPU and ~1e-7 on CUDA. 1e-5 is SPEC §3's fp32
#   bound; 1e-2 (its fp16 / bf16 bound) under AMP.
# - rtol (per iteration, first `horizon` iterations): after iteration 1 the rounding-level
#   difference drifts upward by a roughly constant factor per iteration (chaotic training);
#   measured max over iterations 1-20: CPU 4e-6, CUDA 2e-4; 1e-3 passes both with margin and
#   still catches a semantic difference (a wrong alpha, gamma, normalisation or background
#   label is >= 1e-2 at iteration 1 already).
# - update_rtol (first weight update, i.e. the gradient of the whole network through the loss):
#   measured 5e-8 on CPU; 1e-4.
# - trend_rtol (means of the last 25 % of iterations): chaotic but equivalent trajectories;
#   measured 3e-3 / 7e-3 on the CPU config for loss_cls / loss_bbox; 5e-2 (a semantic
#   difference moves these means by far more, e.g. alpha 0.25 -> 0.5 roughly doubles loss_cls).
#   A config may loosen a default for its training setup with `parity.tolerances` (never
#   tighten it): the GPU config sets trend_rtol 0.15, because SGD from random init wanders there
#   (measured up to 4.8e-2 ours vs mmdet, 5.4e-2 mmdet vs mmdet perturbed by 2^-20, H200).
# - fp16 / bf16 AMP: the logits reaching the loss carry 11 / 8 mantissa bits, and the two losses
#   round them differently: 1e-2 at iteration 1, 5e-2 per iteration and per update, 1e-1 trend.
_FP32 = dict(first_rtol=1e-5, rtol=1e-3, update_rtol=1e-4, trend_rtol=5e-2)
_AMP = dict(first_rtol=1e-2, rtol=5e-2, update_rtol=5e-2, trend_rtol=1e-1)
TOLERANCES = {('cpu', 'none'): _FP32, ('cuda', 'none'): _FP32,
              ('cuda', 'fp16'): _AMP, ('cuda', 'bf16'): _AMP}
TOL_KEYS = ('first_rtol', 'rtol', 'update_rtol', 'trend_rtol')
DEFAULT_HORIZON = 20
TREND_FRACTION = 0.25
PERTURBATION = 2.0 ** -20  # --control perturbed: mmdet's loss_weight times (1 + this)
COMPARED = ('loss_cls', 'loss_bbox')
RECORDED = ('loss', 'loss_cls', 'loss_bbox')
MAP_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')
SIDES = {'mmdet': 'FocalLoss', 'ours': 'TritonFocalLoss', 'control': 'FocalLoss'}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description='Train RetinaNet with mmdet FocalLoss and with TritonFocalLoss from the same '
                    'init and data order; compare losses, updates, weights and mAP.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--config', default=None,
                   help='parity config (default: configs/parity/retinanet_r18_fpn_synthetic_cpu.py '
                        'on CPU, configs/parity/retinanet_r50_fpn_synthetic_gpu.py on CUDA)')
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    p.add_argument('--iters', type=int, default=None,
                   help="training iterations per run (default: the config's parity.iters)")
    p.add_argument('--amp', choices=('none', 'fp16', 'bf16'), default='none',
                   help='mixed precision (mmengine AmpOptimWrapper); CUDA only')
    p.add_argument('--losses', choices=('both', 'ours', 'mmdet'), default='both',
                   help='which runs to train; "ours" e.g. for bf16, where mmcv cannot run')
    p.add_argument('--img-size', type=int, default=None,
                   help='long side of the generated images, and the train/test Resize scale '
                        "(N, N) (default: the config's parity.img_size for the images and the "
                        "config's own Resize scale)")
    p.add_argument('--batch-size', type=int, default=None,
                   help="training batch size (default: the config's)")
    p.add_argument('--num-train', type=int, default=None,
                   help="synthetic train images (default: the config's parity.num_train)")
    p.add_argument('--num-val', type=int, default=None,
                   help="synthetic val images (default: the config's parity.num_val)")
    p.add_argument('--data-root', default=None,
                   help='use this COCO-layout dataset instead of generating the synthetic one '
                        '(the config must then match it: classes, ann files, prefixes)')
    p.add_argument('--work-dir', default='work_dirs/parity')
    tol = ', '.join(f'{d} {a}: {v["rtol"]:g}' for (d, a), v in TOLERANCES.items())
    p.add_argument('--first-rtol', type=float, default=None,
                   help='tolerance on the relative difference of loss_cls and loss_bbox at '
                        'iteration 1 (same weights, same batch) (default: 1e-5 fp32, 1e-2 AMP)')
    p.add_argument('--rtol', type=float, default=None,
                   help='tolerance on the per-iteration relative difference of loss_cls and '
                        f'loss_bbox over the first --horizon iterations (default: {tol})')
    p.add_argument('--horizon', type=int, default=DEFAULT_HORIZON,
                   help='iterations over which --rtol applies (0: all of them)')
    p.add_argument('--update-rtol', type=float, default=None,
                   help='tolerance on the relative difference of the first weight update '
                        '(default: 1e-4 fp32, 5e-2 AMP)')
    p.add_argument('--trend-rtol', type=float, default=None,
                   help='tolerance on the relative difference of the mean losses over the last '
                        '25%% of iterations (default: 5e-2 fp32, 1e-1 AMP)')
    p.add_argument('--seed', type=int, default=0, help='training seed (init, sampler, augment)')
    p.add_argument('--data-seed', type=int, default=0, help='synthetic dataset seed')
    p.add_argument('--backend', choices=('auto', 'torch', 'triton'), default='auto',
                   help="TritonFocalLoss backend: 'auto' = Triton kernels on CUDA, the PyTorch "
                        "implementation on CPU; 'triton' on CPU runs the Triton kernels in "
                        "Triton's interpreter (slow, but it is the kernel code)")
    p.add_argument('--control', choices=('none', 'repeat', 'perturbed'), default='none',
                   help="a third run of mmdet's FocalLoss: 'repeat' = identical (shows whether "
                        "the device is deterministic), 'perturbed' = loss_weight * (1 + 2^-20) "
                        '(shows how far rounding-level differences drift during training)')
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# environment, set before torch / triton are imported
# ---------------------------------------------------------------------------------------------
ARGS = parse_args() if __name__ == '__main__' else None
if ARGS is not None:
    if ARGS.device == 'cpu':
        os.environ['CUDA_VISIBLE_DEVICES'] = ''  # mmengine puts the model on CUDA if it sees one
    if ARGS.backend == 'triton' and ARGS.device != 'cuda':
        os.environ.setdefault('TRITON_INTERPRET', '1')
    # deterministic cuBLAS (harmless on CPU)
    os.environ.setdefault('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
os.environ.setdefault('MPLBACKEND', 'Agg')

import numpy as np  # noqa: E402
import torch  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmengine.config import Config  # noqa: E402
from mmengine.hooks import Hook  # noqa: E402
from mmengine.model import is_model_wrapper  # noqa: E402
from mmengine.runner import Runner, set_random_seed  # noqa: E402

import mmdet_focal_triton  # noqa: E402
from mmdet_focal_triton.config_utils import swap_focal_loss  # noqa: E402
from mmdet_focal_triton.datasets import make_synthetic_coco  # noqa: E402


def log(msg: str) -> None:
    print(f'[parity] {msg}', flush=True)


# ---------------------------------------------------------------------------------------------
# the recording hook
# ---------------------------------------------------------------------------------------------
def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


def _snapshot(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def state_digest(state: dict) -> str:
    """sha256 over the names and raw bytes of every tensor of a state_dict."""
    h = hashlib.sha256()
    for k, v in state.items():
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous().reshape(-1)
            h.update(str(t.dtype).encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class ParityHook(Hook):
    """Loads (or captures) the initial weights, reseeds the RNGs, records losses, the weights
    after the first iteration, and the metrics."""

    priority = 'VERY_HIGH'

    def __init__(self, record: dict, seed: int, init_state=None):
        self.record = record
        self.seed = seed
        self.init_state = init_state
        self._t0 = None
        self._tv = None

    def before_train(self, runner) -> None:
        model = _unwrap(runner.model)
        if self.init_state is None:  # first run: its freshly initialised weights are the init
            self.record['init_state'] = _snapshot(model)
        else:
            model.load_state_dict(self.init_state, strict=True)
        self.record['init_digest'] = state_digest(model.state_dict())
        # the same RNG state for what follows (augmentation draws, anything random in the step)
        set_random_seed(self.seed, deterministic=False)
        self.record['losses'] = {k: [] for k in RECORDED}
        self._t0 = time.perf_counter()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        outputs = outputs or {}
        for k in RECORDED:
            v = outputs.get(k)
            if v is None:
                continue
            v = float(v.detach().double().item()) if isinstance(v, torch.Tensor) else float(v)
            self.record['losses'][k].append(v)
        if runner.iter == 0:  # weights after the first update
            self.record['state_after_1'] = _snapshot(_unwrap(runner.model))

    def before_val(self, runner) -> None:
        self._tv = time.perf_counter()
        if self._t0 is not None and 'train_s' not in self.record:
            self.record['train_s'] = self._tv - self._t0  # the iterations only

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._tv is not None:
            self.record['val_s'] = time.perf_counter() - self._tv
        self.record['raw_metrics'] = {k: (float(v) if isinstance(v, (int, float, np.floating))
                                          else str(v)) for k, v in (metrics or {}).items()}


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
def _set_resize(pipeline, size: int) -> int:
    n = 0
    for t in pipeline or []:
        if isinstance(t, dict) and t.get('type') in ('Resize', 'mmdet.Resize'):
            t['scale'] = (size, size)
            t.pop('scale_factor', None)
            n += 1
    return n


def build_base_cfg(args, data_root: Path) -> Config:
    cfg = Config.fromfile(args.config)
    root = str(data_root).rstrip('/') + '/'
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dl = cfg.get(key)
        if dl is None:
            continue
        dl.dataset.data_root = root
        if key == 'train_dataloader':
            dl.sampler.seed = args.seed  # DefaultSampler: the same shuffled order on both sides
            if args.batch_size:
                dl.batch_size = args.batch_size
        if args.img_size:
            _set_resize(dl.dataset.get('pipeline'), args.img_size)
    for key in ('val_evaluator', 'test_evaluator'):
        ev = cfg.get(key)
        if isinstance(ev, dict) and 'ann_file' in ev:
            ev.ann_file = str(Path(root) / cfg.val_dataloader.dataset.ann_file)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=args.iters, val_interval=args.iters)
    # keep the warm-up inside short runs
    for s in cfg.get('param_scheduler') or []:
        if s.get('type') == 'LinearLR' and s.get('end', 0) > args.iters:
            s['end'] = max(2, args.iters // 4)
    cfg.randomness = dict(seed=args.seed, deterministic=False, diff_rank_seed=False)
    cfg.env_cfg = cfg.get('env_cfg', {})
    cfg.env_cfg['cudnn_benchmark'] = False
    cfg.default_hooks = cfg.get('default_hooks', {})
    cfg.default_hooks['checkpoint'] = None  # no checkpoints: the final weights stay in memory
    cfg.launcher = 'none'
    cfg.load_from = None
    cfg.resume = False
    if args.amp != 'none':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.dtype = {'fp16': 'float16', 'bf16': 'bfloat16'}[args.amp]
        cfg.optim_wrapper.loss_scale = 'dynamic'
    return cfg


def _scale_focal_loss_weight(node, factor: float) -> int:
    n = 0
    if isinstance(node, dict):
        if node.get('type') == 'FocalLoss':
            node['loss_weight'] = node.get('loss_weight', 1.0) * factor
            n += 1
        for v in node.values():
            n += _scale_focal_loss_weight(v, factor)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += _scale_focal_loss_weight(v, factor)
    return n


# ---------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------
def run_side(side: str, base_cfg: Config, args, work_dir: Path, init_state) -> dict:
    rec = {'side': side, 'loss_type': SIDES[side], 'status': 'not run', 'error': None}
    cfg = copy.deepcopy(base_cfg)
    if side == 'ours':
        n = swap_focal_loss(cfg)
        rec['swapped'] = n
        if n == 0:
            raise RuntimeError(f'{args.config}: no FocalLoss in cfg.model to swap')
    if side == 'control':
        rec['control'] = args.control
        if args.control == 'perturbed':
            _scale_focal_loss_weight(cfg.model, 1.0 + PERTURBATION)
            rec['loss_type'] = \
                f'FocalLoss, loss_weight x (1 + 2^-{round(-math.log2(PERTURBATION))})'
    side_dir = work_dir / side
    if side_dir.exists():
        shutil.rmtree(side_dir)
    cfg.work_dir = str(side_dir)
    cfg.experiment_name = f'parity_{side}'  # the Runner appends its timestamp
    hook = ParityHook(rec, args.seed, init_state)
    t0 = time.perf_counter()
    runner = None
    prev_backend = mmdet_focal_triton.get_backend()
    try:
        if side == 'ours':
            mmdet_focal_triton.set_backend(args.backend)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        runner = Runner.from_cfg(cfg)
        runner.register_hook(hook)
        runner.train()
        rec['final_state'] = _snapshot(_unwrap(runner.model))
        rec['status'] = 'ok'
    except Exception as e:  # noqa: BLE001 - reported, e.g. mmcv refusing bf16
        rec['status'] = 'failed'
        rec['error'] = f'{type(e).__name__}: {e}'
        rec['traceback'] = traceback.format_exc()[-4000:]
        log(f'{side} run FAILED: {rec["error"]}')
    finally:
        mmdet_focal_triton.set_backend(prev_backend)
        del runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rec['wall_s'] = time.perf_counter() - t0
    raw = rec.get('raw_metrics')
    if raw is not None:
        metrics = {}
        for k in MAP_KEYS:
            v = raw.get(f'coco/{k}')
            metrics[k] = float(v) if isinstance(v, float) else None
        if rec['status'] == 'ok' and all(v is None for v in metrics.values()):
            # CocoMetric returns nothing when no box scored above test_cfg.score_thr: mAP is 0
            metrics = {k: 0.0 for k in MAP_KEYS}
            metrics['note'] = 'no detections above score_thr on the val split: mAP = 0'
        rec['metrics'] = metrics
    return rec


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------
def rel_diffs(a, b) -> list:
    out = []
    for x, y in zip(a, b, strict=True):
        den = max(abs(x), abs(y))
        if not (math.isfinite(x) and math.isfinite(y)):
            out.append(float('inf'))
        else:
            out.append(abs(x - y) / den if den > 0 else 0.0)
    return out


def _float_items(state: dict):
    for k, v in state.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            yield k, v


def param_diff(sa: dict, sb: dict) -> dict:
    """Max abs and relative-norm difference of two state_dicts (float tensors)."""
    max_abs, num, den, worst = 0.0, 0.0, 0.0, None
    for k, va in _float_items(sa):
        d = va.double() - sb[k].double()
        m = float(d.abs().max()) if d.numel() else 0.0
        if not math.isfinite(m) or m > max_abs:
            max_abs, worst = m, k
        num += float((d * d).sum())
        den += float((va.double() ** 2).sum())
    rel = math.sqrt(num) / math.sqrt(den) if den else 0.0
    return {'max_abs': max_abs, 'rel_norm': rel, 'worst_tensor': worst}


def update_diff(s0: dict, sa: dict, sb: dict) -> float:
    """||(sa - s0) - (sb - s0)|| / ||sa - s0||: relative difference of one update."""
    num, den = 0.0, 0.0
    for k, v0 in _float_items(s0):
        da = sa[k].double() - v0.double()
        db = sb[k].double() - v0.double()
        num += float(((da - db) ** 2).sum())
        den += float((da ** 2).sum())
    if not math.isfinite(num):
        return float('inf')
    return math.sqrt(num) / math.sqrt(den) if den else (0.0 if num == 0 else float('inf'))


def trend_window(n: int) -> int:
    return max(1, int(round(n * TREND_FRACTION)))


def compare(a: dict, b: dict, tol: dict, horizon: int, init_state=None) -> dict:
    """Compare run b against run a. `tol`: rtol, update_rtol, trend_rtol."""
    out = {'init_identical': a.get('init_digest') == b.get('init_digest'),
           'horizon': horizon, 'max_rel_diff': {}, 'argmax_iter': {},
           'max_rel_diff_horizon': {}, 'argmax_iter_horizon': {}, 'first_iter_rel_diff': {},
           'trend': {}, 'rel_diff_per_iter': {}}
    checks = {'initial weights bit-identical': out['init_identical']}
    for k in RECORDED:
        la, lb = a['losses'][k], b['losses'][k]
        if len(la) != len(lb) or not la:
            if k in COMPARED:
                checks[f'{k}: same number of iterations'] = False
            continue
        r = rel_diffs(la, lb)
        out['rel_diff_per_iter'][k] = r
        i = int(np.argmax(r))
        out['max_rel_diff'][k], out['argmax_iter'][k] = r[i], i + 1
        out['first_iter_rel_diff'][k] = r[0]
        h = len(r) if horizon <= 0 else min(horizon, len(r))
        j = int(np.argmax(r[:h]))
        out['max_rel_diff_horizon'][k], out['argmax_iter_horizon'][k] = r[j], j + 1
        out['horizon_used'] = h
        w = trend_window(len(la))
        ma, mb = float(np.mean(la[-w:])), float(np.mean(lb[-w:]))
        td = rel_diffs([ma], [mb])[0]
        out['trend'][k] = {'window': w, 'mean_a': ma, 'mean_b': mb, 'rel_diff': td}
        if k in COMPARED:
            checks[f'{k}: iteration 1 rel diff <= {tol["first_rtol"]:g}'] = \
                r[0] <= tol['first_rtol']
            checks[f'{k}: per-iteration rel diff, iterations 1-{h}, <= {tol["rtol"]:g}'] = \
                r[j] <= tol['rtol']
            checks[f'{k}: mean of last {w} iterations, rel diff <= {tol["trend_rtol"]:g}'] = \
                td <= tol['trend_rtol']
    for n, rec in (('a', a), ('b', b)):
        ls = rec.get('losses') or {}
        finite = all(math.isfinite(v) for k in RECORDED for v in ls.get(k, []))
        checks[f'{rec.get("side", n)}: every loss finite'] = finite
    if init_state is not None and 'state_after_1' in a and 'state_after_1' in b:
        u = update_diff(init_state, a['state_after_1'], b['state_after_1'])
        out['first_update_rel_diff'] = u
        checks[f'first update (iteration 1) rel diff <= {tol["update_rtol"]:g}'] = \
            u <= tol['update_rtol']
    if 'final_state' in a and 'final_state' in b:
        pd = param_diff(a['final_state'], b['final_state'])
        out['param_max_abs_diff'] = pd['max_abs']
        out['param_rel_norm_diff'] = pd['rel_norm']
        out['param_worst_tensor'] = pd['worst_tensor']
    ma, mb = a.get('metrics') or {}, b.get('metrics') or {}
    out['mAP_abs_diff'] = {k: abs(ma[k] - mb[k]) for k in MAP_KEYS
                           if ma.get(k) is not None and mb.get(k) is not None}
    out['checks'] = checks
    out['passed'] = all(checks.values())
    out['reasons'] = [k for k, v in checks.items() if not v]
    return out


def first_nonfinite(rec: dict):
    """(iteration, loss name) of the first non-finite recorded loss, or None."""
    ls = rec.get('losses') or {}
    n = max((len(v) for v in ls.values()), default=0)
    for i in range(n):
        for k in (*COMPARED, 'loss'):
            v = ls.get(k, [])
            if i < len(v) and not math.isfinite(v[i]):
                return i + 1, k
    return None


def finite_losses(rec: dict) -> bool:
    ls = rec.get('losses') or {}
    return bool(ls.get('loss')) and all(math.isfinite(v) for k in RECORDED for v in ls.get(k, []))


def versions() -> dict:
    from importlib import metadata
    v = {'python': platform.python_version(), 'torch': torch.__version__,
         'numpy': np.__version__, 'mmdet_focal_triton': mmdet_focal_triton.__version__}
    for name, dist in (('triton', 'triton'), ('mmcv', 'mmcv'), ('mmdet', 'mmdet'),
                       ('mmengine', 'mmengine'), ('opencv', 'opencv-python-headless'),
                       ('pycocotools', 'pycocotools'), ('matplotlib', 'matplotlib')):
        try:
            v[name] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            v[name] = None
    if torch.version.cuda:
        v['cuda'] = torch.version.cuda
    return v


def device_name(device: str) -> str:
    if device == 'cuda':
        return torch.cuda.get_device_name(torch.cuda.current_device())
    name = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                name = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads'


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _fmt(v, spec='.4g'):
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def write_summary(path: Path, report: dict) -> str:
    s, runs = report['settings'], report['runs']
    cmp_ = report.get('comparison') or {}
    ctl = report.get('control_comparison') or {}
    tol = report['tolerance']
    lines = [f"# Parity: mmdet `FocalLoss` vs `TritonFocalLoss`: **{report['status'].upper()}**",
             '',
             f"`{s['config_name']}` on {s['device']} ({report['device_name']}), precision "
             f"{s['amp']}, {s['iters']} iterations, batch {s['batch_size']}, {s['img_size']}, "
             f"synthetic data {s['num_train']} train / {s['num_val']} val images, seed "
             f"{s['seed']}, no pretrained weights (backbone from random init), "
             f"TritonFocalLoss backend `{s['backend']}`. {report['date']}.", '']
    names = [k for k in ('mmdet', 'ours', 'control') if k in runs]
    diffs = []
    if cmp_:
        diffs.append(('ours vs mmdet', cmp_))
    if ctl:
        diffs.append(('control vs mmdet', ctl))
    head = ['']
    head += [f"{k}: `{runs[k]['loss_type']}`" for k in names]
    head += [d[0] for d in diffs]
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]

    def row(label, vals, dvals=()):
        cells = [label] + list(vals) + list(dvals)
        cells += [''] * (len(head) - len(cells))
        return '| ' + ' | '.join(cells) + ' |'

    def status(rec):
        st = rec['status'] + (f" ({rec['error']})" if rec.get('error') else '')
        bad = rec.get('first_nonfinite')
        return st + (f", non-finite {bad['loss']} from iteration {bad['iteration']}" if bad else '')

    lines.append(row('status', [status(runs[k]) for k in names]))
    for k in COMPARED:
        vals = []
        for n in names:
            ls = (runs[n].get('losses') or {}).get(k) or []
            vals.append(f'{_fmt(ls[0])} → {_fmt(ls[-1])}' if ls else 'n/a')
        lines.append(row(f'{k}, first → last iteration', vals))
    for k in COMPARED:
        tv = [c.get('trend', {}).get(k) for _, c in diffs]
        w = next((t['window'] for t in tv if t), None)
        vals = []
        for n in names:
            ls = [float(v) for v in (runs[n].get('losses') or {}).get(k) or []]
            ww = trend_window(len(ls)) if ls else None
            vals.append(_fmt(float(np.mean(ls[-ww:]))) if ls else 'n/a')
        lines.append(row(f'{k}, mean of last {w or "?"} iterations', vals,
                         [f"rel {_fmt(t['rel_diff'], '.2e')}" if t else '' for t in tv]))
    if diffs:
        lines.append(row('iteration 1 rel diff (same weights, same batch)', [''] * len(names),
                         [', '.join(f"{k} {_fmt(c['first_iter_rel_diff'].get(k), '.2e')}"
                                    for k in COMPARED) for _, c in diffs]))
        lines.append(row('first update rel diff ‖ΔW_b − ΔW_a‖ / ‖ΔW_a‖', [''] * len(names),
                         [_fmt(c.get('first_update_rel_diff'), '.2e') for _, c in diffs]))
        lines.append(row(f"max rel diff, iterations 1-{cmp_.get('horizon_used', '?')} (checked)",
                         [''] * len(names),
                         [', '.join(f"{k} {_fmt(c['max_rel_diff_horizon'].get(k), '.2e')} "
                                    f"(it {c['argmax_iter_horizon'].get(k)})" for k in COMPARED)
                          for _, c in diffs]))
        lines.append(row('max rel diff, all iterations (reported, not checked)',
                         [''] * len(names),
                         [', '.join(f"{k} {_fmt(c['max_rel_diff'].get(k), '.2e')} "
                                    f"(it {c['argmax_iter'].get(k)})" for k in COMPARED)
                          for _, c in diffs]))
        lines.append(row('final weights: max abs diff, rel norm diff', [''] * len(names),
                         [f"{_fmt(c.get('param_max_abs_diff'), '.2e')}, "
                          f"{_fmt(c.get('param_rel_norm_diff'), '.2e')}" for _, c in diffs]))
    for k in ('bbox_mAP', 'bbox_mAP_50'):
        vals = [_fmt((runs[n].get('metrics') or {}).get(k), '.4f') for n in names]
        lines.append(row(k, vals, [f"abs {_fmt(c.get('mAP_abs_diff', {}).get(k), '.4f')}"
                                   for _, c in diffs]))
    lines.append(row('train / eval time (s)',
                     [f"{_fmt(runs[n].get('train_s'), '.1f')} / "
                      f"{_fmt(runs[n].get('val_s'), '.1f')}" for n in names]))
    if cmp_.get('checks'):
        lines += ['', 'Checks (ours vs mmdet):', '']
        lines += [f"- [{'x' if v else ' '}] {k}" for k, v in cmp_['checks'].items()]
    if report.get('reasons'):
        lines += ['', '**Failed:** ' + '; '.join(report['reasons'])]
    lines += ['', f"Tolerances ({tol['source']}): first_rtol {tol['first_rtol']:g} (iteration 1), "
              f"rtol {tol['rtol']:g} (per iteration, first "
              f"{tol['horizon'] or 'all'} iterations), update_rtol {tol['update_rtol']:g}, "
              f"trend_rtol {tol['trend_rtol']:g}. Total wall time {report['wall_s']:.0f} s. "
              'Versions: ' + ', '.join(f'{k} {v}' for k, v in report['versions'].items() if v),
              '']
    text = '\n'.join(lines)
    path.write_text(text)
    return text


def plot(path: Path, report: dict) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    runs = report['runs']
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {'mmdet': dict(ls='-', lw=2.4, alpha=0.55), 'ours': dict(ls='--', lw=1.2),
              'control': dict(ls=':', lw=1.0)}
    colours = {'loss_cls': 'tab:blue', 'loss_bbox': 'tab:orange'}
    for side, rec in runs.items():
        for k in COMPARED:
            ls = [float(v) for v in (rec.get('losses') or {}).get(k) or []]  # 'nan' -> nan
            if ls:
                ax1.plot(range(1, len(ls) + 1), ls, color=colours[k], **styles[side],
                         label=f"{k}: {side} ({rec['loss_type']})")
    ax1.set_xlabel('iteration')
    ax1.set_ylabel('loss')
    ax1.set_title('training losses')
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    floor, top = 1e-12, 10.0  # 0 and non-finite differences are drawn at these
    tol = report['tolerance']
    curves = [('ours vs mmdet', report.get('comparison'), '-'),
              ('control vs mmdet', report.get('control_comparison'), ':')]
    drawn = False
    for label, c, ls_ in curves:
        for k in COMPARED:
            r = ((c or {}).get('rel_diff_per_iter') or {}).get(k)
            if r:
                r = [float(v) for v in r]
                r = [top if not math.isfinite(v) else min(max(v, floor), top) for v in r]
                ax2.semilogy(range(1, len(r) + 1), r,
                             color=colours[k], ls=ls_, marker='.', ms=3, lw=1,
                             label=f'{k}, {label}')
                drawn = True
    if drawn:
        n = len(next(iter(runs.values())).get('losses', {}).get('loss_cls') or [1])
        h = tol['horizon'] if tol['horizon'] > 0 else n
        ax2.hlines(tol['rtol'], 1, min(h, n), color='red', ls='--', lw=1.2,
                   label=f"rtol {tol['rtol']:g} (iterations 1-{min(h, n)})")
        ax2.legend(fontsize=7)
        ax2.set_title(f'relative difference |a-b| / max(|a|,|b|)  (0 drawn at {floor:g}, '
                      f'non-finite at {top:g})',
                      fontsize=10)
    else:
        ax2.text(0.5, 0.5, 'no comparison (one run only)', ha='center', va='center',
                 transform=ax2.transAxes)
        ax2.set_yscale('log')
    ax2.set_xlabel('iteration')
    ax2.grid(alpha=0.3, which='both')
    s = report['settings']
    fig.suptitle(f"{s['config_name']} · {s['device']} · amp {s['amp']} · {s['iters']} iterations"
                 f" · {report['status']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)  # JSON has no inf / nan
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    return str(obj)


# ---------------------------------------------------------------------------------------------
def main(args) -> int:
    t_start = time.perf_counter()
    if args.device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    else:
        device = args.device
        if device == 'cuda' and not torch.cuda.is_available():
            log('--device cuda: no CUDA device is available')
            return 1
    if args.amp != 'none' and device != 'cuda':
        log(f'--amp {args.amp} needs CUDA (mmengine AmpOptimWrapper); use --device cuda')
        return 1
    if args.config is None:
        args.config = str(GPU_CONFIG if device == 'cuda' else CPU_CONFIG)
    pdef = Config.fromfile(args.config).get('parity', {}) or {}
    args.iters = args.iters or pdef.get('iters') or 80
    num_train = args.num_train or pdef.get('num_train', 200)
    num_val = args.num_val or pdef.get('num_val', 50)
    gen_size = args.img_size or pdef.get('img_size', 320)
    tol = dict(TOLERANCES[(device, args.amp)])
    # a config may loosen a default for its training setup (parity.tolerances), never tighten it
    from_cfg = {k: max(float(v), tol[k]) for k, v in (pdef.get('tolerances') or {}).items()
                if k in TOL_KEYS and float(v) > tol[k]}
    tol.update(from_cfg)
    given = {k: getattr(args, k) for k in TOL_KEYS if getattr(args, k) is not None}
    tol.update(given)
    tol['horizon'] = args.horizon
    src = (['config: ' + ', '.join(from_cfg)] if from_cfg else []) + \
        (['command line: ' + ', '.join(given)] if given else [])
    tol['source'] = '; '.join(src) if src else 'defaults'
    work_dir = Path(args.work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    for f in ('report.json', 'summary.md', 'loss_curves.png'):
        (work_dir / f).unlink(missing_ok=True)

    if args.data_root:
        data_root = Path(args.data_root).absolute()
        log(f'dataset: {data_root} (given)')
    else:
        data_root = make_synthetic_coco(num_train=num_train, num_val=num_val,
                                        img_size=gen_size, seed=args.data_seed)
        log(f'dataset: synthetic COCO, {num_train} train / {num_val} val images, long side '
            f'{gen_size}, at {data_root}')
    base_cfg = build_base_cfg(args, data_root)
    resize = [t.get('scale') for t in base_cfg.train_dataloader.dataset.get('pipeline', [])
              if isinstance(t, dict) and t.get('type') == 'Resize']
    settings = dict(
        config=str(Path(args.config).absolute()), config_name=Path(args.config).stem,
        device=device, amp=args.amp, iters=args.iters,
        batch_size=base_cfg.train_dataloader.batch_size,
        img_size=f"{gen_size}-px images resized to {tuple(resize[0]) if resize else '?'}",
        num_train=num_train, num_val=num_val, seed=args.seed, data_seed=args.data_seed,
        data_root=str(data_root), losses=args.losses, backend=args.backend,
        control=args.control, pretrained=False, torch_threads=torch.get_num_threads(),
        deterministic=dict(cudnn_deterministic=True, cudnn_benchmark=False,
                           sampler_seed=args.seed, rng_reseeded_before_first_iter=True,
                           torch_deterministic_algorithms='warn_only' if device == 'cuda'
                           else False))
    log(f"config {settings['config_name']}, device {device}, amp {args.amp}, "
        f"{args.iters} iterations; tolerances first_rtol {tol['first_rtol']:g}, rtol "
        f"{tol['rtol']:g} (first {args.horizon or 'all'} iterations), update_rtol "
        f"{tol['update_rtol']:g}, trend_rtol {tol['trend_rtol']:g}")

    if device == 'cuda':
        torch.use_deterministic_algorithms(True, warn_only=True)

    sides = {'both': ['mmdet', 'ours'], 'ours': ['ours'], 'mmdet': ['mmdet']}[args.losses]
    if args.control != 'none' and 'mmdet' in sides:
        sides.append('control')
    runs, init_state = {}, None
    for i, side in enumerate(sides, 1):
        log(f'run {i}/{len(sides)}: {side} ({SIDES[side]}), work dir {work_dir / side}')
        rec = run_side(side, base_cfg, args, work_dir, init_state)
        if init_state is None:
            init_state = rec.pop('init_state', None)
        rec.pop('init_state', None)
        runs[side] = rec
        ls = rec.get('losses') or {}
        bad = first_nonfinite(rec)
        if bad:
            rec['first_nonfinite'] = {'iteration': bad[0], 'loss': bad[1]}
            log(f'{side}: non-finite {bad[1]} from iteration {bad[0]}')
        log(f"run {i}/{len(sides)}: {side} {rec['status']} in {rec['wall_s']:.1f} s "
            f"(train {_fmt(rec.get('train_s'), '.1f')} s); loss_cls "
            f"{_fmt((ls.get('loss_cls') or [None])[-1])}, loss_bbox "
            f"{_fmt((ls.get('loss_bbox') or [None])[-1])} at the last iteration; mAP "
            f"{_fmt((rec.get('metrics') or {}).get('bbox_mAP'))}, mAP_50 "
            f"{_fmt((rec.get('metrics') or {}).get('bbox_mAP_50'))}")

    comparison, control_cmp, reasons = None, None, []
    if 'mmdet' in runs and 'ours' in runs:
        a, b = runs['mmdet'], runs['ours']
        if a['status'] == 'ok' and b['status'] == 'ok':
            comparison = compare(a, b, tol, args.horizon, init_state)
            reasons += comparison['reasons']
            status = 'pass' if comparison['passed'] else 'fail'
            bad_a = first_nonfinite(a)
            if bad_a and finite_losses(b):  # e.g. mmcv's CUDA op in fp16 (mmcv issue 1488)
                status = 'reference_failed'
                reasons.insert(0, f'mmdet FocalLoss run: non-finite {bad_a[1]} from iteration '
                                  f'{bad_a[0]}; ours stayed finite')
        elif b['status'] == 'ok' and finite_losses(b):
            status = 'reference_failed'
            reasons.append(f"mmdet FocalLoss run failed ({a['error']}); ours completed with "
                           'finite losses; nothing to compare (see --losses ours)')
        else:
            status = 'fail'
            reasons.append(f"TritonFocalLoss run failed: {b['error']}")
    else:
        (only,) = [r for n, r in runs.items() if n != 'control']
        ok = only['status'] == 'ok' and finite_losses(only)
        status = 'pass' if ok else 'fail'
        if not ok:
            reasons.append(f"{only['loss_type']} run: {only['error'] or 'non-finite loss'}")
    if ('control' in runs and runs['control']['status'] == 'ok'
            and runs.get('mmdet', {}).get('status') == 'ok'):
        control_cmp = compare(runs['mmdet'], runs['control'], tol, args.horizon, init_state)
    exit_code = {'pass': 0, 'fail': 1, 'reference_failed': 2}[status]

    for rec in runs.values():
        for k in ('final_state', 'state_after_1', 'raw_metrics'):
            rec.pop(k, None)
    report = dict(
        tool='tools/parity.py', status=status, passed=status == 'pass', exit_code=exit_code,
        reasons=reasons, date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        command=[sys.executable] + sys.argv,
        tolerance=dict(tol, defaults={f'{d} {a}': v for (d, a), v in TOLERANCES.items()},
                       default_horizon=DEFAULT_HORIZON, trend_fraction=TREND_FRACTION,
                       per_iteration='|a-b| / max(|a|,|b|) for ' + ' and '.join(COMPARED)),
        settings=settings, device_name=device_name(device), versions=versions(),
        runs=runs, comparison=comparison, control_comparison=control_cmp,
        wall_s=time.perf_counter() - t_start,
        config=json.loads(json.dumps(base_cfg.to_dict(), default=str)))
    report = _jsonable(report)
    plot(work_dir / 'loss_curves.png', report)
    text = write_summary(work_dir / 'summary.md', report)
    (work_dir / 'report.json').write_text(json.dumps(report, indent=1))
    print(text, flush=True)
    log(f"{status.upper()} (exit {exit_code}) in {report['wall_s']:.0f} s; wrote "
        f"{work_dir / 'report.json'}, {work_dir / 'summary.md'}, {work_dir / 'loss_curves.png'}")
    return exit_code


if __name__ == '__main__':
    sys.exit(main(ARGS))
