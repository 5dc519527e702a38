"""``run_parity``: train a detector with mmdet's focal-family loss and with ours, and judge.

The detector (``model``): 'retinanet' (mmdet's ``FocalLoss`` vs ``TritonFocalLoss``; the
default) or 'rtmdet-tiny' (``QualityFocalLoss`` vs ``TritonQualityFocalLoss``), each with a CPU
and a GPU config in configs/parity/; an explicit ``config`` wins, and its loss types name the
sides (any of FocalLoss, QualityFocalLoss, VarifocalLoss).

Both trainings start from bit-identical weights (the first run's initial state_dict is loaded
into the second and checked by digest), see the same images in the same order with the same
augmentation, and use deterministic cuDNN; the only difference is the loss module (the second
config is the first after ``swap_focal_loss``). Each is a real, short training from scratch,
evaluated every ``eval_interval`` iterations (the learning curve). The verdict:

1. every call of our loss during its training — each level, each iteration — is compared with
   the float64 evaluation of mmdet's formula on the same inputs, loss and gradient
   (``FocalLossCheckHook``, ``check_rtol``: 1e-5 in fp32, 1e-2 under AMP);
2. iteration 1 of the two trainings (same weights, same batch) agrees to ``first_rtol``, the
   first weight update to ``update_rtol``, the initial weights are bit-identical, every loss is
   finite;
3. mmdet's own training reaches the recipe's ``target_map`` (otherwise the recipe is broken and
   nothing is proven: status 'broken_recipe');
4. the final bbox_mAP of ours is within ``max(map_floor, 3 x spread)`` of mmdet's, the spread
   being the run-to-run noise of mmdet's own training: the control (mmdet's loss with
   loss_weight x (1 + 2^-20)) is trained when a difference exceeds the floor
   (``control='auto'``) or always (``'perturbed'``). ``extra_amp`` runs (ours under AMP bf16
   on a GPU, which mmcv's op cannot run) are judged the same way against mmdet in fp32.

Reported beside the verdict: the learning curves, each run's time to ``TTA_FRACTION`` (90 %)
of mmdet's final mAP (iteration and training time: data loading included, evaluations and the
per-call check left out), the median iteration time, and the iteration-time difference of each
run from mmdet's with a 95 % interval (paired by iteration: the same batch).

Statuses: 'pass' (exit code 0), 'fail' (1), 'reference_failed' (2: mmdet's run failed or turned
non-finite — e.g. mmcv's CUDA op in bf16 / fp16 — while ours completed, finite and checked),
'broken_recipe' (3: mmdet's own training did not reach the target; never a pass).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import gc
import json
import math
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path

from ..config_utils import FOCAL_FAMILY
from . import config as pcfg
from .compare import (
    compare_runs,
    final_map,
    finite_losses,
    first_nonfinite,
    judge_accuracy,
    paired_step_time,
    time_to_accuracy,
)
from .console import RunConsole
from .report import device_name, fmt, jsonable, plot, summary_table, versions, write_summary

AMP_SIDES = {'bf16': 'ours_bf16', 'fp16': 'ours_fp16'}  # extra_amp -> side name


def side_names(loss_types) -> dict:
    """The loss each side trains, by name: mmdet's types ('QualityFocalLoss') for 'mmdet' and
    'control', ours ('TritonQualityFocalLoss') for 'ours' and its AMP runs (joined with ' + '
    if several)."""
    mmdet = ' + '.join(loss_types)
    ours = ' + '.join(FOCAL_FAMILY[t] for t in loss_types)
    names = {'mmdet': mmdet, 'ours': ours, 'control': mmdet}
    names.update({side: f'{ours}, AMP {amp}' for amp, side in AMP_SIDES.items()})
    return names


def is_ours(side: str) -> bool:
    """'ours' and its AMP runs ('ours_bf16', ...) train our loss."""
    return side == 'ours' or side in AMP_SIDES.values()


SIDES = side_names(['FocalLoss'])  # RetinaNet's (the default model)
MAP_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')
EXIT_CODES = {'pass': 0, 'fail': 1, 'reference_failed': 2, 'broken_recipe': 3}


@dataclasses.dataclass
class ParityOptions:
    """What ``run_parity`` does; None means the config's ``parity`` defaults (or the device's
    tolerance defaults, ``parity.config.TOLERANCES``)."""

    config: str | None = None  # None: configs/parity/ of the checkout, by model and device
    model: str = 'retinanet'  # 'retinanet' | 'rtmdet-tiny' (parity.config.MODEL_CONFIGS)
    device: str = 'auto'  # 'auto' | 'cpu' | 'cuda'
    iters: int | None = None
    amp: str = 'none'  # 'none' | 'fp16' | 'bf16' (CUDA)
    losses: str = 'both'  # 'both' | 'ours' | 'mmdet'
    extra_amp: tuple | None = None  # more trainings of ours under AMP (None: the config's)
    eval_interval: int | None = None  # evaluate every so many iterations (None: the config's)
    target_map: float | None = None  # mmdet's training must reach it (None: the config's)
    img_size: int | None = None
    batch_size: int | None = None
    num_train: int | None = None
    num_val: int | None = None
    data_root: str | None = None  # a COCO-layout dataset instead of the synthetic one
    work_dir: str = 'work_dirs/parity'
    seed: int = 0
    data_seed: int = 0
    backend: str = 'auto'  # our losses' backend: 'auto' | 'torch' | 'triton'
    control: str | None = None  # 'auto' | 'none' | 'repeat' | 'perturbed' (None: the config's)
    fault: str | None = None  # parity.faults.FAULTS_BY_LOSS: make our loss deliberately wrong
    check_rtol: float | None = None
    first_rtol: float | None = None
    update_rtol: float | None = None
    map_floor: float | None = None
    share_cpu: bool = True  # CPU: torch's threads follow the cores other processes leave
    verbose: bool = False  # everything on the terminal, no progress bars


def run_side(side: str, base_cfg, opts: ParityOptions, tol: dict, work_dir: Path,
             init_state, console: RunConsole) -> dict:
    """Train one side ('mmdet', 'ours', 'control' or an AMP run of ours: 'ours_bf16',
    'ours_fp16') and return its record."""
    import torch
    from mmengine.runner import Runner

    import mmdet_focal_triton
    from mmdet_focal_triton.config_utils import swap_focal_loss

    from .check import FocalLossCheckHook
    from .faults import FaultInjectionHook, check_fault
    from .hooks import ParityRecordHook, ProgressHook, snapshot, unwrap

    types = pcfg.loss_types(base_cfg.model)
    rec = {'side': side, 'loss_type': side_names(types)[side], 'status': 'not run',
           'error': None}
    cfg = copy.deepcopy(base_cfg)
    hooks = []
    check = None
    amp = {v: k for k, v in AMP_SIDES.items()}.get(side)
    if amp is not None:
        pcfg.set_amp(cfg, amp)
    rec['amp'] = amp or opts.amp
    if is_ours(side):
        rec['swapped'] = swap_focal_loss(cfg)
        if rec['swapped'] == 0:
            raise ValueError(f'{opts.config}: no FocalLoss, QualityFocalLoss or VarifocalLoss '
                             'in cfg.model to swap')
        rtol = tol['check_rtol'] if amp is None else \
            (opts.check_rtol or pcfg.TOLERANCES[('cuda', amp)]['check_rtol'])
        rec['check_rtol'] = rtol
        check = FocalLossCheckHook(reference=pcfg.family_loss_configs(base_cfg.model),
                                   rtol=rtol)
        hooks.append(check)
        if opts.fault:
            hooks.append(FaultInjectionHook(opts.fault))
            rec['loss_type'] += f' with a fault: {check_fault(opts.fault, types)}'
    if side == 'control':
        rec['control'] = opts.control
        if opts.control in ('perturbed', 'auto'):
            pcfg.scale_focal_loss_weight(cfg.model, 1.0 + pcfg.PERTURBATION)
            rec['loss_type'] = (f"{rec['loss_type']}, loss_weight x "
                                f'(1 + 2^-{round(-math.log2(pcfg.PERTURBATION))})')
    side_dir = work_dir / side
    if side_dir.exists():
        shutil.rmtree(side_dir)
    cfg.work_dir = str(side_dir)
    cfg.experiment_name = f'parity_{side}'  # the Runner appends its timestamp
    # a visualizer of its own: mmengine returns an existing instance of the same name (mmdet's
    # configs say 'visualizer'), which would write this run's scalars into the previous run's dir
    if cfg.get('visualizer'):
        cfg.visualizer.name = f'parity_{side}_{time.time_ns()}'
    hooks.append(ParityRecordHook(rec, opts.seed, init_state,
                                  overhead=(lambda: check.elapsed_s) if check else None))
    if not opts.verbose:
        hooks.append(ProgressHook(console, side))
    if opts.share_cpu and not torch.cuda.is_available():  # a CPU training (see _resolve)
        from .cpu_share import CpuShareHook

        hooks.append(CpuShareHook())
    t0 = time.perf_counter()
    runner = None
    prev_backend = mmdet_focal_triton.get_backend()
    try:
        if is_ours(side):
            mmdet_focal_triton.set_backend(opts.backend)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        runner = Runner.from_cfg(cfg)
        for h in hooks:
            runner.register_hook(h)
        runner.train()
        rec['final_state'] = snapshot(unwrap(runner.model))
        rec['status'] = 'ok'
    except Exception as e:  # noqa: BLE001 - reported, e.g. mmcv refusing bf16
        rec['status'] = 'failed'
        rec['error'] = f'{type(e).__name__}: {e}'
        rec['traceback'] = traceback.format_exc()[-4000:]
        console.file_log(rec['traceback'])
        console.log(f'{side}: training FAILED: {rec["error"][:300]} (traceback in '
                    f'{console.log_path})')
    finally:
        mmdet_focal_triton.set_backend(prev_backend)
        for h in hooks:
            if hasattr(h, 'detach'):
                h.detach()
            if hasattr(h, '_close'):
                h._close()
        stop_data_workers(runner)
        del runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rec['wall_s'] = time.perf_counter() - t0
    if check is not None:
        rec['call_check'] = check.summary.as_dict()
        rec['check_s'] = check.elapsed_s
    raw = rec.get('raw_metrics')
    if raw is not None:
        metrics = {k: (float(raw[f'coco/{k}']) if isinstance(raw.get(f'coco/{k}'), float)
                       else None) for k in MAP_KEYS}
        if rec['status'] == 'ok' and all(v is None for v in metrics.values()):
            # CocoMetric returns nothing when no box scored above test_cfg.score_thr: mAP is 0
            metrics = {k: 0.0 for k in MAP_KEYS}
            metrics['note'] = 'no detections above score_thr on the val split: mAP = 0'
        rec['metrics'] = metrics
    bad = first_nonfinite(rec)
    if bad:
        rec['first_nonfinite'] = {'iteration': bad[0], 'loss': bad[1]}
    its = rec.get('iter_s') or []
    rec['median_iter_s'] = float(statistics.median(its)) if its else None
    return rec


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a ``run_parity`` call resolved to: the options with the config's ``parity``
    defaults filled in."""

    opts: ParityOptions
    device: str
    config: Path
    model: str | None  # None when an explicit config was given
    loss_types: tuple
    iters: int
    eval_interval: int
    target_map: float
    extra_amp: tuple
    num_train: int
    num_val: int
    gen_size: int
    dataset: dict  # more make_synthetic_coco arguments (style, max_objects)
    tol: dict
    work_dir: Path


def stop_data_workers(runner) -> None:
    """Stop the data-loading worker processes of a finished training now, in order.

    Left to ``gc.collect()``, torch's ``_MultiProcessingDataLoaderIter.__del__`` joined each
    worker of a persistent loader until its 5-second timeout (the stop signal never reached
    workers waiting on their index queue): 30 s lost per run with 4 + 2 workers on the GPU
    machine, 2 minutes of a 4-training parity run. Called here, the same shutdown takes
    milliseconds."""
    if runner is None:
        return
    train = getattr(runner, '_train_loop', None)
    val = getattr(runner, '_val_loop', None)
    iterators = [getattr(getattr(train, 'dataloader_iterator', None), '_iterator', None)]
    for loop in (train, val):
        iterators.append(getattr(getattr(loop, 'dataloader', None), '_iterator', None))
    for it in iterators:
        shutdown = getattr(it, '_shutdown_workers', None)
        if callable(shutdown):
            shutdown()


def _resolve(opts: ParityOptions) -> Plan:
    import torch
    from mmengine.config import Config

    device = opts.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cuda' and not torch.cuda.is_available():
        raise ValueError("device 'cuda': no CUDA device is available")
    if device == 'cpu' and torch.cuda.is_available():
        raise ValueError("device 'cpu' on a machine with CUDA: mmengine would train on the GPU; "
                         "set CUDA_VISIBLE_DEVICES='' before importing torch (tools/parity.py "
                         '--device cpu does)')
    if opts.amp != 'none' and device != 'cuda':
        raise ValueError(f"amp {opts.amp!r} needs CUDA (mmengine's AmpOptimWrapper)")
    if opts.losses not in ('both', 'ours', 'mmdet'):
        raise ValueError(f'losses must be both, ours or mmdet, got {opts.losses!r}')
    if opts.control not in (None, 'auto', 'none', 'repeat', 'perturbed'):
        raise ValueError(f'control must be auto, none, repeat or perturbed, got {opts.control!r}')
    for amp in opts.extra_amp or ():
        if amp not in AMP_SIDES:
            raise ValueError(f'extra_amp entries must be in {sorted(AMP_SIDES)}, got {amp!r}')
        if device != 'cuda':
            raise ValueError(f"extra_amp {amp!r} needs CUDA (mmengine's AmpOptimWrapper)")
    if opts.target_map is not None and not opts.target_map > 0:
        raise ValueError(f'target_map must be > 0 (a run that learns nothing proves nothing), '
                         f'got {opts.target_map!r}')
    if opts.eval_interval is not None and opts.eval_interval < 1:
        raise ValueError(f'eval_interval must be >= 1, got {opts.eval_interval!r}')
    from .faults import check_fault

    config = Path(opts.config) if opts.config else pcfg.default_config(device, opts.model)
    cfg = Config.fromfile(str(config))
    types = pcfg.loss_types(cfg.get('model') or {})
    if not types:
        raise ValueError(f'{config}: no FocalLoss, QualityFocalLoss or VarifocalLoss in '
                         'cfg.model: nothing to check')
    if opts.fault is not None:
        check_fault(opts.fault, types)
    pdef = cfg.get('parity', {}) or {}
    target = opts.target_map if opts.target_map is not None else pdef.get('target_map')
    if target is None:
        raise ValueError(f"{config}: no parity.target_map: say what mmdet's own training must "
                         'reach (bbox_mAP) for the run to prove anything (target_map=, '
                         '--target-map)')
    extra = opts.extra_amp if opts.extra_amp is not None else tuple(
        pdef.get('extra_amp', ()) if device == 'cuda' and opts.losses == 'both' else ())
    for amp in extra:  # the config's too
        if amp not in AMP_SIDES:
            raise ValueError(f'extra_amp entries must be in {sorted(AMP_SIDES)}, got {amp!r}')
    iters = opts.iters or pdef.get('iters') or 80
    control = opts.control or pdef.get('control', 'auto')
    if control not in ('auto', 'none', 'repeat', 'perturbed'):
        raise ValueError(f'{config}: parity.control must be auto, none, repeat or perturbed, '
                         f'got {control!r}')
    return Plan(
        opts=dataclasses.replace(opts, config=str(config), control=control), device=device,
        config=config,
        model=None if opts.config else opts.model, loss_types=tuple(types), iters=iters,
        eval_interval=min(opts.eval_interval or pdef.get('eval_interval') or iters, iters),
        target_map=float(target), extra_amp=tuple(extra),
        num_train=opts.num_train or pdef.get('num_train', 200),
        num_val=opts.num_val or pdef.get('num_val', 50),
        gen_size=opts.img_size or pdef.get('img_size', 320),
        dataset=dict(pdef.get('dataset') or {}),
        tol=dict(pcfg.tolerances(device, opts.amp, pdef.get('tolerances'),
                                 {k: getattr(opts, k) for k in pcfg.TOL_KEYS}),
                 noise_factor=pcfg.NOISE_FACTOR, report_horizon=pcfg.REPORT_HORIZON,
                 trend_fraction=pcfg.TREND_FRACTION, tta_fraction=pcfg.TTA_FRACTION),
        work_dir=Path(opts.work_dir).absolute())


def run_parity(options: ParityOptions | None = None, **kwargs) -> dict:
    """Run a parity check; returns the report (also written to ``work_dir/report.json``).

    ``run_parity(device='cpu', iters=50)`` or ``run_parity(ParityOptions(...))``; keyword
    arguments override the options' fields. ``report['status']`` is 'pass', 'fail',
    'reference_failed' or 'broken_recipe', ``report['exit_code']`` 0, 1, 2 or 3.
    """
    opts = dataclasses.replace(options or ParityOptions(), **kwargs)
    t_start = time.perf_counter()
    plan = _resolve(opts)
    plan.work_dir.mkdir(parents=True, exist_ok=True)
    outputs = {'full log': plan.work_dir / 'parity.log',
               'report': plan.work_dir / 'report.json',
               'summary': plan.work_dir / 'summary.md', 'plot': plan.work_dir / 'curves.png'}
    for p in outputs.values():
        p.unlink(missing_ok=True)
    with RunConsole(outputs['full log'], verbose=opts.verbose) as con, _torch_settings():
        report = _run(plan, con, t_start)
        report['outputs'] = {k: str(v) for k, v in outputs.items()}
        report = jsonable(report)
        plot(outputs['plot'], report)
        write_summary(outputs['summary'], report)
        outputs['report'].write_text(json.dumps(report, indent=1))
        con.print(summary_table(report))
        if report['reasons']:
            con.log(f"{report['status']}: " + '; '.join(report['reasons']))
        for name, path in outputs.items():
            con.log(f'{name + ":":<9} {path}')
    return report


@contextlib.contextmanager
def _torch_settings():
    """The process-wide settings a run changes (deterministic algorithms and cuDNN), restored
    afterwards: a notebook or a test session goes on as before."""
    import torch

    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2:]


def _settings(plan: Plan, base_cfg, data_root: Path) -> dict:
    import torch

    opts = plan.opts
    resize = [t.get('scale') for t in base_cfg.train_dataloader.dataset.get('pipeline', [])
              if isinstance(t, dict) and t.get('type') == 'Resize']
    return dict(
        config=str(plan.config), config_name=plan.config.stem, model=plan.model,
        loss_types=list(plan.loss_types), device=plan.device, amp=opts.amp,
        extra_amp=list(plan.extra_amp), iters=plan.iters, eval_interval=plan.eval_interval,
        target_map=plan.target_map, batch_size=base_cfg.train_dataloader.batch_size,
        img_size=f"{plan.gen_size}-px images resized to "
                 f"{tuple(resize[0]) if resize else '?'}",
        num_train=plan.num_train, num_val=plan.num_val, dataset=plan.dataset, seed=opts.seed,
        data_seed=opts.data_seed, data_root=str(data_root), losses=opts.losses,
        backend=opts.backend, control=opts.control, fault=opts.fault, pretrained=False,
        torch_threads=torch.get_num_threads(),
        deterministic=dict(cudnn_deterministic=True, cudnn_benchmark=False,
                           sampler_seed=opts.seed, rng_reseeded_before_first_iter=True,
                           torch_deterministic_algorithms='warn_only'
                           if plan.device == 'cuda' else False))


def _run_line(side: str, rec: dict) -> str:
    """One line per training for the terminal: status, times, accuracy, per-call check."""
    msg = f"{side}: {rec['status']} in {rec['wall_s']:.0f} s"
    if rec.get('train_s') is not None and rec['status'] == 'ok':
        msg += (f" (train {rec['train_s']:.0f} s, eval {rec.get('val_s', 0):.0f} s"
                + (f", check {rec['check_s']:.0f} s" if rec.get('check_s') else '') + ')')
    m = final_map(rec)
    if m is not None:
        msg += f'; bbox_mAP {m:.3f}'
    if rec.get('median_iter_s'):
        msg += f"; iteration {1e3 * rec['median_iter_s']:.0f} ms"
    if rec.get('first_nonfinite'):
        msg += (f"; non-finite {rec['first_nonfinite']['loss']} from iteration "
                f"{rec['first_nonfinite']['iteration']}")
    cc = rec.get('call_check')
    if cc:
        msg += (f"; per-call check {'passed' if cc['passed'] else 'FAILED'} ({cc['calls']} "
                f"calls, loss {fmt(cc['max']['loss_rel_err'], '.1e')}, gradient "
                f"{fmt(cc['max']['grad_rel_err'], '.1e')})")
    return msg


def _check_failures(side: str, rec: dict, names: dict) -> list:
    """The per-call check's verdict on one training of ours, as reasons to fail."""
    cc = rec.get('call_check')
    if rec['status'] != 'ok':
        return [f"{names[side]} run failed: {rec['error']}"]
    if not cc or cc['passed']:
        return []
    ff = cc['first_failure']
    return [f'per-call check ({side}): ' + (
        f"{cc['failed_calls']} of {cc['calls']} calls differ from mmdet's formula; first at "
        f"iteration {ff['iteration']} ({ff['module']}): {'; '.join(ff['failures'])}"
        if ff else f'{names[side]} was never called')]


def _run(plan: Plan, con: RunConsole, t_start: float) -> dict:
    import torch

    from mmdet_focal_triton.datasets import make_synthetic_coco

    from .config import build_base_cfg

    opts = plan.opts
    sides = {'both': ['mmdet', 'ours'], 'ours': ['ours'], 'mmdet': ['mmdet']}[opts.losses]
    sides += [AMP_SIDES[a] for a in plan.extra_amp]
    names = side_names(plan.loss_types)
    con.log(f'{plan.config.stem} on {plan.device} ({device_name(plan.device)}), precision '
            f'{opts.amp}, {plan.iters} iterations, evaluated every {plan.eval_interval}: '
            f"{', '.join(f'{s} ({names[s]})' for s in sides)}"
            + (f'; FAULT INJECTED into ours: {opts.fault}' if opts.fault else ''))
    con.log(f"every call of ours is checked against mmdet's formula in float64 (rtol "
            f"{plan.tol['check_rtol']:g}); mmdet's training must reach bbox_mAP "
            f'{plan.target_map:g}; full log: {con.log_path}')
    if opts.data_root:
        data_root = Path(opts.data_root).absolute()
    else:
        data_root = make_synthetic_coco(num_train=plan.num_train, num_val=plan.num_val,
                                        img_size=plan.gen_size, seed=opts.data_seed,
                                        **plan.dataset)
    con.log(f'dataset: {data_root}' + ('' if opts.data_root else
                                        f' (synthetic, {plan.num_train} train / '
                                        f'{plan.num_val} val)'))
    base_cfg = build_base_cfg(plan.config, data_root=data_root, iters=plan.iters,
                              seed=opts.seed, amp=opts.amp, batch_size=opts.batch_size,
                              img_size=opts.img_size, eval_interval=plan.eval_interval)
    settings = _settings(plan, base_cfg, data_root)
    if plan.device == 'cuda':
        torch.use_deterministic_algorithms(True, warn_only=True)
    if opts.control in ('repeat', 'perturbed') and 'mmdet' in sides:
        sides.append('control')
    runs, state = {}, {'init': None}

    def train(side):
        rec = run_side(side, base_cfg, opts, plan.tol, plan.work_dir, state['init'], con)
        if state['init'] is None:
            state['init'] = rec.get('init_state')
        rec.pop('init_state', None)
        runs[side] = rec
        con.log(_run_line(side, rec))

    for side in sides:
        train(side)
    verdict = _judge(plan, runs, state['init'], names, train, con)
    for rec in runs.values():
        for k in ('final_state', 'state_after_1', 'raw_metrics'):
            rec.pop(k, None)
    status = verdict.pop('status')
    return dict(
        tool='mmdet_focal_triton.parity.run_parity', status=status, passed=status == 'pass',
        exit_code=EXIT_CODES[status], reasons=verdict.pop('reasons'),
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        command=[sys.executable] + sys.argv,
        tolerance=dict(plan.tol, defaults={f'{d} {a}': v
                                           for (d, a), v in pcfg.TOLERANCES.items()}),
        settings=settings, device_name=device_name(plan.device), versions=versions(),
        runs=runs, call_check=(runs.get('ours') or {}).get('call_check'), **verdict,
        wall_s=time.perf_counter() - t_start,
        config=json.loads(json.dumps(base_cfg.to_dict(), default=str)))


def _judge(plan: Plan, runs: dict, init_state, names: dict, train, con) -> dict:
    """The verdict on the trainings in ``runs`` (module docstring), training the control
    (``train('control')``) when ``control='auto'`` and an mAP difference exceeds its floor."""
    opts, tol = plan.opts, plan.tol
    reasons = []
    for side, rec in runs.items():
        if is_ours(side):
            reasons += _check_failures(side, rec, names)
    mmdet = runs.get('mmdet')
    comparison = control_cmp = None
    ours = runs.get('ours')
    if mmdet and ours and mmdet['status'] == 'ok' and ours['status'] == 'ok':
        comparison = compare_runs(mmdet, ours, tol, init_state)
        reasons += comparison['reasons']
    deterministic_ok = not reasons
    mmdet_ok = bool(mmdet) and mmdet['status'] == 'ok' and finite_losses(mmdet)
    ref_side = 'mmdet' if mmdet else 'ours'
    judged = [s for s in runs if is_ours(s)] if mmdet else []
    control_note = None

    def judge():
        ctl = runs.get('control')
        return judge_accuracy(
            final_map(runs.get(ref_side)) if runs[ref_side]['status'] == 'ok' else None,
            {s: final_map(runs[s]) for s in judged}, plan.target_map, tol['map_floor'],
            tol['noise_factor'],
            final_map(ctl) if ctl and ctl['status'] == 'ok' else None,
            one_sided=tuple(AMP_SIDES.values()) if opts.amp == 'none' else ())

    accuracy = judge()
    if deterministic_ok and mmdet_ok and accuracy['recipe_ok'] and judged:
        if not all(r['within_floor'] for r in accuracy['runs'].values()):
            if opts.control == 'auto' and 'control' not in runs:
                con.log('an mAP difference exceeds the floor: training the control '
                        "(mmdet's loss, loss_weight x (1 + 2^-20)) to measure the spread")
                train('control')
                accuracy = judge()
                control_note = 'trained because an mAP difference exceeded the floor'
        elif opts.control == 'auto':
            control_note = 'not trained: every mAP difference within the floor (control=auto)'
    if 'control' in runs and runs['control']['status'] == 'ok' and mmdet_ok:
        control_cmp = compare_runs(mmdet, runs['control'], tol, init_state)
    if not deterministic_ok:
        status = 'fail'
    elif mmdet and not mmdet_ok:
        status = 'reference_failed'
        bad = first_nonfinite(mmdet)
        reasons.insert(0, f"mmdet {names['mmdet']} run: " + (
            f'non-finite {bad[1]} from iteration {bad[0]}' if bad and mmdet['status'] == 'ok'
            else f"failed ({mmdet['error']})") + '; ours completed, finite and checked per call')
    elif not accuracy['recipe_ok']:
        status = 'broken_recipe'
        m = accuracy['reference']
        reasons.append(f"{ref_side}'s training reached bbox_mAP {fmt(m, '.3f')} < the recipe's "
                       f"target {plan.target_map:g}: a broken recipe (too few iterations, a "
                       'wrong config?), nothing is proven')
    else:
        status = 'pass' if accuracy['passed'] else 'fail'
        reasons += [f"{s} bbox_mAP {fmt(r['mAP'], '.3f')} "
                    + ('is below' if r['one_sided'] else 'differs from')
                    + f" mmdet's {fmt(accuracy['reference'], '.3f')} by "
                    f"{fmt(abs(r['diff']) if r['diff'] is not None else None, '.3f')} > "
                    f"{accuracy['band']:.3f}" for s, r in accuracy['runs'].items()
                    if not r['passed']]
    ref_map = accuracy['reference']
    threshold = tol['tta_fraction'] * ref_map if ref_map is not None else None
    timing = {'threshold': threshold, 'fraction': tol['tta_fraction'], 'runs': {}}
    for side, rec in runs.items():
        timing['runs'][side] = dict(
            time_to_accuracy=time_to_accuracy(rec.get('curve'), threshold),
            median_iter_s=rec.get('median_iter_s'), train_s=rec.get('train_s'),
            vs_mmdet=(paired_step_time(mmdet.get('iter_s') or [], rec.get('iter_s') or [])
                      if mmdet and side != 'mmdet' else None))
    return dict(status=status, reasons=reasons, comparison=comparison,
                control_comparison=control_cmp, accuracy=accuracy, timing=timing,
                control_note=control_note)
