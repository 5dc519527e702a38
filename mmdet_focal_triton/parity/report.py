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
    for side, rec in report['runs'].items():
        cc = rec.get('call_check')
        if not cc:
            continue
        rtol = _num(rec.get('check_rtol')) or tol['check_rtol']
        le, ge = _num(cc['max']['loss_rel_err']), _num(cc['max']['grad_rel_err'])
        rows.append((f"per-call check vs float64 ({side}): loss, {cc['calls']} calls",
                     fmt(le, '.2e'), fmt(rtol, 'g'), ok[cc['calls'] > 0 and le <= rtol]))
        rows.append((f"per-call check ({side}): gradient, {cc['gradients_checked']} backward "
                     'passes', fmt(ge, '.2e'), fmt(rtol, 'g'),
                     ok[cc['gradients_checked'] > 0 and ge <= rtol]))
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
    acc = report.get('accuracy')
    if acc:
        ref = 'mmdet' if 'mmdet' in report['runs'] else 'ours'
        rows.append((f"{ref}'s training reaches the recipe's target (bbox_mAP)",
                     fmt(_num(acc['reference']), '.3f'), f">= {fmt(_num(acc['target']), 'g')}",
                     ok[bool(acc['recipe_ok'])]))
        band = f"{fmt(_num(acc['floor']), 'g')}"
        if acc.get('spread') is not None:
            band = (f"max({band}, {fmt(_num(acc['factor']), 'g')} x spread "
                    f"{fmt(_num(acc['spread']), '.3f')})")
        for side, r in acc['runs'].items():
            label = (f'bbox_mAP {side} - mmdet (no worse than)' if r.get('one_sided') else
                     f'|bbox_mAP {side} - mmdet|')
            d = _num(r['diff'])
            value = fmt(d if r.get('one_sided') or d is None else abs(d), '+.3f' if r.get(
                'one_sided') else '.3f')
            rows.append((label, value, ('>= -' if r.get('one_sided') else '') + band,
                         ok[bool(r['passed'])] if acc['recipe_ok'] else 'n/a'))
    return rows


def _interval(p: dict | None) -> str:
    """'+1.2 % [+0.3, +2.7]' or 'not resolved: ...' for a paired_step_time result."""
    from ..stats import fmt_share

    return fmt_share(p, p['rel']) if p and p.get('mean') is not None else ''


def run_rows(report: dict) -> list:
    """(run, loss, bbox_mAP, time to accuracy, median iteration, vs mmdet) per training."""
    rows = []
    timing = report.get('timing') or {}
    for side, rec in report['runs'].items():
        t = (timing.get('runs') or {}).get(side) or {}
        tta = t.get('time_to_accuracy')
        m = (rec.get('metrics') or {}).get('bbox_mAP')
        it = _num(t.get('median_iter_s'))
        rows.append((side, rec['loss_type'], fmt(_num(m), '.3f') if m is not None else 'n/a',
                     f"it {tta['iter']} / {_num(tta['train_s']):.0f} s" if tta else
                     ('not reached' if rec['status'] == 'ok' else ''),
                     f'{1e3 * it:.0f} ms' if it else '', _interval(t.get('vs_mmdet'))))
    return rows


def _tta_title(report: dict) -> str:
    t = report.get('timing') or {}
    thr = _num(t.get('threshold'))
    return (f"to {100 * (t.get('fraction') or 0.9):.0f} % of mmdet's mAP"
            + (f' ({thr:.3f})' if thr is not None else ''))


RUN_COLUMNS = ('run', 'loss', 'bbox_mAP', None, 'iteration (median)',
               'vs mmdet, per iteration (95 % CI)')


def write_summary(path: Path, report: dict) -> str:
    """summary.md: the verdict, the checks, the runs side by side, what is only reported."""
    from .compare import COMPARED, trend_window

    s, runs = report['settings'], report['runs']
    names = list(runs)
    theirs, ours = loss_names(report)
    lines = [f"# Parity: mmdet `{theirs}` vs `{ours}`: **{report['status'].upper()}**",
             '',
             f"`{s['config_name']}` on {s['device']} ({report['device_name']}), precision "
             f"{s['amp']}, {s['iters']} iterations (evaluated every "
             f"{s.get('eval_interval', s['iters'])}), batch {s['batch_size']}, {s['img_size']}, "
             f"synthetic data {s['num_train']} train / {s['num_val']} val images, seed "
             f"{s['seed']}, no pretrained weights, {ours} backend `{s['backend']}`"
             + (f", **fault injected: {s['fault']}**" if s.get('fault') else '')
             + f". {report['date']}.", '', '## Checks', '',
             '| check | value | tolerance | result |', '|---|---|---|---|']
    lines += ['| ' + ' | '.join(_md(c) for c in row) + ' |' for row in check_rows(report)]
    if report.get('reasons'):
        lines += ['', '**Reasons:** ' + '; '.join(report['reasons'])]
    cols = [c or _tta_title(report) for c in RUN_COLUMNS]
    lines += ['', '## Accuracy and time', '', '| ' + ' | '.join(cols) + ' |',
              '|---' * len(cols) + '|']
    lines += ['| ' + ' | '.join(r) + ' |' for r in run_rows(report)]
    lines += ['', 'Time is training time: data loading included, evaluations and the per-call '
              "check left out. 'vs mmdet': the iteration-time difference from mmdet's run, "
              'paired by iteration (the same batch), as a share of its median iteration, with '
              'a 95 % interval over blocks of iterations; runs are sequential, not interleaved.',
              '', '## Runs', '', '| | ' + ' | '.join(
                  f"{n}: `{runs[n]['loss_type']}`" for n in names) + ' |',
              '|---' * (len(names) + 1) + '|']

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
    for k in ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75'):
        row(k, [fmt((runs[n].get('metrics') or {}).get(k), '.4f') for n in names])
    row('learning curve (iteration: bbox_mAP)', [', '.join(
        f"{p['iter']}: {_num(p['bbox_mAP']):.3f}" for p in runs[n].get('curve') or [])
        for n in names])
    row('train / eval / check time (s)', [
        f"{fmt(_num(runs[n].get('train_s')), '.1f')} / {fmt(_num(runs[n].get('val_s')), '.1f')}"
        f" / {fmt(_num(runs[n].get('check_s')), '.1f')}" for n in names])
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
        tr = ', '.join(f"{k} {fmt(_num(c['trend'][k]['rel_diff']), '.2e')}"
                       for k in COMPARED if k in c.get('trend', {}))
        lines.append(f"- {label}: per-iteration rel diff, max over iterations "
                     f"1-{c.get('horizon_used', '?')}: {mh}; mean losses of the last quarter: "
                     f"{tr}; final weights: rel norm diff "
                     f"{fmt(_num(c.get('param_rel_norm_diff')), '.2e')}.")
    if report.get('control_note'):
        lines.append(f"- Control: {report['control_note']}")
    lines += ['', f"Tolerances ({tol_source(report)}). Total wall time {report['wall_s']:.0f} s. "
                  'Versions: ' + ', '.join(f'{k} {v}' for k, v in report['versions'].items()
                                           if v), '']
    text = '\n'.join(lines)
    path.write_text(text)
    return text


def _md(cell) -> str:
    """A table cell for markdown: its own '|' escaped."""
    return str(cell).replace('|', '\\|')


def tol_source(report: dict) -> str:
    t = report['tolerance']
    return (f"{t['source']}: check_rtol {t['check_rtol']:g}, first_rtol {t['first_rtol']:g}, "
            f"update_rtol {t['update_rtol']:g}, map_floor {t['map_floor']:g}, noise factor "
            f"{t.get('noise_factor', 3):g}")


def summary_table(report: dict):
    """What the terminal shows at the end of a run: the verdict with every check, and the
    accuracy and time of each training."""
    from rich.console import Group
    from rich.table import Table

    status = report['status'].upper()
    theirs, ours = loss_names(report)
    table = Table(title=f"parity of {ours} with mmdet's {theirs}: {status} (exit "
                        f"{report['exit_code']}) in {report['wall_s']:.0f} s",
                  title_justify='left', show_lines=False)
    for col in ('check', 'value', 'tolerance', 'result'):
        table.add_column(col, overflow='fold')
    for r in check_rows(report):
        table.add_row(*r, style=None if r[3] in ('pass', 'n/a') else 'bold red')
    runs = Table(show_lines=False)
    for col in RUN_COLUMNS:
        runs.add_column(col or _tta_title(report), overflow='fold')
    for r in run_rows(report):
        runs.add_row(*r)
    return Group(table, runs)


# ---------------------------------------------------------------------------------------------
STYLES = {'mmdet': dict(ls='-', lw=2.4, alpha=0.55, color='tab:blue'),
          'ours': dict(ls='--', lw=1.4, color='tab:orange'),
          'control': dict(ls=':', lw=1.2, color='tab:gray'),
          'ours_bf16': dict(ls='-.', lw=1.4, color='tab:green'),
          'ours_fp16': dict(ls='-.', lw=1.4, color='tab:purple')}


def plot(path: Path, report: dict) -> None:
    """curves.png: the learning curves (bbox_mAP against iteration and against training time),
    the training losses, and the per-call errors of our loss (checked)."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from .compare import COMPARED

    runs = report['runs']
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    (ax_it, ax_t), (ax_loss, ax_err) = axes
    thr = _num((report.get('timing') or {}).get('threshold'))
    for side, rec in runs.items():
        st = STYLES.get(side, dict(ls='-', lw=1))
        curve = rec.get('curve') or []
        if curve:
            its = [p['iter'] for p in curve]
            ts = [_num(p['train_s']) for p in curve]
            ms = [_num(p['bbox_mAP']) for p in curve]
            label = f"{side} ({rec['loss_type']})"
            ax_it.plot(its, ms, marker='o', ms=4, label=label, **st)
            ax_t.plot(ts, ms, marker='o', ms=4, label=label, **st)
        for k in COMPARED:
            ls = [_num(v) for v in (rec.get('losses') or {}).get(k) or []]
            if ls:
                w = max(1, len(ls) // 50)  # a running mean: the trend, not the batch noise
                sm = [sum(ls[max(0, i - w + 1):i + 1]) / len(ls[max(0, i - w + 1):i + 1])
                      for i in range(len(ls))]
                ax_loss.plot(range(1, len(ls) + 1), sm, label=f'{k}: {side}',
                             **dict(st, lw=1.0 if k == 'loss_bbox' else st.get('lw', 1)))
    for ax in (ax_it, ax_t):
        if thr is not None:
            ax.axhline(thr, color='k', lw=0.8, ls=':', label=_tta_title(report))
        acc = report.get('accuracy') or {}
        if acc.get('target') is not None:
            ax.axhline(_num(acc['target']), color='red', lw=0.8, ls='--',
                       label=f"recipe target {_num(acc['target']):g}")
        ax.set_ylabel('bbox_mAP (val)')
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax_it.set(xlabel='iteration', title='learning curve')
    ax_t.set(xlabel='training time (s): data loading included, evaluations and the check not',
             title='learning curve against time')
    ax_loss.set(xlabel='iteration', ylabel='loss (running mean)', title='training losses')
    ax_loss.grid(alpha=0.3)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=6, ncol=2)
    floor, top = 1e-12, 10.0  # 0 and non-finite values are drawn at these

    def clip(vals):
        vals = [_num(v) for v in vals]
        return [top if not math.isfinite(v) else min(max(v, floor), top) for v in vals]

    drawn = False
    for side, rec in runs.items():
        cc = rec.get('call_check')
        if not cc or not cc['per_iteration']['iteration']:
            continue
        it = cc['per_iteration']['iteration']
        col = STYLES.get(side, {}).get('color')
        ax_err.semilogy(it, clip(cc['per_iteration']['loss_rel_err']), '.', ms=2, color=col,
                        label=f'{side}: loss')
        ax_err.semilogy(it, clip(cc['per_iteration']['grad_rel_err']), 'x', ms=2, color=col,
                        alpha=0.6, label=f'{side}: gradient')
        ax_err.axhline(_num(rec.get('check_rtol')) or report['tolerance']['check_rtol'],
                       color=col, ls='--', lw=1)
        drawn = True
    if not drawn:
        ax_err.text(0.5, 0.5, 'no per-call check (our loss not trained)', ha='center',
                    va='center', transform=ax_err.transAxes)
        ax_err.set_yscale('log')
    else:
        ax_err.legend(fontsize=7)
    ax_err.set(xlabel='iteration', ylabel='rel. error (worst call)',
               title="ours vs float64 of mmdet's formula (dashed: tolerance)")
    ax_err.grid(alpha=0.3, which='both')
    s = report['settings']
    fig.suptitle(f"{' vs '.join(loss_names(report))} · {s['config_name']} · {s['device']} · "
                 f"amp {s['amp']} · {s['iters']} iterations"
                 f" · {report['status']}" + (f" · fault {s['fault']}" if s.get('fault') else ''),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
