"""The data and configs of a data-parallel parity run (``ddp.run_ddp_parity``): the paired
dataset's check, the derived config for each world size, the swapped-pairs control's annotation
file. Why each setting: the docstring of ``parity.ddp``."""
from __future__ import annotations

import json
from pathlib import Path

from . import config as pcfg

TOTAL_BATCH = 2  # 1 process x 2 images, or 2 processes x 1


# ---------------------------------------------------------------------------------------------
def check_pairs(data_root: Path, split: str = 'train') -> dict:
    """Images 2k and 2k+1 of the paired dataset: same size, same annotations (category, box,
    area), different pixels (file bytes)."""
    coco = json.loads((data_root / 'annotations' / f'instances_{split}.json').read_text())
    anns = {}
    for a in coco['annotations']:
        anns.setdefault(a['image_id'], []).append((a['category_id'], tuple(a['bbox']),
                                                   a['area']))
    images = sorted(coco['images'], key=lambda im: im['id'])
    n_pairs, bad = 0, []
    for a, b in zip(images[0::2], images[1::2]):
        same = ((a['width'], a['height']) == (b['width'], b['height'])
                and sorted(anns.get(a['id'], [])) == sorted(anns.get(b['id'], []))
                and anns.get(a['id']))
        differ = ((data_root / split / a['file_name']).read_bytes()
                  != (data_root / split / b['file_name']).read_bytes())
        n_pairs += 1
        if not (same and differ):
            bad.append((a['file_name'], b['file_name']))
    return dict(pairs=n_pairs, bad_pairs=bad, ok=n_pairs > 0 and not bad,
                positives_per_pair='equal by construction: same boxes, same image size')


def _walk_norm_cfgs(node, new_type: str, path='model') -> list:
    """Set every BatchNorm `norm_cfg` under `node` to `new_type`; returns the paths changed."""
    changed = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == 'norm_cfg' and isinstance(v, dict) and v.get('type') in (
                    'BN', 'BN2d', 'SyncBN', 'MMSyncBN', 'CPUSyncBN'):
                if v['type'] != new_type:
                    v['type'] = new_type
                    changed.append(f'{path}.{k}')
            else:
                changed += _walk_norm_cfgs(v, new_type, f'{path}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            changed += _walk_norm_cfgs(v, new_type, f'{path}[{i}]')
    return changed


def write_swapped_ann(data_root: Path, out: Path) -> Path:
    """The train annotation file with the images listed in the order 1, 0, 3, 2, ... (ids, files
    and annotations unchanged): mmdet's CocoDataset takes its order from this list, so batch k
    of a single process becomes (image 2k+1, image 2k)."""
    coco = json.loads((data_root / 'annotations' / 'instances_train.json').read_text())
    images = sorted(coco['images'], key=lambda im: im['id'])
    swapped = []
    for i in range(0, len(images) - 1, 2):
        swapped += [images[i + 1], images[i]]
    swapped += images[len(swapped):]
    coco['images'] = swapped
    out.write_text(json.dumps(coco))
    return out


def build_config(opts, device: str, data_root: Path, world: int):
    """The config both losses train from at world size ``world`` (tools/train.py --triton-focal
    swaps the loss). ``opts``: a ``DDPParityOptions``. Returns (Config, list of changes)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(opts.config or pcfg.default_config(device, opts.model)))
    changes = []
    dl = cfg.train_dataloader
    dl.dataset.data_root = str(data_root).rstrip('/') + '/'
    dl.batch_size = TOTAL_BATCH // world
    dl.num_workers = 0
    dl.persistent_workers = False
    dl.sampler = dict(type='DefaultSampler', shuffle=False)
    # plain batches of consecutive indices: mmdet's AspectRatioBatchSampler would regroup them
    # (harmless with pairs of one shape, but the batches should be (2k, 2k+1) by construction)
    dl.batch_sampler = None
    changes.append(f'train batch {TOTAL_BATCH // world} per process x {world} = {TOTAL_BATCH}, '
                   'DefaultSampler(shuffle=False), no batch_sampler, num_workers 0')
    pipeline = dl.dataset.get('pipeline') or []
    kept = [t for t in pipeline if not (isinstance(t, dict)
                                        and 'Flip' in str(t.get('type', '')))]
    if len(kept) != len(pipeline):
        changes.append(f'removed {len(pipeline) - len(kept)} flip transform(s) from the train '
                       'pipeline')
    if opts.img_size:
        pcfg.set_resize(kept, opts.img_size)
        changes.append(f'train Resize scale ({opts.img_size}, {opts.img_size})')
    dl.dataset.pipeline = kept
    if isinstance(cfg.get('train_pipeline'), list):  # the unused top-level copy: the same
        cfg.train_pipeline = kept
    # no validation or test: the runs are about the training losses
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=opts.iters,
                         val_interval=opts.iters + 1)
    # The config's LR schedule is kept as it is, warm-up included, even when the run ends
    # inside it: at full LR from the second iteration, rounding differences of any origin reach
    # 1e-3 in grad_norm within 3-5 iterations (CPU config, AdamW).
    cfg.randomness = dict(seed=opts.seed, deterministic=False, diff_rank_seed=False)
    cfg.env_cfg = cfg.get('env_cfg', {})
    cfg.env_cfg['cudnn_benchmark'] = False
    cfg.default_hooks = cfg.get('default_hooks', {})
    cfg.default_hooks['checkpoint'] = None
    cfg.default_hooks['logger'] = dict(type='LoggerHook', interval=1)
    cfg.log_processor = dict(type='LogProcessor', by_epoch=False, window_size=1)
    hooks = [h for h in (cfg.get('custom_hooks') or []) if h.get('type') != 'AverageLogVarsHook']
    cfg.custom_hooks = hooks + [dict(type='AverageLogVarsHook')]
    imports = cfg.get('custom_imports') or dict(imports=[], allow_failed_imports=False)
    if 'mmdet_focal_triton' not in imports.get('imports', []):
        imports['imports'] = list(imports.get('imports', [])) + ['mmdet_focal_triton']
    cfg.custom_imports = imports
    changes.append('logger interval 1, window 1, custom hook AverageLogVarsHook, no '
                   'validation, no checkpoints')
    if opts.norm == 'sync':
        norm = 'SyncBN' if device == 'cuda' else 'CPUSyncBN'
        paths = _walk_norm_cfgs(cfg.model, norm)
        if paths:
            changes.append(f"{', '.join(paths)}: type {norm}")
    if cfg.model.get('type') == 'RTMDet':
        # mmdet's RTMDet converts every BN to torch's SyncBatchNorm in a distributed run
        # (use_syncbn=True), which refuses CPU modules: the norm layers are chosen above
        use = device == 'cuda' and opts.norm == 'sync'
        cfg.model.use_syncbn = use
        changes.append(f'model.use_syncbn {use}')
    cfg.launcher = 'pytorch'
    cfg.load_from = None
    cfg.resume = False
    if opts.cfg_options:
        cfg.merge_from_dict(opts.cfg_options)
        changes.append('cfg_options ' + ' '.join(f'{k}={v}' for k, v in
                                                 opts.cfg_options.items()))
    return cfg, changes
