"""torch.library registration: opcheck, torch.compile without graph breaks, determinism,
a second backward through a retained graph."""
import pytest
import torch
from _inputs import IMPLS, device_of, impl_context, make_generator, make_pred, make_target
from reference import reference_focal_loss, rel_err

from mmdet_focal_triton import ops, sigmoid_focal_loss


@pytest.fixture(params=['eager-function', 'registered-op'])
def path(request, monkeypatch):
    """Eager calls go through `FocalLossFunction`; torch.compile uses the registered op. Tests
    with this fixture run both."""
    monkeypatch.setattr(ops, '_FORCE_OP', request.param == 'registered-op')
    return request.param


def _op_args(dev, reduction, write_grad, g):
    pred = make_pred(19, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', 19, 80, dev, g)
    w = torch.rand(19, generator=g).to(dev)
    af = torch.tensor([6.0], device=dev) if reduction == 1 else None
    return (pred, lab, w, af, 2.0, 0.25, 1.0, 1.0, reduction, 1, True, False, write_grad, True,
            torch.float32)


@pytest.mark.parametrize('impl', [p for p in IMPLS if p.id != 'cpu-triton-interpreter'])
@pytest.mark.parametrize('reduction', [0, 1, 2])
def test_opcheck(impl, reduction):
    dev = device_of(impl)
    g = make_generator('opcheck', impl, reduction)
    args = _op_args(dev, reduction, reduction != 0, g)
    with impl_context(impl):
        torch.library.opcheck(torch.ops.mmdet_focal_triton.focal_loss.default, args)
        none_bwd = (torch.randn(19, 80, generator=g).to(dev), args[0].detach(), args[1], args[2],
                    2.0, 0.25, 1.0, 1, True, False)
        torch.library.opcheck(torch.ops.mmdet_focal_triton.focal_loss_none_backward.default,
                              none_bwd)


def _head_loss(pred, labels, weights, avg_factor):
    # what a dense head does: flatten the level's scores, then the loss
    x = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
    return 2.0 * sigmoid_focal_loss(x, labels, weights, avg_factor=avg_factor) + x.mean()


@pytest.mark.parametrize('impl', [p for p in IMPLS if p.id != 'cpu-triton-interpreter'])
@pytest.mark.parametrize('dense', [False, True])
def test_compile_matches_eager_without_graph_break(impl, dense):
    dev = device_of(impl)
    g = make_generator('compile', impl, dense)
    pred = (torch.randn(2, 80, 6, 5, generator=g) * 3).to(dev).requires_grad_(True)
    labels = make_target('onehot' if dense else 'index', 60, 80, dev, g)
    weights = torch.rand(60, generator=g).to(dev)
    af = torch.tensor(7.0, device=dev)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_head_loss)(pred, labels, weights, af)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(_head_loss, fullgraph=True)
    with impl_context(impl):
        eager = _head_loss(pred, labels, weights, af)
        (ge,) = torch.autograd.grad(eager, pred)
        comp = compiled(pred, labels, weights, af)
        (gc,) = torch.autograd.grad(comp, pred)
    torch.testing.assert_close(comp, eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_bitwise_deterministic(impl, reduction):
    dev = device_of(impl)
    g = make_generator('det', impl, reduction)
    N = 4099 if impl != 'interp' else 700
    pred = make_pred(N, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', N, 80, dev, g)
    w = torch.rand(N, generator=g).to(dev)
    results = []
    with impl_context(impl):
        for _ in range(5 if impl != 'interp' else 2):
            out = sigmoid_focal_loss(pred, lab, w, reduction=reduction,
                                     avg_factor=torch.tensor(33.0, device=dev))
            up = torch.ones_like(out) * 0.5
            (grad,) = torch.autograd.grad(out, pred, up)
            results.append((out, grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('first', [1.0, 0.5, 3.0])
def test_second_backward_with_retained_graph(impl, first, path):
    dev = device_of(impl)
    g = make_generator('retain', impl, first)
    pred = make_pred(50, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', 50, 80, dev, g)
    with impl_context(impl):
        out = sigmoid_focal_loss(pred, lab, avg_factor=4.0)
        (g1,) = torch.autograd.grad(out, pred, torch.tensor(first, device=dev), retain_graph=True)
        g1 = g1.clone()
        (g2,) = torch.autograd.grad(out, pred, torch.tensor(2.0, device=dev))
    xr = pred.detach().double().cpu().requires_grad_(True)
    (gr,) = torch.autograd.grad(reference_focal_loss(xr, lab.cpu(), avg_factor=4.0), xr)
    assert rel_err(g1, first * gr) <= 1e-5
    assert rel_err(g2, 2.0 * gr) <= 1e-5


@pytest.mark.parametrize('impl', IMPLS)
def test_leaf_pred_backward_accumulates(impl, path):
    """loss.backward() on a leaf pred twice (two graphs) accumulates like any other loss."""
    dev = device_of(impl)
    g = make_generator('leaf', impl)
    pred = make_pred(20, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', 20, 80, dev, g)
    with impl_context(impl):
        sigmoid_focal_loss(pred, lab).backward()
        first = pred.grad.clone()
        sigmoid_focal_loss(pred, lab).backward()
    torch.testing.assert_close(pred.grad, 2 * first)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
@pytest.mark.parametrize('upstream', [1.0, 0.37])
def test_eager_function_matches_registered_op(impl, reduction, upstream, monkeypatch):
    """The eager fast path and the registered op: bitwise the same loss and gradient."""
    dev = device_of(impl)
    g = make_generator('paths', impl, reduction)
    pred = make_pred(37, 80, torch.float32, dev, g)
    lab = make_target('index', 37, 80, dev, g)
    w = torch.rand(37, generator=g).to(dev)
    up = torch.rand(37, 80, generator=g).to(dev) if reduction == 'none' else upstream
    outs = []
    for force in (False, True):
        monkeypatch.setattr(ops, '_FORCE_OP', force)
        x = pred.clone().requires_grad_(True)
        with impl_context(impl):
            loss = sigmoid_focal_loss(x, lab, w, reduction=reduction, avg_factor=None)
            (loss * up).sum().backward()
        outs.append((loss.detach(), x.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize('impl', IMPLS)
def test_gradient_buffer_is_adopted_not_copied(impl, path, monkeypatch):
    """pred.grad is the buffer the forward wrote (no copy by autograd, so the peak memory of
    loss + backward is that one buffer), on both the eager and the registered-op path."""
    written = []
    impl_fn = ops._forward_impl

    def spy(*args):
        out = impl_fn(*args)
        written.append(out[1].data_ptr())
        return out
    monkeypatch.setattr(ops, '_forward_impl', spy)
    dev = device_of(impl)
    g = make_generator('adopt', impl)
    pred = make_pred(33, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', 33, 80, dev, g)
    with impl_context(impl):
        sigmoid_focal_loss(pred, lab, avg_factor=5.0).backward()
    assert len(written) == 1 and pred.grad.data_ptr() == written[0]


def test_launch_config_precedence(monkeypatch):
    """TUNING overrides the measured table, which overrides the rule of default_block_c."""
    assert ops.launch_config(48, torch.float32)['block_c'] == ops.default_block_c(48) == 16
    measured = ops.launch_config(80, torch.float32)
    assert (measured['block_r'], measured['block_c']) == (32, 32)  # the H200 sweep's winner
    monkeypatch.setitem(ops.TUNING, 'block_c', 16)
    monkeypatch.setitem(ops.TUNING, 'tile', 4096)
    monkeypatch.setitem(ops.TUNING, 'num_warps', 4)
    cfg = ops.launch_config(80, torch.float32)
    assert (cfg['block_r'], cfg['block_c'], cfg['num_warps']) == (256, 16, 4)
