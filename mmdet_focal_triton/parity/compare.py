"""Comparing two recorded trainings: deterministic checks and statistical ones.

A run record (``parity.run``) holds the per-iteration losses, the initial-weights digest, the
weights after iteration 1 and at the end, and the mAPs. ``compare_runs(a, b)`` gives:

- deterministic checks, which hold on any machine when b's loss is right: the initial weights
  are bit-identical, iteration 1 (same weights, same batch) agrees to ``first_rtol``, the first
  weight update to ``update_rtol``, every loss is finite;
- reported only: the per-iteration relative differences (over the first ``REPORT_HORIZON``
  iterations and all of them), the means of the last quarter of the losses, the mAP
  differences and the final weight difference: two trainings that differ by rounding become
  different, equally good trajectories, so they are judged by their accuracy
  (``judge_accuracy``: the final mAPs against the run-to-run spread of mmdet's own training),
  not iteration by iteration.

Also here: ``time_to_accuracy`` (the first evaluation of a learning curve at a threshold) and
``paired_step_time`` (the iteration-time difference of two runs with a 95 % interval).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..stats import mean_interval, relative, t975  # noqa: F401  (t975: re-exported)
from .config import NOISE_FACTOR, REPORT_HORIZON, TREND_FRACTION
from .hooks import RECORDED

COMPARED = ('loss_cls', 'loss_bbox')
MAP_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')


def rel_diffs(a, b) -> list:
    """|x - y| / max(|x|, |y|) element by element; inf where either is not finite."""
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


def compare_runs(a: dict, b: dict, tol: dict, init_state: dict | None = None,
                 horizon: int = REPORT_HORIZON) -> dict:
    """Compare run ``b`` against run ``a`` (module docstring). ``tol``: first_rtol,
    update_rtol. Returns the numbers, ``checks`` (deterministic, name -> bool) and
    the reported numbers (trends, mAP differences, weight differences)."""
    out = {'init_identical': a.get('init_digest') == b.get('init_digest'),
           'first_iter_rel_diff': {}, 'rel_diff_per_iter': {}, 'max_rel_diff': {},
           'argmax_iter': {}, 'max_rel_diff_horizon': {}, 'argmax_iter_horizon': {},
           'trend': {}}
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
        h = min(horizon, len(r)) if horizon > 0 else len(r)
        j = int(np.argmax(r[:h]))
        out['max_rel_diff_horizon'][k], out['argmax_iter_horizon'][k] = r[j], j + 1
        out['horizon_used'] = h
        w = trend_window(len(la))
        ma, mb = float(np.mean(la[-w:])), float(np.mean(lb[-w:]))
        out['trend'][k] = {'window': w, 'mean_a': ma, 'mean_b': mb,
                           'rel_diff': rel_diffs([ma], [mb])[0]}
        if k in COMPARED:
            checks[f'{k}: iteration 1 rel diff <= {tol["first_rtol"]:g}'] = \
                r[0] <= tol['first_rtol']
    for n, rec in (('a', a), ('b', b)):
        checks[f'{rec.get("side", n)}: every loss finite'] = finite_losses(rec)
    if init_state is not None and 'state_after_1' in a and 'state_after_1' in b:
        u = update_diff(init_state, a['state_after_1'], b['state_after_1'])
        out['first_update_rel_diff'] = u
        checks[f'first weight update rel diff <= {tol["update_rtol"]:g}'] = \
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


# ---------------------------------------------------------------------------------------------
# accuracy: the verdict on the trainings
# ---------------------------------------------------------------------------------------------
def final_map(rec: dict | None) -> float | None:
    """The bbox_mAP of a run's last evaluation (None if it has none)."""
    if not rec:
        return None
    v = (rec.get('metrics') or {}).get('bbox_mAP')
    return float(v) if v is not None else None


def judge_accuracy(reference: float | None, others: dict, target: float, floor: float,
                   factor: float = NOISE_FACTOR, control: float | None = None,
                   one_sided: tuple = ()) -> dict:
    """The accuracy verdict of a parity run.

    ``reference``: the final bbox_mAP of mmdet's own training (None: it has none). ``others``:
    ``{run name: final bbox_mAP}`` of the runs judged against it (ours, ours under AMP).
    ``target``: what the recipe promises mmdet's training reaches; a run where it does not is a
    broken recipe, whatever the others did (two trainings that learnt nothing agree on
    nothing). ``control``: the final mAP of mmdet's loss trained again with a rounding-level
    perturbation (None: not trained); ``spread = |control - reference|`` is the run-to-run noise
    of mmdet's own training, and each run passes when ``|mAP - reference| <= band`` with
    ``band = max(floor, factor * spread)``. The runs named in ``one_sided`` pass when
    ``mAP >= reference - band``: trainings under AMP, where the whole network, not only the
    loss, computes in another precision, have no mmdet training to be identical to (mmcv's op
    cannot run bf16); what they owe the user is to learn no worse than mmdet in fp32.

    Returns ``dict(recipe_ok, target, reference, spread, band, runs={name: dict(mAP, diff
    (signed, mAP - reference), within_floor, one_sided, passed)}, passed)``; ``passed`` needs
    the recipe to be right and every run within its band.
    """
    if not target > 0:
        raise ValueError(f'target must be > 0 (a run that learns nothing proves nothing), got '
                         f'{target!r}')
    ok_ref = reference is not None and math.isfinite(reference)
    recipe_ok = ok_ref and reference >= target
    spread = (abs(control - reference) if ok_ref and control is not None
              and math.isfinite(control) else None)
    band = max(floor, factor * spread) if spread is not None else floor
    runs = {}
    for name, m in others.items():
        diff = m - reference if ok_ref and m is not None and math.isfinite(m) else None
        gap = None if diff is None else (max(-diff, 0.0) if name in one_sided else abs(diff))
        runs[name] = dict(mAP=m, diff=diff, one_sided=name in one_sided,
                          within_floor=gap is not None and gap <= floor,
                          passed=gap is not None and gap <= band)
    return dict(recipe_ok=recipe_ok, target=target, reference=reference, spread=spread,
                band=band, floor=floor, factor=factor, runs=runs,
                passed=recipe_ok and all(r['passed'] for r in runs.values()))


def time_to_accuracy(curve: list, threshold: float) -> dict | None:
    """The first evaluation of a learning curve (``[dict(iter, train_s, bbox_mAP)]``) at or
    above ``threshold``: ``dict(iter, train_s)``, or None if none reaches it."""
    if threshold is None or not math.isfinite(threshold):
        return None
    for p in curve or []:
        m = p.get('bbox_mAP')
        if m is not None and m >= threshold:
            return dict(iter=p['iter'], train_s=p['train_s'])
    return None


def paired_step_time(a: list, b: list, blocks: int = 20, warmup: float = 0.05) -> dict | None:
    """How much longer an iteration of run b takes than the same iteration of run a (same
    batch: the parity runs see the same data in the same order), with a 95 % interval.

    The first ``warmup`` fraction of the iterations (cuDNN and Triton compile, allocator
    growth) is left out; the rest is cut into ``blocks`` runs of consecutive iterations, each
    block gives the median of its paired differences (robust to the odd slow iteration), and
    the interval is the t-interval over the block medians (consecutive iterations are not
    independent; blocks nearly are). ``rel``: the differences relative to run a's median
    iteration time. None with fewer than 4 pairs per block after the warm-up.
    """
    n = min(len(a), len(b))
    skip = int(math.ceil(n * warmup))
    d = [float(b[i]) - float(a[i]) for i in range(skip, n)]
    blocks = min(blocks, len(d) // 4)
    if blocks < 2:
        return None
    size = len(d) // blocks
    meds = [float(np.median(d[k * size:(k + 1) * size])) for k in range(blocks)]
    base = float(np.median([float(x) for x in a[skip:n]]))
    ms = mean_interval(meds)
    return dict(ms, rel=relative(ms, base), base_s=base, blocks=blocks, pairs=len(d),
                skipped=skip)
