"""``run_parity``: train a detector with mmdet's focal-family loss and with ours, and judge.

The detector (``model``): 'retinanet' (mmdet's ``FocalLoss`` vs ``TritonFocalLoss``; the
default) or 'rtmdet-tiny' (``QualityFocalLoss`` vs ``TritonQualityFocalLoss``), each with a CPU
and a GPU config in configs/parity/; an explicit ``config`` wins, and its loss types name the
sides (any of FocalLoss, QualityFocalLoss, VarifocalLoss).

Both trainings start from bit-identical weights (the first run's initial state_dict is loaded
into the second and checked by digest), see the same images in the same order with the same
augmentation, and use deterministic cuDNN; the only difference is the loss module (the second
config is the first after ``swap_focal_loss``). The verdict rests on what is deterministic:

1. every call of our loss during its training — each level, each iteration — is compared with
   the float64 evaluation of mmdet's formula on the same inputs, loss and gradient
   (``FocalLossCheckHook``, ``check_rtol``: 1e-5 in fp32; class-index, dense and
   ``(labels, scores)`` targets alike);
2. iteration 1 of the two trainings (same weights, same batch) agrees to ``first_rtol``, the
   first weight update to ``update_rtol``, the initial weights are bit-identical, every loss is
   finite;

and judges the two trainings themselves only statistically, since two runs that differ by fp32
rounding drift apart within tens of iterations whatever the loss: the means of the last quarter
of the iterations and the mAPs must agree within a floor (``trend_rtol``, ``map_atol``) or within
3x what a control run shows as noise. The control is mmdet's own loss with loss_weight x
(1 + 2^-20); ``control='auto'`` trains it only when a floor is exceeded.

Statuses: 'pass' (exit code 0), 'fail' (1), 'reference_failed' (2: mmdet's run failed or turned
non-finite — e.g. mmcv's CUDA op in bf16 / fp16 — while ours completed, finite and checked).
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
import sys
import time
import traceback
from pathlib import Path

from ..config_utils import FOCAL_FAMILY
from . import config as pcfg
from .compare import (
    compare_runs,
    finite_losses,
    first_nonfinite,
    judge_statistics,
    within_floors,
)
from .console import RunConsole
from .report import device_name, fmt, jsonable, plot, summary_table, versions, write_summary


def side_names(loss_types) -> dict:
    """The loss each side trains, by name: mmdet's types ('QualityFocalLoss') for 'mmdet' and
    'control', ours ('TritonQualityFocalLoss') for 'ours' (joined with ' + ' if several)."""
    mmdet = ' + '.join(loss_types)
    return {'mmdet': mmdet, 'ours': ' + '.join(FOCAL_FAMILY[t] for t in loss_types),
            'control': mmdet}


SIDES = side_names(['FocalLoss'])  # RetinaNet's (the default model)
MAP_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')
EXIT_CODES = {'pass': 0, 'fail': 1, 'reference_failed': 2}


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
    img_size: int | None = None
    batch_size: int | None = None
    num_train: int | None = None
    num_val: int | None = None
    data_root: str | None = None  # a COCO-layout dataset instead of the synthetic one
    work_dir: str = 'work_dirs/parity'
    seed: int = 0
    data_seed: int = 0
    backend: str = 'auto'  # our losses' backend: 'auto' | 'torch' | 'triton'
    control: str = 'auto'  # 'auto' | 'none' | 'repeat' | 'perturbed'
    fault: str | None = None  # parity.faults.FAULTS_BY_LOSS: make our loss deliberately wrong
    check_rtol: float | None = None
    first_rtol: float | None = None
    update_rtol: float | None = None
    trend_rtol: float | None = None
    map_atol: float | None = None
    verbose: bool = False  # everything on the terminal, no progress bars


def run_side(side: str, base_cfg, opts: ParityOptions, tol: dict, work_dir: Path,
             init_state, console: RunConsole) -> dict:
    """Train one side ('mmdet', 'ours' or 'control') and return its record."""
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
    if side == 'ours':
        rec['swapped'] = swap_focal_loss(cfg)
        if rec['swapped'] == 0:
            raise ValueError(f'{opts.config}: no FocalLoss, QualityFocalLoss or VarifocalLoss '
                             'in cfg.model to swap')
        check = FocalLossCheckHook(reference=pcfg.family_loss_configs(base_cfg.model),
                                   rtol=tol['check_rtol'])
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
    hooks.append(ParityRecordHook(rec, opts.seed, init_state))
    if not opts.verbose:
        hooks.append(ProgressHook(console, side))
    t0 = time.perf_counter()
    runner = None
    prev_backend = mmdet_focal_triton.get_backend()
    try:
        if side == 'ours':
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
        del runner
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rec['wall_s'] = time.perf_counter() - t0
    if side == 'ours':
        rec['call_check'] = hooks[0].summary.as_dict()
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
    return rec


def _resolve(opts: ParityOptions):
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
    if opts.control not in ('auto', 'none', 'repeat', 'perturbed'):
        raise ValueError(f'control must be auto, none, repeat or perturbed, got {opts.control!r}')
    from .faults import check_fault

    config = Path(opts.config) if opts.config else pcfg.default_config(device, opts.model)
    cfg = Config.fromfile(str(config))
    types = pcfg.loss_types(cfg.get('model') or {})
    if not types:
        raise ValueError(f'{config}: no FocalLoss, QualityFocalLoss or VarifocalLoss in '
                         'cfg.model: nothing to check')
    if opts.fault is not None:
        check_fault(opts.fault, types)
    return device, config, cfg.get('parity', {}) or {}, types


def run_parity(options: ParityOptions | None = None, **kwargs) -> dict:
    """Run a parity check; returns the report (also written to ``work_dir/report.json``).

    ``run_parity(device='cpu', iters=50)`` or ``run_parity(ParityOptions(...))``; keyword
    arguments override the options' fields. ``report['status']`` is 'pass', 'fail' or
    'reference_failed', ``report['exit_code']`` 0, 1 or 2.
    """
    opts = dataclasses.replace(options or ParityOptions(), **kwargs)
    t_start = time.perf_counter()
    model = None if opts.config else opts.model  # an explicit config wins over the model
    device, config, pdef, types = _resolve(opts)
    opts = dataclasses.replace(opts, config=str(config))
    iters = opts.iters or pdef.get('iters') or 80
    num_train = opts.num_train or pdef.get('num_train', 200)
    num_val = opts.num_val or pdef.get('num_val', 50)
    gen_size = opts.img_size or pdef.get('img_size', 320)
    tol = pcfg.tolerances(device, opts.amp, pdef.get('tolerances'),
                          {k: getattr(opts, k) for k in pcfg.TOL_KEYS})
    tol.update(noise_factor=pcfg.NOISE_FACTOR, report_horizon=pcfg.REPORT_HORIZON,
               trend_fraction=pcfg.TREND_FRACTION)
    work_dir = Path(opts.work_dir).absolute()
    work_dir.mkdir(parents=True, exist_ok=True)
    outputs = {'full log': work_dir / 'parity.log', 'report': work_dir / 'report.json',
               'summary': work_dir / 'summary.md', 'plot': work_dir / 'loss_curves.png'}
    for p in outputs.values():
        p.unlink(missing_ok=True)
    with RunConsole(outputs['full log'], verbose=opts.verbose) as con, _torch_settings():
        report = _run(opts, device, config, iters, num_train, num_val, gen_size, tol,
                      work_dir, con, t_start, model=model, loss_types=types)
        report['outputs'] = {k: str(v) for k, v in outputs.items()}
        report = jsonable(report)
        plot(outputs['plot'], report)
        write_summary(outputs['summary'], report)
        outputs['report'].write_text(json.dumps(report, indent=1))
        con.print(summary_table(report))
        if report['reasons']:
            con.log('failed: ' + '; '.join(report['reasons']))
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


def _run(opts, device, config, iters, num_train, num_val, gen_size, tol, work_dir, con,
         t_start, model=None, loss_types=('FocalLoss',)) -> dict:
    import torch

    from mmdet_focal_triton.datasets import make_synthetic_coco

    from .config import build_base_cfg

    sides = {'both': ['mmdet', 'ours'], 'ours': ['ours'], 'mmdet': ['mmdet']}[opts.losses]
    names = side_names(loss_types)
    con.log(f'{config.stem} on {device} ({device_name(device)}), precision {opts.amp}, {iters} '
            f"iterations per training: {', '.join(f'{s} ({names[s]})' for s in sides)}"
            + (f'; FAULT INJECTED into ours: {opts.fault}' if opts.fault else ''))
    con.log(f"every call of {names['ours']} is checked against mmdet's formula in float64 "
            f"(loss and gradient, rtol {tol['check_rtol']:g}); full logs: {con.log_path}")
    if opts.data_root:
        data_root = Path(opts.data_root).absolute()
    else:
        data_root = make_synthetic_coco(num_train=num_train, num_val=num_val,
                                        img_size=gen_size, seed=opts.data_seed)
    con.log(f'dataset: {data_root}' + ('' if opts.data_root else
                                        f' (synthetic, {num_train} train / {num_val} val)'))
    base_cfg = build_base_cfg(config, data_root=data_root, iters=iters, seed=opts.seed,
                              amp=opts.amp, batch_size=opts.batch_size, img_size=opts.img_size)
    resize = [t.get('scale') for t in base_cfg.train_dataloader.dataset.get('pipeline', [])
              if isinstance(t, dict) and t.get('type') == 'Resize']
    settings = dict(
        config=str(config), config_name=config.stem, model=model,
        loss_types=list(loss_types), device=device, amp=opts.amp, iters=iters,
        batch_size=base_cfg.train_dataloader.batch_size,
        img_size=f"{gen_size}-px images resized to {tuple(resize[0]) if resize else '?'}",
        num_train=num_train, num_val=num_val, seed=opts.seed, data_seed=opts.data_seed,
        data_root=str(data_root), losses=opts.losses, backend=opts.backend,
        control=opts.control, fault=opts.fault, pretrained=False,
        torch_threads=torch.get_num_threads(),
        deterministic=dict(cudnn_deterministic=True, cudnn_benchmark=False,
                           sampler_seed=opts.seed, rng_reseeded_before_first_iter=True,
                           torch_deterministic_algorithms='warn_only' if device == 'cuda'
                           else False))
    if device == 'cuda':
        torch.use_deterministic_algorithms(True, warn_only=True)
    if opts.control in ('repeat', 'perturbed') and 'mmdet' in sides:
        sides.append('control')
    runs, state = {}, {'init': None}

    def train(side):
        rec = run_side(side, base_cfg, opts, tol, work_dir, state['init'], con)
        if state['init'] is None:
            state['init'] = rec.get('init_state')
        rec.pop('init_state', None)
        runs[side] = rec
        msg = f"{side}: {rec['status']} in {rec['wall_s']:.0f} s"
        if rec.get('first_nonfinite'):
            msg += (f"; non-finite {rec['first_nonfinite']['loss']} from iteration "
                    f"{rec['first_nonfinite']['iteration']}")
        cc = rec.get('call_check')
        if cc:
            msg += (f"; per-call check {'passed' if cc['passed'] else 'FAILED'}: "
                    f"{cc['calls']} calls, max rel err loss {fmt(cc['max']['loss_rel_err'], '.2e')}"
                    f", gradient {fmt(cc['max']['grad_rel_err'], '.2e')}")
        con.log(msg)

    for side in sides:
        train(side)

    comparison = control_cmp = judged = None
    reasons, control_note = [], None
    ours, mmdet = runs.get('ours'), runs.get('mmdet')
    if ours is not None and ours['status'] == 'ok':
        cc = ours['call_check']
        if not cc['passed']:
            ff = cc['first_failure']
            reasons.append('per-call check: ' + (
                f"{cc['failed_calls']} of {cc['calls']} calls differ from mmdet's formula; "
                f"first at iteration {ff['iteration']} ({ff['module']}): "
                f"{'; '.join(ff['failures'])}" if ff else f"{names['ours']} was never called"))
    if mmdet and ours:
        if mmdet['status'] == 'ok' and ours['status'] == 'ok':
            comparison = compare_runs(mmdet, ours, tol, state['init'])
            reasons += comparison['reasons']
            if 'control' in runs and runs['control']['status'] == 'ok':
                control_cmp = compare_runs(mmdet, runs['control'], tol, state['init'])
            noise = (control_cmp or {}).get('statistics')
            judged = judge_statistics(comparison['statistics'], tol, noise)
            if (not within_floors(judged) and opts.control == 'auto' and not reasons):
                con.log('a statistical difference exceeds its floor: training the control '
                        "(mmdet's loss, loss_weight x (1 + 2^-20)) to measure the noise")
                train('control')
                if runs['control']['status'] == 'ok':
                    control_cmp = compare_runs(mmdet, runs['control'], tol, state['init'])
                    judged = judge_statistics(comparison['statistics'], tol,
                                              control_cmp['statistics'])
                control_note = 'trained because a floor was exceeded (control=auto)'
            elif opts.control == 'auto':
                control_note = ('not trained: every statistical difference within its floor '
                                '(control=auto)' if within_floors(judged) else
                                'not trained: a deterministic check failed already')
            reasons += [f"{k}: {fmt(j['value'], '.3g')} > {fmt(j['band'], '.3g')}"
                        for k, j in judged.items() if not j['passed']]
            status = 'fail' if reasons else 'pass'
            bad_a = first_nonfinite(mmdet)
            if bad_a and finite_losses(ours) and ours['call_check']['passed']:
                status = 'reference_failed'  # e.g. mmcv's CUDA op in fp16 (mmcv issue 1488)
                reasons.insert(0, f"mmdet {names['mmdet']} run: non-finite {bad_a[1]} from "
                                  f'iteration {bad_a[0]}; ours stayed finite')
        elif ours['status'] == 'ok' and finite_losses(ours) and ours['call_check']['passed']:
            status = 'reference_failed'
            reasons.append(f"mmdet {names['mmdet']} run failed ({mmdet['error']}); ours "
                           'completed, finite and checked per call; use losses=ours')
        else:
            status = 'fail'
            reasons.append(f"{names['ours']} run failed: {ours['error']}" if ours['error']
                           else f"mmdet {names['mmdet']} run failed: {mmdet['error']}")
    else:
        only = ours or mmdet
        if only['status'] != 'ok' or not finite_losses(only):
            reasons.append(f"{only['loss_type']} run: {only['error'] or 'non-finite loss'}")
        status = 'fail' if reasons else 'pass'
    exit_code = EXIT_CODES[status]
    for rec in runs.values():
        for k in ('final_state', 'state_after_1', 'raw_metrics'):
            rec.pop(k, None)
    return dict(
        tool='mmdet_focal_triton.parity.run_parity', status=status, passed=status == 'pass',
        exit_code=exit_code, reasons=reasons,
        date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        command=[sys.executable] + sys.argv,
        tolerance=dict(tol, defaults={f'{d} {a}': v for (d, a), v in pcfg.TOLERANCES.items()}),
        settings=settings, device_name=device_name(device), versions=versions(), runs=runs,
        call_check=(ours or {}).get('call_check'), comparison=comparison,
        control_comparison=control_cmp, statistics=judged, control_note=control_note,
        wall_s=time.perf_counter() - t_start,
        config=json.loads(json.dumps(base_cfg.to_dict(), default=str)))
