"""Data-parallel parity: the same detector (RetinaNet with ``FocalLoss``, or RTMDet-tiny with
``QualityFocalLoss``: ``model``) trained by ``tools/dist_train.sh`` on 1 and on 2 processes
(GPUs, or CPU processes over gloo) at the same total batch, with our loss and with mmdet's,
compared iteration by iteration (``run_ddp_parity``).

Four trainings (``runs`` / ``losses`` choose fewer): ours and mmdet's loss, each on 1 process
with batch 2 and on 2 processes with batch 1 each (``bash tools/dist_train.sh CONFIG 1|2
[--triton-focal]``, i.e. torchrun -> tools/train.py -> mmengine's MMDistributedDataParallel), and
four comparisons of the per-iteration ``loss_cls``, ``loss_bbox``, ``loss`` and ``grad_norm``:
ours 1 vs 2 processes, mmdet 1 vs 2 processes, ours vs mmdet on 2 processes and on 1.

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
   RTMDet (``RTMDetHead.loss_by_feat``) all-reduces its normalisers (``reduce_mean`` of the
   assigned scores' sum and of the positives' IoU weights): each rank divides by the mean m =
   (a0 + a1)/2 of the ranks' factors, and (g0/m + g1/m)/2 = (g0 + g1)/(a0 + a1), the single
   process's, whatever the assigner gave each image, as long as the factors are at least 1:
   mmdet clamps them (``.clamp_(min=1)``), and from random init the sum of RTMDet's assigned
   quality scores is far below 1, so each rank divides by 1 and the mean over the 2 ranks is half
   the single process's loss (measured: 0.5000 in every loss and in grad_norm). For RTMDet the
   1-vs-2-process comparisons are therefore reported, not checked (``UNCLAMPED_MODELS``); ours
   against mmdet on the same processes is checked as for RetinaNet.
2. mmengine logs rank 0's losses only: ``AverageLogVarsHook`` (mmdet_focal_triton.distributed)
   replaces the logged values by their mean over the ranks, before the logger sees them.
   ``grad_norm`` is the norm of DDP's averaged gradient, the same on every rank.
3. The parity configs train the backbone's BatchNorm layers (random init, ``norm_eval=False``):
   batch statistics over 1 image per rank are not those over 2 images. ``norm='sync'`` (the
   default) makes them synchronized batch norm over the ranks (``SyncBN``, PyTorch's, on CUDA;
   ``CPUSyncBN`` of mmdet_focal_triton.distributed on CPU, where PyTorch's refuses CPU tensors).
   ``norm='local'`` keeps plain BN and shows the difference.
4. No randomness that depends on the number of processes: no RandomFlip, no shuffling,
   ``num_workers=0``; one seed, the same on every rank (so the same initial weights). The two
   images of a pair have the same size, so padding is the same on 1 and 2 processes; a larger
   total batch would pad a rank's images to another size than the single process's batch, which
   is why the total batch is 2. Batches are plain consecutive indices (mmdet's
   AspectRatioBatchSampler is dropped).
5. CPU: every process uses the same number of threads (``threads``, default 1). CUDA: TF32 is
   switched off (``NVIDIA_TF32_OVERRIDE=0``; ``allow_tf32`` keeps PyTorch's default).

Then the only differences left are fp32 rounding (different reduction orders), so: iteration 1
(same weights, same images) within ``first_rtol`` (1e-5, SPEC's fp32 bound) for every key, and the
losses (``loss_cls``, ``loss_bbox``, ``loss``) of the first ``horizon`` (20) iterations within
``rtol`` (1e-3), relative difference |a-b| / max(|a|,|b|). ``grad_norm`` after iteration 1 is
reported, not checked: it is the most rounding-sensitive number of the step, and on 2 H200s it
crossed 1e-3 by iteration 16-20 in *every* comparison, mmdet's own loss on 1 vs 2 GPUs included
(docs/gpu-validation.md). The config's LR schedule is kept, warm-up included.

After the first iterations training amplifies rounding differences, whatever their origin:
``control=True`` adds a single-process run (ours) in which the two images of every batch come in
swapped order, the same training in exact arithmetic, compared with ours on 1 process and
reported, not checked. On CPU (R18 config, AdamW from random init) it grows as fast as 1 vs 2
processes (grad_norm 4e-4 by iteration 7, 4e-3 by 12), which is why the CPU default is 6
iterations (20 on CUDA).

Outputs in ``work_dir``: ``report.json``, ``summary.md`` (every per-iteration table),
``ddp_parity.log`` (the full log), ``configs/`` (the derived configs, one per world size) and one
folder per run (``ours_w2``, ...) with ``train.log`` (both processes' output) and mmengine's logs.
Statuses: 'pass' (exit code 0), 'fail' (1), 'cannot_run' (2: e.g. fewer than 2 GPUs).
"""
from __future__ import annotations

import dataclasses
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

from . import config as pcfg
from .compare import rel_diffs
from .console import RunConsole
from .ddp_config import TOTAL_BATCH, build_config, check_pairs, write_swapped_ann
from .report import device_name, fmt, jsonable, versions

KEYS = ('loss_cls', 'loss_bbox', 'loss', 'grad_norm')
CHECKED_OVER_HORIZON = ('loss_cls', 'loss_bbox', 'loss')  # grad_norm: iteration 1 only
LOSSES = ('ours', 'mmdet')
WORLDS = (1, 2)
ALL_RUNS = ('ours:1', 'ours:2', 'mmdet:1', 'mmdet:2')
CONTROL_LABEL = 'control: ours, 1 process, each pair in swapped order'
# (label, run a, run b, checked): b is compared against a
COMPARISONS = (('ours: 1 vs 2 processes', 'ours:1', 'ours:2', True),
               ('mmdet: 1 vs 2 processes', 'mmdet:1', 'mmdet:2', True),
               ('2 processes: ours vs mmdet', 'mmdet:2', 'ours:2', True),
               ('1 process: ours vs mmdet', 'mmdet:1', 'ours:1', True),
               (CONTROL_LABEL, 'ours:1', 'control:1', False))
MODELS = tuple(pcfg.MODEL_CONFIGS)  # 'retinanet', 'rtmdet-tiny'
# detectors whose loss normalisers make 1 x batch 2 equal 2 x batch 1 from the first iteration
# (RTMDet clamps its all-reduced normalisers at 1: see the module docstring)
UNCLAMPED_MODELS = ('RetinaNet',)
DEFAULT_ITERS = {'cuda': 20, 'cpu': 6}
DEFAULT_HORIZON = 20
RTOL = 1e-3  # per iteration over the horizon: rounding, amplified for a few iterations
EXIT_CODES = {'pass': 0, 'fail': 1, 'cannot_run': 2}


@dataclasses.dataclass
class DDPParityOptions:
    """What ``run_ddp_parity`` does (None: the default described in the module docstring)."""

    device: str = 'auto'
    model: str = pcfg.DEFAULT_MODEL  # the shipped config's detector, when config is None
    config: str | None = None
    iters: int | None = None  # 6 on CPU, 20 on CUDA
    img_size: int | None = None
    num_train: int | None = None  # paired images (even); default 2 x iters
    losses: str = 'both'
    runs: list | None = None  # e.g. ['ours:1', 'ours:2']; overrides losses
    control: bool = False
    norm: str = 'sync'  # 'sync' | 'local'
    cfg_options: dict | None = None  # merged into the derived configs, last
    work_dir: str = 'work_dirs/ddp_parity'
    first_rtol: float | None = None
    rtol: float | None = None
    horizon: int | None = None
    seed: int = 0
    data_seed: int = 0
    threads: int = 1
    allow_tf32: bool = False
    timeout: float = 900
    progress: bool = True
    verbose: bool = False
    dist_train: str | None = None  # None: default_dist_train()


def parse_run(spec: str) -> str:
    """'ours:2' -> 'ours:2'; ValueError for anything but LOSS:PROCESSES (or control:1)."""
    try:
        loss, world = spec.split(':')
        if (loss in LOSSES and int(world) in WORLDS) or (loss, world) == ('control', '1'):
            return f'{loss}:{int(world)}'
    except ValueError:
        pass
    raise ValueError(f'{spec!r}: expected LOSS:PROCESSES with LOSS in {LOSSES} and PROCESSES '
                     f'in {WORLDS}, e.g. ours:2 (or control:1)')


def resolve_runs(runs, losses: str, control: bool) -> list:
    if runs is None:
        keep = LOSSES if losses == 'both' else (losses,)
        runs = [r for r in ALL_RUNS if r.split(':')[0] in keep]
    else:
        runs = list(dict.fromkeys(parse_run(r) for r in runs))
    if control:
        runs += [r for r in ('ours:1', 'control:1') if r not in runs]
    return runs


def loss_type_names(mmdet_types) -> dict:
    """``{'ours': ..., 'mmdet': ..., 'control': ...}``: the loss each kind of run trains, from
    mmdet's family types in the model (e.g. ``['QualityFocalLoss']``)."""
    from mmdet_focal_triton.config_utils import FOCAL_FAMILY

    mmdet = ' + '.join(mmdet_types) or 'FocalLoss'
    ours = ' + '.join(FOCAL_FAMILY[t] for t in mmdet_types) or 'TritonFocalLoss'
    return dict(ours=ours, mmdet=mmdet, control=f'{ours}, pairs swapped')


def run_name(spec: str) -> str:
    loss, world = spec.split(':')
    return f'{loss}_w{world}'


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def read_scalars(run_dir: Path) -> list:
    """The training rows of mmengine's ``vis_data/scalars.json`` of the latest run in
    ``run_dir`` (a line being written is skipped)."""
    files = sorted(run_dir.glob('*/vis_data/scalars.json'))
    if not files:
        return []
    rows = []
    for line in files[-1].read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if 'loss_cls' in row:
            rows.append(row)
    return rows


def default_dist_train() -> Path:
    """The package's launcher: tools/dist_train.sh's command line, training through
    ``python -m mmdet_focal_triton.cli.train`` (tools/ddp_parity.py passes the checkout's)."""
    path = Path(__file__).resolve().parents[1] / 'cli' / 'dist_train.sh'
    if not path.is_file():
        raise FileNotFoundError(f'{path} not found: pass dist_train= (a launcher script with '
                                "tools/dist_train.sh's command line)")
    return path


def run_training(spec: str, cfg_path: Path, opts: DDPParityOptions, device: str,
                 work_dir: Path, bar=None, mmdet_types=('FocalLoss',)) -> dict:
    """One training through ``dist_train.sh`` in a subprocess; its record. ``mmdet_types``:
    mmdet's family losses of the model (``--triton-focal`` swaps each for ours)."""
    from mmdet_focal_triton.config_utils import FOCAL_FAMILY

    loss, world = spec.split(':')
    world = int(world)
    run_dir = work_dir / run_name(spec)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    cmd = ['bash', str(opts.dist_train or default_dist_train()), str(cfg_path), str(world),
           '--work-dir', str(run_dir)] + (['--triton-focal'] if loss in ('ours', 'control')
                                          else [])
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(_free_port()))
    if device == 'cpu':
        env['CUDA_VISIBLE_DEVICES'] = ''
        env['OMP_NUM_THREADS'] = str(opts.threads)
    elif not opts.allow_tf32:
        env['NVIDIA_TF32_OVERRIDE'] = '0'
    rec = dict(run=spec, loss_type=loss_type_names(mmdet_types)[loss], processes=world,
               batch_per_process=TOTAL_BATCH // world, command=cmd, status='not run',
               returncode=None, log=str(run_dir / 'train.log'))
    t0 = time.perf_counter()
    with open(run_dir / 'train.log', 'w') as out:
        proc = subprocess.Popen(cmd, cwd=str(pcfg.REPO), env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while proc.poll() is None:
                if time.perf_counter() - t0 > opts.timeout:
                    raise subprocess.TimeoutExpired(cmd, opts.timeout)
                if bar is not None:
                    rows = read_scalars(run_dir)
                    bar.update(len(rows), _losses_text(rows[-1]) if rows else '')
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
            rec['error'] = f'timed out after {opts.timeout:g} s'
    rec['wall_s'] = time.perf_counter() - t0
    rec['returncode'] = proc.returncode
    rows = read_scalars(run_dir)
    if bar is not None:
        bar.update(len(rows), _losses_text(rows[-1]) if rows else '')
        bar.close()
    rec['iters'] = [int(r['iter']) for r in rows]
    for k in KEYS + ('lr',):
        rec[k] = [float(r[k]) if k in r else float('nan') for r in rows]
    text = (run_dir / 'train.log').read_text(errors='replace')
    rec['distributed'] = 'Distributed training: True' in text
    rec['swapped'] = all(f'{t} replaced by {FOCAL_FAMILY[t]}' in text for t in mmdet_types)
    complete = rec['iters'] == list(range(1, opts.iters + 1))
    if proc.returncode == 0 and complete:
        rec['status'] = 'ok'
    else:
        rec['status'] = 'failed'
        rec.setdefault('error', f'exit code {proc.returncode}, {len(rows)} of {opts.iters} '
                                'iterations logged')
        rec['log_tail'] = text[-3000:]
    return rec


def _losses_text(row: dict) -> str:
    return '  '.join(f'{k} {row[k]:.4f}' for k in ('loss_cls', 'loss_bbox') if k in row)


# ---------------------------------------------------------------------------------------------
# comparison and outputs
# ---------------------------------------------------------------------------------------------
def compare(a: dict, b: dict, tol: dict, horizon: int) -> dict:
    """Run b against run a: iteration 1 of every key within first_rtol, the losses of the first
    ``horizon`` iterations (0: all) within rtol."""
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


def summary_text(report: dict) -> str:
    """summary.md: the runs, and every comparison with its per-iteration table."""
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
                     f"{r.get('wall_s', 0):.1f} | {fmt(first['loss_cls'], '.7g')} | "
                     f"{fmt(first['loss_bbox'], '.7g')} | {fmt(first['grad_norm'], '.7g')} |")
    for label, c in report['comparisons'].items():
        verdict = ('pass' if c['passed'] else 'FAIL') if c.get('checked', True) else \
            'reported, not checked'
        lines += ['', f"## {label}: {verdict} "
                      f"({c['b']} against {c['a']}), relative difference per iteration", '',
                  '| iteration | ' + ' | '.join(KEYS) + ' |', '|---' * (len(KEYS) + 1) + '|']
        r = c['rel_diff_per_iter']
        for i in range(len(r.get(KEYS[0], []))):
            lines.append(f'| {i + 1} | ' + ' | '.join(fmt(r[k][i], '.3e') for k in KEYS) + ' |')
        lines.append(f"| max 1-{c.get('horizon_used', '?')} | " + ' | '.join(
            f"{fmt(c['max_rel_diff_horizon'].get(k), '.3e')} "
            f"(it {c['argmax_iter_horizon'].get(k)})" for k in KEYS) + ' |')
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


def summary_table(report: dict):
    """The rich table printed at the end: the verdict, one row per comparison."""
    from rich.table import Table

    table = Table(title=f"ddp parity: {report['status'].upper()} (exit {report['exit_code']}) "
                        f"in {report['wall_s']:.0f} s", title_justify='left')
    for col in ('comparison', 'iteration 1, max rel diff',
                f"iterations 1-{report['tolerance']['horizon_used']}, max rel diff", 'result'):
        table.add_column(col, overflow='fold')
    for label, c in report['comparisons'].items():
        first = max(c['first_iter_rel_diff'].values(), default=float('nan'))
        hor = max((c['max_rel_diff_horizon'][k] for k in CHECKED_OVER_HORIZON
                   if k in c['max_rel_diff_horizon']), default=float('nan'))
        res = ('pass' if c['passed'] else 'FAIL') if c.get('checked', True) else 'reported'
        table.add_row(label, fmt(first, '.2e'), fmt(hor, '.2e'), res,
                      style=None if res != 'FAIL' else 'bold red')
    return table


# ---------------------------------------------------------------------------------------------
def run_ddp_parity(options: DDPParityOptions | None = None, **kwargs) -> dict:
    """Run the data-parallel parity check; returns the report (also ``work_dir/report.json``);
    ``report['exit_code']``: 0 pass, 1 fail, 2 cannot run here."""
    opts = dataclasses.replace(options or DDPParityOptions(), **kwargs)
    opts.runs = resolve_runs(opts.runs, opts.losses, opts.control)
    t_start = time.perf_counter()
    work_dir = Path(opts.work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    outputs = {'full log': work_dir / 'ddp_parity.log', 'report': work_dir / 'report.json',
               'summary': work_dir / 'summary.md'}
    for p in outputs.values():
        p.unlink(missing_ok=True)
    with RunConsole(outputs['full log'], verbose=opts.verbose, prefix='[ddp-parity]') as con:
        report = _run(opts, work_dir, con, t_start)
        report = jsonable(report)
        if report['status'] != 'cannot_run':
            outputs['summary'].write_text(summary_text(report))
            outputs['report'].write_text(json.dumps(report, indent=1))
            con.print(summary_table(report))
        if report['reasons']:
            con.log('failed: ' + '; '.join(report['reasons']))
        if report['status'] != 'cannot_run':
            for name, path in outputs.items():
                con.log(f'{name + ":":<9} {path}')
    return report


def _run(opts: DDPParityOptions, work_dir: Path, con: RunConsole, t_start: float) -> dict:
    import torch

    from mmdet_focal_triton.datasets import make_synthetic_coco

    device = opts.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    max_world = max(int(r.split(':')[1]) for r in opts.runs)
    if device == 'cuda':
        n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n_gpu < max_world:
            msg = f'device cuda: {max_world} GPU(s) needed, {n_gpu} visible'
            con.log(msg)
            return dict(status='cannot_run', exit_code=EXIT_CODES['cannot_run'], reasons=[msg])
    opts.config = str(opts.config or pcfg.default_config(device, opts.model))
    opts.iters = opts.iters or DEFAULT_ITERS[device]
    from mmengine.config import Config

    base = Config.fromfile(opts.config)
    pdef = base.get('parity', {}) or {}
    mmdet_types = tuple(pcfg.loss_types(base.get('model') or {})) or ('FocalLoss',)
    names = loss_type_names(mmdet_types)
    num_train = opts.num_train or 2 * opts.iters
    gen_size = opts.img_size or pdef.get('img_size', 320)
    horizon = DEFAULT_HORIZON if opts.horizon is None else opts.horizon
    tol = dict(first_rtol=pcfg.TOLERANCES[(device, 'none')]['first_rtol'], rtol=RTOL)
    given = {k: getattr(opts, k) for k in ('first_rtol', 'rtol') if getattr(opts, k) is not None}
    tol.update(given, horizon=horizon,
               horizon_used=opts.iters if horizon <= 0 else min(horizon, opts.iters),
               source='defaults' + (('; given: ' + ', '.join(given)) if given else ''))

    data_root = make_synthetic_coco(num_train=num_train, num_val=2, img_size=gen_size,
                                    seed=opts.data_seed, paired=True)
    pairs = check_pairs(data_root)
    con.log(f"dataset: paired synthetic COCO, {num_train} train images ({pairs['pairs']} pairs"
            f"{', every pair verified' if pairs['ok'] else ', BAD PAIRS'}), at {data_root}")
    cfg_dir = work_dir / 'configs'
    cfg_dir.mkdir(exist_ok=True)
    cfg_paths, changes, resize = {}, {}, []
    for world in sorted({int(r.split(':')[1]) for r in opts.runs}):
        cfg, ch = build_config(opts, device, data_root, world)
        path = cfg_dir / f'{Path(opts.config).stem}_ddp_w{world}.py'
        cfg.dump(str(path))
        cfg_paths[world], changes[world] = path, ch
        if world == 1 and 'control:1' in opts.runs:
            ann = write_swapped_ann(data_root, cfg_dir / 'instances_train_pairs_swapped.json')
            cfg.train_dataloader.dataset.ann_file = str(ann)  # absolute: data_root not joined
            cfg_paths['control'] = cfg_dir / f'{Path(opts.config).stem}_ddp_w1_control.py'
            cfg.dump(str(cfg_paths['control']))
            changes['control'] = ch + [f'ann_file {ann.name} (every pair in swapped order)']
        if world == max_world:
            resize = [t.get('scale') for t in cfg.train_dataloader.dataset.pipeline
                      if isinstance(t, dict) and t.get('type') in ('Resize', 'mmdet.Resize')]
    images = f"{gen_size}-px images resized to {tuple(resize[0]) if resize else '?'}"
    for world, path in cfg_paths.items():
        con.file_log(f"config for {world}: {path} ({'; '.join(changes[world])})")
    con.log(f"{Path(opts.config).stem} on {device} ({device_name(device)}), {opts.iters} "
            f"iterations, runs {' '.join(opts.runs)} through tools/dist_train.sh; derived "
            f"configs in {cfg_dir}; tolerances iteration 1 {tol['first_rtol']:g}, iterations "
            f"1-{tol['horizon_used']} {tol['rtol']:g}")

    runs = {}
    for i, spec in enumerate(opts.runs, 1):
        loss, world = spec.split(':')
        bar = None
        if opts.progress and not opts.verbose:
            bar = con.progress(f'{run_name(spec):<10}', opts.iters)
        cfg_path = cfg_paths['control' if loss == 'control' else int(world)]
        rec = run_training(spec, cfg_path, opts, device, work_dir, bar, mmdet_types)
        runs[run_name(spec)] = rec
        first = {k: (rec.get(k) or [float('nan')])[0] for k in KEYS}
        con.log(f"run {i}/{len(opts.runs)}: {spec} ({names[loss]}, {world} process(es) x "
                f"batch {TOTAL_BATCH // int(world)}) {rec['status']} in {rec['wall_s']:.0f} s"
                + (f" ({rec['error']})" if rec.get('error') else '')
                + '; iteration 1: ' + ', '.join(f'{k} {first[k]:.7g}' for k in KEYS))
        if rec['status'] != 'ok':
            con.file_log(f"{spec}: last lines of {rec['log']}:\n{rec.get('log_tail', '')}")

    reasons = [f"{n}: {r['error']}" for n, r in runs.items() if r['status'] != 'ok']
    if not pairs['ok']:
        reasons.append('the dataset is not paired as expected')
    for n, r in runs.items():
        if r['status'] == 'ok' and r['processes'] > 1 and not r['distributed']:
            reasons.append(f'{n}: not a distributed run')
        if r['status'] == 'ok' and (r['run'].startswith(('ours', 'control')) != r['swapped']):
            reasons.append(f"{n}: {names['mmdet']} {'not ' if not r['swapped'] else ''}"
                           f"replaced by {names['ours']}")
        if r['status'] == 'ok' and not all(math.isfinite(v) for k in KEYS for v in r[k]):
            reasons.append(f'{n}: non-finite values logged')
    comparisons = {}
    same_worlds_only = base.get('model', {}).get('type') not in UNCLAMPED_MODELS
    for label, a, b, checked in COMPARISONS:
        ra, rb = runs.get(run_name(a)), runs.get(run_name(b))
        if ra and rb and ra['status'] == 'ok' and rb['status'] == 'ok':
            c = compare(ra, rb, tol, horizon)
            if same_worlds_only and a.split(':')[1] != b.split(':')[1]:
                checked = False
                c['note'] = ('reported, not checked: the normalisers are clamped at 1 (module '
                             'docstring of mmdet_focal_triton.parity.ddp)')
            c['checked'] = checked
            comparisons[label] = c
            if checked:
                reasons += [f'{label}: {x}' for x in c['reasons']]
    if not comparisons and not reasons:
        reasons.append('no comparison: fewer than two runs of a comparison were asked for')
    status = 'fail' if reasons else 'pass'
    settings = dict(
        config=str(Path(opts.config).absolute()), config_name=Path(opts.config).stem,
        model=opts.model, loss_types=list(mmdet_types),
        derived_configs={str(w): str(p) for w, p in cfg_paths.items()},
        config_changes={str(w): c for w, c in changes.items()}, device=device,
        iters=opts.iters, images=images, img_size=opts.img_size, num_train=num_train,
        total_batch=TOTAL_BATCH, runs=opts.runs, norm=opts.norm, seed=opts.seed,
        data_seed=opts.data_seed, data_root=str(data_root),
        threads=opts.threads if device == 'cpu' else None,
        tf32=(opts.allow_tf32 if device == 'cuda' else None))
    return dict(
        tool='mmdet_focal_triton.parity.run_ddp_parity', status=status,
        passed=status == 'pass', exit_code=EXIT_CODES[status], reasons=reasons,
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        command=[sys.executable] + sys.argv, tolerance=tol, settings=settings, dataset=pairs,
        device_name=device_name(device), versions=versions(), runs=runs,
        comparisons=comparisons, wall_s=time.perf_counter() - t_start)
