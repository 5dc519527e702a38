"""The configs and tolerances of a parity run.

Models (``default_config(device, model)``, the shipped configs/parity/): 'retinanet'
(``FocalLoss``; the default) and 'rtmdet-tiny' (``QualityFocalLoss``), each with a CPU and a GPU
config. The loss helpers below (``family_loss_configs``, ``loss_types``,
``scale_focal_loss_weight``) cover mmdet's focal family: ``FocalLoss``, ``QualityFocalLoss``,
``VarifocalLoss``, with or without the ``mmdet.`` scope.

What a parity config says beyond mmdet's own keys, in its ``parity`` dict (every key can be
overridden by ``run_parity``'s options): ``iters``, ``num_train``, ``num_val``, ``img_size``,
``dataset`` (``make_synthetic_coco`` arguments: ``style``, ``max_objects``), ``eval_interval``
(an evaluation every so many iterations: the learning curve), ``target_map`` (what mmdet's own
training must reach, or the recipe is broken), ``extra_amp`` (more trainings of ours under AMP,
e.g. ``['bf16']`` on a GPU) and ``tolerances``.

Default tolerances, keyed by (device type, precision); each can be overridden by the caller, and
a config may loosen (never tighten) them with ``parity.tolerances``:

- ``check_rtol``: every call of our loss against the float64 evaluation of mmdet's formula on
  the same inputs, loss and gradient (``FocalLossCheckHook``, any loss of the family): SPEC §3,
  1e-5 in fp32, 1e-2 for fp16 / bf16 inputs. Deterministic: the same inputs give the same
  verdict on any machine.
- ``first_rtol``: iteration 1 of the two trainings (same weights, same batch, so only the loss
  differs): |a-b| / max(|a|,|b|) of loss_cls and loss_bbox; measured 0-1.1e-7 (CPU), 1e-7 (CUDA).
- ``update_rtol``: the first weight update, i.e. the gradient of the whole network through the
  loss: ||dW_b - dW_a|| / ||dW_a||; measured 5e-8 (CPU), 1e-9 (CUDA).
- ``map_floor``: the accuracy verdict. Training is chaotic: two runs that differ by fp32
  rounding become different, equally good trajectories within tens of iterations, so their
  final bbox_mAPs agree only as well as two trainings of mmdet's own loss do. A run passes when
  ``|mAP - mAP(mmdet)| <= max(map_floor, NOISE_FACTOR x spread)``, the spread being what the
  control shows (mmdet's own loss with loss_weight x (1 + 2^-20), trained when a difference
  exceeds the floor, or always with ``control='perturbed'``).
"""
from __future__ import annotations

import copy
from pathlib import Path

from ..config_utils import FOCAL_FAMILY
from ..shipped_configs import CONFIG_ROOT

REPO = Path(__file__).resolve().parents[2]  # the checkout, when run from one
CONFIG_DIR = CONFIG_ROOT / 'parity'  # shipped with the package: configs/parity/ of the checkout
MODEL_CONFIGS = {
    'retinanet': {'cpu': CONFIG_DIR / 'retinanet_r18_fpn_synthetic_cpu.py',
                  'cuda': CONFIG_DIR / 'retinanet_r18_fpn_synthetic_gpu.py'},
    'rtmdet-tiny': {'cpu': CONFIG_DIR / 'rtmdet_tiny_synthetic_cpu.py',
                    'cuda': CONFIG_DIR / 'rtmdet_tiny_synthetic_gpu.py'},
}
DEFAULT_MODEL = 'retinanet'
DEFAULT_CONFIGS = MODEL_CONFIGS[DEFAULT_MODEL]
FAMILY = tuple(FOCAL_FAMILY)  # mmdet's types: FocalLoss, QualityFocalLoss, VarifocalLoss

_FP32 = dict(check_rtol=1e-5, first_rtol=1e-5, update_rtol=1e-4, map_floor=0.02)
_AMP = dict(check_rtol=1e-2, first_rtol=1e-2, update_rtol=5e-2, map_floor=0.02)
TOLERANCES = {('cpu', 'none'): _FP32, ('cuda', 'none'): _FP32,
              ('cuda', 'fp16'): _AMP, ('cuda', 'bf16'): _AMP}
TOL_KEYS = tuple(_FP32)
NOISE_FACTOR = 3.0  # an mAP difference passes within 3 x the control's spread (or the floor)
TTA_FRACTION = 0.9  # time to accuracy: to this fraction of mmdet's final bbox_mAP
TREND_FRACTION = 0.25  # the trend (reported): the mean of the last quarter of the iterations
REPORT_HORIZON = 20  # per-iteration differences are reported (not checked) over this many
PERTURBATION = 2.0 ** -20  # the control: mmdet's loss_weight x (1 + this)


def default_config(device: str, model: str = DEFAULT_MODEL) -> Path:
    """The shipped parity config for ``device`` ('cpu' or 'cuda') and ``model`` (a key of
    ``MODEL_CONFIGS``: 'retinanet' or 'rtmdet-tiny')."""
    if model not in MODEL_CONFIGS:
        raise ValueError(f'model must be one of {sorted(MODEL_CONFIGS)}, got {model!r}')
    path = MODEL_CONFIGS[model][device]
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: the parity configs are shipped in '
                                'mmdet_focal_triton/.mim/configs/parity/ (configs/parity/ of a '
                                'checkout); pass config= explicitly')
    return path


def tolerances(device: str, amp: str, config_defaults: dict | None = None,
               given: dict | None = None) -> dict:
    """The tolerances in force, with ``source``: the defaults, loosened by the config's
    ``parity.tolerances``, overridden by ``given`` (non-None values)."""
    tol = dict(TOLERANCES[(device, amp)])
    from_cfg = {k: float(v) for k, v in (config_defaults or {}).items()
                if k in TOL_KEYS and float(v) > tol[k]}
    tol.update(from_cfg)
    given = {k: float(v) for k, v in (given or {}).items() if v is not None}
    tol.update(given)
    src = (['config: ' + ', '.join(from_cfg)] if from_cfg else []) + \
        (['given: ' + ', '.join(given)] if given else [])
    tol['source'] = '; '.join(src) if src else 'defaults'
    return tol


def set_resize(pipeline, size: int) -> int:
    """Set every Resize of ``pipeline`` to scale (size, size), and every Pad to a fixed size
    (RTMDet's square padding) to (size, size); returns how many Resizes."""
    n = 0
    for t in pipeline or []:
        if isinstance(t, dict) and t.get('type') in ('Resize', 'mmdet.Resize'):
            t['scale'] = (size, size)
            t.pop('scale_factor', None)
            n += 1
        elif isinstance(t, dict) and t.get('type') in ('Pad', 'mmdet.Pad') and t.get('size'):
            t['size'] = (size, size)
    return n


def build_base_cfg(config, *, data_root: Path, iters: int, seed: int = 0, amp: str = 'none',
                   batch_size: int | None = None, img_size: int | None = None,
                   eval_interval: int | None = None):
    """The config both trainings start from: ``config`` pointed at ``data_root``, an
    iteration-based schedule of ``iters`` with the warm-up kept inside it and the schedulers
    fitted to it, an evaluation every ``eval_interval`` iterations (None: at the end only) and
    after the last, a seeded sampler, no checkpoints, optionally AMP."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(config))
    root = str(data_root).rstrip('/') + '/'
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        dl = cfg.get(key)
        if dl is None:
            continue
        dl.dataset.data_root = root
        if key == 'train_dataloader':
            dl.sampler.seed = seed  # DefaultSampler: the same shuffled order on both sides
            if batch_size:
                dl.batch_size = batch_size
        if img_size:
            set_resize(dl.dataset.get('pipeline'), img_size)
    for key in ('val_evaluator', 'test_evaluator'):
        ev = cfg.get(key)
        if isinstance(ev, dict) and 'ann_file' in ev:
            ev.ann_file = str(Path(root) / cfg.val_dataloader.dataset.ann_file)
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters,
                         val_interval=min(eval_interval or iters, iters))
    fit_schedule(cfg.get('param_scheduler') or [], iters)
    cfg.randomness = dict(seed=seed, deterministic=False, diff_rank_seed=False)
    cfg.env_cfg = cfg.get('env_cfg', {})
    cfg.env_cfg['cudnn_benchmark'] = False
    cfg.default_hooks = cfg.get('default_hooks', {})
    cfg.default_hooks['checkpoint'] = None  # no checkpoints: the final weights stay in memory
    cfg.launcher = 'none'
    cfg.load_from = None
    cfg.resume = False
    set_amp(cfg, amp)
    return cfg


def set_amp(cfg, amp: str) -> None:
    """Train ``cfg`` under AMP ('fp16' or 'bf16': mmengine's AmpOptimWrapper, dynamic loss
    scale) or not ('none')."""
    if amp == 'none':
        return
    cfg.optim_wrapper.type = 'AmpOptimWrapper'
    cfg.optim_wrapper.dtype = {'fp16': 'float16', 'bf16': 'bfloat16'}[amp]
    cfg.optim_wrapper.loss_scale = 'dynamic'


def fit_schedule(schedulers: list, iters: int) -> None:
    """Fit a parity config's iteration-based LR schedule to a run of ``iters`` iterations: a
    warm-up (LinearLR) longer than the run is cut to a quarter of it, and every other
    iteration-based scheduler (the decay, e.g. CosineAnnealingLR) runs from the end of the
    warm-up to the end of the run (``T_max`` with it), so ``--iters`` runs the same recipe,
    shorter or longer."""
    warm_end = 0
    for s in schedulers:
        if s.get('type') == 'LinearLR':
            if s.get('end', 0) >= iters:
                s['end'] = max(1, iters // 4)
            warm_end = max(warm_end, s.get('end', 0))
    for s in list(schedulers):
        if s.get('type') != 'LinearLR' and s.get('by_epoch', True) is False:
            if warm_end >= iters:  # a one-iteration run: no room for a decay
                schedulers.remove(s)
                continue
            s['begin'], s['end'] = warm_end, iters
            if 'T_max' in s:
                s['T_max'] = iters - warm_end


def family_type(t) -> str | None:
    """mmdet's loss name for a config ``type`` of the focal family ('FocalLoss',
    'mmdet.QualityFocalLoss', ...), else None (ours, other scopes, other losses)."""
    if not isinstance(t, str):
        return None
    name = t[len('mmdet.'):] if t.startswith('mmdet.') else t
    return name if name in FAMILY else None


def family_loss_configs(node, path: str = '') -> dict:
    """``{dotted path: config}`` of every loss of the focal family under ``node`` (e.g.
    ``cfg.model``), each config with its ``type`` as mmdet's name (no scope): the paths are the
    module names the built model gives them (``'bbox_head.loss_cls'``)."""
    found = {}
    if isinstance(node, dict):
        t = family_type(node.get('type'))
        if t is not None:
            found[path] = dict({k: copy.deepcopy(v) for k, v in node.items() if k != 'type'},
                               type=t)
        for k, v in node.items():
            found.update(family_loss_configs(v, f'{path}.{k}' if path else str(k)))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            found.update(family_loss_configs(v, f'{path}.{i}'))
    return found


def focal_loss_configs(node, path: str = '') -> dict:
    """``family_loss_configs`` without the ``type`` entries (the constructor arguments only):
    ``{dotted path: config}`` of every FocalLoss, QualityFocalLoss and VarifocalLoss."""
    return {k: {a: v for a, v in c.items() if a != 'type'}
            for k, c in family_loss_configs(node, path).items()}


def loss_types(node) -> list:
    """mmdet's names of the focal-family losses under ``node`` (e.g. ``cfg.model``), sorted:
    ``['FocalLoss']`` for RetinaNet, ``['QualityFocalLoss']`` for RTMDet."""
    return sorted({c['type'] for c in family_loss_configs(node).values()})


def scale_focal_loss_weight(node, factor: float) -> int:
    """Multiply the loss_weight of every FocalLoss, QualityFocalLoss and VarifocalLoss under
    ``node`` by ``factor``; returns how many."""
    n = 0
    if isinstance(node, dict):
        if family_type(node.get('type')) is not None:
            node['loss_weight'] = node.get('loss_weight', 1.0) * factor
            n += 1
        for v in node.values():
            n += scale_focal_loss_weight(v, factor)
    elif isinstance(node, (list, tuple)):
        for v in node:
            n += scale_focal_loss_weight(v, factor)
    return n
