"""float16 gradients under AMP loss scaling, for the three losses.

A reduced loss writes its gradient in the forward, before the upstream gradient is known; for a
loss normalised by avg_factor its elements are ~1e-9-1e-5, below float16's normal range. The
buffer is therefore float32 for float16 inputs (ops/autograd.grad_buffer_dtype) and the backward
writes upstream x buffer in float16, as autograd through mmdet's python formula would. Checked
here the way mmengine's fp16 AmpOptimWrapper trains, with a loss-scaled upstream gradient (up to
2^15: a float16 loss cannot carry 2^16 itself), against the float64 reference times the same
upstream (SPEC: 1e-2 for float16). Without
the float32 buffer these flush to zero on the GPU (rel err 1, seen in a parity run) and overflow
to NaN on the CPU path (the upstream cast to float16).
"""
import pytest
import torch
from _inputs import IMPLS, device_of, impl_context, make_generator
from reference import reference_focal_loss, rel_err
from reference_family import reference_quality_focal_loss, reference_varifocal_loss

from mmdet_focal_triton.functional import quality_focal_loss, sigmoid_focal_loss, varifocal_loss

N, C = 777, 80  # N not a multiple of any block


def _inputs(loss, device, g):
    """A head at initialisation (logits around the prior bias -4.6), ~1 % positives, avg_factor
    = a batch's positive anchors: per-element gradients of 1e-9-1e-5."""
    pred = torch.randn(N, C, generator=g) * 1.5 - 4.6
    pos = torch.rand(N, generator=g) < 0.05
    labels = torch.full((N,), C, dtype=torch.long)
    labels[pos] = torch.randint(0, C, (int(pos.sum()),), generator=g)
    score = torch.where(pos, torch.rand(N, generator=g), torch.zeros(N))
    if loss == 'focal':
        target = labels
    elif loss == 'qfl':
        target = (labels, score)
    else:
        target = torch.zeros(N, C)
        target[pos.nonzero()[:, 0], labels[pos]] = score[pos]
    move = (lambda t: tuple(x.to(device) for x in t)) if isinstance(target, tuple) else \
        (lambda t: t.to(device))
    return pred.to(device=device, dtype=torch.float16), move(target)


CALLS = {
    'focal': (sigmoid_focal_loss, reference_focal_loss),
    'qfl': (quality_focal_loss, reference_quality_focal_loss),
    'vfl': (varifocal_loss, reference_varifocal_loss),
}


# the reductions as heads call them: avg_factor a python number (the loss is float16, as
# mmdet's) or a float32 tensor (the loss is float32), or a sum
FORMS = {'mean-float': ('mean', 2000.0), 'mean-tensor': ('mean', 'tensor'), 'sum': ('sum', None)}


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('loss', list(CALLS))
@pytest.mark.parametrize('form', list(FORMS))
@pytest.mark.parametrize('upstream', [1.0, 2.0 ** 15, 2.0 ** 24])
def test_fp16_gradient_with_loss_scale(impl, loss, form, upstream, poison):
    device = device_of(impl)
    g = make_generator('fp16-grad', loss, form, upstream)
    pred, target = _inputs(loss, device, g)
    fn, ref_fn = CALLS[loss]
    reduction, avg_factor = FORMS[form]
    if avg_factor == 'tensor':
        avg_factor = torch.tensor(2000.0, device=device)
    x = pred.clone().requires_grad_(True)
    with impl_context(impl):
        out = fn(x, target, reduction=reduction, avg_factor=avg_factor)
        if out.dtype == torch.float16:  # a float16 loss cannot carry an upstream above 65504
            upstream = min(upstream, 2.0 ** 15)
        out.backward(torch.full_like(out, upstream))
    xr = pred.detach().double().requires_grad_(True)
    ref = ref_fn(xr, target, reduction=reduction, avg_factor=avg_factor)
    ref.backward(torch.full_like(ref, upstream))
    assert x.grad.dtype == torch.float16
    assert rel_err(out, ref) <= 1e-2
    if xr.grad.abs().max() > torch.finfo(torch.float16).max:
        # beyond float16's range (a sum times a large scale): inf, as autograd through the
        # formula gives, so that GradScaler skips the step and lowers its scale
        assert not torch.isfinite(x.grad).all()
        return
    assert torch.isfinite(x.grad).all()
    assert rel_err(x.grad, xr.grad) <= 1e-2


@pytest.mark.parametrize('impl', IMPLS)
def test_fp16_second_backward_through_retained_graph(impl):
    """The float32 buffer is not scaled in place: a second backward through a retained graph
    gives bitwise what a first backward with its upstream gradient gives."""
    device = device_of(impl)
    pred, target = _inputs('focal', device, make_generator('fp16-retain'))
    af = torch.tensor(2000.0, device=device)
    grads = []
    with impl_context(impl):
        for ups in ((2.0 ** 16, 2.0 ** 10), (2.0 ** 10,)):
            x = pred.clone().requires_grad_(True)
            out = sigmoid_focal_loss(x, target, avg_factor=af)
            for i, up in enumerate(ups):
                (g,) = torch.autograd.grad(out, x, torch.tensor(up, device=device),
                                           retain_graph=i + 1 < len(ups))
                grads.append(g)
    first_big, second_small, only_small = grads
    assert first_big.dtype == second_small.dtype == torch.float16
    assert torch.equal(second_small, only_small)
    assert rel_err(first_big.float() / 64, second_small.float()) <= 1e-2
