"""The outputs of a parity run: report.json helpers, summary.md, the terminal table, the plot."""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path


def jsonable(obj):
    """``obj`` with every float that JSON cannot hold (inf, nan) as a string, keys as str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else str(obj)
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    return str(obj)


def versions() -> dict:
    """Versions of python, torch and the OpenMMLab stack (None where not installed)."""
    from importlib import metadata

    import numpy as np
    import torch

    import mmdet_focal_triton

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
    """The GPU's name, or the CPU model with its core and torch thread counts."""
    import torch

    if device == 'cuda':
        n = torch.cuda.device_count()
        name = torch.cuda.get_device_name(torch.cuda.current_device())
        return name if n == 1 else f'{n} x {name}'
    name = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                name = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return f'{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads'


def loss_names(report: dict) -> tuple[str, str]:
    """(mmdet's loss, ours) of a report, e.g. ('QualityFocalLoss', 'TritonQualityFocalLoss'),
    from its settings' loss types (reports without them: RetinaNet's FocalLoss)."""
    from ..config_utils import FOCAL_FAMILY

    types = report.get('settings', {}).get('loss_types') or ['FocalLoss']
    return ' + '.join(types), ' + '.join(FOCAL_FAMILY.get(t, t) for t in types)


def fmt(v, spec='.4g'):
    if v is None:
        return 'n/a'
    if isinstance(v, float):
        return format(v, spec) if math.isfinite(v) else str(v)
    return str(v)


def _num(v):
    """A report value back to a float ('inf' / 'nan' strings included), or None."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
def check_rows(report: dict) -> list:
    """(check, value, tolerance, result) of every verdict-relevant check of a report."""
    rows = []
    ok = {True: 'pass', False: 'FAIL'}
    tol = report['tolerance']
    cc = report.get('call_check')
    if cc:
        rows.append((f"per-call check vs float64 mmdet formula: loss, {cc['calls']} calls",
                     fmt(_num(cc['max']['loss_rel_err']), '.2e'), fmt(tol['check_rtol'], 'g'),
                     ok[cc['calls'] > 0 and _num(cc['max']['loss_rel_err']) <= tol['check_rtol']]))
        rows.append((f"per-call check: gradient, {cc['gradients_checked']} backward passes",
                     fmt(_num(cc['max']['grad_rel_err']), '.2e'), fmt(tol['check_rtol'], 'g'),
                     ok[cc['gradients_checked'] > 0
                        and _num(cc['max']['grad_rel_err']) <= tol['check_rtol']]))
    cmp_ = report.get('comparison') or {}
    if not cmp_:  # one training (or one failed): did each complete with finite losses?
        for side, rec in report['runs'].items():
            ls = rec.get('losses') or {}
            finite = rec['status'] == 'ok' and bool(ls.get('loss')) and all(
                _num(v) is not None and math.isfinite(_num(v)) for v in
                (x for vals in ls.values() for x in vals))
            rows.append((f'{side}: completed, every loss finite', rec['status'], '',
                         ok[finite]))
    for name, passed in (cmp_.get('checks') or {}).items():
        value = ''
        if name.startswith(('loss_cls: iteration 1', 'loss_bbox: iteration 1')):
            value = fmt(_num(cmp_['first_iter_rel_diff'][name.split(':')[0]]), '.2e')
        elif name.startswith('first weight update'):
            value = fmt(_num(cmp_.get('first_update_rel_diff')), '.2e')
        label = name.split(' <=')[0]
        t = name.split('<= ')[1] if '<= ' in name else ''
        rows.append((label, value, t, ok[bool(passed)]))
    for name, j in (report.get('statistics') or {}).items():
        band = f"{fmt(_num(j['floor']), 'g')}"
        if j.get('noise') is not None:
            band += f" or {report['tolerance'].get('noise_factor', 3):g} x control " \
                    f"{fmt(_num(j['noise']), '.2e')}"
        rows.append((name, fmt(_num(j['value']), '.2e'), band, ok[bool(j['passed'])]))
    return rows


def write_summary(path: Path, report: dict) -> str:
    """summary.md: the verdict, the checks, the runs side by side, what is only reported."""
    from .compare import COMPARED, trend_window

    s, runs = report['settings'], report['runs']
    names = [k for k in ('mmdet', 'ours', 'control') if k in runs]
    theirs, ours = loss_names(report)
    lines = [f"# Parity: mmdet `{theirs}` vs `{ours}`: **{report['status'].upper()}**",
             '',
             f"`{s['config_name']}` on {s['device']} ({report['device_name']}), precision "
             f"{s['amp']}, {s['iters']} iterations, batch {s['batch_size']}, {s['img_size']}, "
             f"synthetic data {s['num_train']} train / {s['num_val']} val images, seed "
             f"{s['seed']}, no pretrained weights, {ours} backend `{s['backend']}`"
             + (f", **fault injected: {s['fault']}**" if s.get('fault') else '')
             + f". {report['date']}.", '', '## Checks', '',
             '| check | value | tolerance | result |', '|---|---|---|---|']
    lines += [f'| {a} | {b} | {c} | {d} |' for a, b, c, d in check_rows(report)]
    if report.get('reasons'):
        lines += ['', '**Failed:** ' + '; '.join(report['reasons'])]
    lines += ['', '## Runs', '', '| | ' + ' | '.join(
        f"{n}: `{runs[n]['loss_type']}`" for n in names) + ' |', '|---' * (len(names) + 1) + '|']

    def row(label, vals):
        lines.append(f'| {label} | ' + ' | '.join(vals) + ' |')

    row('status', [runs[n]['status'] + (f" ({runs[n]['error']})" if runs[n].get('error') else '')
                   + (f", non-finite {runs[n]['first_nonfinite']['loss']} from iteration "
                      f"{runs[n]['first_nonfinite']['iteration']}"
                      if runs[n].get('first_nonfinite') else '') for n in names])
    for k in COMPARED:
        vals, means = [], []
        for n in names:
            ls = [_num(v) for v in (runs[n].get('losses') or {}).get(k) or []]
            vals.append(f'{fmt(ls[0])} → {fmt(ls[-1])}' if ls else 'n/a')
            w = trend_window(len(ls)) if ls else 0
            means.append(fmt(sum(ls[-w:]) / w) if ls else 'n/a')
        row(f'{k}, first → last iteration', vals)
        row(f'{k}, mean of the last quarter', means)
    for k in ('bbox_mAP', 'bbox_mAP_50'):
        row(k, [fmt((runs[n].get('metrics') or {}).get(k), '.4f') for n in names])
    row('train / eval time (s)', [f"{fmt(runs[n].get('train_s'), '.1f')} / "
                                  f"{fmt(runs[n].get('val_s'), '.1f')}" for n in names])
    lines += ['', '## Reported, not checked', '']
    cc = report.get('call_check')
    if cc:
        cov, mx = cc['coverage'], cc['max']
        lines.append(f"- mmdet's own code on the same calls (float32; fp16 / bf16 inputs upcast) "
                     f"vs the float64 evaluation: max rel err loss "
                     f"{fmt(_num(mx['mmdet_loss_rel_err']), '.2e')}, gradient "
                     f"{fmt(_num(mx['mmdet_grad_rel_err']), '.2e')}; non-finite in "
                     f"{cc['mmdet_nonfinite_calls']} calls.")
        lines.append(f"- Calls checked: {cc['calls']} ({cc['gradients_checked']} with their "
                     f"gradient) of {', '.join(cov.get('loss_types') or [ours])} by "
                     f"{', '.join(cov['modules'])}; targets "
                     f"{', '.join(cov.get('target_forms') or [])}; {cov['empty_calls']} empty, "
                     f"{cov['calls_without_positives']} without positives; largest |logit| "
                     f"{cov['max_abs_logit']:.3g}; dtypes {', '.join(cov['dtypes'])}.")
    for label, c in (('ours vs mmdet', report.get('comparison')),
                     ('control vs mmdet', report.get('control_comparison'))):
        if not c:
            continue
        mh = ', '.join(f"{k} {fmt(_num(c['max_rel_diff_horizon'].get(k)), '.2e')} (it "
                       f"{c['argmax_iter_horizon'].get(k)})" for k in COMPARED)
        ma = ', '.join(f"{k} {fmt(_num(c['max_rel_diff'].get(k)), '.2e')} (it "
                       f"{c['argmax_iter'].get(k)})" for k in COMPARED)
        lines.append(f"- {label}: per-iteration rel diff, max over iterations "
                     f"1-{c.get('horizon_used', '?')}: {mh}; over all: {ma}; final weights: max "
                     f"abs diff {fmt(_num(c.get('param_max_abs_diff')), '.2e')}, rel norm diff "
                     f"{fmt(_num(c.get('param_rel_norm_diff')), '.2e')}.")
    if report.get('control_note'):
        lines.append(f"- Control: {report['control_note']}")
    lines += ['', f"Tolerances ({tol_source(report)}). Total wall time {report['wall_s']:.0f} s. "
                  'Versions: ' + ', '.join(f'{k} {v}' for k, v in report['versions'].items()
                                           if v), '']
    text = '\n'.join(lines)
    path.write_text(text)
    return text


def tol_source(report: dict) -> str:
    t = report['tolerance']
    return (f"{t['source']}: check_rtol {t['check_rtol']:g}, first_rtol {t['first_rtol']:g}, "
            f"update_rtol {t['update_rtol']:g}, trend_rtol {t['trend_rtol']:g}, "
            f"map_atol {t['map_atol']:g}")


def summary_table(report: dict):
    """The rich table printed at the end of a run: the verdict and every check."""
    from rich.table import Table

    status = report['status'].upper()
    theirs, ours = loss_names(report)
    table = Table(title=f"parity of {ours} with mmdet's {theirs}: {status} (exit "
                        f"{report['exit_code']}) in {report['wall_s']:.0f} s",
                  title_justify='left', show_lines=False)
    for col in ('check', 'value', 'tolerance', 'result'):
        table.add_column(col, overflow='fold')
    for r in check_rows(report):
        table.add_row(*r, style=None if r[3] == 'pass' else 'bold red')
    return table


# ---------------------------------------------------------------------------------------------
def plot(path: Path, report: dict) -> None:
    """loss_curves.png: the losses, the per-call errors of our loss (checked) and the
    per-iteration differences between the trainings (reported)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .compare import COMPARED

    runs = report['runs']
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 4.8))
    styles = {'mmdet': dict(ls='-', lw=2.4, alpha=0.55), 'ours': dict(ls='--', lw=1.2),
              'control': dict(ls=':', lw=1.0)}
    colours = {'loss_cls': 'tab:blue', 'loss_bbox': 'tab:orange'}
    for side, rec in runs.items():
        for k in COMPARED:
            ls = [_num(v) for v in (rec.get('losses') or {}).get(k) or []]
            if ls:
                ax1.plot(range(1, len(ls) + 1), ls, color=colours[k], **styles[side],
                         label=f"{k}: {side} ({rec['loss_type']})")
    ax1.set(xlabel='iteration', ylabel='loss', title='training losses')
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    floor, top = 1e-12, 10.0  # 0 and non-finite values are drawn at these

    def clip(vals):
        vals = [_num(v) for v in vals]
        return [top if not math.isfinite(v) else min(max(v, floor), top) for v in vals]

    cc = report.get('call_check')
    if cc and cc['per_iteration']['iteration']:
        it = cc['per_iteration']['iteration']
        ax2.semilogy(it, clip(cc['per_iteration']['loss_rel_err']), '.-', ms=3, lw=1,
                     label='loss')
        ax2.semilogy(it, clip(cc['per_iteration']['grad_rel_err']), '.-', ms=3, lw=1,
                     label='gradient')
        for k, colour in (('loss', 'tab:blue'), ('grad', 'tab:orange')):
            vals = cc['per_iteration'].get(f'mmdet_{k}_rel_err')
            if vals:
                ax2.semilogy(it, clip(vals), ls=':', lw=0.8, color=colour, alpha=0.7,
                             label=f"mmdet's own fp32 code, {'gradient' if k == 'grad' else k}")
        ax2.axhline(report['tolerance']['check_rtol'], color='red', ls='--', lw=1.2,
                    label=f"check_rtol {report['tolerance']['check_rtol']:g}")
        ax2.legend(fontsize=7)
    else:
        ax2.text(0.5, 0.5, 'no per-call check (our loss not trained)', ha='center',
                 va='center', transform=ax2.transAxes)
        ax2.set_yscale('log')
    ax2.set(xlabel='iteration', title="vs float64 of mmdet's formula, worst call per iteration")
    ax2.grid(alpha=0.3, which='both')
    drawn = False
    for label, c, ls_ in (('ours vs mmdet', report.get('comparison'), '-'),
                          ('control vs mmdet', report.get('control_comparison'), ':')):
        for k in COMPARED:
            r = ((c or {}).get('rel_diff_per_iter') or {}).get(k)
            if r:
                ax3.semilogy(range(1, len(r) + 1), clip(r), color=colours[k], ls=ls_,
                             marker='.', ms=3, lw=1, label=f'{k}, {label}')
                drawn = True
    if drawn:
        ax3.legend(fontsize=7)
    else:
        ax3.text(0.5, 0.5, 'no comparison (one run only)', ha='center', va='center',
                 transform=ax3.transAxes)
        ax3.set_yscale('log')
    ax3.set(xlabel='iteration', title='|a-b| / max(|a|,|b|) between trainings (reported)')
    ax3.grid(alpha=0.3, which='both')
    s = report['settings']
    fig.suptitle(f"{' vs '.join(loss_names(report))} · {s['config_name']} · {s['device']} · "
                 f"amp {s['amp']} · {s['iters']} iterations"
                 f" · {report['status']}" + (f" · fault {s['fault']}" if s.get('fault') else ''),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
