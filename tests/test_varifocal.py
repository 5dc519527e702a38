"""varifocal_loss / TritonVarifocalLoss against the float64 transcription of mmdet 3.3.0's
VarifocalLoss (tests/reference_family.py), and against mmdet's own module on CPU.

Each grid case draws fresh inputs, poisons every uninitialised allocation with NaN, uses an
upstream gradient other than 1, and checks loss and gradient with SPEC §3's relative-norm
tolerances (1e-5 fp32/fp64, 1e-2 fp16/bf16).
"""
import pytest
import torch
from _family_inputs import make_vfl_target, make_vfl_weight
from _inputs import (
    IMPLS,
    TOL,
    device_of,
    impl_context,
    make_avg_factor,
    make_generator,
    make_pred,
)
from reference import rel_err
from reference_family import reference_varifocal_loss

from mmdet_focal_triton import varifocal_loss
from mmdet_focal_triton.ops import varifocal
from mmdet_focal_triton.ops.spec import VarifocalSpec

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
WEIGHTS = ['none', 'elem', 'row1', 'col', 'scalar']
RED_AF = [('none', None), ('mean', None), ('sum', None), ('mean', 'int'), ('mean', 'float'),
          ('mean', 't0'), ('mean', 't1'), ('mean', 'tlong'), ('none', 't0')]


def _cpu(t):
    return None if t is None else t.cpu()


def run_case(impl, N, C, dtype, target_kind, weight_kind, reduction, af_kind, alpha=0.75,
             gamma=2.0, iou_weighted=True, layout='contiguous', loss_weight=1.0, scale=3.0):
    dev = device_of(impl)
    g = make_generator('vfl', impl, N, C, str(dtype), target_kind, weight_kind, reduction,
                       af_kind, alpha, gamma, iou_weighted, layout)
    pred = make_pred(N, C, dtype, dev, g, layout, scale=scale)
    pred.requires_grad_(True)
    target = make_vfl_target(target_kind, N, C, dev, g)
    if layout != 'contiguous':
        target = target.t().contiguous().t()
    weight = make_vfl_weight(weight_kind, N, C, dev, g)
    avg_factor = make_avg_factor(af_kind, dev)
    with impl_context(impl):
        out = varifocal_loss(pred, target, weight, alpha=alpha, gamma=gamma,
                             iou_weighted=iou_weighted, reduction=reduction,
                             avg_factor=avg_factor, loss_weight=loss_weight)
        up = torch.randn(out.shape, generator=g, dtype=torch.float64) if out.dim() else \
            torch.tensor(0.7 + torch.rand((), generator=g).item(), dtype=torch.float64)
        (grad,) = torch.autograd.grad(out, pred, up.to(out.dtype).to(dev))
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_varifocal_loss(
        xr, target.cpu(), _cpu(weight), alpha, gamma, iou_weighted, reduction,
        avg_factor.cpu() if isinstance(avg_factor, torch.Tensor) else avg_factor, loss_weight)
    (gref,) = torch.autograd.grad(ref, xr, up)

    assert out.shape == ref.shape
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    assert torch.isfinite(out).all() or N * C == 0, 'non-finite loss'
    assert torch.isfinite(grad).all(), 'non-finite gradient'
    tol = TOL[dtype]
    assert rel_err(out, ref) <= tol, f'loss rel err {rel_err(out, ref):.3g}'
    assert rel_err(grad, gref) <= tol, f'grad rel err {rel_err(grad, gref):.3g}'
    return out, grad


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('target_kind', ['iou', 'soft'])
@pytest.mark.parametrize('weight_kind', WEIGHTS)
@pytest.mark.parametrize('reduction,af_kind', RED_AF)
def test_grid(impl, dtype, target_kind, weight_kind, reduction, af_kind, poison):
    run_case(impl, 37, 80, dtype, target_kind, weight_kind, reduction, af_kind)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('gamma', [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize('alpha', [0.75, 0.0, 2.0])
@pytest.mark.parametrize('iou_weighted', [True, False])
@pytest.mark.parametrize('target_kind', ['iou', 'soft'])
def test_parameters(impl, gamma, alpha, iou_weighted, target_kind, poison):
    run_case(impl, 23, 80, torch.float32, target_kind, 'none', 'mean', 'float', alpha=alpha,
             gamma=gamma, iou_weighted=iou_weighted, loss_weight=0.5)


SHAPES = [(0, 80), (1, 80), (1, 1), (7, 1), (333, 1), (5, 1203), (1, 1203), (0, 1), (257, 80),
          (2049, 3), (3, 17), (9, 20), (33, 48), (130, 12)]
REDUCTIONS = [('none', None), ('mean', 't1'), ('sum', None), ('mean', None)]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('N,C,reduction,af_kind', [
    (N, C, r, a) for N, C in SHAPES for r, a in REDUCTIONS
    if not (N == 0 and (r, a) == ('mean', None))])
@pytest.mark.parametrize('weight_kind', ['none', 'row1'])
def test_shapes(impl, N, C, weight_kind, reduction, af_kind, poison):
    run_case(impl, N, C, torch.float32, 'iou', weight_kind, reduction, af_kind)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('C', [80, 1203])
def test_large_rows(impl, C, poison):
    N = 300 if impl == 'interp' else 3000
    run_case(impl, N, C, torch.float32, 'iou', 'none', 'mean', 't0')


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('layout', ['strided', 'transposed'])
@pytest.mark.parametrize('weight_kind', ['none', 'elem', 'row1'])
@pytest.mark.parametrize('reduction,af_kind', [('none', None), ('mean', 't0')])
def test_non_contiguous(impl, layout, weight_kind, reduction, af_kind, poison):
    run_case(impl, 41, 80, torch.float32, 'iou', weight_kind, reduction, af_kind,
             layout=layout)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('scale', [30.0, 1e4])
@pytest.mark.parametrize('target_kind', ['iou', 'soft'])
def test_extreme_logits(impl, dtype, scale, target_kind, poison):
    run_case(impl, 31, 80, dtype, target_kind, 'none', 'mean', 't0', scale=scale)
    run_case(impl, 31, 80, dtype, target_kind, 'elem', 'none', None, scale=scale)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_confident_predictions(impl, dtype, poison):
    """Late in training: positives with IoU target near 1 and a large logit, negatives very
    negative: tiny losses, relative accuracy must hold."""
    dev = device_of(impl)
    N, C = 200, 80
    g = make_generator('vfl-confident', impl, str(dtype))
    lab = torch.randint(0, C, (N,), generator=g)
    onehot = torch.nn.functional.one_hot(lab, C).bool()
    t = torch.where(onehot, torch.where(torch.rand(N, 1, generator=g) < 0.5, 1.0, 0.999), 0.0)
    mag = torch.rand(N, C, generator=g, dtype=torch.float64) * 12 + 3
    pred = torch.where(onehot, mag, -mag).to(dtype).to(dev).requires_grad_(True)
    with impl_context(impl):
        out = varifocal_loss(pred, t.to(dev), avg_factor=5.0)
        up = torch.tensor(2.0 ** 12 if dtype == torch.float16 else 0.3, device=dev)
        (grad,) = torch.autograd.grad(out, pred, up)
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_varifocal_loss(xr, t, avg_factor=5.0)
    (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
    assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, gref) <= TOL[dtype]


@pytest.mark.parametrize('impl', IMPLS)
def test_any_shape(impl, poison):
    """mmdet's varifocal_loss is elementwise: any shape, 1-D and N-d, weights that broadcast."""
    dev = device_of(impl)
    g = make_generator('vfl-nd', impl)
    for shape, wshape in [((2, 9, 80), (9, 1)), ((50,), ()), ((3, 4, 5, 6), (3, 4, 5, 6))]:
        pred = (torch.randn(shape, generator=g) * 3).to(dev).requires_grad_(True)
        target = torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) < 0.2)
        for w in (None, torch.rand(wshape, generator=g)):
            for reduction in ('none', 'sum', 'mean'):
                with impl_context(impl):
                    out = varifocal_loss(pred, target.to(dev), None if w is None else w.to(dev),
                                         reduction=reduction)
                    up = torch.randn(out.shape, generator=g).to(dev) if out.dim() else \
                        torch.tensor(1.3, device=dev)
                    (grad,) = torch.autograd.grad(out, pred, up)
                xr = pred.detach().double().cpu().requires_grad_(True)
                ref = reference_varifocal_loss(xr, target, w, reduction=reduction)
                (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
                assert out.shape == ref.shape
                assert rel_err(out, ref) <= 1e-5 and rel_err(grad, gref) <= 1e-5


@pytest.mark.parametrize('impl', IMPLS)
def test_empty(impl):
    dev = device_of(impl)
    pred = torch.randn(0, 80, device=dev, requires_grad=True)
    target = torch.zeros(0, 80, device=dev)
    with impl_context(impl):
        out = varifocal_loss(pred, target)
        assert out.shape == () and torch.isnan(out)
        assert varifocal_loss(pred, target, reduction='none').shape == (0, 80)
        out2 = varifocal_loss(pred, target, reduction='sum')
        assert out2.item() == 0.0
        out2.backward()
    assert pred.grad.shape == (0, 80)


@pytest.mark.parametrize('impl', IMPLS)
def test_output_dtype_and_shape_match_mmdet(impl):
    """mmdet's focal weight is a float32 tensor: the loss is at least float32 (fp16 / bf16 logits
    give a float32 loss), then promoted by weight / avg_factor tensors like any mmdet loss."""
    from mmdet.models.losses import VarifocalLoss

    dev = device_of(impl)
    g = make_generator('vfl-dtype', impl)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        pred = make_pred(16, 80, dtype, dev, g)
        for target in (make_vfl_target('iou', 16, 80, dev, g),
                       make_vfl_target('iou', 16, 80, dev, g, dtype=torch.float16),
                       (make_vfl_target('iou', 16, 80, dev, g) > 0.5).long()):
            for w in (None, torch.rand(16, 80, generator=g).to(dev),
                      torch.rand(16, 1, generator=g).to(dev, torch.float64),
                      torch.tensor(2.0, device=dev, dtype=torch.float64)):
                for red, af in [('mean', None), ('sum', None), ('none', None), ('mean', 3.0),
                                ('mean', torch.tensor(3.0, device=dev)),
                                ('mean', torch.tensor([3.0], device=dev, dtype=torch.float16)),
                                ('mean', torch.tensor(3, device=dev))]:
                    with impl_context(impl):
                        ours = varifocal_loss(pred, target, w, reduction=red, avg_factor=af)
                    theirs = VarifocalLoss(reduction=red)(
                        pred.cpu(), target.cpu(), _cpu(w),
                        avg_factor=af.cpu() if isinstance(af, torch.Tensor) else af)
                    case = (dtype, target.dtype, None if w is None else (w.dtype, w.shape),
                            red, af)
                    assert ours.dtype == theirs.dtype, case
                    assert ours.shape == theirs.shape, case


@pytest.mark.parametrize('iou_weighted', [True, False])
@pytest.mark.parametrize('gamma', [2.0, 1.5])
def test_against_mmdet_module_cpu(iou_weighted, gamma):
    """Same numbers as mmdet's own VarifocalLoss (CPU) through TritonVarifocalLoss."""
    from mmdet.models.losses import VarifocalLoss

    from mmdet_focal_triton import TritonVarifocalLoss

    g = make_generator('vfl-mmdet-cpu', iou_weighted, gamma)
    for C in (1, 80, 1203):
        pred = (torch.randn(300, C, generator=g) * 3).requires_grad_(True)
        for kind in ('iou', 'soft'):
            target = make_vfl_target(kind, 300, C, 'cpu', g)
            for w in (None, torch.rand(300, C, generator=g), torch.rand(300, 1, generator=g)):
                for kw in [dict(), dict(avg_factor=17.0), dict(reduction_override='sum'),
                           dict(reduction_override='none'),
                           dict(avg_factor=torch.tensor([4.0]))]:
                    args = dict(alpha=0.75, gamma=gamma, iou_weighted=iou_weighted,
                                loss_weight=1.5)
                    theirs = VarifocalLoss(**args)(pred, target, w, **kw)
                    up = torch.rand(theirs.shape, generator=g) + 0.5
                    (gt,) = torch.autograd.grad(theirs, pred, up)
                    ours = TritonVarifocalLoss(**args)(pred, target, w, **kw)
                    (go,) = torch.autograd.grad(ours, pred, up)
                    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
                    assert rel_err(ours, theirs) <= 1e-5 and rel_err(go, gt) <= 1e-5, (C, kw)


def test_where_mmdet_misbehaves():
    """gamma < 1 and a negative (t = 0) whose sigmoid underflows to 0 in fp32 (logit < -104):
    mmdet's |p - t| ** gamma has an infinite derivative at 0, times sigmoid' = 0: a NaN
    gradient. The true derivative is 0; ours gives it (and matches float64)."""
    from mmdet.models.losses import VarifocalLoss

    pred = torch.tensor([[-120.0, 3.0], [-200.0, -1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.6], [0.0, 0.0]])
    (g_mmdet,) = torch.autograd.grad(VarifocalLoss(gamma=0.5)(pred, target), pred)
    assert torch.isnan(g_mmdet).any()
    ours = varifocal_loss(pred, target, gamma=0.5)
    (g_ours,) = torch.autograd.grad(ours, pred)
    xr = pred.detach().double().requires_grad_(True)
    ref = reference_varifocal_loss(xr, target, gamma=0.5)
    (gref,) = torch.autograd.grad(ref, xr)
    assert torch.isfinite(g_ours).all()
    assert rel_err(ours, ref) <= 1e-5 and rel_err(g_ours, gref) <= 1e-5


# ---- module, op registration, autograd glue -------------------------------------------------
def test_module_is_mmdets():
    from mmdet.models.losses import VarifocalLoss
    from mmdet.registry import MODELS

    from mmdet_focal_triton import TritonVarifocalLoss

    ours = MODELS.build(dict(type='TritonVarifocalLoss', alpha=0.5, gamma=1.5,
                             iou_weighted=False, reduction='sum', loss_weight=2.0))
    assert type(ours) is TritonVarifocalLoss and isinstance(ours, VarifocalLoss)
    assert (ours.use_sigmoid, ours.alpha, ours.gamma, ours.iou_weighted, ours.reduction,
            ours.loss_weight) == (True, 0.5, 1.5, False, 'sum', 2.0)
    d, ref = TritonVarifocalLoss(), VarifocalLoss()
    for name in ('use_sigmoid', 'alpha', 'gamma', 'iou_weighted', 'reduction', 'loss_weight'):
        assert getattr(d, name) == getattr(ref, name)
    with pytest.raises(AssertionError, match='Only sigmoid varifocal loss supported now'):
        TritonVarifocalLoss(use_sigmoid=False)
    with pytest.raises(AssertionError):
        TritonVarifocalLoss(alpha=-0.1)
    pred, target = torch.randn(6, 4), torch.rand(6, 4)
    with pytest.raises(AssertionError, match='reduction_override'):
        d(pred, target, reduction_override='avg')
    torch.testing.assert_close(d(pred, target), ref(pred, target))
    d.use_sigmoid = False
    with pytest.raises(NotImplementedError):
        d(pred, target)


@pytest.fixture(params=['eager-function', 'registered-op'])
def path(request, monkeypatch):
    monkeypatch.setattr(varifocal, 'FORCE_OP', request.param == 'registered-op')
    return request.param


@pytest.mark.parametrize('impl', [p for p in IMPLS if p.id != 'cpu-triton-interpreter'])
@pytest.mark.parametrize('reduction', [0, 1, 2])
def test_opcheck(impl, reduction):
    dev = device_of(impl)
    g = make_generator('vfl-opcheck', impl, reduction)
    pred = make_pred(19, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_vfl_target('iou', 19, 80, dev, g)
    w = torch.rand(19, 1, generator=g).to(dev).expand(19, 80)
    af = torch.tensor([6.0], device=dev) if reduction == 1 else None
    flags = VarifocalSpec(reduction, True, True, reduction != 0).pack()
    with impl_context(impl):
        torch.library.opcheck(torch.ops.mmdet_focal_triton.varifocal_loss.default,
                              (pred, target, w, af, 0.75, 2.0, 1.0, flags, torch.float32))
        torch.library.opcheck(
            torch.ops.mmdet_focal_triton.varifocal_loss_none_backward.default,
            (torch.randn(19, 80, generator=g).to(dev), pred.detach(), target, w, 0.75, 2.0, 1.0,
             VarifocalSpec(0, True, True, False).pack()))


def _head_loss(pred, target):
    # what VFNet's head does: flatten the scores of the levels, then the loss
    x = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
    return 2.0 * varifocal_loss(x, target, avg_factor=7.0) + x.mean()


@pytest.mark.parametrize('impl', [p for p in IMPLS if p.id != 'cpu-triton-interpreter'])
def test_compile_matches_eager_without_graph_break(impl):
    dev = device_of(impl)
    g = make_generator('vfl-compile', impl)
    pred = (torch.randn(2, 80, 6, 5, generator=g) * 3).to(dev).requires_grad_(True)
    target = make_vfl_target('iou', 60, 80, dev, g)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_head_loss)(pred, target)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(_head_loss, fullgraph=True)
    with impl_context(impl):
        eager = _head_loss(pred, target)
        (ge,) = torch.autograd.grad(eager, pred)
        comp = compiled(pred, target)
        (gc,) = torch.autograd.grad(comp, pred)
    torch.testing.assert_close(comp, eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_bitwise_deterministic(impl, reduction):
    dev = device_of(impl)
    g = make_generator('vfl-det', impl, reduction)
    N = 4099 if impl != 'interp' else 700
    pred = make_pred(N, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_vfl_target('iou', N, 80, dev, g)
    results = []
    with impl_context(impl):
        for _ in range(5 if impl != 'interp' else 2):
            out = varifocal_loss(pred, target, reduction=reduction,
                                 avg_factor=torch.tensor(33.0, device=dev))
            (grad,) = torch.autograd.grad(out, pred, torch.ones_like(out) * 0.5)
            results.append((out, grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_eager_function_matches_registered_op(impl, reduction, monkeypatch):
    dev = device_of(impl)
    g = make_generator('vfl-paths', impl, reduction)
    pred = make_pred(37, 80, torch.float32, dev, g)
    target = make_vfl_target('iou', 37, 80, dev, g)
    w = torch.rand(37, 1, generator=g).to(dev)
    up = torch.rand(37, 80, generator=g).to(dev) if reduction == 'none' else 0.37
    outs = []
    for force in (False, True):
        monkeypatch.setattr(varifocal, 'FORCE_OP', force)
        x = pred.clone().requires_grad_(True)
        with impl_context(impl):
            loss = varifocal_loss(x, target, w, reduction=reduction)
            (loss * up).sum().backward()
        outs.append((loss.detach(), x.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('first', [1.0, 3.0])
def test_second_backward_with_retained_graph(impl, first, path):
    dev = device_of(impl)
    g = make_generator('vfl-retain', impl, first)
    pred = make_pred(50, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_vfl_target('iou', 50, 80, dev, g)
    with impl_context(impl):
        out = varifocal_loss(pred, target, avg_factor=4.0)
        (g1,) = torch.autograd.grad(out, pred, torch.tensor(first, device=dev), retain_graph=True)
        g1 = g1.clone()
        (g2,) = torch.autograd.grad(out, pred, torch.tensor(2.0, device=dev))
    xr = pred.detach().double().cpu().requires_grad_(True)
    (gr,) = torch.autograd.grad(reference_varifocal_loss(xr, target.cpu(), avg_factor=4.0), xr)
    assert rel_err(g1, first * gr) <= 1e-5
    assert rel_err(g2, 2.0 * gr) <= 1e-5


@pytest.mark.parametrize('impl', IMPLS)
def test_gradient_buffer_is_adopted_not_copied(impl, path, monkeypatch):
    written = []
    impl_fn = varifocal.forward_impl

    def spy(*args):
        out = impl_fn(*args)
        written.append(out[1].data_ptr())
        return out
    monkeypatch.setattr(varifocal, 'forward_impl', spy)
    dev = device_of(impl)
    g = make_generator('vfl-adopt', impl)
    pred = make_pred(33, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_vfl_target('iou', 33, 80, dev, g)
    with impl_context(impl):
        varifocal_loss(pred, target, avg_factor=5.0).backward()
    assert len(written) == 1 and pred.grad.data_ptr() == written[0]


def test_spec_packs_into_one_int():
    import itertools

    for values in itertools.product(range(3), *[(False, True)] * 3):
        spec = VarifocalSpec(*values)
        back = VarifocalSpec.unpack(spec.pack())
        assert back == spec and [type(v) for v in back] == [type(v) for v in spec]
