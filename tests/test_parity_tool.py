"""tools/parity.py: a very short RetinaNet parity run on CPU, and its comparison logic."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / 'tools' / 'parity.py'
ITERS = 4

pytest.importorskip('mmdet.models')
pytest.importorskip('matplotlib')


@pytest.fixture(scope='module')
def parity_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('parity')
    work = tmp / 'work'
    env = dict(os.environ)
    env['MMDET_FOCAL_TRITON_CACHE'] = str(tmp / 'cache')  # keep the user's cache clean
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    cmd = [sys.executable, str(TOOL), '--device', 'cpu', '--iters', str(ITERS),
           '--img-size', '128', '--num-train', '6', '--num-val', '3', '--batch-size', '2',
           '--work-dir', str(work)]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp), capture_output=True, text=True,
                          timeout=600)
    return proc, work


@pytest.mark.slow
def test_short_run_passes_and_writes_outputs(parity_run):
    proc, work = parity_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((work / 'report.json').read_text())
    for key in ('status', 'passed', 'exit_code', 'tolerance', 'settings', 'device_name',
                'versions', 'date', 'runs', 'comparison', 'config'):
        assert key in report, key
    assert report['status'] == 'pass' and report['passed'] is True and report['exit_code'] == 0
    for lib in ('torch', 'triton', 'mmcv', 'mmdet', 'mmengine'):
        assert report['versions'][lib]
    assert report['settings']['iters'] == ITERS
    runs = report['runs']
    assert runs['mmdet']['loss_type'] == 'FocalLoss'
    assert runs['ours']['loss_type'] == 'TritonFocalLoss' and runs['ours']['swapped'] >= 1
    for side in ('mmdet', 'ours'):
        rec = runs[side]
        assert rec['status'] == 'ok', rec.get('error')
        for k in ('loss', 'loss_cls', 'loss_bbox'):
            ls = rec['losses'][k]
            assert len(ls) == ITERS
            assert all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in ls)
        for k in ('bbox_mAP', 'bbox_mAP_50'):
            v = rec['metrics'][k]
            assert isinstance(v, float) and 0.0 <= v <= 1.0
    cmp_ = report['comparison']
    assert cmp_['init_identical'] is True
    assert cmp_['checks'] and all(cmp_['checks'].values())
    tol = report['tolerance']
    assert cmp_['horizon_used'] == min(ITERS, tol['horizon'] or ITERS)
    for k in ('loss_cls', 'loss_bbox'):
        r = cmp_['max_rel_diff_horizon'][k]
        assert isinstance(r, float) and 0.0 <= r <= tol['rtol']
        assert len(cmp_['rel_diff_per_iter'][k]) == ITERS
        # the recorded curves really are that close
        a, b = runs['mmdet']['losses'][k], runs['ours']['losses'][k]
        assert max(abs(x - y) / max(abs(x), abs(y)) for x, y in zip(a, b, strict=True)) <= \
            tol['rtol']
        assert 0.0 <= cmp_['trend'][k]['rel_diff'] <= tol['trend_rtol']
        assert 0.0 <= cmp_['first_iter_rel_diff'][k] <= tol['first_rtol']
    assert 0.0 <= cmp_['first_update_rel_diff'] <= tol['update_rtol']
    assert math.isfinite(cmp_['param_max_abs_diff']) and math.isfinite(cmp_['param_rel_norm_diff'])
    assert cmp_['param_rel_norm_diff'] < 1e-3
    png = (work / 'loss_curves.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
    summary = (work / 'summary.md').read_text()
    assert 'PASS' in summary and '| loss_cls' in summary and 'bbox_mAP' in summary
    assert (work / 'mmdet').is_dir() and (work / 'ours').is_dir()


def _load_tool():
    spec = importlib.util.spec_from_file_location('parity_tool', TOOL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(cls, bbox, digest='x', side='a'):
    return {'side': side, 'init_digest': digest,
            'metrics': {'bbox_mAP': 0.1, 'bbox_mAP_50': 0.2},
            'losses': {'loss_cls': cls, 'loss_bbox': bbox,
                       'loss': [a + b for a, b in zip(cls, bbox, strict=True)]}}


TOL = dict(first_rtol=1e-6, rtol=1e-4, update_rtol=1e-4, trend_rtol=5e-2)


def test_compare_flags_divergence():
    tool = _load_tool()
    cls, bbox = [1.0, 0.5, 0.25, 0.2], [0.8, 0.7, 0.6, 0.5]
    a = _rec(cls, bbox)
    same = tool.compare(a, _rec(list(cls), list(bbox)), TOL, horizon=0)
    assert same['passed'] and same['max_rel_diff']['loss_cls'] == 0.0
    close = tool.compare(a, _rec([1.0, 0.5 * (1 + 1e-5), 0.25, 0.2], bbox), TOL, horizon=0)
    assert close['passed']
    assert close['max_rel_diff']['loss_cls'] == pytest.approx(1e-5, rel=1e-3)
    assert close['argmax_iter']['loss_cls'] == 2
    far = tool.compare(a, _rec(cls, [0.8, 0.7, 0.6 * 1.01, 0.5]), TOL, horizon=0)
    assert not far['passed'] and far['argmax_iter']['loss_bbox'] == 3
    assert any('loss_bbox' in r for r in far['reasons'])
    # beyond the horizon a per-iteration difference is reported but not checked ...
    late = tool.compare(a, _rec(cls, [0.8, 0.7, 0.6 * 1.01, 0.5]), TOL, horizon=2)
    assert late['passed'] and late['max_rel_diff']['loss_bbox'] > TOL['rtol']
    assert late['max_rel_diff_horizon']['loss_bbox'] == 0.0
    # ... but the trend (mean of the last 25 % of iterations) is
    drift = tool.compare(a, _rec(cls, [0.8, 0.7, 0.6, 0.5 * 1.2]), TOL, horizon=2)
    assert not drift['passed'] and drift['trend']['loss_bbox']['rel_diff'] > TOL['trend_rtol']
    # iteration 1 has its own, tighter tolerance
    first = tool.compare(a, _rec([1.0 * (1 + 1e-5)] + cls[1:], bbox), TOL, horizon=0)
    assert first['max_rel_diff']['loss_cls'] <= TOL['rtol'] and not first['passed']
    assert any('iteration 1' in r for r in first['reasons'])
    nan = tool.compare(a, _rec([1.0, float('nan'), 0.25, 0.2], bbox), TOL, horizon=0)
    assert not nan['passed']
    other_init = tool.compare(a, _rec(cls, bbox, digest='y'), TOL, horizon=0)
    assert not other_init['passed'] and not other_init['init_identical']
    short = tool.compare(a, _rec(cls[:2], bbox[:2]), TOL, horizon=0)
    assert not short['passed']


def test_first_update_difference():
    import torch

    tool = _load_tool()
    s0 = {'w': torch.zeros(4), 'n': torch.tensor(3)}
    sa = {'w': torch.tensor([1.0, 0.0, 0.0, 0.0]), 'n': torch.tensor(3)}
    sb = {'w': torch.tensor([1.0, 1e-3, 0.0, 0.0]), 'n': torch.tensor(3)}
    assert tool.update_diff(s0, sa, sa) == 0.0
    assert tool.update_diff(s0, sa, sb) == pytest.approx(1e-3, rel=1e-6)
    a = dict(_rec([1.0], [1.0]), state_after_1=sa)
    b = dict(_rec([1.0], [1.0]), state_after_1=sb)
    res = tool.compare(a, b, TOL, horizon=0, init_state=s0)
    assert res['first_update_rel_diff'] == pytest.approx(1e-3, rel=1e-6)
    assert not res['passed']
    assert tool.compare(a, b, dict(TOL, update_rtol=1e-2), horizon=0, init_state=s0)['passed']


def test_outputs_with_a_nan_reference(tmp_path):
    """A reference run whose loss turns NaN (mmcv's fp16 op) still gives a table and a plot."""
    tool = _load_tool()
    nan = float('nan')
    a = dict(_rec([1.0, 0.9, nan, nan], [0.8, 0.7, 0.6, 0.5], side='mmdet'), status='ok',
             loss_type='FocalLoss')
    b = dict(_rec([1.0, 0.9, 0.8, 0.7], [0.8, 0.7, 0.6, 0.5], side='ours'), status='ok',
             loss_type='TritonFocalLoss')
    assert tool.first_nonfinite(a) == (3, 'loss_cls') and tool.first_nonfinite(b) is None
    a['first_nonfinite'] = {'iteration': 3, 'loss': 'loss_cls'}
    cmp_ = tool.compare(a, b, TOL, horizon=0)
    assert not cmp_['passed']
    tol = dict(TOL, horizon=20, source='defaults')
    report = tool._jsonable(dict(
        status='reference_failed', reasons=['x'], date='today', wall_s=1.0, tolerance=tol,
        settings=dict(config_name='c', device='cpu', amp='none', iters=4, batch_size=2,
                      img_size='s', num_train=1, num_val=1, seed=0, backend='auto'),
        device_name='cpu', versions={'torch': '2'}, runs={'mmdet': a, 'ours': b},
        comparison=cmp_, control_comparison=None))
    assert report['runs']['mmdet']['losses']['loss_cls'][2] == 'nan'  # valid JSON
    json.dumps(report, allow_nan=False)
    tool.plot(tmp_path / 'p.png', report)
    text = tool.write_summary(tmp_path / 's.md', report)
    assert (tmp_path / 'p.png').stat().st_size > 10_000
    assert 'REFERENCE_FAILED' in text and 'non-finite loss_cls from iteration 3' in text
