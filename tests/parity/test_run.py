"""run_parity / tools/parity.py both ways on short CPU runs: with the correct loss every check
passes (through the command line, quietly) and, since 4 iterations teach a detector nothing, the
run says so (a broken recipe, exit 3, never a pass); a slightly wrong loss of parity.faults
fails it (each fault at the first call it touches, without training: test_check.py). The
verdict on trainings that learn: test_verdict.py."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools' / 'parity.py'
CPU_CONFIG = REPO / 'configs' / 'parity' / 'retinanet_r18_fpn_synthetic_cpu.py'
ITERS = 4

pytest.importorskip('mmdet.models')
pytest.importorskip('matplotlib')

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def cli_run(cache, tmp_path_factory):
    work = tmp_path_factory.mktemp('parity') / 'work'
    cmd = [sys.executable, str(TOOL), '--device', 'cpu', '--iters', str(ITERS),
           '--eval-interval', '2', '--img-size', '128', '--num-train', '6', '--num-val', '3',
           '--batch-size', '2', '--work-dir', str(work)]
    proc = subprocess.run(cmd, cwd=str(work.parent), capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, COLUMNS='120'))
    return proc, work


def test_correct_loss_checks_pass_quietly(cli_run):
    proc, work = cli_run
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    lines = out.splitlines()
    # what runs, a bar per training, a line per training, two tables: nothing else
    assert len(lines) <= 40, out
    assert 'BROKEN_RECIPE (exit 3)' in out
    # the one failing row: mmdet's training did not reach the recipe's target in 4 iterations
    assert [line for line in out.splitlines() if 'FAIL' in line] == [
        line for line in out.splitlines() if "reaches the recipe's target" in line]
    assert 'mmdet     train' in out and 'ours      train' in out
    assert f'{ITERS}/{ITERS}' in out and 'loss_cls' in out and 'ETA' in out and 'mAP' in out
    for noise in ('System environment', 'Config:', 'loading annotations', 'Warning',
                  'Iter(val)'):
        assert noise not in out, noise
    log = (work / 'parity.log').read_text()
    for line in ('System environment', 'Config:', 'Iter(val)'):
        assert line in log, line
    for f in ('report.json', 'summary.md', 'curves.png'):
        assert str(work / f) in out


def test_correct_loss_report(cli_run):
    _, work = cli_run
    report = json.loads((work / 'report.json').read_text())
    assert report['status'] == 'broken_recipe' and report['exit_code'] == 3
    assert len(report['reasons']) == 1 and 'broken recipe' in report['reasons'][0]
    for lib in ('torch', 'triton', 'mmcv', 'mmdet', 'mmengine'):
        assert report['versions'][lib]
    cc = report['call_check']
    assert cc['passed'] and cc['calls'] == 5 * ITERS and cc['gradients_checked'] == 5 * ITERS
    assert cc['max']['loss_rel_err'] <= 1e-6 and cc['max']['grad_rel_err'] <= 1e-6
    assert cc['coverage']['modules'] == ['bbox_head.loss_cls']
    assert cc['per_iteration']['iteration'] == list(range(1, ITERS + 1))
    runs = report['runs']
    assert runs['ours']['loss_type'] == 'TritonFocalLoss' and runs['ours']['swapped'] >= 1
    for side in ('mmdet', 'ours'):
        rec = runs[side]
        assert rec['status'] == 'ok', rec.get('error')
        for k in ('loss', 'loss_cls', 'loss_bbox'):
            assert len(rec['losses'][k]) == ITERS
            assert all(math.isfinite(v) and v > 0 for v in rec['losses'][k])
        assert 0.0 <= rec['metrics']['bbox_mAP'] <= 1.0
        assert len(rec['iter_s']) == ITERS and rec['train_s'] > 0 and rec['median_iter_s'] > 0
        assert [p['iter'] for p in rec['curve']] == [2, 4]  # --eval-interval 2
    assert runs['ours']['check_s'] > 0  # the per-call check's time, left out of train_s
    cmp_ = report['comparison']
    assert cmp_['init_identical'] and cmp_['checks'] and all(cmp_['checks'].values())
    for k in ('loss_cls', 'loss_bbox'):
        assert cmp_['first_iter_rel_diff'][k] <= 1e-5
    assert cmp_['first_update_rel_diff'] <= 1e-4
    acc = report['accuracy']
    assert not acc['recipe_ok'] and acc['target'] == 0.3 and 'control' not in runs
    assert report['timing']['runs']['ours']['vs_mmdet'] is None  # too few iterations to pair
    png = (work / 'curves.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n' and len(png) > 10_000
    summary = (work / 'summary.md').read_text()
    assert '**BROKEN_RECIPE**' in summary and 'per-call check' in summary
    assert 'learning curve' in summary


def _short(tmp_path, **kw):
    from mmdet_focal_triton.parity import run_parity

    opts = dict(config=str(CPU_CONFIG), iters=2, losses='ours', img_size=96, num_train=4,
                num_val=2, work_dir=str(tmp_path / 'work'))
    opts.update(kw)
    return run_parity(**opts)


def test_a_slightly_wrong_loss_fails_the_run(cache, tmp_path, one_torch_thread):
    """A fault of parity.faults, chosen by the run's option, reaches the run and fails it twice
    over, with both trainings: loss_weight x 1.001 fails the per-call check at iteration 1, on
    every call (exit 1), and the training comparison (iteration 1 differs by 1e-3, 100x
    first_rtol). Every fault failing at the first call it touches, without training:
    test_check.py; the same run without a fault passing every check: the command line's run
    above (test_correct_loss_report)."""
    report = _short(tmp_path, fault='loss_weight', losses='both')
    assert report['status'] == 'fail' and report['exit_code'] == 1, report['reasons']
    cc = report['call_check']
    assert not cc['passed'] and cc['first_failure']['iteration'] == 1
    assert cc['failed_calls'] == cc['calls'] == 5 * 2  # every level, two iterations
    assert report['reasons'][0].startswith('per-call check')
    assert report['comparison']['first_iter_rel_diff']['loss_cls'] == pytest.approx(1e-3,
                                                                                   rel=1e-2)
    assert any('loss_cls: iteration 1' in r for r in report['reasons'])
    assert 'call_check' not in report['runs']['mmdet']  # the per-call check is ours only
