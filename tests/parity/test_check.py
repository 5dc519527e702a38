"""parity.check and parity.faults without training: FocalLossCheckHook on a toy head that calls
TritonFocalLoss once per level (as RetinaNet does), with the correct loss and with each fault."""
import pytest
import torch
import torch.nn as nn

pytest.importorskip('mmdet.models')

from mmdet_focal_triton import TritonFocalLoss  # noqa: E402
from mmdet_focal_triton.parity import FAULTS, FocalLossCheckHook, check_call  # noqa: E402
from mmdet_focal_triton.parity.faults import FaultInjectionHook  # noqa: E402
from mmdet_focal_triton.parity.reference import FocalLossParams  # noqa: E402

C = 6
LEVELS = (120, 30, 8, 0)  # rows per level; the last one empty


class ToyHead(nn.Module):
    """Calls its loss_cls once per level, with per-anchor weights and avg_factor, like
    AnchorHead.loss_by_feat; the level-3 call passes everything as keywords."""

    def __init__(self, **loss_kw):
        super().__init__()
        self.conv = nn.Linear(4, C)
        self.loss_cls = TritonFocalLoss(**loss_kw)

    def forward(self, feats, labels, weights, num_pos):
        total = 0
        for i, (f, lab, w) in enumerate(zip(feats, labels, weights)):
            score = self.conv(f) * 3
            if i == 2:
                total = total + self.loss_cls(pred=score, target=lab, weight=w,
                                              avg_factor=num_pos)
            else:
                total = total + self.loss_cls(score, lab, w, avg_factor=num_pos)
        return total


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(n, 4, generator=g) for n in LEVELS]
    labels = []
    for n in LEVELS:
        lab = torch.randint(0, C, (n,), generator=g)
        lab[torch.rand(n, generator=g) < 0.8] = C  # mostly background
        labels.append(lab)
    weights = [torch.rand(n, generator=g) for n in LEVELS]
    num_pos = float(sum(int((lab < C).sum()) for lab in labels))
    return feats, labels, weights, num_pos


def _train_steps(head, hook, steps=2, fault_hook=None):
    hook.attach(head)
    if fault_hook is not None:
        for m in head.modules():
            if isinstance(m, TritonFocalLoss):
                fault_hook.apply(m)
    for step in range(steps):
        hook._iteration = step + 1
        if fault_hook is not None:
            fault_hook._calls = 0
        head.zero_grad()
        head(*_batch(step)).backward()
        hook.flush()
    hook.detach()
    return hook.summary.as_dict()


def test_correct_loss_passes_every_call():
    hook = FocalLossCheckHook()
    s = _train_steps(ToyHead(), hook)
    assert s['passed'] and s['failed_calls'] == 0
    assert s['calls'] == 2 * len(LEVELS) and s['gradients_checked'] == 2 * len(LEVELS)
    assert s['coverage']['empty_calls'] == 2 and s['coverage']['modules'] == ['loss_cls']
    assert 0 < s['max']['loss_rel_err'] <= 1e-6 and 0 < s['max']['grad_rel_err'] <= 1e-6
    assert s['per_iteration']['iteration'] == [1, 2]
    # the hook only observed: the head's gradients are those of an unhooked run
    head, plain = ToyHead(), ToyHead()
    plain.load_state_dict(head.state_dict())
    FocalLossCheckHook().attach(head)
    for h in (head, plain):
        h(*_batch(5)).backward()
    assert torch.equal(head.conv.weight.grad, plain.conv.weight.grad)


@pytest.mark.parametrize('fault', sorted(FAULTS))
def test_each_fault_fails_at_the_first_call_it_touches(fault):
    hook = FocalLossCheckHook()
    s = _train_steps(ToyHead(), hook, fault_hook=FaultInjectionHook(fault))
    assert not s['passed']
    first = s['first_failure']
    assert first['iteration'] == 1 and first['failures']
    if fault == 'background':  # one level (the first call) per iteration
        assert s['failed_calls'] == 2 and first['shape'] == [LEVELS[0], C]
    else:  # every non-empty call
        assert s['failed_calls'] == 2 * (len(LEVELS) - 1)
    assert s['max']['loss_rel_err'] > 5e-4  # loss_weight x 1.001 is the smallest: 1e-3


def test_reference_parameters_come_from_the_config_not_the_module():
    """A module built with the wrong alpha passes against its own parameters but fails against
    the config it should have been built from."""
    head = ToyHead(alpha=0.3)
    assert _train_steps(head, FocalLossCheckHook(), steps=1)['passed']
    hook = FocalLossCheckHook(reference={'loss_cls': dict(type='FocalLoss', alpha=0.25)})
    assert not _train_steps(ToyHead(alpha=0.3), hook, steps=1)['passed']
    assert hook.params['loss_cls'] == FocalLossParams(alpha=0.25)


def _call(**over):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(50, C, generator=g) * 4
    target = torch.randint(0, C + 1, (50,), generator=g)
    loss = TritonFocalLoss()
    x = pred.clone().requires_grad_(True)
    out = loss(x, target, avg_factor=7.0)
    go = torch.tensor(3.0)
    (grad,) = torch.autograd.grad(out, x, go)
    call = dict(pred=pred, target=target, weight=None, avg_factor=7.0, reduction_override=None,
                out=out.detach(), grad=grad, grad_output=go)
    call.update(over)
    return call


def test_check_call_numbers():
    p = FocalLossParams()
    good = check_call(_call(), p)
    assert good['passed'] and good['rtol'] == 1e-5 and good['target'] == 'index'
    assert good['grad_rel_err'] <= 1e-6 and good['mmdet_grad_rel_err'] <= 1e-4
    base = _call()
    off = check_call(_call(out=base['out'] * (1 + 1e-4)), p)
    assert not off['passed'] and off['loss_rel_err'] == pytest.approx(1e-4, rel=1e-2)
    # the gradient is checked against the upstream gradient the training used (3 here)
    assert not check_call(_call(grad_output=torch.tensor(1.0)), p)['passed']
    missing = check_call(_call(grad=None), p)
    assert not missing['passed'] and 'no gradient' in missing['failures'][0]
    # a forward without backward (e.g. evaluation) checks the loss only
    assert check_call(_call(grad=None, grad_output=None), p)['passed']
    # fp16 inputs: SPEC's 1e-2 by default
    ph = base['pred'].half()
    xh = ph.clone().requires_grad_(True)
    outh = TritonFocalLoss()(xh, base['target'], avg_factor=7.0)
    (gh,) = torch.autograd.grad(outh, xh, torch.tensor(3.0))
    half = check_call(dict(base, pred=ph, out=outh.detach(), grad=gh), p)
    assert half['passed'] and half['rtol'] == 1e-2 and half['dtype'] == 'float16'
    # fp16's own rounding, beyond fp32's 1e-5, in the loss (fp16) and in the gradient: the
    # reference gradient is float64 (not rounded to pred's dtype, which would hide ours)
    assert 1e-5 < half['loss_rel_err'] <= 1e-3 and 1e-5 < half['grad_rel_err'] <= 1e-3
    pb = base['pred'].bfloat16()
    xb = pb.clone().requires_grad_(True)
    outb = TritonFocalLoss()(xb, base['target'], avg_factor=7.0)
    (gb,) = torch.autograd.grad(outb, xb, torch.tensor(3.0))
    bf = check_call(dict(base, pred=pb, out=outb.detach(), grad=gb), p)
    assert bf['passed'] and 1e-4 < bf['grad_rel_err'] <= 1e-2  # bf16 storage: ~2^-9


def test_hook_is_buildable_from_a_config():
    """custom_hooks = [dict(type='FocalLossCheckHook', ...)] with 'mmdet_focal_triton.parity' in
    custom_imports: the registry builds it."""
    from mmengine.registry import HOOKS

    hook = HOOKS.build(dict(type='FocalLossCheckHook', rtol=1e-4))
    assert isinstance(hook, FocalLossCheckHook) and hook.rtol == 1e-4
    assert hook.priority == 'HIGHEST' and FaultInjectionHook.priority == 'VERY_HIGH'
