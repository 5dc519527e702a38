"""End-to-end cost of the classification loss in a detector's training step.

Times full training steps (`model.train_step`: data preprocessing, forward, loss, backward,
optimizer update, as mmengine's Runner runs them) of a detector (`MODELS`: RetinaNet R50-FPN
with its FocalLoss, RTMDet-tiny with its QualityFocalLoss) with `loss_cls` variants built from
the same initial weights (`VARIANTS`), for batch sizes and precisions (fp32, AMP fp16, AMP
bf16). The variants are timed in interleaved rounds, each round timing every variant for a few
steps in a rotated order (so that drift of clocks, temperature and the shared host hits all of
them alike); the step time is the median of a variant's steps. A variant's cost over the zero
stand-in is the mean over rounds of the paired difference of round medians, with a 95 %
t-interval over the rounds (`stats.mean_interval`): where that interval holds 0 the difference
is not resolved, and the table says so rather than printing noise as a share. The GPU time of
each loss's own kernels per step comes from torch.profiler (`profiling.device_time`).
"""
from __future__ import annotations

import copy
import datetime
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from ..stats import mean_interval, relative
from .environment import device_name, synchronize
from .losses import quality_focal
from .losses.common import input_checks
from .losses.focal import MMCV_KERNELS, OUR_KERNELS
from .profiling import device_time
from .references import zero_cost_loss

ZERO_TYPE = 'ZeroCostFocalStandIn'


def _offline(cfg) -> None:
    """No pretrained backbone (the machine is offline)."""
    cfg.model.backbone.init_cfg = None


def _offline_one_gpu(cfg) -> None:
    """No pretrained backbone, and BN where the config has SyncBN (one process, no group)."""
    _offline(cfg)
    _sync_bn_to_bn(cfg.model)


def _sync_bn_to_bn(node) -> None:
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
        for v in node.values():
            _sync_bn_to_bn(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            _sync_bn_to_bn(v)


@dataclass(frozen=True)
class E2EModel:
    """A detector of the benchmark: mmdet's config, what our variant's `loss_cls` type is, the
    default input size and batches, and the name fragments of each variant role's own kernels
    (profiled where there are any; mmdet's Python losses have none of their own)."""
    name: str
    title: str
    config: str
    ours_type: str
    img: tuple[int, int]
    batches: tuple[int, ...]
    prepare: Callable = _offline
    kernels: dict = field(default_factory=dict)
    note: str = ''


MODELS = {m.name: m for m in [
    E2EModel('retinanet', 'RetinaNet R50-FPN', 'retinanet/retinanet_r50_fpn_1x_coco.py',
             'TritonFocalLoss', (800, 1344), (2, 8),
             kernels=dict(mmdet=MMCV_KERNELS, ours=OUR_KERNELS),
             note="(* mmdet: mmcv's two kernels only, its weighting / reduction not counted)"),
    E2EModel('rtmdet-tiny', 'RTMDet-tiny', 'rtmdet/rtmdet_tiny_8xb32-300e_coco.py',
             'TritonQualityFocalLoss', (640, 640), (32,), prepare=_offline_one_gpu,
             kernels=dict(ours=quality_focal.OUR_KERNELS),
             note="(* mmdet's QualityFocalLoss runs ATen kernels that are not told apart from "
                  "the step's: n/a)"),
]}


@dataclass(frozen=True)
class Variant:
    """A `loss_cls` of the model by its role ('mmdet': mmdet's loss of the config, 'ours': our
    class of the same loss, 'zero': the zero-cost stand-in), and the input check mode it runs
    under."""
    name: str
    role: str
    doc: str
    checks: str = 'async'


VARIANTS = {v.name: v for v in [
    Variant('mmdet', 'mmdet', "mmdet's loss of the config (FocalLoss: mmcv's CUDA op on GPU; "
            'QualityFocalLoss: Python)'),
    Variant('ours', 'ours', 'our class of that loss (TritonFocalLoss, TritonQualityFocalLoss)'),
    Variant('ours-nocheck', 'ours', 'the same with the label-range check off', checks='off'),
    Variant('zero', 'zero', 'a stand-in that costs nothing but the gradient of the logits '
            "(zeros), so that step(mmdet) - step(zero) is the loss's share of the step"),
]}


def loss_cfg(variant: str, model: E2EModel, mmdet_cfg: dict) -> dict:
    """The variant's `loss_cls` config from the model's (mmdet's) one."""
    role = VARIANTS[variant].role
    if role == 'ours':
        return dict(mmdet_cfg, type=model.ours_type)
    if role == 'zero':
        return dict(type=ZERO_TYPE, use_sigmoid=True)
    return dict(mmdet_cfg)


def variant_kernels(variant: str, model: E2EModel) -> tuple[str, ...]:
    return model.kernels.get(VARIANTS[variant].role, ())


def register_zero_loss():
    """Register `ZeroCostFocalStandIn` in mmdet's MODELS (idempotent)."""
    from mmdet.registry import MODELS

    @MODELS.register_module(force=True)
    class ZeroCostFocalStandIn(nn.Module):
        """Returns 0 with a gradient of zeros: the cheapest loss that still gives the logits a
        gradient. Any target (class indices, RTMDet's / GFL's (labels, scores) pair, a dense
        target) is ignored; `use_sigmoid` as the heads read it."""
        use_sigmoid = True

        def __init__(self, **kwargs):
            super().__init__()

        def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
            return zero_cost_loss(pred)

    return ZeroCostFocalStandIn


def make_batch(batch, hw, seed=0):
    """`batch` random uint8 images of size `hw` with 8 random boxes each (mmdet's data dict)."""
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


def build_model(variant, precision, device='cuda', state_dict=None, model='retinanet'):
    """The detector `model` (a `MODELS` key; offline: no pretrained backbone) with the variant's
    loss_cls, on `device`, in train mode, and its optim wrapper (SGD lr 0; AMP for fp16 /
    bf16)."""
    from mmdet.registry import MODELS as MMDET_MODELS
    from mmengine.optim import build_optim_wrapper

    from mmdet_focal_triton.mm_utils import load_mmdet_config

    spec = MODELS[model]
    cfg = load_mmdet_config(spec.config)
    spec.prepare(cfg)
    head = cfg.model.bbox_head
    head.loss_cls = loss_cfg(variant, spec, dict(head.loss_cls))
    det = MMDET_MODELS.build(cfg.model)
    if state_dict is None:
        det.init_weights()
    else:
        det.load_state_dict(state_dict)
    det = det.to(device).train()
    optim = dict(optimizer=dict(type='SGD', lr=0.0, momentum=0.9, weight_decay=1e-4))
    if precision == 'fp32':
        optim['type'] = 'OptimWrapper'
    else:
        optim.update(type='AmpOptimWrapper', dtype={'fp16': 'float16', 'bf16': 'bfloat16'}[
            precision], loss_scale='dynamic')
    return det, build_optim_wrapper(det, optim)


def time_step(model, optim_wrapper, data, device='cuda'):
    """ms of one synchronised training step."""
    synchronize(device)
    t0 = time.perf_counter()
    model.train_step(copy.copy(data), optim_wrapper)
    synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def loss_gpu_ms(model, optim_wrapper, data, kernels, steps):
    """GPU time per step of the kernels named by `kernels` (NaN without a GPU)."""
    return device_time(lambda: model.train_step(copy.copy(data), optim_wrapper), iters=steps,
                       names=kernels).ms


@dataclass
class E2EConfig:
    """What to run; `batches` and `img` None = the model's defaults (see `resolved`)."""
    model: str = 'retinanet'
    batches: tuple[int, ...] | None = None
    precisions: tuple[str, ...] = ('fp32', 'fp16', 'bf16')
    variants: tuple[str, ...] = tuple(VARIANTS)
    img: tuple[int, int] | None = None
    warmup: int = 5
    steps: int = 60
    rounds: int = 20
    profile_steps: int = 5
    device: str = 'cuda'

    def resolved(self) -> E2EConfig:
        if self.model not in MODELS:
            raise ValueError(f'unknown model {self.model!r}; known: {", ".join(MODELS)}')
        spec = MODELS[self.model]
        return replace(self, batches=tuple(self.batches or spec.batches),
                       img=tuple(self.img or spec.img))


def _error(e):
    return f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'


def run_config(cfg: E2EConfig, batch, prec, state_dict, progress=None) -> list[dict]:
    """Rows (E2E_FIELDS) of every variant at one batch size and precision: every variant is
    built and warmed up first, then timed in interleaved rounds."""
    cuda = cfg.device == 'cuda'
    spec = MODELS[cfg.model]
    built, rows, times = {}, {}, {}
    for v in cfg.variants:
        rows[v] = dict(timestamp=datetime.datetime.now().isoformat(timespec='seconds'),
                       device=device_name(cfg.device), torch=torch.__version__, batch=batch,
                       precision=prec, variant=v, step_ms='', peak_mib='', loss_gpu_ms='',
                       status='ok', error='', model=cfg.model, rounds='', vs_zero_pct='',
                       vs_zero_low='', vs_zero_high='', vs_zero_resolved='')
        try:
            with input_checks(VARIANTS[v].checks):
                model, ow = build_model(v, prec, cfg.device, state_dict, cfg.model)
                data = make_batch(batch, tuple(cfg.img))
                for _ in range(cfg.warmup):
                    time_step(model, ow, data, cfg.device)
            built[v], times[v] = (model, ow, data), []
        except Exception as e:  # noqa: BLE001  a failing variant is a result
            rows[v].update(status='failed', error=_error(e))
            model = ow = None
            if cuda:
                torch.cuda.empty_cache()
    per_round = max(cfg.steps // cfg.rounds, 1)
    order = list(built)
    round_ms = {v: [] for v in built}
    for k in range(cfg.rounds):
        for v in order[k % len(order):] + order[:k % len(order)]:  # rotated each round
            model, ow, data = built[v]
            if progress is not None:
                progress.update(f'batch {batch} {prec} round {k + 1}/{cfg.rounds} {v}')
            with input_checks(VARIANTS[v].checks):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                t = [time_step(model, ow, data, cfg.device) for _ in range(per_round)]
                if cuda:
                    rows[v]['peak_mib'] = f'{torch.cuda.max_memory_allocated() / 2 ** 20:.0f}'
            times[v] += t
            round_ms[v].append(statistics.median(t))
        if progress is not None:
            progress.advance()
    for v, row in vs_zero(round_ms).items():
        rows[v].update(row)
    for v, (model, ow, data) in built.items():
        rows[v]['step_ms'] = f'{statistics.median(times[v]):.2f}'
        rows[v]['rounds'] = str(len(round_ms[v]))
        kernels = variant_kernels(v, spec)
        if cfg.profile_steps and kernels and cuda:
            with input_checks(VARIANTS[v].checks):
                ms = loss_gpu_ms(model, ow, data, kernels, cfg.profile_steps)
            rows[v]['loss_gpu_ms'] = f'{ms:.3f}'
    return [rows[v] for v in cfg.variants]


def vs_zero(round_ms: dict) -> dict:
    """Each variant's step time over the zero stand-in's, from the rounds' medians
    (``{variant: [ms per round]}``): the mean paired difference as a share of the variant's own
    step, with its 95 % interval over the rounds. ``{variant: CSV fields}`` (none without a
    'zero' variant)."""
    zero = round_ms.get('zero')
    out = {}
    if not zero:
        return out
    for v, ms in round_ms.items():
        if v == 'zero' or len(ms) != len(zero):
            continue
        iv = mean_interval([a - z for a, z in zip(ms, zero, strict=True)])
        rel = relative(iv, statistics.fmean(ms))
        out[v] = dict(vs_zero_pct=f"{100 * rel['mean']:.3f}",
                      vs_zero_low=f"{100 * rel['low']:.3f}" if len(ms) > 1 else '',
                      vs_zero_high=f"{100 * rel['high']:.3f}" if len(ms) > 1 else '',
                      vs_zero_resolved=str(bool(iv['resolved'])))
    return out


def run_e2e(cfg: E2EConfig, on_rows=None, progress=None) -> list[dict]:
    """Every (batch, precision) of `cfg` (resolved here); `on_rows(rows)` after each (e.g.
    append to the CSV). Returns all rows."""
    from mmdet.utils import register_all_modules

    import mmdet_focal_triton  # noqa: F401  registers our losses

    cfg = cfg.resolved()
    register_all_modules()
    register_zero_loss()
    if cfg.device == 'cuda':
        torch.backends.cudnn.benchmark = True
    base, _ = build_model('mmdet', 'fp32', 'cpu', model=cfg.model)
    sd = {k: v.cpu() for k, v in base.state_dict().items()}
    del base
    if progress is not None:
        progress.start(len(cfg.batches) * len(cfg.precisions) * cfg.rounds, 'e2e')
    out = []
    try:
        for batch in cfg.batches:
            for prec in cfg.precisions:
                rows = run_config(cfg, batch, prec, sd, progress)
                if cfg.device == 'cuda':
                    torch.cuda.empty_cache()
                if on_rows:
                    on_rows(rows)
                if progress is not None:
                    progress.note(', '.join(f"{r['variant']} {r['step_ms'] or 'failed'}"
                                            for r in rows) + f' ms (batch {batch} {prec})')
                out += rows
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep the configurations already timed
        pass
    return out


def summarize(rows):
    """(step ms, loss-kernel ms, step - zero) keyed by (batch, precision, variant), from
    `run_e2e` rows; step - zero as dict(pct, low, high, resolved) (low / high None with one
    round)."""
    results, loss_ms, shares = {}, {}, {}
    for r in rows:
        key = (int(r['batch']), r['precision'], r['variant'])
        if r['step_ms']:
            results[key] = float(r['step_ms'])
        if r['loss_gpu_ms']:
            loss_ms[key] = float(r['loss_gpu_ms'])
        if r.get('vs_zero_pct'):
            low, high = r.get('vs_zero_low'), r.get('vs_zero_high')
            shares[key] = dict(pct=float(r['vs_zero_pct']),
                               low=float(low) if low else None,
                               high=float(high) if high else None,
                               resolved=r.get('vs_zero_resolved') == 'True')
    return results, loss_ms, shares
