#!/usr/bin/env python
"""Data-parallel parity: RetinaNet trained by `tools/dist_train.sh` on 1 and on 2 processes (GPUs,
or CPU processes over gloo) at the same total batch, with TritonFocalLoss and with mmdet's
FocalLoss, compared iteration by iteration.

    python tools/ddp_parity.py                   # CUDA if available (needs 2 GPUs), else CPU
    python tools/ddp_parity.py --device cpu --iters 4 --img-size 128 \
        --runs ours:1 ours:2 mmdet:2                                    # the CI run, ~35 s
    python tools/ddp_parity.py --device cuda --iters 30 --control   # 2 GPUs, R50 at 1333x800

Four trainings (``--runs`` / ``--losses`` choose fewer): ours and mmdet's loss, each on 1 process
with batch 2 and on 2 processes with batch 1 each (``bash tools/dist_train.sh CONFIG 1|2
[--triton-focal]``, i.e. torchrun -> tools/train.py -> mmengine's MMDistributedDataParallel), and
four comparisons of the per-iteration ``loss_cls``, ``loss_bbox``, ``loss`` and ``grad_norm``: ours
1 vs 2 processes, mmdet 1 vs 2 processes, ours vs mmdet on 2 processes and on 1.

Why 1 vs 2 processes is comparable here (it is not in general), each point removing one reason
for 2 x batch 1 to differ from 1 x batch 2:

1. RetinaNet normalises its losses by the number of positive anchors of the batch on *this*
   rank (mmdet 3.3 ``AnchorHead.loss_by_feat``: ``avg_factor`` is not all-reduced, unlike FCOS /
   ATSS). The data is the *paired* synthetic dataset (``make_synthetic_coco(paired=True)``):
   images 2k and 2k+1 have the same objects and boxes on different backgrounds, so the same
   anchor assignment and the same number p of positives. Without shuffling, mmengine's
   DefaultSampler gives rank r the images r, r+2, ...: at iteration k the 2 ranks see images 2k
   and 2k+1 with p positives each, the single process sees both with 2p. The DDP-averaged
   gradient (g0/p + g1/p)/2 is then the single process's (g0 + g1)/(2p), and likewise the losses.
2. mmengine logs rank 0's losses only: ``AverageLogVarsHook`` (mmdet_focal_triton.distributed)
   replaces the logged values by their mean over the ranks, before the logger sees them.
   ``grad_norm`` is the norm of DDP's averaged gradient, the same on every rank.
3. The parity configs train the backbone's BatchNorm layers (random init, ``norm_eval=False``):
   batch statistics over 1 image per rank are not those over 2 images. ``--norm sync`` (the
   default) makes them synchronized batch norm over the ranks (``SyncBN``, PyTorch's, on CUDA;
   ``CPUSyncBN`` of mmdet_focal_triton.distributed on CPU, where PyTorch's refuses CPU tensors).
   ``--norm local`` keeps plain BN and shows the difference.
4. No randomness that depends on the number of processes: no RandomFlip, no shuffling,
   ``num_workers=0``; one seed, the same on every rank (so the same initial weights).
   The two images of a pair have the same size, so padding is the same on 1 and 2 processes; a
   larger total batch would pad a rank's images to another size than the single process's
   batch, which is why the total batch is 2.
   Batches are plain consecutive indices (mmdet's AspectRatioBatchSampler is dropped).
5. CPU: every process uses the same number of threads (``--threads``, default 1). CUDA: TF32 is
   switched off (``NVIDIA_TF32_OVERRIDE=0``; ``--allow-tf32`` keeps PyTorch's default, TF32
   convolutions), since batch 2 and batch 1 may run different convolution algorithms.

Then the only differences left are fp32 rounding (different reduction orders: batch 2 vs 1 in
one convolution, all-reduces, sums over 2 images vs means of 2 ranks), so the tolerances are
tools/parity.py's: iteration 1 (same weights, same images) within ``--first-rtol`` (1e-5) for
every key, and the losses (``loss_cls``, ``loss_bbox``, ``loss``) of the first ``--horizon`` (20)
iterations within ``--rtol`` (1e-3), relative difference |a-b| / max(|a|,|b|). ``grad_norm``
after iteration 1 is reported, not checked: it is the most rounding-sensitive number of the
step, and on 2 H200s it crossed 1e-3 by iteration 16-20 in *every* comparison, mmdet's own
loss on 1 vs 2 GPUs and ours vs mmdet on one GPU included (docs/gpu-validation.md).
The config's LR schedule is kept, warm-up included (unlike
tools/parity.py, which shortens the warm-up of short runs).

After the first iterations, training amplifies rounding differences, whatever their origin:
``--control`` adds a single-process run (ours) in which the two images of every batch come in
swapped order, the same training in exact arithmetic, compared with ours on 1 process and
reported, not checked. On CPU (R18 config, AdamW from random init) it measured the same growth
as 1 vs 2 processes: grad_norm differences from ~1e-7 to 4e-4 by iteration 7 and 4e-3 by
iteration 12, which is why the CPU default is 6 iterations (20 on CUDA).

Outputs in ``--work-dir`` (default work_dirs/ddp_parity): ``report.json`` (settings, tolerances,
every logged value, every difference, checks, verdict), ``summary.md`` (the tables printed at the
end), ``ddp_parity.log``, ``configs/`` (the derived configs, one per world size) and one folder
per run (``ours_w2``, ...) with ``train.log`` (both processes' output) and mmengine's logs.
Exit code 0 = every check passed, 1 = a check failed or a run failed, 2 = cannot run here
(e.g. ``--device cuda`` with fewer than 2 GPUs).
"""
import argparse
import datetime
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / 'tools'
CPU_CONFIG = REPO / 'configs' / 'parity' / 'retinanet_r18_fpn_synthetic_cpu.py'
GPU_CONFIG = REPO / 'configs' / 'parity' / 'retinanet_r50_fpn_synthetic_gpu.py'
KEYS = ('loss_cls', 'loss_bbox', 'loss', 'grad_norm')
CHECKED_OVER_HORIZON = ('loss_cls', 'loss_bbox', 'loss')  # grad_norm: iteration 1 only
LOSSES = ('ours', 'mmdet')
WORLDS = (1, 2)
TOTAL_BATCH = 2
ALL_RUNS = ('ours:1', 'ours:2', 'mmdet:1', 'mmdet:2')
CONTROL_LABEL = 'control: ours, 1 process, each pair in swapped order'
# (label, run a, run b, checked): b is compared against a
COMPARISONS = (('ours: 1 vs 2 processes', 'ours:1', 'ours:2', True),
               ('mmdet: 1 vs 2 processes', 'mmdet:1', 'mmdet:2', True),
               ('2 processes: ours vs mmdet', 'mmdet:2', 'ours:2', True),
               ('1 process: ours vs mmdet', 'mmdet:1', 'ours:1', True),
               (CONTROL_LABEL, 'ours:1', 'control:1', False))
LOSS_TYPES = {'ours': 'TritonFocalLoss', 'mmdet': 'FocalLoss',
              'control': 'TritonFocalLoss, pairs swapped'}

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

# tools/parity.py's fp32 values, quoted by --help only (which should not import torch and mmdet
# through tools/parity.py); the runs take them from tools/parity.py (see tolerances())
DEFAULT_HORIZON = 20
DEFAULT_ITERS = {'cuda': 20, 'cpu': 6}
_FALLBACK_TOL = dict(first_rtol=1e-5, rtol=1e-3)


def tolerances(device: str) -> tuple:
    """(dict(first_rtol, rtol), horizon, source): tools/parity.py's fp32 tolerances for `device`
    (imported lazily: it imports torch and mmdet, which `--help` does not need)."""
    from parity import DEFAULT_HORIZON as horizon
    from parity import TOLERANCES

    t = TOLERANCES[(device, 'none')]
    return dict(first_rtol=t['first_rtol'], rtol=t['rtol']), horizon, 'tools/parity.py TOLERANCES'


def _run_name(spec: str) -> str:
    loss, world = spec.split(':')
    return f'{loss}_w{world}'


def _parse_run(spec: str) -> str:
    try:
        loss, world = spec.split(':')
        if (loss in LOSSES and int(world) in WORLDS) or (loss, world) == ('control', '1'):
            return f'{loss}:{int(world)}'
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f'{spec!r}: expected LOSS:PROCESSES with LOSS in '
                                     f'{LOSSES} and PROCESSES in {WORLDS}, e.g. ours:2 (or '
                                     'control:1, see --control)')


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except None / False ones (their help says what happens)."""

    def _get_help_string(self, action):
        if action.default in (None, False):
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    from mmengine.config import DictAction

    fp32 = _FALLBACK_TOL
    p = argparse.ArgumentParser(
        description='Train RetinaNet with tools/dist_train.sh on 1 and on 2 processes at the same '
                    'total batch (paired synthetic data), with TritonFocalLoss and with mmdet '
                    'FocalLoss, and compare the per-iteration losses and gradient norms.',
        epilog='Exit code: 0 pass, 1 fail (a check or a run), 2 cannot run here.',
        formatter_class=_HelpFormatter)
    p.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto',
                   help="'auto': cuda if a GPU is visible, else cpu; the 2-process runs need 2 "
                        'GPUs on cuda, and 2 processes over gloo on cpu')
    p.add_argument('--config', default=None,
                   help='base config (default: configs/parity/retinanet_r18_fpn_synthetic_cpu.py '
                        'on cpu, configs/parity/retinanet_r50_fpn_synthetic_gpu.py on cuda)')
    p.add_argument('--iters', type=int, default=None,
                   help=f'training iterations (default: {DEFAULT_ITERS["cuda"]} on cuda, '
                        f'{DEFAULT_ITERS["cpu"]} on cpu, where the R18 config (AdamW from random '
                        'init) turns rounding differences into 1e-3 differences in grad_norm '
                        'from about iteration 7 on, with or without DDP: see --control)')
    p.add_argument('--img-size', type=int, default=None,
                   help='long side of the generated images and the Resize scale (N, N) '
                        "(default: the config's parity.img_size for the images, and the "
                        "config's own Resize scale, e.g. (1333, 800) for the GPU config)")
    p.add_argument('--num-train', type=int, default=None,
                   help='paired synthetic train images (even; default 2 x --iters: every '
                        'iteration sees a new pair)')
    p.add_argument('--losses', choices=('both', 'ours', 'mmdet'), default='both',
                   help='which losses to train (on 1 and 2 processes each)')
    p.add_argument('--runs', nargs='+', type=_parse_run, default=None, metavar='LOSS:N',
                   help=f'exactly these runs instead, from {" ".join(ALL_RUNS)} (overrides '
                        '--losses); comparisons whose two runs are there are made')
    p.add_argument('--control', action='store_true',
                   help='one more run: ours on 1 process with the two images of every batch in '
                        'swapped order (images 2k+1, 2k: the same batch, so the same training in '
                        'exact arithmetic, only the reduction orders change, as between 1 and 2 '
                        'processes), compared with ours on 1 process and reported, not checked: '
                        'how fast rounding differences of that kind grow in this training, '
                        'without DDP, to read the later iterations of the checked comparisons')
    p.add_argument('--norm', choices=('sync', 'local'), default='sync',
                   help="'sync': the model's BatchNorm layers become synchronized batch norm "
                        "(SyncBN on cuda, CPUSyncBN on cpu); 'local': as in the config, per-rank "
                        'batch statistics (1 vs 2 processes then differ: for demonstration)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default=None,
                   metavar='KEY=VALUE',
                   help='override settings of the derived configs (mmengine syntax, as '
                        'tools/train.py), applied last, e.g. optim_wrapper.optimizer.type=SGD')
    p.add_argument('--work-dir', default='work_dirs/ddp_parity')
    p.add_argument('--first-rtol', type=float, default=None,
                   help="iteration 1 tolerance (default: tools/parity.py's fp32 first_rtol, "
                        f'{fp32["first_rtol"]:g})')
    p.add_argument('--rtol', type=float, default=None,
                   help='per-iteration tolerance over the first --horizon iterations (default: '
                        f"tools/parity.py's fp32 rtol, {fp32['rtol']:g})")
    p.add_argument('--horizon', type=int, default=None,
                   help="iterations checked against --rtol (0: all; default: tools/parity.py's "
                        f'DEFAULT_HORIZON, {DEFAULT_HORIZON})')
    p.add_argument('--seed', type=int, default=0, help='training seed (same on every rank)')
    p.add_argument('--data-seed', type=int, default=0, help='synthetic dataset seed')
    p.add_argument('--threads', type=int, default=1,
                   help='cpu: OMP_NUM_THREADS of every training process (the same for 1 and 2 '
                        'processes, so that the CPU kernels reduce in the same way)')
    p.add_argument('--allow-tf32', action='store_true',
                   help='cuda: keep TF32 convolutions (default: NVIDIA_TF32_OVERRIDE=0)')
    p.add_argument('--timeout', type=float, default=900, help='seconds per training run')
    p.add_argument('--no-progress', action='store_true', help='no rich progress bars')
    args = p.parse_args(argv)
    if args.iters is not None and args.iters < 1:
        p.error('--iters must be >= 1')
    if args.iters is None and args.device != 'auto':  # 'auto': set once the device is known
        args.iters = DEFAULT_ITERS[args.device]
    if args.num_train is not None and (args.num_train < 2 or args.num_train % 2):
        p.error('--num-train must be even and >= 2 (pairs of images)')
    if args.runs is None:
        keep = LOSSES if args.losses == 'both' else (args.losses,)
        args.runs = [r for r in ALL_RUNS if r.split(':')[0] in keep]
    else:
        args.runs = list(dict.fromkeys(args.runs))
    if args.control:
        args.runs += [r for r in ('ours:1', 'control:1') if r not in args.runs]
    return args


# ---------------------------------------------------------------------------------------------
# logging
# ---------------------------------------------------------------------------------------------
_LOGGER = None


def log(msg: str) -> None:
    if _LOGGER is not None:
        _LOGGER.info(msg)
    else:
        print(f'[ddp-parity] {msg}', flush=True)


def _setup_logger(work_dir: Path):
    global _LOGGER
    from mmengine.logging import MMLogger

    name = f'ddp_parity_{os.getpid()}_{time.time_ns()}'
    _LOGGER = MMLogger.get_instance(name, logger_name='ddp-parity',
                                    log_file=str(work_dir / 'ddp_parity.log'), log_level='INFO')


# ---------------------------------------------------------------------------------------------
# data and config
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


def build_config(args, device: str, data_root: Path, world: int):
    """The config both losses train from at world size `world` (tools/train.py --triton-focal
    swaps the loss). Returns (Config, list of what was changed)."""
    from mmengine.config import Config

    cfg = Config.fromfile(args.config)
    changes = []
    root = str(data_root).rstrip('/') + '/'
    dl = cfg.train_dataloader
    dl.dataset.data_root = root
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
    if args.img_size:
        for t in kept:
            if isinstance(t, dict) and t.get('type') in ('Resize', 'mmdet.Resize'):
                t['scale'] = (args.img_size, args.img_size)
                t.pop('scale_factor', None)
        changes.append(f'train Resize scale ({args.img_size}, {args.img_size})')
    dl.dataset.pipeline = kept
    if isinstance(cfg.get('train_pipeline'), list):  # the unused top-level copy: the same
        cfg.train_pipeline = kept
    # no validation or test: the runs are about the training losses
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=args.iters,
                         val_interval=args.iters + 1)
    # The config's LR schedule is kept as it is, warm-up included, even when the run ends
    # inside it (tools/parity.py shortens the warm-up of short runs, for its loss trends): at
    # full LR from the second iteration, rounding differences of any origin (1 vs 2 processes,
    # or merely the order of the 2 images in a batch: --control) reach 1e-3 in grad_norm within
    # 3-5 iterations (CPU config, AdamW), and the comparison would be over before it starts.
    cfg.randomness = dict(seed=args.seed, deterministic=False, diff_rank_seed=False)
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
    if args.norm == 'sync':
        norm = 'SyncBN' if device == 'cuda' else 'CPUSyncBN'
        paths = _walk_norm_cfgs(cfg.model, norm)
        if paths:
            changes.append(f"{', '.join(paths)}: type {norm}")
    cfg.launcher = 'pytorch'
    cfg.load_from = None
    cfg.resume = False
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
        changes.append('--cfg-options ' + ' '.join(f'{k}={v}' for k, v in
                                                   args.cfg_options.items()))
    return cfg, changes


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _scalars(run_dir: Path) -> list:
    files = sorted(run_dir.glob('*/vis_data/scalars.json'))
    if not files:
        return []
    rows = []
    for line in files[-1].read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line being written
            continue
        if 'loss_cls' in row:
            rows.append(row)
    return rows


def run_training(spec: str, cfg_path: Path, args, device: str, work_dir: Path,
                 progress=None, task=None) -> dict:
    loss, world = spec.split(':')
    world = int(world)
    run_dir = work_dir / _run_name(spec)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = ['bash', str(TOOLS / 'dist_train.sh'), str(cfg_path), str(world), '--work-dir',
           str(run_dir)] + (['--triton-focal'] if loss in ('ours', 'control') else [])
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()))
    if device == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''
        env['OMP_NUM_THREADS'] = str(args.threads)
    elif not args.allow_tf32:
        env['NVIDIA_TF32_OVERRIDE'] = '0'
    rec = dict(run=spec, loss_type=LOSS_TYPES[loss], processes=world,
               batch_per_process=TOTAL_BATCH // world, command=cmd, status='not run',
               returncode=None, log=str(run_dir / 'train.log'))
    t0 = time.perf_counter()
    with open(run_dir / 'train.log', 'w') as out:
        proc = subprocess.Popen(cmd, cwd=str(REPO), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                if time.perf_counter() - t0 > args.timeout:
                    raise subprocess.TimeoutExpired(cmd, args.timeout)
                if progress is not None:
                    progress.update(task, completed=len(_scalars(run_dir)))
                time.sleep(0.5)
        except BaseException as e:  # timeout or Ctrl-C: stop torchrun and its workers
            try:
                os.killpg(proc.pid, 15)
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, 9)
                except OSError:
                    pass
                proc.wait()
            if not isinstance(e, subprocess.TimeoutExpired):
                raise
            rec['error'] = f'timed out after {args.timeout:g} s'
    rec['wall_s'] = time.perf_counter() - t0
    rec['returncode'] = proc.returncode
    rows = _scalars(run_dir)
    if progress is not None:
        progress.update(task, completed=len(rows))
    rec['iters'] = [int(r['iter']) for r in rows]
    for k in KEYS + ('lr',):
        rec[k] = [float(r[k]) if k in r else float('nan') for r in rows]
    text = (run_dir / 'train.log').read_text(errors='replace')
    rec['distributed'] = 'Distributed training: True' in text
    rec['swapped'] = 'FocalLoss replaced by TritonFocalLoss' in text
    complete = rec['iters'] == list(range(1, args.iters + 1))
    if proc.returncode == 0 and complete:
        rec['status'] = 'ok'
    else:
        rec['status'] = 'failed'
        rec.setdefault('error', f'exit code {proc.returncode}, {len(rows)} of {args.iters} '
                                'iterations logged')
        rec['log_tail'] = text[-3000:]
    return rec


# ---------------------------------------------------------------------------------------------
# comparison
# ---------------------------------------------------------------------------------------------
def compare(a: dict, b: dict, tol: dict, horizon: int) -> dict:
    from parity import rel_diffs  # |a-b| / max(|a|,|b|), inf where either is not finite

    out = dict(a=a['run'], b=b['run'], rel_diff_per_iter={}, first_iter_rel_diff={},
               max_rel_diff_horizon={}, argmax_iter_horizon={}, max_rel_diff={}, checks={})
    checks = out['checks']
    n = min(len(a['iters']), len(b['iters']))
    checks['same iterations logged'] = a['iters'] == b['iters'] and n > 0
    h = n if horizon <= 0 else min(horizon, n)
    out['horizon_used'] = h
    for k in KEYS:
        r = rel_diffs(a[k][:n], b[k][:n])
        out['rel_diff_per_iter'][k] = r
        if not r:
            continue
        out['first_iter_rel_diff'][k] = r[0]
        out['max_rel_diff'][k] = max(r)
        j = max(range(h), key=lambda i: r[i])
        out['max_rel_diff_horizon'][k], out['argmax_iter_horizon'][k] = r[j], j + 1
        checks[f'{k}: iteration 1 rel diff <= {tol["first_rtol"]:g}'] = r[0] <= tol['first_rtol']
        if k in CHECKED_OVER_HORIZON:
            checks[f'{k}: rel diff, iterations 1-{h}, <= {tol["rtol"]:g}'] = r[j] <= tol['rtol']
    out['passed'] = all(checks.values())
    out['reasons'] = [c for c, v in checks.items() if not v]
    return out


# ---------------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------------
def _fmt(v, spec='.3e'):
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return format(v, spec) if math.isfinite(v) else str(v)
    return str(v)


def summary_text(report: dict) -> str:
    s, runs, tol = report['settings'], report['runs'], report['tolerance']
    lines = [f"# DDP parity, 1 vs 2 processes at total batch {TOTAL_BATCH}: "
             f"**{report['status'].upper()}**", '',
             f"`{s['config_name']}` on {s['device']} ({report['device_name']}), "
             f"{s['iters']} iterations, {s['images']}, paired synthetic data "
             f"({s['num_train']} train images), norm `{s['norm']}`, seed {s['seed']}. "
             f"{report['date']}.", '',
             '| run | loss | processes x batch | status | wall s | loss_cls it 1 | '
             'loss_bbox it 1 | grad_norm it 1 |', '|---|---|---|---|---|---|---|---|']
    for name, r in runs.items():
        first = {k: (r.get(k) or [None])[0] for k in KEYS}
        lines.append(f"| {name} | {r['loss_type']} | {r['processes']} x "
                     f"{r['batch_per_process']} | {r['status']}"
                     f"{' (' + r['error'] + ')' if r.get('error') else ''} | "
                     f"{r.get('wall_s', 0):.1f} | {_fmt(first['loss_cls'], '.7g')} | "
                     f"{_fmt(first['loss_bbox'], '.7g')} | {_fmt(first['grad_norm'], '.7g')} |")
    for label, c in report['comparisons'].items():
        verdict = ('pass' if c['passed'] else 'FAIL') if c.get('checked', True) else \
            'reported, not checked'
        lines += ['', f"## {label}: {verdict} "
                      f"({c['b']} against {c['a']}), relative difference per iteration", '',
                  '| iteration | ' + ' | '.join(KEYS) + ' |', '|---' * (len(KEYS) + 1) + '|']
        r = c['rel_diff_per_iter']
        for i in range(len(r.get(KEYS[0], []))):
            lines.append(f'| {i + 1} | ' + ' | '.join(_fmt(r[k][i]) for k in KEYS) + ' |')
        lines.append(f"| max 1-{c.get('horizon_used', '?')} | " + ' | '.join(
            f"{_fmt(c['max_rel_diff_horizon'].get(k))} (it {c['argmax_iter_horizon'].get(k)})"
            for k in KEYS) + ' |')
        if c['reasons'] and c.get('checked', True):
            lines += ['', '**Failed:** ' + '; '.join(c['reasons'])]
    if report['reasons']:
        lines += ['', '**Failed:** ' + '; '.join(report['reasons'])]
    lines += ['', f"Tolerances ({tol['source']}), relative difference |a-b| / max(|a|,|b|): "
                  f"iteration 1 <= {tol['first_rtol']:g} for {', '.join(KEYS)}; iterations "
                  f"1-{tol['horizon_used']} <= {tol['rtol']:g} for "
                  f"{', '.join(CHECKED_OVER_HORIZON)} (grad_norm reported). Total wall "
                  f"time {report['wall_s']:.0f} s.", '']
    return '\n'.join(lines)


def _device_name(device: str) -> str:
    if device == 'cuda':
        import torch

        return f'{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}'
    from parity import device_name  # tools/parity.py: the CPU model and core count

    return device_name('cpu')


# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    from parity import _jsonable as jsonable
    from parity import versions

    t_start = time.perf_counter()
    work_dir = Path(args.work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    for f in ('report.json', 'summary.md', 'ddp_parity.log'):
        (work_dir / f).unlink(missing_ok=True)
    _setup_logger(work_dir)

    import torch

    from mmdet_focal_triton.datasets import make_synthetic_coco

    if args.device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    else:
        device = args.device
    max_world = max(int(r.split(':')[1]) for r in args.runs)
    if device == 'cuda':
        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpu < max_world:
            log(f'--device cuda: {max_world} GPU(s) needed, {n_gpu} visible')
            return 2
    if args.config is None:
        args.config = str(GPU_CONFIG if device == 'cuda' else CPU_CONFIG)
    if args.iters is None:
        args.iters = DEFAULT_ITERS[device]
    from mmengine.config import Config

    pdef = Config.fromfile(args.config).get('parity', {}) or {}
    num_train = args.num_train or 2 * args.iters
    gen_size = args.img_size or pdef.get('img_size', 320)
    tol, horizon, source = tolerances(device)
    if args.horizon is None:
        args.horizon = horizon
    given = {k: getattr(args, k) for k in ('first_rtol', 'rtol') if getattr(args, k) is not None}
    tol.update(given)
    tol['horizon'] = args.horizon
    tol['horizon_used'] = args.iters if args.horizon <= 0 else min(args.horizon, args.iters)
    tol['source'] = source + (('; command line: ' + ', '.join(given)) if given else '')

    data_root = make_synthetic_coco(num_train=num_train, num_val=2, img_size=gen_size,
                                    seed=args.data_seed, paired=True)
    pairs = check_pairs(data_root)
    log(f"dataset: paired synthetic COCO, {num_train} train images ({pairs['pairs']} pairs, "
        f"{'every pair verified: same size and boxes, different pixels' if pairs['ok'] else 'BAD PAIRS: ' + str(pairs['bad_pairs'][:3])}), "  # noqa: E501
        f'long side {gen_size}, at {data_root}')

    cfg_dir = work_dir / 'configs'
    cfg_dir.mkdir(exist_ok=True)
    cfg_paths, changes, resize = {}, {}, []
    for world in sorted({int(r.split(':')[1]) for r in args.runs}):
        cfg, ch = build_config(args, device, data_root, world)
        path = cfg_dir / f'{Path(args.config).stem}_ddp_w{world}.py'
        cfg.dump(str(path))
        cfg_paths[world], changes[world] = path, ch
        if world == 1 and 'control:1' in args.runs:
            ann = write_swapped_ann(data_root, cfg_dir / 'instances_train_pairs_swapped.json')
            cfg.train_dataloader.dataset.ann_file = str(ann)  # absolute: data_root not joined
            cfg_paths['control'] = cfg_dir / f'{Path(args.config).stem}_ddp_w1_control.py'
            cfg.dump(str(cfg_paths['control']))
            changes['control'] = ch + [f'ann_file {ann.name} (every pair in swapped order)']
        if world == max_world:
            resize = [t.get('scale') for t in cfg.train_dataloader.dataset.pipeline
                      if isinstance(t, dict) and t.get('type') in ('Resize', 'mmdet.Resize')]
    images = f"{gen_size}-px images resized to {tuple(resize[0]) if resize else '?'}"
    for world, path in cfg_paths.items():
        log(f"config for {world if world != 'control' else 'the control'}: {path} "
            f"({'; '.join(changes[world])})")
    log(f"device {device}, {args.iters} iterations, runs {' '.join(args.runs)}; tolerances "
        f"iteration 1 {tol['first_rtol']:g}, iterations 1-{tol['horizon_used']} "
        f"{tol['rtol']:g}")

    runs = {}
    progress = None
    if not args.no_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
        progress = Progress('[progress.description]{task.description}', BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn())
        progress.start()
    try:
        for i, spec in enumerate(args.runs, 1):
            loss, world = spec.split(':')
            log(f'run {i}/{len(args.runs)}: {spec} ({LOSS_TYPES[loss]}, {world} process(es) x '
                f'batch {TOTAL_BATCH // int(world)})')
            task = progress.add_task(f'{_run_name(spec)} iterations', total=args.iters) \
                if progress is not None else None
            cfg_path = cfg_paths['control' if loss == 'control' else int(world)]
            rec = run_training(spec, cfg_path, args, device, work_dir, progress, task)
            runs[_run_name(spec)] = rec
            first = {k: (rec.get(k) or [float('nan')])[0] for k in KEYS}
            log(f"run {i}/{len(args.runs)}: {spec} {rec['status']} in {rec['wall_s']:.1f} s"
                + (f" ({rec['error']})" if rec.get('error') else '')
                + '; iteration 1: ' + ', '.join(f'{k} {first[k]:.7g}' for k in KEYS))
            if rec['status'] != 'ok':
                log(f"{spec}: last lines of {rec['log']}:\n{rec.get('log_tail', '')[-1500:]}")
    finally:
        if progress is not None:
            progress.stop()

    reasons = [f"{n}: {r['error']}" for n, r in runs.items() if r['status'] != 'ok']
    if not pairs['ok']:
        reasons.append('the dataset is not paired as expected')
    for n, r in runs.items():
        if r['status'] == 'ok' and r['processes'] > 1 and not r['distributed']:
            reasons.append(f'{n}: not a distributed run')
        if r['status'] == 'ok' and (r['run'].startswith(('ours', 'control')) != r['swapped']):
            reasons.append(f"{n}: FocalLoss {'not ' if not r['swapped'] else ''}replaced by "
                           'TritonFocalLoss')
        if r['status'] == 'ok' and not all(math.isfinite(v) for k in KEYS for v in r[k]):
            reasons.append(f'{n}: non-finite values logged')
    comparisons = {}
    for label, a, b, checked in COMPARISONS:
        ra, rb = runs.get(_run_name(a)), runs.get(_run_name(b))
        if ra and rb and ra['status'] == 'ok' and rb['status'] == 'ok':
            c = compare(ra, rb, tol, args.horizon)
            c['checked'] = checked
            comparisons[label] = c
            if checked:
                reasons += [f'{label}: {x}' for x in c['reasons']]
    if not comparisons and not reasons:
        reasons.append('no comparison: fewer than two runs of a comparison were asked for')
    status = 'fail' if reasons else 'pass'
    exit_code = 1 if reasons else 0
    settings = dict(
        config=str(Path(args.config).absolute()), config_name=Path(args.config).stem,
        derived_configs={str(w): str(p) for w, p in cfg_paths.items()},
        config_changes={str(w): c for w, c in changes.items()}, device=device,
        iters=args.iters, images=images, img_size=args.img_size, num_train=num_train,
        total_batch=TOTAL_BATCH, runs=args.runs, norm=args.norm, seed=args.seed,
        data_seed=args.data_seed, data_root=str(data_root),
        threads=args.threads if device == 'cpu' else None,
        tf32=(args.allow_tf32 if device == 'cuda' else None))
    report = dict(
        tool='tools/ddp_parity.py', status=status, passed=status == 'pass',
        exit_code=exit_code, reasons=reasons,
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        command=[sys.executable] + (sys.argv if argv is None else [__file__] + list(argv)),
        tolerance=tol, settings=settings, dataset=pairs, device_name=_device_name(device),
        versions=versions(), runs=runs, comparisons=comparisons,
        wall_s=time.perf_counter() - t_start)
    report = jsonable(report)
    text = summary_text(report)
    (work_dir / 'summary.md').write_text(text)
    (work_dir / 'report.json').write_text(json.dumps(report, indent=1))
    print(text, flush=True)
    log(f"{status.upper()} (exit {exit_code}) in {report['wall_s']:.0f} s; wrote "
        f"{work_dir / 'report.json'}, {work_dir / 'summary.md'}")
    return exit_code


if __name__ == '__main__':
    sys.exit(main())
