"""The verdict of a parity run on made-up trainings (no training): a run whose reference does
not learn is a broken recipe, never a pass; a gap beyond the spread fails; equal runs pass; the
control is trained when a gap exceeds the floor; a wrong loss fails whatever the accuracy."""
import copy
import json
import math

import pytest

pytest.importorskip('mmdet.models')
pytest.importorskip('matplotlib')

from mmengine.config import Config  # noqa: E402

from mmdet_focal_triton.parity import compare, run  # noqa: E402
from mmdet_focal_triton.parity import config as pcfg  # noqa: E402
from mmdet_focal_triton.parity.report import check_rows, run_rows  # noqa: E402

ITERS = 40
EVERY = 10
_FROMFILE = Config.fromfile


def _call_check(passed=True):
    return dict(passed=passed, calls=5 * ITERS, gradients_checked=5 * ITERS,
                failed_calls=0 if passed else 1,
                max=dict(loss_rel_err=2e-7 if passed else 3e-3, grad_rel_err=3e-7,
                         mmdet_loss_rel_err=1e-6, mmdet_grad_rel_err=1e-5),
                mmdet_nonfinite_calls=0,
                first_failure=None if passed else dict(iteration=1, module='bbox_head.loss_cls',
                                                       failures=['loss rel err 3e-3 > 1e-5']),
                worst=None, coverage=dict(empty_calls=0, calls_without_positives=0,
                                          max_abs_logit=9.0, dtypes=['float32'],
                                          modules=['bbox_head.loss_cls'],
                                          target_forms=['index'],
                                          loss_types=['TritonFocalLoss']),
                per_iteration=dict(iteration=list(range(1, ITERS + 1)),
                                   loss_rel_err=[2e-7] * ITERS, grad_rel_err=[3e-7] * ITERS,
                                   mmdet_loss_rel_err=[1e-6] * ITERS,
                                   mmdet_grad_rel_err=[1e-5] * ITERS))


_LOADED = {}


def _fromfile_once(filename, *args, **kwargs):
    """mmengine's Config.fromfile, each file parsed once per test session (a copy each call):
    a run loads its config twice, ~0.4 s each on the CI machine."""
    key = (str(filename), args, tuple(sorted(kwargs.items())))
    if key not in _LOADED:
        _LOADED[key] = _FROMFILE(filename, *args, **kwargs)
    return copy.deepcopy(_LOADED[key])


def fake_trainings(monkeypatch, maps: dict, iter_ms: dict | None = None, check_ok=True,
                   first_cls: dict | None = None, plot=False):
    """Replace the training of each side by a record: final bbox_mAP ``maps[side]`` (reached
    linearly over the curve), iterations of ``iter_ms[side]`` ms. Returns the sides trained.
    ``plot=False``: curves.png is not drawn (matplotlib's ~1.5 s a figure on the CI machine;
    the tests that draw it pass ``plot=True``)."""
    trained = []
    if not plot:
        monkeypatch.setattr(run, 'plot', lambda path, report: None)
    monkeypatch.setattr(Config, 'fromfile', _fromfile_once)

    def fake_run_side(side, base_cfg, opts, tol, work_dir, init_state, console):
        trained.append(side)
        m = maps[side]
        ms = (iter_ms or {}).get(side, 100.0)
        cls = [1.0 - 0.01 * i for i in range(ITERS)]
        cls[0] = (first_cls or {}).get(side, 1.0)
        rec = dict(side=side, loss_type=run.side_names(['FocalLoss'])[side], status='ok',
                   error=None, init_digest='same', wall_s=5.0, val_s=1.0,
                   losses=dict(loss_cls=cls, loss_bbox=[0.5] * ITERS,
                               loss=[c + 0.5 for c in cls]),
                   iter_s=[ms / 1e3 * (1 + 0.01 * (i % 3)) for i in range(ITERS)],
                   curve=[dict(iter=i, train_s=i * ms / 1e3, bbox_mAP=m * i / ITERS,
                               bbox_mAP_50=min(1.0, 2 * m * i / ITERS))
                          for i in range(EVERY, ITERS + 1, EVERY)],
                   metrics={k: m for k in run.MAP_KEYS})
        rec['train_s'] = sum(rec['iter_s'])
        rec['median_iter_s'] = sorted(rec['iter_s'])[ITERS // 2]
        if run.is_ours(side):
            rec['call_check'] = _call_check(check_ok)
            rec['check_rtol'] = 1e-5
        if init_state is None:
            rec['init_state'] = {}
        return rec

    monkeypatch.setattr(run, 'run_side', fake_run_side)
    monkeypatch.setattr('mmdet_focal_triton.datasets.make_synthetic_coco',
                        lambda **kw: '/nonexistent/synthetic')
    return trained


def _parity(tmp_path, **kw):
    opts = dict(device='cpu', iters=ITERS, eval_interval=EVERY, target_map=0.3,
                work_dir=str(tmp_path / 'work'))
    opts.update(kw)
    return run.run_parity(**opts)


def test_equal_runs_pass(monkeypatch, tmp_path):
    trained = fake_trainings(monkeypatch, dict(mmdet=0.42, ours=0.42), plot=True)
    rep = _parity(tmp_path)
    assert rep['status'] == 'pass' and rep['exit_code'] == 0, rep['reasons']
    assert trained == ['mmdet', 'ours']  # the control is not needed within the floor
    acc = rep['accuracy']
    assert acc['recipe_ok'] and acc['runs']['ours']['diff'] == 0 and acc['band'] == 0.02
    assert 'not trained' in rep['control_note']
    # time to accuracy: 90 % of 0.42 is first reached at the last evaluation (iteration 40)
    tta = rep['timing']['runs']['ours']['time_to_accuracy']
    assert rep['timing']['threshold'] == pytest.approx(0.9 * 0.42)
    assert tta['iter'] == ITERS and tta['train_s'] == pytest.approx(ITERS * 0.1)
    out = tmp_path / 'work'
    assert json.loads((out / 'report.json').read_text())['status'] == 'pass'
    text = (out / 'summary.md').read_text()
    assert '**PASS**' in text and 'learning curve' in text and "to 90 % of mmdet's mAP" in text
    assert (out / 'curves.png').stat().st_size > 20_000


def test_both_at_zero_is_a_broken_recipe_not_a_pass(monkeypatch, tmp_path):
    fake_trainings(monkeypatch, dict(mmdet=0.0, ours=0.0))
    rep = _parity(tmp_path)
    assert rep['status'] == 'broken_recipe' and rep['exit_code'] == 3
    assert not rep['passed'] and 'broken recipe' in rep['reasons'][0]
    target = [r for r in check_rows(rep) if 'target' in r[0]]
    assert target and target[0][3] == 'FAIL'


def test_reference_below_target_is_broken_even_when_ours_learns(monkeypatch, tmp_path):
    fake_trainings(monkeypatch, dict(mmdet=0.25, ours=0.45))
    assert _parity(tmp_path)['status'] == 'broken_recipe'


def test_a_gap_beyond_the_spread_fails(monkeypatch, tmp_path):
    """ours 0.05 below mmdet: over the 0.02 floor, so the control is trained; it lands 0.01
    from mmdet, a band of 3 x 0.01: the gap fails."""
    trained = fake_trainings(monkeypatch, dict(mmdet=0.50, ours=0.45, control=0.51))
    rep = _parity(tmp_path)
    assert trained == ['mmdet', 'ours', 'control']
    assert rep['status'] == 'fail' and rep['exit_code'] == 1
    acc = rep['accuracy']
    assert acc['spread'] == pytest.approx(0.01) and acc['band'] == pytest.approx(0.03)
    assert not acc['runs']['ours']['passed']
    assert 'trained because' in rep['control_note']
    assert any('differs from mmdet' in r for r in rep['reasons'])


def test_a_gap_within_three_spreads_passes(monkeypatch, tmp_path):
    fake_trainings(monkeypatch, dict(mmdet=0.50, ours=0.46, control=0.485))
    rep = _parity(tmp_path)
    assert rep['status'] == 'pass', rep['reasons']
    assert rep['accuracy']['band'] == pytest.approx(0.045)


def test_without_control_a_gap_over_the_floor_fails(monkeypatch, tmp_path):
    trained = fake_trainings(monkeypatch, dict(mmdet=0.50, ours=0.47))
    rep = _parity(tmp_path, control='none')
    assert trained == ['mmdet', 'ours'] and rep['status'] == 'fail'


def test_a_wrong_loss_fails_whatever_the_accuracy(monkeypatch, tmp_path):
    fake_trainings(monkeypatch, dict(mmdet=0.0, ours=0.0), check_ok=False)
    rep = _parity(tmp_path)
    assert rep['status'] == 'fail' and rep['reasons'][0].startswith('per-call check (ours)')
    fake_trainings(monkeypatch, dict(mmdet=0.5, ours=0.5), first_cls=dict(ours=1.001))
    rep = _parity(tmp_path)
    assert rep['status'] == 'fail' and any('iteration 1' in r for r in rep['reasons'])


def test_step_time_difference_with_its_interval(monkeypatch, tmp_path):
    fake_trainings(monkeypatch, dict(mmdet=0.4, ours=0.4), iter_ms=dict(mmdet=100, ours=90))
    rep = _parity(tmp_path)
    vs = rep['timing']['runs']['ours']['vs_mmdet']
    assert vs['resolved'] and vs['rel']['mean'] == pytest.approx(-0.1, rel=0.05)
    assert vs['rel']['high'] < 0
    row = [r for r in run_rows(rep) if r[0] == 'ours'][0]
    assert row[5].startswith('-10.') and 'not resolved' not in row[5]


def test_the_target_is_required(monkeypatch, tmp_path):
    fake_trainings(monkeypatch, dict(mmdet=0.4, ours=0.4))
    with pytest.raises(ValueError, match='target_map must be > 0'):
        _parity(tmp_path, target_map=0.0)


@pytest.mark.parametrize('side', ['mmdet', 'ours'])
def test_losses_alone(monkeypatch, tmp_path, side):
    """One training alone: judged by the target only (a recipe check for 'mmdet')."""
    fake_trainings(monkeypatch, {side: 0.4})
    assert _parity(tmp_path, losses=side)['status'] == 'pass'
    fake_trainings(monkeypatch, {side: 0.1})
    assert _parity(tmp_path, losses=side)['status'] == 'broken_recipe'


def test_schedules_follow_the_iterations():
    scheds = [dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
              dict(type='CosineAnnealingLR', by_epoch=False, begin=100, end=1000, T_max=900,
                   eta_min=1e-5)]
    pcfg.fit_schedule(scheds, 40)
    assert scheds[0]['end'] == 10 and (scheds[1]['begin'], scheds[1]['end']) == (10, 40)
    assert scheds[1]['T_max'] == 30
    pcfg.fit_schedule(scheds, 2000)
    assert scheds[0]['end'] == 10 and scheds[1]['end'] == 2000 and scheds[1]['T_max'] == 1990
    pcfg.fit_schedule(scheds, 2)  # a smoke run: warm-up 1, decay 1
    assert scheds[0]['end'] == 1 and (scheds[1]['begin'], scheds[1]['end']) == (1, 2)
    pcfg.fit_schedule(scheds, 1)
    assert [s['type'] for s in scheds] == ['LinearLR'] and scheds[0]['end'] == 1


def test_no_nan_sneaks_into_a_pass():
    acc = compare.judge_accuracy(0.5, {'ours': math.nan}, target=0.3, floor=0.02)
    assert acc['recipe_ok'] and not acc['passed']
    acc = compare.judge_accuracy(math.nan, {'ours': 0.5}, target=0.3, floor=0.02)
    assert not acc['recipe_ok'] and not acc['passed']


@pytest.fixture
def fake_cuda(monkeypatch):
    """run_parity on 'cuda' without a GPU (the trainings are made up anyway)."""
    import torch

    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(run, 'device_name', lambda device: 'a GPU')


def test_amp_runs_must_learn_no_worse_than_mmdet(monkeypatch, tmp_path, fake_cuda):
    """The GPU default trains ours under AMP bf16 too; it passes when its mAP is no worse than
    mmdet's fp32 one minus the band (higher is fine: the whole network computes in bf16)."""
    trained = fake_trainings(monkeypatch, dict(mmdet=0.50, ours=0.51, ours_bf16=0.60),
                             plot=True)
    rep = _parity(tmp_path, device='cuda', extra_amp=('bf16',), control='none')
    assert trained == ['mmdet', 'ours', 'ours_bf16'] and rep['status'] == 'pass', rep['reasons']
    assert rep['accuracy']['runs']['ours_bf16']['one_sided']
    assert rep['runs']['ours_bf16']['loss_type'] == 'TritonFocalLoss, AMP bf16'
    rows = {r[0]: r for r in check_rows(rep)}
    assert rows['bbox_mAP ours_bf16 - mmdet (no worse than)'][1:] == ('+0.100', '>= -0.02',
                                                                      'pass')
    assert (tmp_path / 'work' / 'curves.png').stat().st_size > 20_000  # the AMP run's curve too
    fake_trainings(monkeypatch, dict(mmdet=0.50, ours=0.51, ours_bf16=0.44, control=0.49))
    rep = _parity(tmp_path, device='cuda', extra_amp=('bf16',))
    assert rep['status'] == 'fail' and rep['accuracy']['band'] == pytest.approx(0.03)
    assert any('ours_bf16 bbox_mAP 0.440 is below' in r for r in rep['reasons'])
