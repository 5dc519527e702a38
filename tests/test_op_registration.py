"""torch.library registration: opcheck, torch.compile without graph breaks, determinism,
a second backward through a retained graph."""
import pytest
import torch
from _inputs import FOCAL_IMPLS, device_of, impl_context, make_generator, make_pred, make_target
from reference import reference_focal_loss, rel_err

from mmdet_focal_triton import sigmoid_focal_loss
from mmdet_focal_triton.ops import focal, tuning
from mmdet_focal_triton.ops.spec import FocalSpec

NOT_INTERPRETED = [p for p in FOCAL_IMPLS if not p.id.startswith('cpu-triton-interpreter')]


@pytest.fixture(params=['eager-function', 'registered-op'])
def path(request, monkeypatch):
    """Eager calls go through `FocalLossFunction`; torch.compile uses the registered op. Tests
    with this fixture run both."""
    monkeypatch.setattr(focal, 'FORCE_OP', request.param == 'registered-op')
    return request.param


def _op_args(dev, reduction, write_grad, g):
    pred = make_pred(19, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', 19, 80, dev, g)
    w = torch.rand(19, generator=g).to(dev)
    af = torch.tensor([6.0], device=dev) if reduction == 1 else None
    flags = FocalSpec(reduction, 1, True, False, write_grad, True).pack()
    return (pred, lab, w, af, 2.0, 0.25, 1.0, flags, torch.float32)


@pytest.mark.parametrize('impl', NOT_INTERPRETED)
@pytest.mark.parametrize('reduction', [0, 1, 2])
def test_opcheck(impl, reduction):
    dev = device_of(impl)
    g = make_generator('opcheck', impl, reduction)
    args = _op_args(dev, reduction, reduction != 0, g)
    with impl_context(impl):
        torch.library.opcheck(torch.ops.mmdet_focal_triton.focal_loss.default, args)
        none_bwd = (torch.randn(19, 80, generator=g).to(dev), args[0].detach(), args[1], args[2],
                    2.0, 0.25, 1.0, FocalSpec(0, 1, True, False, False, False).pack())
        torch.library.opcheck(torch.ops.mmdet_focal_triton.focal_loss_none_backward.default,
                              none_bwd)


def _head_loss(pred, labels, weights, avg_factor):
    # what a dense head does: flatten the level's scores, then the loss
    x = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
    return 2.0 * sigmoid_focal_loss(x, labels, weights, avg_factor=avg_factor) + x.mean()


@pytest.mark.parametrize('impl', NOT_INTERPRETED)
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


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_bitwise_deterministic(impl, reduction):
    dev = device_of(impl)
    g = make_generator('det', impl, reduction)
    N = 700 if impl.startswith('interp') else 4099
    pred = make_pred(N, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', N, 80, dev, g)
    w = torch.rand(N, generator=g).to(dev)
    results = []
    with impl_context(impl):
        for _ in range(2 if impl.startswith('interp') else 5):
            out = sigmoid_focal_loss(pred, lab, w, reduction=reduction,
                                     avg_factor=torch.tensor(33.0, device=dev))
            up = torch.ones_like(out) * 0.5
            (grad,) = torch.autograd.grad(out, pred, up)
            results.append((out, grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
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


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
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


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
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
        monkeypatch.setattr(focal, 'FORCE_OP', force)
        x = pred.clone().requires_grad_(True)
        with impl_context(impl):
            loss = sigmoid_focal_loss(x, lab, w, reduction=reduction, avg_factor=None)
            (loss * up).sum().backward()
        outs.append((loss.detach(), x.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
def test_gradient_buffer_is_adopted_not_copied(impl, path, monkeypatch):
    """pred.grad is the buffer the forward wrote (no copy by autograd, so the peak memory of
    loss + backward is that one buffer), on both the eager and the registered-op path."""
    written = []
    impl_fn = focal.forward_impl

    def spy(*args):
        out = impl_fn(*args)
        written.append(out[1].data_ptr())
        return out
    monkeypatch.setattr(focal, 'forward_impl', spy)
    dev = device_of(impl)
    g = make_generator('adopt', impl)
    pred = make_pred(33, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', 33, 80, dev, g)
    with impl_context(impl):
        sigmoid_focal_loss(pred, lab, avg_factor=5.0).backward()
    assert len(written) == 1 and pred.grad.data_ptr() == written[0]


def test_launch_config_precedence():
    """TUNING overrides the measured table, which overrides the rule of default_block_c; the
    resolved configuration is cached, and set_tuning drops the cache."""
    assert tuning.launch_config(48, torch.float32)['block_c'] == tuning.default_block_c(48) == 16
    measured = tuning.launch_config(80, torch.float32)
    assert (measured['block_r'], measured['block_c']) == (32, 32)  # the H200 sweep's winner
    assert tuning.launch_config(80, torch.float32) is measured  # cached
    try:
        tuning.set_tuning(block_c=16, tile=4096, num_warps=4)
        cfg = tuning.launch_config(80, torch.float32)
        assert (cfg['block_r'], cfg['block_c'], cfg['num_warps']) == (256, 16, 4)
        with pytest.raises(ValueError, match='unknown tuning keys'):
            tuning.set_tuning(blocks=3)
    finally:
        tuning.reset_tuning()
    assert tuning.launch_config(80, torch.float32) == measured


def test_spec_packs_into_one_int():
    """Every field of a call's description survives the trip through the op's int argument."""
    import itertools

    for values in itertools.product(range(3), range(3), *[(False, True)] * 4):
        spec = FocalSpec(*values)
        back = FocalSpec.unpack(spec.pack())
        assert back == spec and [type(v) for v in back] == [type(v) for v in spec]


@pytest.mark.cuda
@pytest.mark.parametrize('layout', ['rows', 'flat'])
def test_direct_launch_matches_jit_launch(layout):
    """The first call of a specialisation compiles through Triton's JIT (tensors); the next ones
    launch the cached kernel directly (pointers as ints): bitwise the same loss and gradient."""
    import mmdet_focal_triton as mft
    from mmdet_focal_triton.ops import launcher

    g = make_generator('direct', layout)
    pred = make_pred(3001, 80, torch.float32, 'cuda', g).requires_grad_(True)
    lab = make_target('index', 3001, 80, 'cuda', g)
    w = torch.rand(3001, generator=g).to('cuda')
    mft.set_tuning(layout=layout)  # also drops the compiled-kernel cache
    try:
        kernel = focal._kernel(layout)
        before = kernel.direct_launches
        results = []
        for _ in range(3):
            out = sigmoid_focal_loss(pred, lab, w, avg_factor=torch.tensor(9.0, device='cuda'))
            (grad,) = torch.autograd.grad(out, pred, torch.tensor(0.5, device='cuda'))
            results.append((out, grad))
        assert kernel.direct_launches - before == 2  # calls 2 and 3
        assert len(launcher._WORKSPACES) >= 1
        for out, grad in results[1:]:
            assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])
    finally:
        mft.set_tuning(layout=None)


@pytest.mark.cuda
def test_streams_get_their_own_workspace():
    """Losses on two streams at once: each stream reduces in its own workspace."""
    g = make_generator('streams')
    preds = [make_pred(20000, 80, torch.float32, 'cuda', g) for _ in range(2)]
    labs = [make_target('index', 20000, 80, 'cuda', g) for _ in range(2)]
    want = [sigmoid_focal_loss(p, t) for p, t in zip(preds, labs)]
    streams = [torch.cuda.Stream() for _ in range(2)]
    torch.cuda.synchronize()
    outs = []
    for _ in range(20):
        for s, p, t in zip(streams, preds, labs):
            with torch.cuda.stream(s):
                outs.append(sigmoid_focal_loss(p, t))
    torch.cuda.synchronize()
    for i, out in enumerate(outs):
        assert torch.equal(out, want[i % 2])


@pytest.mark.cuda
def test_cuda_graph_replay_with_input_check():
    """Captured in a CUDA graph, the loss + backward replays right, and the input check (a
    kernel write to host-mapped memory) still reports bad labels of a replay."""
    import mmdet_focal_triton as mft

    g = make_generator('graph')
    base = make_pred(5000, 80, torch.float32, 'cuda', g)
    lab = make_target('index', 5000, 80, 'cuda', g)
    x = base.clone().requires_grad_(True)
    ref = sigmoid_focal_loss(x, lab, avg_factor=7.0)
    (gref,) = torch.autograd.grad(ref, x)
    ref = ref.detach()
    # the captured graph's leaf: first used, warmed up and captured on one side stream (its
    # AccumulateGrad node belongs to the stream of its first use)
    pred = base.clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            (grad,) = torch.autograd.grad(sigmoid_focal_loss(pred, lab, avg_factor=7.0), pred)
    torch.cuda.current_stream().wait_stream(side)
    del grad
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        out = sigmoid_focal_loss(pred, lab, avg_factor=7.0)
        (grad,) = torch.autograd.grad(out, pred)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, ref) and torch.equal(grad, gref)
    lab[17] = 1000  # a bad label, seen by the next replay
    graph.replay()
    with pytest.raises(ValueError, match=r'outside \[0, 80\]'):
        mft.check_pending_inputs()
