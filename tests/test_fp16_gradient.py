"""float16 gradients under AMP loss scaling, for the three losses.

A reduced loss writes its gradient in the forward, before the upstream gradient is known; for a
loss normalised by avg_factor its elements are ~1e-9-1e-5, below float16's normal range. The
buffer is therefore float32 for float16 inputs (ops/autograd.grad_buffer_dtype) and the backward
writes upstream x buffer in float16, as autograd through mmdet's python formula would. Checked
here the way mmengine's fp16 AmpOptimWrapper trains, with a loss-scaled upstream gradient (up to
2^15: a float16 loss cannot carry 2^16 itself), against the float64 reference times the same
upstream (tests/_tolerances.py: 1e-5 beyond the rounding to float16). Without the float32
buffer these flush to zero on the GPU (rel err 1, seen in a parity run) and overflow to NaN on
the CPU path (the upstream cast to float16).
"""
import pytest
import torch
from _family import FOCAL, LOSSES, cpu
from _inputs import device_of, impl_context, make_generator
from _tolerances import check

C = 80


def _inputs(loss, device, g, N):
    """A head at initialisation (logits around the prior bias -4.6), ~1 % positives, avg_factor
    = a batch's positive anchors: per-element gradients of 1e-9-1e-5. N: not a multiple of any
    block."""
    pred = torch.randn(N, C, generator=g) * 1.5 - 4.6
    pos = torch.rand(N, generator=g) < 0.05
    labels = torch.full((N,), C, dtype=torch.long)
    labels[pos] = torch.randint(0, C, (int(pos.sum()),), generator=g)
    score = torch.where(pos, torch.rand(N, generator=g), torch.zeros(N))
    target = loss.from_labels(labels.to(device), score.to(device), C)
    return pred.to(device=device, dtype=torch.float16), target


# the reductions as heads call them: avg_factor a python number (the loss is float16, as
# mmdet's) or a float32 tensor (the loss is float32), or a sum
FORMS = {'mean-float': ('mean', 2000.0), 'mean-tensor': ('mean', 'tensor'), 'sum': ('sum', None)}


def _backends(losses=LOSSES):
    return [pytest.param(loss, b.values[0], id=f'{loss.name}-{b.id}', marks=b.marks)
            for loss in losses for b in loss.backends if not b.id.endswith('-flat')]


@pytest.mark.parametrize('loss,impl', _backends())
@pytest.mark.parametrize('form', list(FORMS))
@pytest.mark.parametrize('upstream', [1.0, 2.0 ** 15, 2.0 ** 24])
def test_fp16_gradient_with_loss_scale(loss, impl, form, upstream, poison):
    device = device_of(impl)
    g = make_generator('fp16-grad', loss.name, form, upstream)
    pred, target = _inputs(loss, device, g, 77 if impl.startswith('interp') else 777)
    reduction, avg_factor = FORMS[form]
    if avg_factor == 'tensor':
        avg_factor = torch.tensor(2000.0, device=device)
    x = pred.clone().requires_grad_(True)
    with impl_context(impl):
        out = loss.call(x, target, reduction=reduction, avg_factor=avg_factor)
        if out.dtype == torch.float16:  # a float16 loss cannot carry an upstream above 65504
            upstream = min(upstream, 2.0 ** 15)
        out.backward(torch.full_like(out, upstream))
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = loss.ref(xr, target, reduction=reduction, avg_factor=cpu(avg_factor))
    ref.backward(torch.full_like(ref, upstream))
    assert x.grad.dtype == torch.float16
    check(out, ref, impl, 'loss')
    if xr.grad.abs().max() > torch.finfo(torch.float16).max:
        # beyond float16's range (a sum times a large scale): inf, as autograd through the
        # formula gives, so that GradScaler skips the step and lowers its scale
        assert not torch.isfinite(x.grad).all()
        return
    assert torch.isfinite(x.grad).all()
    check(x.grad, xr.grad, impl, 'gradient')


@pytest.mark.parametrize('loss,impl', _backends([FOCAL]))
def test_fp16_second_backward_through_retained_graph(loss, impl):
    """The float32 buffer is not scaled in place: a second backward through a retained graph
    gives bitwise what a first backward with its upstream gradient gives."""
    device = device_of(impl)
    pred, target = _inputs(loss, device, make_generator('fp16-retain'), 777)
    af = torch.tensor(2000.0, device=device)
    grads = []
    with impl_context(impl):
        for ups in ((2.0 ** 16, 2.0 ** 10), (2.0 ** 10,)):
            x = pred.clone().requires_grad_(True)
            out = loss.call(x, target, avg_factor=af)
            for i, up in enumerate(ups):
                (g,) = torch.autograd.grad(out, x, torch.tensor(up, device=device),
                                           retain_graph=i + 1 < len(ups))
                grads.append(g)
    first_big, second_small, only_small = grads
    assert first_big.dtype == second_small.dtype == torch.float16
    assert torch.equal(second_small, only_small)
    # the same float32 buffer, scaled by 2**16 and by 2**10: equal up to float16's rounding
    torch.testing.assert_close(second_small.float(), first_big.float() / 64, rtol=2 ** -10,
                               atol=2 ** -24)
