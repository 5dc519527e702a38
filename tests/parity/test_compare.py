"""parity.compare and parity.report on hand-made run records: which differences fail."""
import json
import math

import pytest
import torch

pytest.importorskip('mmengine')
pytest.importorskip('matplotlib')

from mmdet_focal_triton.parity import compare, report  # noqa: E402

TOL = dict(first_rtol=1e-6, update_rtol=1e-4, trend_rtol=5e-2, map_atol=5e-2, check_rtol=1e-5)


def _rec(cls, bbox, digest='x', side='a', mAP=0.1):
    return {'side': side, 'init_digest': digest,
            'metrics': {'bbox_mAP': mAP, 'bbox_mAP_50': 2 * mAP},
            'losses': {'loss_cls': cls, 'loss_bbox': bbox,
                       'loss': [a + b for a, b in zip(cls, bbox, strict=True)]}}


CLS, BBOX = [1.0, 0.5, 0.25, 0.2], [0.8, 0.7, 0.6, 0.5]


def test_deterministic_checks():
    a = _rec(CLS, BBOX)
    same = compare.compare_runs(a, _rec(list(CLS), list(BBOX)), TOL)
    assert same['passed'] and same['max_rel_diff']['loss_cls'] == 0.0
    # iteration 1 (same weights, same batch) has its tolerance ...
    first = compare.compare_runs(a, _rec([1.0 * (1 + 1e-5)] + CLS[1:], BBOX), TOL)
    assert not first['passed'] and any('iteration 1' in r for r in first['reasons'])
    # ... later iterations are the chaotic trajectory: reported, not checked
    late = compare.compare_runs(a, _rec(CLS, [0.8, 0.7 * 1.01, 0.6 * 1.02, 0.5]), TOL)
    assert late['passed'] and late['max_rel_diff']['loss_bbox'] == pytest.approx(0.02 / 1.02)
    assert late['argmax_iter']['loss_bbox'] == 3
    nan = compare.compare_runs(a, _rec([1.0, float('nan'), 0.25, 0.2], BBOX), TOL)
    assert not nan['passed'] and any('finite' in r for r in nan['reasons'])
    other_init = compare.compare_runs(a, _rec(CLS, BBOX, digest='y'), TOL)
    assert not other_init['passed'] and not other_init['init_identical']
    assert not compare.compare_runs(a, _rec(CLS[:2], BBOX[:2]), TOL)['passed']


def test_first_update_difference():
    s0 = {'w': torch.zeros(4), 'n': torch.tensor(3)}
    sa = {'w': torch.tensor([1.0, 0.0, 0.0, 0.0]), 'n': torch.tensor(3)}
    sb = {'w': torch.tensor([1.0, 1e-3, 0.0, 0.0]), 'n': torch.tensor(3)}
    assert compare.update_diff(s0, sa, sa) == 0.0
    assert compare.update_diff(s0, sa, sb) == pytest.approx(1e-3, rel=1e-6)
    a = dict(_rec([1.0], [1.0]), state_after_1=sa)
    b = dict(_rec([1.0], [1.0]), state_after_1=sb)
    res = compare.compare_runs(a, b, TOL, init_state=s0)
    assert res['first_update_rel_diff'] == pytest.approx(1e-3, rel=1e-6) and not res['passed']
    assert compare.compare_runs(a, b, dict(TOL, update_rtol=1e-2), init_state=s0)['passed']


def test_statistics_within_floor_or_within_the_controls_noise():
    a = _rec(CLS, BBOX, mAP=0.10)
    b = _rec(CLS, [0.8, 0.7, 0.6, 0.5 * 1.2], mAP=0.12)  # trend of loss_bbox off by 1/6
    stats = compare.compare_runs(a, b, TOL)['statistics']
    trend = 'loss_bbox: mean of the last 1 iterations, rel diff'
    assert stats[trend]['value'] == pytest.approx(1 / 6)
    assert stats['bbox_mAP: abs diff']['value'] == pytest.approx(0.02)
    judged = compare.judge_statistics(stats, TOL)
    assert not judged[trend]['passed'] and judged['bbox_mAP: abs diff']['passed']
    assert not compare.within_floors(judged)
    # a control that drifted by 0.1 makes 1/6 noise (band 3 x 0.1) ...
    ctl = compare.compare_runs(a, _rec(CLS, [0.8, 0.7, 0.6, 0.5 * 1.1]), TOL)['statistics']
    judged = compare.judge_statistics(stats, TOL, ctl)
    assert judged[trend]['passed'] and judged[trend]['band'] == pytest.approx(3 * 0.1 / 1.1)
    # ... a control that did not drift leaves the floor
    tiny = compare.compare_runs(a, _rec(CLS, BBOX), TOL)['statistics']
    assert not compare.judge_statistics(stats, TOL, tiny)[trend]['passed']
    nan = compare.judge_statistics({trend: dict(value=float('nan'), kind='trend')}, TOL)
    assert not nan[trend]['passed']


def test_outputs_with_a_nan_reference(tmp_path):
    """A reference run whose loss turns NaN (mmcv's fp16 op) still gives a table and a plot."""
    nan = float('nan')
    a = dict(_rec([1.0, 0.9, nan, nan], [0.8, 0.7, 0.6, 0.5], side='mmdet'), status='ok',
             loss_type='FocalLoss')
    b = dict(_rec([1.0, 0.9, 0.8, 0.7], [0.8, 0.7, 0.6, 0.5], side='ours'), status='ok',
             loss_type='TritonFocalLoss')
    assert compare.first_nonfinite(a) == (3, 'loss_cls') and compare.first_nonfinite(b) is None
    a['first_nonfinite'] = {'iteration': 3, 'loss': 'loss_cls'}
    cmp_ = compare.compare_runs(a, b, TOL)
    assert not cmp_['passed']
    call_check = dict(passed=True, calls=8, gradients_checked=8, failed_calls=0, max=dict(
        loss_rel_err=1e-7, grad_rel_err=2e-7, mmdet_loss_rel_err=3e-7, mmdet_grad_rel_err=4e-7),
        mmdet_nonfinite_calls=0, first_failure=None, worst=None,
        coverage=dict(empty_calls=0, calls_without_positives=1, max_abs_logit=9.0,
                      dtypes=['float16'], modules=['bbox_head.loss_cls'], target_forms=['index']),
        per_iteration=dict(iteration=[1, 2, 3, 4], loss_rel_err=[1e-7] * 4,
                           grad_rel_err=[2e-7] * 4))
    rep = report.jsonable(dict(
        status='reference_failed', exit_code=2, reasons=['x'], date='today', wall_s=1.0,
        tolerance=dict(TOL, source='defaults', noise_factor=3.0),
        settings=dict(config_name='c', device='cpu', amp='fp16', iters=4, batch_size=2,
                      img_size='s', num_train=1, num_val=1, seed=0, backend='auto', fault=None),
        device_name='cpu', versions={'torch': '2'}, runs={'mmdet': a, 'ours': b},
        comparison=cmp_, control_comparison=None, call_check=call_check,
        statistics=compare.judge_statistics(cmp_['statistics'], TOL)))
    assert rep['runs']['mmdet']['losses']['loss_cls'][2] == 'nan'  # valid JSON
    json.dumps(rep, allow_nan=False)
    report.plot(tmp_path / 'p.png', rep)
    text = report.write_summary(tmp_path / 's.md', rep)
    assert (tmp_path / 'p.png').stat().st_size > 10_000
    assert 'REFERENCE_FAILED' in text and 'non-finite loss_cls from iteration 3' in text
    assert 'per-call check' in text and '8 calls' in text
    rows = report.check_rows(rep)
    assert rows[0][3] == 'pass' and any(r[3] == 'FAIL' and 'finite' in r[0] for r in rows)
    assert math.isinf(float(rep['comparison']['rel_diff_per_iter']['loss_cls'][2]))
