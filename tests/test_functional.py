"""sigmoid_focal_loss against the float64 transcription of mmdet's formula.

Each case draws fresh random inputs, poisons every uninitialised allocation with NaN (so an
unwritten output element fails), uses an upstream gradient other than 1, and checks loss and
gradient with SPEC §3's relative-norm tolerances (1e-5 fp32/fp64, 1e-2 fp16/bf16).
"""
import pytest
import torch
from _inputs import (
    FOCAL_IMPLS,
    TOL,
    device_of,
    impl_context,
    make_avg_factor,
    make_generator,
    make_pred,
    make_target,
    make_weight,
)
from reference import reference_focal_loss, rel_err

from mmdet_focal_triton import sigmoid_focal_loss
from mmdet_focal_triton.ops.spec import FocalSpec

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
TARGETS = ['index', 'onehot', 'soft']
WEIGHTS = ['none', 'row', 'row1', 'elem', 'flat']
RED_AF = [('none', None), ('mean', None), ('sum', None), ('mean', 'int'), ('mean', 'float'),
          ('mean', 't0'), ('mean', 't1'), ('mean', 'tlong'), ('none', 't0')]


def run_case(impl, N, C, dtype, target_kind, weight_kind, reduction, af_kind, gamma=2.0,
             alpha=0.25, activated=False, layout='contiguous', loss_weight=1.0, scale=3.0):
    dev = device_of(impl)
    g = make_generator(impl, N, C, str(dtype), target_kind, weight_kind, reduction, af_kind,
                       gamma, alpha, activated, layout)
    pred = make_pred(N, C, dtype, dev, g, layout, scale=scale, activated=activated)
    pred.requires_grad_(True)
    target = make_target(target_kind, N, C, dev, g)
    weight = make_weight(weight_kind, N, C, dev, g)
    avg_factor = make_avg_factor(af_kind, dev)
    with impl_context(impl):
        out = sigmoid_focal_loss(pred, target, weight, gamma=gamma, alpha=alpha,
                                 reduction=reduction, avg_factor=avg_factor, activated=activated,
                                 loss_weight=loss_weight)
        up = torch.randn(out.shape, generator=g, dtype=torch.float64) if out.dim() else \
            torch.tensor(0.7 + torch.rand((), generator=g).item(), dtype=torch.float64)
        (grad,) = torch.autograd.grad(out, pred, up.to(out.dtype).to(dev))

    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_focal_loss(xr, target.cpu(), None if weight is None else weight.cpu(), gamma,
                               alpha, reduction, avg_factor if not isinstance(
                                   avg_factor, torch.Tensor) else avg_factor.cpu(),
                               activated, loss_weight)
    (gref,) = torch.autograd.grad(ref, xr, up)

    assert out.shape == ref.shape
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    assert torch.isfinite(out).all() or N * C == 0, 'non-finite loss'
    assert torch.isfinite(grad).all(), 'non-finite gradient'
    tol = TOL[dtype]
    assert rel_err(out, ref) <= tol, f'loss rel err {rel_err(out, ref):.3g}'
    assert rel_err(grad, gref) <= tol, f'grad rel err {rel_err(grad, gref):.3g}'
    return out, grad


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('target_kind', TARGETS)
@pytest.mark.parametrize('weight_kind', WEIGHTS)
@pytest.mark.parametrize('reduction,af_kind', RED_AF)
def test_grid(impl, dtype, target_kind, weight_kind, reduction, af_kind, poison):
    run_case(impl, 37, 80, dtype, target_kind, weight_kind, reduction, af_kind)


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('target_kind', ['index', 'onehot', 'soft'])
@pytest.mark.parametrize('reduction,af_kind', [('none', None), ('mean', 't0'), ('sum', None)])
def test_activated(impl, dtype, target_kind, reduction, af_kind, poison):
    """activated=True: pred holds probabilities, mmdet's plain-BCE path (TOOD, DDQ)."""
    run_case(impl, 29, 80, dtype, target_kind, 'row', reduction, af_kind, activated=True)


SHAPES = [(0, 80), (1, 80), (1, 1), (7, 1), (333, 1), (5, 1203), (1, 1203), (0, 1), (257, 80),
          (2049, 3), (3, 17), (9, 20), (33, 48), (5, 256), (130, 12)]
REDUCTIONS = [('none', None), ('mean', 't1'), ('sum', None), ('mean', None)]


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('N,C,reduction,af_kind', [
    (N, C, r, a) for N, C in SHAPES for r, a in REDUCTIONS
    if not (N == 0 and (r, a) == ('mean', None))])  # NaN by definition: test_empty_mean_is_nan
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
def test_shapes(impl, N, C, target_kind, reduction, af_kind, poison):
    run_case(impl, N, C, torch.float32, target_kind, 'row', reduction, af_kind)


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('N', [3000])
@pytest.mark.parametrize('C', [80, 1203])
def test_large_rows(impl, N, C, poison):
    if impl.startswith('interp') and C > 80:
        N = 300  # keep the interpreter quick
    run_case(impl, N, C, torch.float32, 'index', 'row', 'mean', 't0')


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('layout', ['strided', 'transposed'])
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
@pytest.mark.parametrize('weight_kind', ['row', 'elem'])
@pytest.mark.parametrize('reduction,af_kind', [('none', None), ('mean', 't0')])
def test_non_contiguous(impl, layout, target_kind, weight_kind, reduction, af_kind, poison):
    run_case(impl, 41, 80, torch.float32, target_kind, weight_kind, reduction, af_kind,
             layout=layout)


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('gamma', [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize('alpha', [0.25, 0.5, -1.0])
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
def test_gamma_alpha(impl, gamma, alpha, target_kind, poison):
    run_case(impl, 23, 80, torch.float32, target_kind, 'row', 'mean', 'float', gamma=gamma,
             alpha=alpha, loss_weight=0.5)


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('scale', [30.0, 1e4])
@pytest.mark.parametrize('target_kind', ['index', 'onehot', 'soft'])
def test_extreme_logits(impl, dtype, scale, target_kind, poison):
    """|x| up to 1e4: finite and correct in every dtype (mmcv's fp16 op gives NaN from ~8.3)."""
    run_case(impl, 31, 80, dtype, target_kind, 'row', 'mean', 't0', scale=scale)
    run_case(impl, 31, 80, dtype, target_kind, 'none', 'none', None, scale=scale)


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('C', [1, 80, 1203])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_confident_predictions(impl, dtype, C, reduction, poison):
    """Late in training every logit is confidently right: positives large, negatives very
    negative, every loss tiny. Relative accuracy must hold there too (no cancellation)."""
    dev = device_of(impl)
    N = 40 if C > 80 else 300
    g = make_generator('confident', impl, str(dtype), C, reduction)
    lab = make_target('index', N, C, 'cpu', g)
    onehot = torch.nn.functional.one_hot(lab, C + 1)[:, :C].bool()
    mag = torch.rand(N, C, generator=g, dtype=torch.float64) * 12 + 3
    pred = torch.where(onehot, mag, -mag).to(dtype).to(dev).requires_grad_(True)
    w = torch.rand(N, generator=g).to(dev)
    with impl_context(impl):
        out = sigmoid_focal_loss(pred, lab.to(dev), w, reduction=reduction, avg_factor=5.0)
        # fp16 training runs under a GradScaler (2**16 by default): gradients stay out of fp16's
        # subnormal range, where a stored value cannot be accurate to 1 % anyway
        up = torch.ones_like(out) * (2.0 ** 12 if dtype == torch.float16 else 0.3)
        (grad,) = torch.autograd.grad(out, pred, up)
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_focal_loss(xr, lab, w.cpu(), reduction=reduction, avg_factor=5.0)
    (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
    assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, gref) <= TOL[dtype]


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
def test_dense_nd_and_1d(impl, poison):
    """Dense targets of any number of dims (Grounding DINO passes (B, Q, C)); 1-D too."""
    dev = device_of(impl)
    g = make_generator('nd', impl)
    for shape in [(2, 9, 80), (50,), (3, 4, 5, 6)]:
        pred = (torch.randn(shape, generator=g) * 3).to(dev).requires_grad_(True)
        target = torch.rand(shape, generator=g).to(dev)
        weight = torch.rand(shape, generator=g).to(dev)
        for w in (None, weight):
            for reduction in ('none', 'sum', 'mean'):
                from _inputs import impl_context as ctx
                with ctx(impl):
                    out = sigmoid_focal_loss(pred, target, w, reduction=reduction)
                    up = torch.randn(out.shape, generator=g).to(dev) if out.dim() else \
                        torch.tensor(1.3, device=dev)
                    (grad,) = torch.autograd.grad(out, pred, up)
                xr = pred.detach().double().cpu().requires_grad_(True)
                ref = reference_focal_loss(xr, target.cpu(), None if w is None else w.cpu(),
                                           reduction=reduction)
                (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
                assert rel_err(out, ref) <= 1e-5 and rel_err(grad, gref) <= 1e-5


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
def test_empty_mean_is_nan(impl):
    """'mean' without avg_factor over zero elements is NaN, like torch.mean (and mmdet); the
    gradient is zero-size."""
    dev = device_of(impl)
    pred = torch.randn(0, 80, device=dev, requires_grad=True)
    lab = torch.zeros(0, dtype=torch.long, device=dev)
    with impl_context(impl):
        out = sigmoid_focal_loss(pred, lab)
        assert out.shape == () and torch.isnan(out)
        out2 = sigmoid_focal_loss(pred, lab, reduction='sum')
        assert out2.item() == 0.0
        out2.backward()
    assert pred.grad.shape == (0, 80)


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
def test_no_grad_and_grad_free_pred(impl):
    """Without a gradient to compute the forward writes no gradient buffer; values unchanged."""
    dev = device_of(impl)
    g = make_generator('nograd', impl)
    pred = make_pred(64, 80, torch.float32, dev, g)
    lab = make_target('index', 64, 80, dev, g)
    with impl_context(impl):
        a = sigmoid_focal_loss(pred, lab, avg_factor=5.0)
        with torch.no_grad():
            b = sigmoid_focal_loss(pred.clone().requires_grad_(True), lab, avg_factor=5.0)
        _, grad = torch.ops.mmdet_focal_triton.focal_loss(
            pred, lab, None, None, 2.0, 0.25, 0.2, FocalSpec(1, 0, True, False, False, True).pack(),
            torch.float32)
    assert not a.requires_grad and not b.requires_grad
    assert grad.numel() == 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
def test_output_dtype_matches_mmdet(impl):
    """The loss dtype follows torch promotion as in mmdet: fp32 weights promote fp16 losses,
    a 0-d / (1,) fp32 avg_factor promotes the mean."""
    from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

    dev = device_of(impl)
    g = make_generator('dtype', impl)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        pred = make_pred(16, 80, dtype, dev, g)
        onehot = make_target('onehot', 16, 80, dev, g)
        for wdt in (None, torch.float32, dtype):
            w = None if wdt is None else torch.rand(16, generator=g).to(dev, wdt)
            for red, af in [('mean', None), ('sum', None), ('none', None), ('mean', 3.0),
                            ('mean', torch.tensor(3.0, device=dev)),
                            ('mean', torch.tensor([3.0], device=dev)),
                            ('mean', torch.tensor(3, device=dev))]:
                with impl_context(impl):
                    ours = sigmoid_focal_loss(pred, onehot, w, reduction=red, avg_factor=af)
                theirs = py_sigmoid_focal_loss(pred.float().to(dtype), onehot.to(dtype), w,
                                               reduction=red, avg_factor=af)
                assert ours.dtype == theirs.dtype, (dtype, wdt, red, af)
                assert ours.shape == theirs.shape, (dtype, wdt, red, af)


def test_against_mmdet_focal_loss_cpu():
    """Same numbers as mmdet's own FocalLoss module (its CPU path) on the same inputs."""
    from mmdet.models.losses import FocalLoss

    g = make_generator('mmdet-cpu')
    for C in (1, 80, 1203):
        pred = (torch.randn(300, C, generator=g) * 3).requires_grad_(True)
        lab = make_target('index', 300, C, 'cpu', g)
        w = torch.rand(300, generator=g)
        for kw in [dict(), dict(avg_factor=17.0), dict(reduction_override='sum'),
                   dict(avg_factor=torch.tensor([4.0]))]:
            theirs = FocalLoss(gamma=2.0, alpha=0.25, loss_weight=1.5)(pred, lab, w, **kw)
            (gt,) = torch.autograd.grad(theirs, pred)
            ours = sigmoid_focal_loss(pred, lab, w, reduction=kw.get('reduction_override',
                                                                      'mean'),
                                      avg_factor=kw.get('avg_factor'), loss_weight=1.5)
            (go,) = torch.autograd.grad(ours, pred)
            assert ours.shape == theirs.shape
            assert rel_err(ours, theirs) <= 1e-5 and rel_err(go, gt) <= 1e-5


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('dtype', [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_label_dtypes(impl, dtype, poison):
    """Class indices of any integer dtype (uint8 cannot hold the kernels' -1 or C sentinels)."""
    dev = device_of(impl)
    g = make_generator('labels', impl, str(dtype))
    pred = make_pred(53, 80, torch.float32, dev, g).requires_grad_(True)
    lab = make_target('index', 53, 80, 'cpu', g)
    with impl_context(impl):
        out = sigmoid_focal_loss(pred, lab.to(dtype).to(dev), avg_factor=3.0)
        (grad,) = torch.autograd.grad(out, pred)
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_focal_loss(xr, lab, avg_factor=3.0)
    (gref,) = torch.autograd.grad(ref, xr)
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, gref) <= 1e-5
