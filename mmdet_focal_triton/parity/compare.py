"""Comparing two recorded trainings: deterministic checks and statistical ones.

A run record (``parity.run``) holds the per-iteration losses, the initial-weights digest, the
weights after iteration 1 and at the end, and the mAPs. ``compare_runs(a, b)`` gives:

- deterministic checks, which hold on any machine when b's loss is right: the initial weights
  are bit-identical, iteration 1 (same weights, same batch) agrees to ``first_rtol``, the first
  weight update to ``update_rtol``, every loss is finite;
- the statistics of the two (chaotic) trajectories, judged by ``judge_statistics`` against a
  floor or against the noise a control run shows: the means of the last quarter of the
  iterations and the mAPs;
- reported only: the per-iteration relative differences (over the first ``REPORT_HORIZON``
  iterations and all of them) and the final weight difference.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .config import NOISE_FACTOR, REPORT_HORIZON, TREND_FRACTION
from .hooks import RECORDED

COMPARED = ('loss_cls', 'loss_bbox')
MAP_KEYS = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')
CHECKED_MAPS = ('bbox_mAP', 'bbox_mAP_50')


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
    ``statistics`` (name -> dict(value, kind)) for ``judge_statistics``."""
    out = {'init_identical': a.get('init_digest') == b.get('init_digest'),
           'first_iter_rel_diff': {}, 'rel_diff_per_iter': {}, 'max_rel_diff': {},
           'argmax_iter': {}, 'max_rel_diff_horizon': {}, 'argmax_iter_horizon': {},
           'trend': {}, 'statistics': {}}
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
            out['statistics'][f'{k}: mean of the last {w} iterations, rel diff'] = dict(
                value=out['trend'][k]['rel_diff'], kind='trend')
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
    for k in CHECKED_MAPS:
        if k in out['mAP_abs_diff']:
            out['statistics'][f'{k}: abs diff'] = dict(value=out['mAP_abs_diff'][k], kind='map')
    out['checks'] = checks
    out['passed'] = all(checks.values())
    out['reasons'] = [k for k, v in checks.items() if not v]
    return out


def judge_statistics(stats: dict, tol: dict, noise: dict | None = None,
                     factor: float = NOISE_FACTOR) -> dict:
    """Each statistic of ``compare_runs`` passes when it is within its floor (``trend_rtol``
    for trends, ``map_atol`` for mAPs) or within ``factor`` x the same statistic of a control
    run (``noise``: the control's ``statistics``), i.e. the noise of training itself."""
    floors = {'trend': tol['trend_rtol'], 'map': tol['map_atol']}
    out = {}
    for name, s in stats.items():
        floor = floors[s['kind']]
        n = (noise or {}).get(name, {}).get('value')
        band = max(floor, factor * n) if n is not None and math.isfinite(n) else floor
        out[name] = dict(value=s['value'], floor=floor, noise=n, band=band,
                         passed=math.isfinite(s['value']) and s['value'] <= band)
    return out


def within_floors(judged: dict) -> bool:
    return all(math.isfinite(j['value']) and j['value'] <= j['floor'] for j in judged.values())
