"""parity.compare and parity.report on hand-made run records: which differences fail."""
import json
import math

import pytest
import torch

pytest.importorskip('mmengine')
pytest.importorskip('matplotlib')

from mmdet_focal_triton.parity import compare, report  # noqa: E402

TOL = dict(first_rtol=1e-6, update_rtol=1e-4, map_floor=0.02, check_rtol=1e-5)


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


def test_trends_and_map_differences_are_reported():
    a = _rec(CLS, BBOX, mAP=0.10)
    b = _rec(CLS, [0.8, 0.7, 0.6, 0.5 * 1.2], mAP=0.12)  # trend of loss_bbox off by 1/6
    c = compare.compare_runs(a, b, TOL)
    assert c['passed']  # reported, not checked: the trajectories are chaotic
    assert c['trend']['loss_bbox']['rel_diff'] == pytest.approx(1 / 6)
    assert c['mAP_abs_diff']['bbox_mAP'] == pytest.approx(0.02)


def test_judge_accuracy():
    j = compare.judge_accuracy
    # both at mAP 0: the recipe is broken, not a pass
    acc = j(0.0, {'ours': 0.0}, target=0.3, floor=0.02)
    assert not acc['recipe_ok'] and not acc['passed'] and acc['runs']['ours']['diff'] == 0
    # equal runs pass; a gap within the floor passes without a control
    assert j(0.5, {'ours': 0.5}, 0.3, 0.02)['passed']
    assert j(0.5, {'ours': 0.485}, 0.3, 0.02)['runs']['ours']['within_floor']
    # a gap beyond the floor fails unless mmdet's own spread is a third of it or more
    assert not j(0.5, {'ours': 0.45}, 0.3, 0.02)['passed']
    assert not j(0.5, {'ours': 0.45}, 0.3, 0.02, control=0.51)['passed']
    acc = j(0.5, {'ours': 0.45}, 0.3, 0.02, control=0.48)
    assert acc['passed'] and acc['spread'] == pytest.approx(0.02)
    assert acc['band'] == pytest.approx(0.06)
    # every judged run must pass (ours and ours under bf16)
    assert not j(0.5, {'ours': 0.5, 'ours_bf16': 0.4}, 0.3, 0.02)['passed']
    # runs under AMP are judged one-sided: no worse than mmdet in fp32
    acc = j(0.5, {'ours_bf16': 0.6}, 0.3, 0.02, one_sided=('ours_bf16',))
    assert acc['passed'] and acc['runs']['ours_bf16']['diff'] == pytest.approx(0.1)
    assert not j(0.5, {'ours_bf16': 0.6}, 0.3, 0.02)['passed']  # two-sided: too far
    assert not j(0.5, {'ours_bf16': 0.47}, 0.3, 0.02, one_sided=('ours_bf16',))['passed']
    with pytest.raises(ValueError, match='target'):
        j(0.5, {'ours': 0.5}, 0.0, 0.02)


def test_time_to_accuracy():
    curve = [dict(iter=100, train_s=10.0, bbox_mAP=0.1), dict(iter=200, train_s=21.0,
                                                              bbox_mAP=0.46),
             dict(iter=300, train_s=30.0, bbox_mAP=0.44), dict(iter=400, train_s=41.0,
                                                               bbox_mAP=0.5)]
    assert compare.time_to_accuracy(curve, 0.45) == dict(iter=200, train_s=21.0)
    assert compare.time_to_accuracy(curve, 0.5) == dict(iter=400, train_s=41.0)
    assert compare.time_to_accuracy(curve, 0.51) is None
    assert compare.time_to_accuracy([], 0.1) is None


def test_mean_interval_matches_the_t_interval():
    v = [1.0, 2.0, 3.0, 4.0]
    m = compare.mean_interval(v)
    # mean 2.5, sd 1.2910, t(3) = 3.182: half width 2.054
    assert m['mean'] == 2.5 and m['low'] == pytest.approx(2.5 - 2.0540, abs=1e-3)
    assert m['resolved']
    assert not compare.mean_interval([-1.0, 1.0, -2.0, 2.0])['resolved']
    assert not compare.mean_interval([3.0])['resolved']
    assert compare.t975(10) == 2.228 and abs(compare.t975(200) - 1.972) < 2e-3


def test_paired_step_time():
    g = torch.Generator().manual_seed(0)
    a = (0.1 + 0.01 * torch.rand(400, generator=g)).tolist()
    same = (0.1 + 0.01 * torch.rand(400, generator=g)).tolist()
    slower = [x + 0.005 for x in a]
    p = compare.paired_step_time(a, slower)
    assert p['resolved'] and p['rel']['mean'] == pytest.approx(0.005 / 0.105, rel=0.05)
    assert p['skipped'] == 20 and p['blocks'] == 20
    assert not compare.paired_step_time(a, same)['resolved']
    assert compare.paired_step_time(a[:5], a[:5]) is None


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
        comparison=cmp_, control_comparison=None, call_check=call_check))
    rep['runs']['ours']['call_check'] = call_check
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
