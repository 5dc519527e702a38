"""The losses as torch ops and autograd functions: torch.library registration (opcheck),
torch.compile without graph breaks, bitwise determinism, the eager fast path against the
registered op, a second backward through a retained graph, gradient accumulation, the gradient
buffer adopted as pred.grad, no gradient written without a need for one. The three losses, on
every backend (the eager `autograd.Function` and the registered op both, where it matters).
"""
import pytest
import torch
from _family import FOCAL, LOSSES, QFL
from _inputs import device_of, impl_context, make_generator, make_pred
from _tolerances import check

from mmdet_focal_triton.ops.spec import FocalSpec, QualityFocalSpec, VarifocalSpec


def _backends(losses=LOSSES, interpreter=True):
    return [pytest.param(loss, b.values[0], id=f'{loss.name}-{b.id}', marks=b.marks)
            for loss in losses for b in loss.backends
            if interpreter or not b.id.startswith('cpu-triton-interpreter')]


@pytest.fixture(params=['eager-function', 'registered-op'])
def path(request, monkeypatch):
    """Eager calls go through the loss's `autograd.Function`; torch.compile uses the registered
    op. Tests with this fixture run both (the `loss` argument says whose)."""
    loss = request.getfixturevalue('loss')
    monkeypatch.setattr(loss.op, 'FORCE_OP', request.param == 'registered-op')
    return request.param


def _inputs(loss, N, C, device, g, target_kind=None, weight_kind='none'):
    pred = make_pred(N, C, torch.float32, device, g)
    target = loss.make_target(target_kind or loss.targets[0], N, C, device, g)
    return pred, target, loss.make_weight(weight_kind, N, C, device, g)


# ---- the registered ops --------------------------------------------------------------------
def _op_call(loss, dev, reduction, write_grad, g, index_target=True):
    """(op, args) of the loss's registered forward op for one (19, 80) call, flags included."""
    pred = make_pred(19, 80, torch.float32, dev, g).requires_grad_(True)
    af = torch.tensor([6.0], device=dev) if reduction == 1 else None
    if loss is FOCAL:
        lab = loss.make_target('index' if index_target else 'onehot', 19, 80, dev, g)
        w = torch.rand(19, generator=g).to(dev)
        flags = FocalSpec(reduction, 1, index_target, False, write_grad, True).pack()
        return (torch.ops.mmdet_focal_triton.focal_loss.default,
                (pred, lab, w, af, 2.0, 0.25, 1.0, flags, torch.float32))
    if loss is QFL:
        target = loss.make_target('tuple' if index_target else 'dense', 19, 80, dev, g)
        lab, score = target if index_target else (target, None)
        w = torch.rand(19, generator=g).to(dev)
        flags = QualityFocalSpec(reduction, True, index_target, False, write_grad, True).pack()
        return (torch.ops.mmdet_focal_triton.quality_focal_loss.default,
                (pred, lab, score, w, af, 2.0, 1.0, flags, torch.float32))
    target = loss.make_target('iou', 19, 80, dev, g)
    w = torch.rand(19, 1, generator=g).to(dev).expand(19, 80)
    flags = VarifocalSpec(reduction, True, True, write_grad).pack()
    return (torch.ops.mmdet_focal_triton.varifocal_loss.default,
            (pred, target, w, af, 0.75, 2.0, 1.0, flags, torch.float32))


def _none_backward_call(loss, args, g):
    """(op, args) of the loss's 'none' backward op for the inputs of a forward op call."""
    dev = args[0].device
    if loss is FOCAL:
        pred, lab, w = args[:3]
        return (torch.ops.mmdet_focal_triton.focal_loss_none_backward.default,
                (torch.randn(19, 80, generator=g).to(dev), pred.detach(), lab, w, 2.0, 0.25,
                 1.0, FocalSpec(0, 1, lab.dim() == 1, False, False, False).pack()))
    if loss is QFL:
        pred, lab, score, w = args[:4]
        return (torch.ops.mmdet_focal_triton.quality_focal_loss_none_backward.default,
                (torch.randn(19, generator=g).to(dev), pred.detach(), lab, score, w, 2.0, 1.0,
                 QualityFocalSpec(0, True, score is not None, False, False, False).pack()))
    pred, target, w = args[:3]
    return (torch.ops.mmdet_focal_triton.varifocal_loss_none_backward.default,
            (torch.randn(19, 80, generator=g).to(dev), pred.detach(), target, w, 0.75, 2.0, 1.0,
             VarifocalSpec(0, True, True, False).pack()))


def _opcheck_params():
    # the target forms of each op: class indices and dense (VFL: dense only)
    return [pytest.param(*p.values, index_target, marks=p.marks,
                         id=f'{p.id}-{"index" if index_target else "dense"}')
            for p in _backends(interpreter=False)
            for index_target in ((True, False) if p.values[0].index_target else (True,))]


@pytest.mark.parametrize('loss,impl,index_target', _opcheck_params())
@pytest.mark.parametrize('reduction', [0, 1])
def test_opcheck(loss, impl, index_target, reduction):
    """torch.library.opcheck of the forward op and the 'none' backward op (schema, fake
    tensors, autograd registration): an elementwise loss, and a reduced one (with a (1,)
    avg_factor: a (1,) loss; 'sum' has the shapes of 'mean' without it)."""
    dev = device_of(impl)
    g = make_generator('opcheck', loss.name, impl, reduction, index_target)
    op, args = _op_call(loss, dev, reduction, reduction != 0, g, index_target)
    with impl_context(impl):
        torch.library.opcheck(op, args)
        torch.library.opcheck(*_none_backward_call(loss, args, g))


@pytest.mark.parametrize('loss,impl', _backends())
def test_no_grad_writes_no_gradient(loss, impl):
    """Without a gradient to compute the forward writes no gradient buffer; same values."""
    dev = device_of(impl)
    g = make_generator('nograd', loss.name, impl)
    pred, target, _ = _inputs(loss, 64, 80, dev, g)
    with impl_context(impl):
        a = loss.call(pred, target, avg_factor=5.0)
        with torch.no_grad():
            b = loss.call(pred.clone().requires_grad_(True), target, avg_factor=5.0)
        op, args = _op_call(loss, dev, 1, False, g)
        _, grad = op(*args)
    assert not a.requires_grad and not b.requires_grad
    assert grad.numel() == 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def _compile_params():
    # the heads' target of each loss (class indices for the focal loss and QFL)
    return [pytest.param(*p.values, p.values[0].targets[0], id=p.id, marks=p.marks)
            for p in _backends(interpreter=False)]


@pytest.mark.parametrize('loss,impl,target_kind', _compile_params())
def test_compile_matches_eager_without_graph_break(loss, impl, target_kind):
    dev = device_of(impl)
    g = make_generator('compile', loss.name, impl, target_kind)
    pred = (torch.randn(2, 80, 6, 5, generator=g) * 3).to(dev).requires_grad_(True)
    _, target, weight = _inputs(loss, 60, 80, dev, g, target_kind, loss.weights[1])
    af = torch.tensor(7.0, device=dev)

    def head(pred, target, weight, af):
        # what a dense head does: flatten the level's scores, then the loss
        x = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
        return 2.0 * loss.call(x, target, weight, avg_factor=af) + x.mean()
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(head)(pred, target, weight, af)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(head, fullgraph=True)
    with impl_context(impl):
        eager = head(pred, target, weight, af)
        (ge,) = torch.autograd.grad(eager, pred)
        comp = compiled(pred, target, weight, af)
        (gc,) = torch.autograd.grad(comp, pred)
    torch.testing.assert_close(comp, eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-9)


# ---- autograd --------------------------------------------------------------------------------
@pytest.mark.parametrize('loss,impl', _backends())
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_bitwise_deterministic(loss, impl, reduction):
    dev = device_of(impl)
    g = make_generator('det', loss.name, impl, reduction)
    N = 70 if impl.startswith('interp') else 4099  # the interpreter: 3 row blocks
    pred, target, weight = _inputs(loss, N, 80, dev, g, weight_kind=loss.weights[1])
    pred.requires_grad_(True)
    results = []
    with impl_context(impl):
        for _ in range(2 if impl.startswith('interp') else 5):
            out = loss.call(pred, target, weight, reduction=reduction,
                            avg_factor=torch.tensor(33.0, device=dev))
            (grad,) = torch.autograd.grad(out, pred, torch.ones_like(out) * 0.5)
            results.append((out, grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize('loss,impl', _backends())
@pytest.mark.parametrize('reduction,upstream', [('mean', 1.0), ('mean', 0.37), ('sum', 1.0),
                                                ('sum', 0.37), ('none', 'random')])
def test_eager_function_matches_registered_op(loss, impl, reduction, upstream, monkeypatch):
    """The eager fast path and the registered op: bitwise the same loss and gradient (a reduced
    loss under an upstream gradient of 1 and of another number; 'none' under a random one)."""
    dev = device_of(impl)
    g = make_generator('paths', loss.name, impl, reduction)
    pred, target, weight = _inputs(loss, 37, 80, dev, g, weight_kind=loss.weights[1])
    up = torch.rand(loss.loss_shape(pred), generator=g).to(dev) if reduction == 'none' else \
        upstream
    outs = []
    for force in (False, True):
        monkeypatch.setattr(loss.op, 'FORCE_OP', force)
        x = pred.clone().requires_grad_(True)
        with impl_context(impl):
            out = loss.call(x, target, weight, reduction=reduction)
            (out * up).sum().backward()
        outs.append((out.detach(), x.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize('loss,impl', _backends())
@pytest.mark.parametrize('first', [1.0, 3.0])
def test_second_backward_with_retained_graph(loss, impl, first, path):
    dev = device_of(impl)
    g = make_generator('retain', loss.name, impl, first)
    pred, target, _ = _inputs(loss, 50, 80, dev, g)
    pred.requires_grad_(True)
    with impl_context(impl):
        out = loss.call(pred, target, avg_factor=4.0)
        (g1,) = torch.autograd.grad(out, pred, torch.tensor(first, device=dev), retain_graph=True)
        g1 = g1.clone()
        (g2,) = torch.autograd.grad(out, pred, torch.tensor(2.0, device=dev))
    xr = pred.detach().double().cpu().requires_grad_(True)
    (gr,) = torch.autograd.grad(loss.ref(xr, target, avg_factor=4.0), xr)
    check(g1, first * gr, impl, 'first gradient')
    check(g2, 2.0 * gr, impl, 'second gradient')


@pytest.mark.parametrize('loss,impl', _backends())
def test_leaf_pred_backward_accumulates(loss, impl, path):
    """loss.backward() on a leaf pred twice (two graphs) accumulates like any other loss."""
    dev = device_of(impl)
    g = make_generator('leaf', loss.name, impl)
    pred, target, _ = _inputs(loss, 20, 80, dev, g)
    pred.requires_grad_(True)
    with impl_context(impl):
        loss.call(pred, target).backward()
        first = pred.grad.clone()
        loss.call(pred, target).backward()
    torch.testing.assert_close(pred.grad, 2 * first)


@pytest.mark.parametrize('loss,impl', _backends())
def test_gradient_buffer_is_adopted_not_copied(loss, impl, path, monkeypatch):
    """pred.grad is the buffer the forward wrote (no copy by autograd, so the peak memory of
    loss + backward is that one buffer), on both the eager and the registered-op path."""
    written = []
    forward_impl = loss.op.forward_impl

    def spy(*args):
        out = forward_impl(*args)
        written.append(out[1].data_ptr())
        return out
    monkeypatch.setattr(loss.op, 'forward_impl', spy)
    dev = device_of(impl)
    g = make_generator('adopt', loss.name, impl)
    pred, target, _ = _inputs(loss, 33, 80, dev, g)
    pred.requires_grad_(True)
    with impl_context(impl):
        loss.call(pred, target, avg_factor=5.0).backward()
    assert len(written) == 1 and pred.grad.data_ptr() == written[0]
