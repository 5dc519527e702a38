"""The parity tool beyond FocalLoss: RTMDet-tiny (QualityFocalLoss) passes a short CPU run
through the command line, a slightly wrong QualityFocalLoss fails it at once, and the per-call
check handles QualityFocalLoss / VarifocalLoss calls ((labels, scores) and dense targets, empty
levels) without training."""
import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmdet.models')
pytest.importorskip('matplotlib')

from mmdet_focal_triton import TritonQualityFocalLoss, TritonVarifocalLoss  # noqa: E402
from mmdet_focal_triton.parity import (  # noqa: E402
    FAULTS,
    FAULTS_BY_LOSS,
    FocalLossCheckHook,
    LossCheckHook,
    QualityFocalLossParams,
    VarifocalLossParams,
    check_call,
)
from mmdet_focal_triton.parity import config as pcfg  # noqa: E402
from mmdet_focal_triton.parity.faults import ALL_FAULTS, FaultInjectionHook  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / 'tools' / 'parity.py'
ITERS = 3
LEVELS = 3  # RTMDet calls its loss_cls once per level: strides 8, 16, 32
C = 6


# -- a short run of the command line, and the faults ------------------------------------------
@pytest.fixture(scope='module')
def cli_run(cache, tmp_path_factory):
    work = tmp_path_factory.mktemp('parity_rtmdet') / 'work'
    cmd = [sys.executable, str(TOOL), '--model', 'rtmdet-tiny', '--device', 'cpu', '--iters',
           str(ITERS), '--img-size', '128', '--num-train', '6', '--num-val', '3',
           '--batch-size', '2', '--work-dir', str(work)]
    proc = subprocess.run(cmd, cwd=str(work.parent), capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, COLUMNS='120'))
    return proc, work


@pytest.mark.slow
def test_rtmdet_checks_pass_quietly(cli_run):
    """3 iterations: every check passes, and the run says it proves nothing about learning."""
    proc, work = cli_run
    assert proc.returncode == 3, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert len(out.splitlines()) <= 40, out
    assert 'rtmdet_tiny_synthetic_cpu' in out and 'BROKEN_RECIPE' in out
    # the one failing row: mmdet's training did not reach the recipe's target in 3 iterations
    assert [line for line in out.splitlines() if 'FAIL' in line] == [
        line for line in out.splitlines() if "reaches the recipe's target" in line]
    assert 'mmdet (QualityFocalLoss), ours (TritonQualityFocalLoss)' in out
    assert 'every call of ours is checked' in out
    for noise in ('System environment', 'Config:', 'loading annotations', 'Warning',
                  'Average Precision'):
        assert noise not in out, noise


@pytest.mark.slow
def test_rtmdet_report(cli_run):
    _, work = cli_run
    report = json.loads((work / 'report.json').read_text())
    assert report['status'] == 'broken_recipe' and report['exit_code'] == 3
    assert len(report['reasons']) == 1 and not report['accuracy']['recipe_ok']
    s = report['settings']
    assert s['model'] == 'rtmdet-tiny' and s['loss_types'] == ['QualityFocalLoss']
    cc = report['call_check']
    assert cc['passed'] and cc['calls'] == LEVELS * ITERS
    assert cc['gradients_checked'] == LEVELS * ITERS
    assert cc['max']['loss_rel_err'] <= 1e-6 and cc['max']['grad_rel_err'] <= 1e-6
    cov = cc['coverage']
    assert cov['target_forms'] == ['labels+scores']
    assert cov['loss_types'] == ['TritonQualityFocalLoss']
    assert cov['modules'] == ['bbox_head.loss_cls']
    # what RTMDet's head passes: per-anchor label weights and avg_factor=1.0
    worst = cc['worst']
    assert worst['avg_factor'] == 1.0 and worst['weight'] == [worst['shape'][0]]
    runs = report['runs']
    assert runs['mmdet']['loss_type'] == 'QualityFocalLoss'
    assert runs['ours']['loss_type'] == 'TritonQualityFocalLoss' and runs['ours']['swapped'] == 1
    for side in ('mmdet', 'ours'):
        for k in ('loss', 'loss_cls', 'loss_bbox'):
            assert len(runs[side]['losses'][k]) == ITERS
            assert all(math.isfinite(v) for v in runs[side]['losses'][k])
    cmp_ = report['comparison']
    assert cmp_['init_identical'] and all(cmp_['checks'].values())
    summary = (work / 'summary.md').read_text()
    assert summary.startswith('# Parity: mmdet `QualityFocalLoss` vs `TritonQualityFocalLoss`')
    assert 'labels+scores' in summary


def _short(tmp_path, **kw):
    from mmdet_focal_triton.parity import run_parity

    opts = dict(model='rtmdet-tiny', device='cpu', iters=2, losses='ours', img_size=96,
                num_train=4, num_val=2, work_dir=str(tmp_path / 'work'))
    opts.update(kw)
    return run_parity(**opts)


@pytest.mark.slow
def test_a_slightly_wrong_quality_focal_loss_fails_the_run(cache, tmp_path, one_torch_thread):
    """--model rtmdet-tiny --fault score reaches the run and fails it at iteration 1; every
    QualityFocalLoss fault failing at its first call: test_each_quality_focal_fault_fails_at_the_
    first_call below, without training."""
    report = _short(tmp_path, fault='score')
    assert report['status'] == 'fail' and report['exit_code'] == 1, report['reasons']
    cc = report['call_check']
    assert not cc['passed'] and cc['first_failure']['iteration'] == 1
    assert report['reasons'][0].startswith('per-call check')
    desc = FAULTS_BY_LOSS['QualityFocalLoss']['score']
    assert report['runs']['ours']['loss_type'] == f'TritonQualityFocalLoss with a fault: {desc}'
    # one level (the first call) per iteration
    assert cc['failed_calls'] == 2 and cc['first_failure']['positives'] > 0


def test_a_fault_of_another_loss_is_refused_before_anything_runs(tmp_path):
    from mmdet_focal_triton.parity import run_parity

    with pytest.raises(ValueError, match="fault 'alpha' does not apply to QualityFocalLoss.*"
                                         'beta, loss_weight, score'):
        run_parity(model='rtmdet-tiny', device='cpu', fault='alpha',
                   work_dir=str(tmp_path / 'w'))
    with pytest.raises(ValueError, match="fault 'score' does not apply to FocalLoss"):
        run_parity(device='cpu', fault='score', work_dir=str(tmp_path / 'w'))
    with pytest.raises(ValueError, match='model must be one of'):
        run_parity(device='cpu', model='yolo', work_dir=str(tmp_path / 'w'))
    assert not (tmp_path / 'w').exists()


# -- configs and the command line's choices ---------------------------------------------------
def test_the_tool_offers_every_model_and_fault():
    import importlib.util

    spec = importlib.util.spec_from_file_location('parity_tool', TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.MODELS == tuple(pcfg.MODEL_CONFIGS) and tool.FAULTS == ALL_FAULTS
    assert tool.parse_args([]).model == 'retinanet'  # `make parity` stays RetinaNet
    assert set(FAULTS) <= set(ALL_FAULTS) and list(FAULTS) == ['alpha', 'gamma', 'loss_weight',
                                                               'background']


@pytest.mark.parametrize('device', ['cpu', 'cuda'], ids=['cpu_config', 'gpu_config'])
def test_rtmdet_configs_build_and_swap(device):
    """Both configs build on CPU (the GPU one is checked here too: it only runs on a GPU)."""
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from mmdet_focal_triton import swap_focal_loss

    path = pcfg.default_config(device, 'rtmdet-tiny')
    assert path.name == f"rtmdet_tiny_synthetic_{'cpu' if device == 'cpu' else 'gpu'}.py"
    assert pcfg.default_config(device) == pcfg.DEFAULT_CONFIGS[device]  # RetinaNet
    cfg = Config.fromfile(str(path))
    assert cfg.custom_hooks == []
    assert [s['type'] for s in cfg.param_scheduler] == ['LinearLR', 'CosineAnnealingLR']
    assert cfg.param_scheduler[1]['end'] == cfg.parity['iters'] == cfg.train_cfg['max_iters']
    assert cfg.parity['target_map'] > 0 and cfg.parity['dataset']['style'] == 'easy'
    assert cfg.model.backbone.init_cfg is None and cfg.model.bbox_head.num_classes == 6
    assert 'SyncBN' not in json.dumps(cfg.model.to_dict())
    assert pcfg.loss_types(cfg.model) == ['QualityFocalLoss']
    assert pcfg.focal_loss_configs(cfg.model) == {
        'bbox_head.loss_cls': dict(use_sigmoid=True, beta=2.0, loss_weight=1.0)}
    init_default_scope('mmdet')
    ours = copy.deepcopy(cfg)
    assert swap_focal_loss(ours) == 1
    model = MODELS.build(ours.model)
    assert isinstance(model.bbox_head.loss_cls, TritonQualityFocalLoss)
    assert type(MODELS.build(cfg.model).bbox_head.loss_cls).__name__ == 'QualityFocalLoss'


def test_loss_config_helpers_cover_the_family():
    model = dict(a=dict(type='FocalLoss', alpha=0.3), b=[dict(type='mmdet.QualityFocalLoss'),
                                                         dict(type='VarifocalLoss', gamma=1.5)],
                 c=dict(type='TritonFocalLoss'), d=dict(type='other.FocalLoss'),
                 e=dict(type='GIoULoss', loss_weight=2.0))
    assert pcfg.family_loss_configs(model) == {
        'a': dict(type='FocalLoss', alpha=0.3), 'b.0': dict(type='QualityFocalLoss'),
        'b.1': dict(type='VarifocalLoss', gamma=1.5)}
    assert pcfg.focal_loss_configs(model) == {'a': dict(alpha=0.3), 'b.0': {},
                                              'b.1': dict(gamma=1.5)}
    assert pcfg.loss_types(model) == ['FocalLoss', 'QualityFocalLoss', 'VarifocalLoss']
    assert pcfg.scale_focal_loss_weight(model, 2.0) == 3
    assert [model['a']['loss_weight'], model['b'][0]['loss_weight'],
            model['b'][1]['loss_weight'], model['e']['loss_weight']] == [2.0, 2.0, 2.0, 2.0]
    assert 'loss_weight' not in model['c'] and 'loss_weight' not in model['d']


# -- check_call and the hook on QualityFocalLoss / VarifocalLoss calls ------------------------
def _qfl_call(module, n=80, seed=0, **over):
    """A recorded call of ``module`` as RTMDet makes it: (labels, scores), label weights,
    avg_factor=1.0, an upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, C, generator=g) * 4
    labels = torch.randint(0, C, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.7] = C
    scores = torch.rand(n, generator=g) * (labels < C)
    weight = torch.rand(n, generator=g)
    x = pred.clone().requires_grad_(True)
    out = module(x, (labels, scores), weight, avg_factor=1.0)
    go = torch.tensor(0.25)
    (grad,) = torch.autograd.grad(out, x, go, allow_unused=True)
    call = dict(pred=pred, target=(labels, scores), weight=weight, avg_factor=1.0,
                reduction_override=None, out=out.detach(), grad=grad, grad_output=go)
    call.update(over)
    return call


def test_check_call_quality_focal_loss():
    p = QualityFocalLossParams()
    good = check_call(_qfl_call(TritonQualityFocalLoss()), p)
    assert good['passed'] and good['loss_type'] == 'QualityFocalLoss'
    assert good['target'] == 'labels+scores' and good['rtol'] == 1e-5
    labels = _qfl_call(TritonQualityFocalLoss())['target'][0]
    assert good['positives'] == int((labels < C).sum()) > 0
    assert good['loss_rel_err'] <= 1e-6 and good['grad_rel_err'] <= 1e-6
    assert good['mmdet_loss_rel_err'] <= 1e-5
    bad = check_call(_qfl_call(TritonQualityFocalLoss(beta=2.05)), p)
    assert not bad['passed'] and bad['loss_rel_err'] > 1e-3 and bad['grad_rel_err'] > 1e-3
    # the parameters decide the reference: the same call against beta 2.05 passes
    assert check_call(_qfl_call(TritonQualityFocalLoss(beta=2.05)),
                      QualityFocalLossParams(beta=2.05))['passed']
    # a dense quality target, reduction 'sum' by override
    g = torch.Generator().manual_seed(3)
    pred, tgt = torch.randn(40, C, generator=g), torch.rand(40, C, generator=g) * 0.5
    out = TritonQualityFocalLoss()(pred, tgt, reduction_override='sum')
    dense = check_call(dict(pred=pred, target=tgt, weight=None, avg_factor=None,
                            reduction_override='sum', out=out), p)
    assert dense['passed'] and dense['target'] == 'dense' and dense['reduction'] == 'sum'


def test_check_call_empty_level():
    """A level without anchors (N = 0): nothing to differ, and no crash."""
    res = check_call(_qfl_call(TritonQualityFocalLoss(), n=0), QualityFocalLossParams())
    assert res['passed'] and res['shape'] == [0, C] and res['positives'] == 0
    assert res['loss_rel_err'] == 0.0 and res['grad_rel_err'] == 0.0


def test_check_call_varifocal_loss():
    g = torch.Generator().manual_seed(2)
    pred = torch.randn(60, C, generator=g) * 3
    target = torch.zeros(60, C)
    pos = torch.rand(60, generator=g) < 0.3
    target[pos, torch.randint(0, C, (int(pos.sum()),), generator=g)] = 0.3 + 0.7 * torch.rand(
        int(pos.sum()), generator=g)
    weight = torch.rand(60, C, generator=g)
    for module, params, ok in ((TritonVarifocalLoss(), VarifocalLossParams(), True),
                               (TritonVarifocalLoss(gamma=2.05), VarifocalLossParams(), False),
                               (TritonVarifocalLoss(iou_weighted=False),
                                VarifocalLossParams(iou_weighted=False), True)):
        x = pred.clone().requires_grad_(True)
        out = module(x, target, weight, avg_factor=5.0)
        (grad,) = torch.autograd.grad(out, x)
        res = check_call(dict(pred=pred, target=target, weight=weight, avg_factor=5.0,
                              reduction_override=None, out=out.detach(), grad=grad,
                              grad_output=torch.tensor(1.0)), params)
        assert res['passed'] is ok and res['loss_type'] == 'VarifocalLoss'
        assert res['target'] == 'dense' and res['positives'] == int(pos.sum())


class QFLHead(nn.Module):
    """Calls its loss_cls once per level as RTMDetHead.loss_by_feat_single does; the last level
    is empty."""

    sizes = (64, 16, 0)

    def __init__(self, **loss_kw):
        super().__init__()
        self.conv = nn.Linear(4, C)
        self.loss_cls = TritonQualityFocalLoss(**loss_kw)

    def forward(self, seed):
        g = torch.Generator().manual_seed(seed)
        total = 0
        for n in self.sizes:
            score = self.conv(torch.randn(n, 4, generator=g)) * 3
            labels = torch.randint(0, C + 1, (n,), generator=g)
            scores = torch.rand(n, generator=g) * (labels < C)
            total = total + self.loss_cls(score, (labels, scores), torch.ones(n), avg_factor=1.0)
        return total


def _steps(head, hook, fault=None, steps=2):
    hook.attach(head)
    if fault is not None:
        fault.apply(head.loss_cls)
    for step in range(steps):
        hook._iteration = step + 1
        if fault is not None:
            fault._calls = 0
        head.zero_grad()
        head(step).backward()
        hook.flush()
    hook.detach()
    return hook.summary.as_dict()


def test_hook_checks_quality_focal_loss_calls():
    s = _steps(QFLHead(), FocalLossCheckHook())
    assert s['passed'] and s['calls'] == 6 and s['gradients_checked'] == 6
    assert s['coverage']['empty_calls'] == 2 and s['coverage']['target_forms'] == ['labels+scores']
    assert s['coverage']['loss_types'] == ['TritonQualityFocalLoss']


@pytest.mark.parametrize('fault', sorted(FAULTS_BY_LOSS['QualityFocalLoss']))
def test_each_quality_focal_fault_fails_at_the_first_call(fault):
    s = _steps(QFLHead(), FocalLossCheckHook(), FaultInjectionHook(fault))
    assert not s['passed'] and s['first_failure']['iteration'] == 1
    assert s['first_failure']['shape'] == [QFLHead.sizes[0], C]
    assert s['failed_calls'] == (2 if fault == 'score' else 4)  # the empty level cannot differ


def test_reference_config_type_must_match_the_module():
    hook = FocalLossCheckHook(reference={'loss_cls': dict(type='FocalLoss', alpha=0.25)})
    with pytest.raises(ValueError, match='TritonQualityFocalLoss.*FocalLoss'):
        hook.attach(QFLHead())
    hook = FocalLossCheckHook(reference={'loss_cls': dict(type='mmdet.QualityFocalLoss',
                                                          beta=2.0)})
    assert not _steps(QFLHead(beta=2.05), hook, steps=1)['passed']
    assert hook.params['loss_cls'] == QualityFocalLossParams(beta=2.0)


def test_loss_check_hook_alias_is_registered():
    from mmengine.registry import HOOKS

    hook = HOOKS.build(dict(type='LossCheckHook', rtol=1e-4))
    assert LossCheckHook is FocalLossCheckHook and isinstance(hook, FocalLossCheckHook)
    assert HOOKS.get('FocalLossCheckHook') is FocalLossCheckHook
