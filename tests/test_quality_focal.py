"""quality_focal_loss / TritonQualityFocalLoss against the float64 transcription of mmdet 3.3.0's
QualityFocalLoss (tests/reference_family.py), and against mmdet's own module on CPU.

Each grid case draws fresh inputs, poisons every uninitialised allocation with NaN (an output
element the kernel forgot to write fails), uses an upstream gradient other than 1, and checks
loss and gradient with SPEC §3's relative-norm tolerances (1e-5 fp32/fp64, 1e-2 fp16/bf16).
"""
import pytest
import torch
from _family_inputs import make_qfl_target, make_row_weight
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
from reference_family import reference_quality_focal_loss

import mmdet_focal_triton as mft
from mmdet_focal_triton import quality_focal_loss
from mmdet_focal_triton.ops import quality_focal
from mmdet_focal_triton.ops.spec import QualityFocalSpec

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
WEIGHTS = ['none', 'row', 'scalar', 'one']
RED_AF = [('none', None), ('mean', None), ('sum', None), ('mean', 'int'), ('mean', 'float'),
          ('mean', 't0'), ('mean', 't1'), ('mean', 'tlong'), ('none', 't0')]


def _cpu(t):
    if isinstance(t, tuple):
        return tuple(x.cpu() for x in t)
    return None if t is None else t.cpu()


def run_case(impl, N, C, dtype, target_kind, weight_kind, reduction, af_kind, beta=2.0,
             activated=False, layout='contiguous', loss_weight=1.0, scale=3.0, tol=None):
    dev = device_of(impl)
    g = make_generator('qfl', impl, N, C, str(dtype), target_kind, weight_kind, reduction,
                       af_kind, beta, activated, layout)
    pred = make_pred(N, C, dtype, dev, g, layout, scale=scale, activated=activated)
    pred.requires_grad_(True)
    target = make_qfl_target(target_kind, N, C, dev, g)
    if layout != 'contiguous':  # non-contiguous targets too
        if target_kind == 'tuple':
            target = tuple(torch.stack([t, t], dim=1)[:, 0] for t in target)  # stride 2
        else:
            target = target.t().contiguous().t()
    weight = make_row_weight(weight_kind, N, dev, g)
    avg_factor = make_avg_factor(af_kind, dev)
    with impl_context(impl):
        out = quality_focal_loss(pred, target, weight, reduction=reduction,
                                 avg_factor=avg_factor, beta=beta, activated=activated,
                                 loss_weight=loss_weight)
        up = torch.randn(out.shape, generator=g, dtype=torch.float64) if out.dim() else \
            torch.tensor(0.7 + torch.rand((), generator=g).item(), dtype=torch.float64)
        (grad,) = torch.autograd.grad(out, pred, up.to(out.dtype).to(dev))
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_quality_focal_loss(
        xr, _cpu(target), _cpu(weight), beta, reduction,
        avg_factor.cpu() if isinstance(avg_factor, torch.Tensor) else avg_factor, activated,
        loss_weight)
    (gref,) = torch.autograd.grad(ref, xr, up)

    assert out.shape == ref.shape
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    assert torch.isfinite(out).all() or N == 0, 'non-finite loss'
    assert torch.isfinite(grad).all(), 'non-finite gradient'
    tol = tol or TOL[dtype]
    assert rel_err(out, ref) <= tol, f'loss rel err {rel_err(out, ref):.3g}'
    assert rel_err(grad, gref) <= tol, f'grad rel err {rel_err(grad, gref):.3g}'
    return out, grad


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('target_kind', ['tuple', 'dense'])
@pytest.mark.parametrize('weight_kind', WEIGHTS)
@pytest.mark.parametrize('reduction,af_kind', RED_AF)
def test_grid(impl, dtype, target_kind, weight_kind, reduction, af_kind, poison):
    run_case(impl, 37, 80, dtype, target_kind, weight_kind, reduction, af_kind)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize('target_kind', ['tuple', 'dense'])
@pytest.mark.parametrize('weight_kind', ['none', 'row'])
@pytest.mark.parametrize('reduction,af_kind', [('none', None), ('mean', 't0'), ('sum', None),
                                               ('mean', None)])
def test_activated(impl, dtype, target_kind, weight_kind, reduction, af_kind, poison):
    """activated=True: probabilities, mmdet's quality_focal_loss_with_prob (DDQ) and the
    activated tensor-target path. (Not fp16: a probability that rounds to 1 has torch's BCE
    derivative 1e12, whose fp16 value is inf, for mmdet as for us.)"""
    run_case(impl, 29, 80, dtype, target_kind, weight_kind, reduction, af_kind, activated=True)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('beta', [0.0, 0.5, 1.0, 2.0, 3.5])
@pytest.mark.parametrize('target_kind', ['tuple', 'dense'])
@pytest.mark.parametrize('activated', [False, True])
def test_beta(impl, beta, target_kind, activated, poison):
    run_case(impl, 23, 80, torch.float32, target_kind, 'row', 'mean', 'float', beta=beta,
             activated=activated, loss_weight=0.5)


SHAPES = [(0, 80), (1, 80), (1, 1), (7, 1), (333, 1), (5, 1203), (1, 1203), (0, 1), (257, 80),
          (2049, 3), (3, 17), (9, 20), (33, 48), (130, 12)]
REDUCTIONS = [('none', None), ('mean', 't1'), ('sum', None), ('mean', None)]


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('N,C,reduction,af_kind', [
    (N, C, r, a) for N, C in SHAPES for r, a in REDUCTIONS
    if not (N == 0 and (r, a) == ('mean', None))])  # NaN by definition: test_empty
@pytest.mark.parametrize('target_kind', ['tuple', 'dense'])
def test_shapes(impl, N, C, target_kind, reduction, af_kind, poison):
    """N = 0, one row, one class, N not a multiple of the row block, C not of the column chunk."""
    run_case(impl, N, C, torch.float32, target_kind, 'row', reduction, af_kind)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('C', [80, 1203])
def test_large_rows(impl, C, poison):
    N = 300 if impl == 'interp' else 3000
    run_case(impl, N, C, torch.float32, 'tuple', 'row', 'mean', 't0')


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('layout', ['strided', 'transposed'])
@pytest.mark.parametrize('target_kind', ['tuple', 'dense'])
@pytest.mark.parametrize('reduction,af_kind', [('none', None), ('mean', 't0')])
def test_non_contiguous(impl, layout, target_kind, reduction, af_kind, poison):
    """Strided / column-major pred, and strided labels / scores / dense targets."""
    run_case(impl, 41, 80, torch.float32, target_kind, 'row', reduction, af_kind,
             layout=layout)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('scale', [30.0, 1e4])
@pytest.mark.parametrize('target_kind', ['tuple', 'dense'])
def test_extreme_logits(impl, dtype, scale, target_kind, poison):
    """|x| up to 1e4: finite and correct in every dtype. (The per-row 'none' loss, a sum of 80
    elements of up to ~|x|, exceeds fp16's range at 1e4 for any implementation: loss_weight
    1e-2 keeps it representable.)"""
    run_case(impl, 31, 80, dtype, target_kind, 'row', 'mean', 't0', scale=scale)
    run_case(impl, 31, 80, dtype, target_kind, 'none', 'none', None, scale=scale,
             loss_weight=1e-2)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_confident_predictions(impl, dtype, reduction, poison):
    """Late in training: positives with score 1 and a large logit, negatives very negative,
    every element loss tiny; relative accuracy must hold (d = p - s computed without
    cancellation where both are close to 1)."""
    dev = device_of(impl)
    N, C = 200, 80
    g = make_generator('qfl-confident', impl, str(dtype), reduction)
    lab = torch.randint(0, C, (N,), generator=g)
    score = torch.where(torch.rand(N, generator=g) < 0.5, 1.0, 0.999)
    onehot = torch.nn.functional.one_hot(lab, C).bool()
    mag = torch.rand(N, C, generator=g, dtype=torch.float64) * 12 + 3
    pred = torch.where(onehot, mag, -mag).to(dtype).to(dev).requires_grad_(True)
    w = torch.rand(N, generator=g).to(dev)
    with impl_context(impl):
        out = quality_focal_loss(pred, (lab.to(dev), score.to(dev)), w, reduction=reduction,
                                 avg_factor=5.0)
        # fp16 training runs under a GradScaler: keep gradients out of fp16's subnormal range
        up = torch.ones_like(out) * (2.0 ** 12 if dtype == torch.float16 else 0.3)
        (grad,) = torch.autograd.grad(out, pred, up)
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_quality_focal_loss(xr, (lab, score), w.cpu(), reduction=reduction,
                                       avg_factor=5.0)
    (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
    assert rel_err(out, ref) <= TOL[dtype] and rel_err(grad, gref) <= TOL[dtype]


@pytest.mark.parametrize('impl', IMPLS)
def test_dense_nd_targets(impl, poison):
    """Dense targets of shape (N, C, ...): mmdet sums over dim 1, the per-row loss is (N, ...)
    and the weight multiplies that."""
    dev = device_of(impl)
    g = make_generator('qfl-nd', impl)
    for shape in [(3, 80, 5), (2, 7, 4, 3)]:
        pred = (torch.randn(shape, generator=g) * 3).to(dev).requires_grad_(True)
        target = torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) < 0.2)
        rows_shape = shape[:1] + shape[2:]
        for w in (None, torch.rand(rows_shape, generator=g), torch.rand(shape[-1:],
                                                                        generator=g)):
            for reduction in ('none', 'sum', 'mean'):
                with impl_context(impl):
                    out = quality_focal_loss(pred, target.to(dev), _to(w, dev),
                                             reduction=reduction)
                    up = torch.randn(out.shape, generator=g).to(dev) if out.dim() else \
                        torch.tensor(1.3, device=dev)
                    (grad,) = torch.autograd.grad(out, pred, up)
                xr = pred.detach().double().cpu().requires_grad_(True)
                ref = reference_quality_focal_loss(xr, target, w, reduction=reduction)
                (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
                assert out.shape == ref.shape
                assert rel_err(out, ref) <= 1e-5 and rel_err(grad, gref) <= 1e-5


def _to(t, dev):
    return None if t is None else t.to(dev)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('label_dtype', [torch.int32, torch.int16, torch.uint8], ids=str)
@pytest.mark.parametrize('score_dtype', [torch.float16, torch.bfloat16, torch.float64],
                         ids=str)
def test_label_and_score_dtypes(impl, label_dtype, score_dtype, poison):
    """Any integer label dtype (unsigned too) and any floating score dtype: the same numbers."""
    dev = device_of(impl)
    g = make_generator('qfl-dtypes', impl, str(label_dtype), str(score_dtype))
    pred = make_pred(45, 80, torch.float32, dev, g).requires_grad_(True)
    lab, score = make_qfl_target('tuple', 45, 80, dev, g, score_dtype=score_dtype)
    with impl_context(impl):
        out = quality_focal_loss(pred, (lab.to(label_dtype), score), reduction='sum')
        (grad,) = torch.autograd.grad(out, pred)
    xr = pred.detach().double().cpu().requires_grad_(True)
    ref = reference_quality_focal_loss(xr, (lab.cpu(), score.cpu()), reduction='sum')
    (gref,) = torch.autograd.grad(ref, xr)
    assert rel_err(out, ref) <= 1e-5 and rel_err(grad, gref) <= 1e-5


@pytest.mark.parametrize('impl', IMPLS)
def test_empty(impl):
    """No rows: 'mean' is NaN (torch's mean of nothing, as mmdet), 'sum' 0, 'none' empty, the
    gradient zero-size. Rows without classes (C = 0): the per-row loss is an empty sum, 0."""
    dev = device_of(impl)
    pred = torch.randn(0, 80, device=dev, requires_grad=True)
    target = (torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, device=dev))
    with impl_context(impl):
        out = quality_focal_loss(pred, target)
        assert out.shape == () and torch.isnan(out)
        assert quality_focal_loss(pred, target, reduction='none').shape == (0,)
        out2 = quality_focal_loss(pred, target, reduction='sum')
        assert out2.item() == 0.0
        out2.backward()
        assert pred.grad.shape == (0, 80)
        pred0 = torch.randn(4, 0, device=dev, requires_grad=True)
        t0 = torch.zeros(4, 0, device=dev)
        assert quality_focal_loss(pred0, t0).item() == 0.0
        torch.testing.assert_close(quality_focal_loss(pred0, t0, reduction='none'),
                                   torch.zeros(4, device=dev))


@pytest.mark.parametrize('impl', IMPLS)
def test_output_dtype_and_shape_match_mmdet(impl):
    """Output dtype and shape follow mmdet (torch promotion of loss * weight, then of
    sum / (avg_factor + eps)), for every combination mmdet itself computes."""
    from mmdet.models.losses import QualityFocalLoss

    dev = device_of(impl)
    g = make_generator('qfl-dtype', impl)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        pred = make_pred(16, 80, dtype, dev, g)
        lab, score = make_qfl_target('tuple', 16, 80, dev, g, score_dtype=dtype)
        dense = make_qfl_target('dense', 16, 80, dev, g)
        for target in ((lab, score), dense):
            for w in (None, torch.rand(16, generator=g).to(dev),
                      torch.rand(16, generator=g).to(dev, dtype), torch.tensor(2.0, device=dev),
                      torch.tensor([2.0], device=dev)):
                for red, af in [('mean', None), ('sum', None), ('none', None), ('mean', 3.0),
                                ('mean', torch.tensor(3.0, device=dev)),
                                ('mean', torch.tensor([3.0], device=dev)),
                                ('mean', torch.tensor(3, device=dev))]:
                    with impl_context(impl):
                        ours = quality_focal_loss(pred, target, w, reduction=red, avg_factor=af)
                    theirs = QualityFocalLoss(reduction=red)(pred.cpu().float().to(dtype),
                                                             _cpu(target), _cpu(w),
                                                             avg_factor=_cpu(af) if isinstance(
                                                                 af, torch.Tensor) else af)
                    case = (dtype, type(target), None if w is None else (w.dtype, w.shape),
                            red, af)
                    assert ours.dtype == theirs.dtype, case
                    assert ours.shape == theirs.shape, case


@pytest.mark.parametrize('activated', [False, True])
@pytest.mark.parametrize('beta', [2.0, 1.5])
def test_against_mmdet_module_cpu(activated, beta):
    """Same numbers as mmdet's own QualityFocalLoss (CPU) on the same inputs, every target form
    and reduction, through TritonQualityFocalLoss."""
    from mmdet.models.losses import QualityFocalLoss

    from mmdet_focal_triton import TritonQualityFocalLoss

    g = make_generator('qfl-mmdet-cpu', activated, beta)
    for C in (1, 80, 1203):
        x = torch.randn(300, C, generator=g) * 3
        pred = (x.sigmoid() if activated else x).requires_grad_(True)
        for kind in ('tuple', 'dense'):
            target = make_qfl_target(kind, 300, C, 'cpu', g)
            w = torch.rand(300, generator=g)
            for kw in [dict(), dict(avg_factor=17.0), dict(reduction_override='sum'),
                       dict(reduction_override='none'), dict(avg_factor=torch.tensor([4.0]))]:
                args = dict(beta=beta, loss_weight=1.5, activated=activated)
                theirs = QualityFocalLoss(**args)(pred, target, w, **kw)
                up = torch.rand(theirs.shape, generator=g) + 0.5
                (gt,) = torch.autograd.grad(theirs, pred, up)
                ours = TritonQualityFocalLoss(**args)(pred, target, w, **kw)
                (go,) = torch.autograd.grad(ours, pred, up)
                assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
                assert rel_err(ours, theirs) <= 1e-5 and rel_err(go, gt) <= 1e-5, (C, kind, kw)


def test_where_mmdet_misbehaves():
    """Where mmdet's formula gives NaN or fails, ours follows the mathematics:
    - beta < 1 and a negative whose sigmoid underflows to 0 in fp32 (logit < -104): mmdet's
      pow(0, beta) has an infinite derivative, times sigmoid' = 0: a NaN gradient; the true
      derivative beta * p**beta * ... is 0;
    - fp16 / bf16 logits with fp32 scores outside autocast: mmdet's index_put fails ("Index put
      requires the source and destination dtypes match"); ours computes it (fp32 inside)."""
    from mmdet.models.losses import QualityFocalLoss

    pred = torch.full((4, 3), -120.0).requires_grad_(True)
    target = (torch.tensor([0, 3, 3, 1]), torch.tensor([0.5, 0.0, 0.0, 0.8]))
    (g_mmdet,) = torch.autograd.grad(QualityFocalLoss(beta=0.5)(pred, target), pred)
    assert torch.isnan(g_mmdet).any()
    ours = quality_focal_loss(pred, target, beta=0.5)
    (g_ours,) = torch.autograd.grad(ours, pred)
    assert torch.isfinite(g_ours).all()
    xr = pred.detach().double().requires_grad_(True)  # float64: no underflow, no NaN
    ref = reference_quality_focal_loss(xr, target, beta=0.5)
    (gref,) = torch.autograd.grad(ref, xr)
    assert rel_err(ours, ref) <= 1e-5 and rel_err(g_ours, gref) <= 1e-5

    half = (torch.randn(8, 5) * 3).half().requires_grad_(True)
    target = (torch.tensor([0, 5, 2, 5, 5, 4, 1, 5]), torch.rand(8))
    with pytest.raises(RuntimeError, match='Index put requires'):
        QualityFocalLoss()(half, target)
    ours = quality_focal_loss(half, target)
    ref = reference_quality_focal_loss(half.detach().double(), target)
    assert ours.dtype == torch.float16 and rel_err(ours, ref) <= 1e-2


@pytest.mark.parametrize('impl', IMPLS)
def test_unchecked_labels_are_background(impl):
    """With the checks off, labels outside [0, C] count as background: exactly mmdet's
    `(label >= 0) & (label < C)` (with the checks on they raise: test_family_bad_inputs.py)."""
    dev = device_of(impl)
    g = make_generator('qfl-unchecked', impl)
    pred = make_pred(40, 7, torch.float32, dev, g)
    lab, score = make_qfl_target('tuple', 40, 7, dev, g)
    lab[[2, 5, 9]] = torch.tensor([-3, 99, 8], device=dev)
    mft.set_input_checks(False)
    try:
        with impl_context(impl):
            out = quality_focal_loss(pred, (lab, score), reduction='sum')
    finally:
        mft.set_input_checks(True)
    ref = reference_quality_focal_loss(pred.cpu(), (lab.cpu(), score.cpu()), reduction='sum')
    assert rel_err(out, ref) <= 1e-5


# ---- module, op registration, autograd glue -------------------------------------------------
def test_module_is_mmdets():
    """Constructor, attributes, defaults, assertions and isinstance of mmdet's class."""
    from mmdet.models.losses import QualityFocalLoss
    from mmdet.registry import MODELS

    from mmdet_focal_triton import TritonQualityFocalLoss

    ours = MODELS.build(dict(type='TritonQualityFocalLoss', beta=1.5, reduction='sum',
                             loss_weight=2.0, activated=True))
    assert type(ours) is TritonQualityFocalLoss and isinstance(ours, QualityFocalLoss)
    assert (ours.use_sigmoid, ours.beta, ours.reduction, ours.loss_weight, ours.activated) == (
        True, 1.5, 'sum', 2.0, True)
    d, ref = TritonQualityFocalLoss(), QualityFocalLoss()
    for name in ('use_sigmoid', 'beta', 'reduction', 'loss_weight', 'activated'):
        assert getattr(d, name) == getattr(ref, name)
    with pytest.raises(AssertionError, match='Only sigmoid in QFL supported now'):
        TritonQualityFocalLoss(use_sigmoid=False)
    pred, target = torch.randn(6, 4), (torch.tensor([0, 4, 3, 1, 4, 2]), torch.rand(6))
    with pytest.raises(AssertionError, match='reduction_override'):
        d(pred, target, reduction_override='avg')
    with pytest.raises(AssertionError, match='tuple of two elements'):
        d(pred, (target[0], target[1], target[1]))
    torch.testing.assert_close(d(pred, list(target)), ref(pred, target))  # a list works too
    d.use_sigmoid = False
    with pytest.raises(NotImplementedError):
        d(pred, target)


@pytest.fixture(params=['eager-function', 'registered-op'])
def path(request, monkeypatch):
    monkeypatch.setattr(quality_focal, 'FORCE_OP', request.param == 'registered-op')
    return request.param


@pytest.mark.parametrize('impl', [p for p in IMPLS if p.id != 'cpu-triton-interpreter'])
@pytest.mark.parametrize('reduction', [0, 1, 2])
@pytest.mark.parametrize('index_target', [True, False])
def test_opcheck(impl, reduction, index_target):
    dev = device_of(impl)
    g = make_generator('qfl-opcheck', impl, reduction, index_target)
    pred = make_pred(19, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_qfl_target('tuple' if index_target else 'dense', 19, 80, dev, g)
    lab, score = target if index_target else (target, None)
    w = torch.rand(19, generator=g).to(dev)
    af = torch.tensor([6.0], device=dev) if reduction == 1 else None
    flags = QualityFocalSpec(reduction, True, index_target, False, reduction != 0, True).pack()
    with impl_context(impl):
        torch.library.opcheck(torch.ops.mmdet_focal_triton.quality_focal_loss.default,
                              (pred, lab, score, w, af, 2.0, 1.0, flags, torch.float32))
        none_flags = QualityFocalSpec(0, True, index_target, False, False, False).pack()
        torch.library.opcheck(
            torch.ops.mmdet_focal_triton.quality_focal_loss_none_backward.default,
            (torch.randn(19, generator=g).to(dev), pred.detach(), lab, score, w, 2.0, 1.0,
             none_flags))


def _head_loss(pred, labels, scores, weights):
    # what RTMDet's head does per level: flatten the scores, then the loss
    x = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])
    return 2.0 * quality_focal_loss(x, (labels, scores), weights, avg_factor=1.0) + x.mean()


@pytest.mark.parametrize('impl', [p for p in IMPLS if p.id != 'cpu-triton-interpreter'])
def test_compile_matches_eager_without_graph_break(impl):
    dev = device_of(impl)
    g = make_generator('qfl-compile', impl)
    pred = (torch.randn(2, 80, 6, 5, generator=g) * 3).to(dev).requires_grad_(True)
    labels, scores = make_qfl_target('tuple', 60, 80, dev, g)
    weights = torch.rand(60, generator=g).to(dev)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(_head_loss)(pred, labels, scores, weights)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(_head_loss, fullgraph=True)
    with impl_context(impl):
        eager = _head_loss(pred, labels, scores, weights)
        (ge,) = torch.autograd.grad(eager, pred)
        comp = compiled(pred, labels, scores, weights)
        (gc,) = torch.autograd.grad(comp, pred)
    torch.testing.assert_close(comp, eager, rtol=1e-6, atol=0)
    torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('reduction', ['mean', 'none'])
@pytest.mark.parametrize('target_kind', ['tuple', 'dense'])
def test_bitwise_deterministic(impl, reduction, target_kind):
    dev = device_of(impl)
    g = make_generator('qfl-det', impl, reduction, target_kind)
    N = 4099 if impl != 'interp' else 700
    pred = make_pred(N, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_qfl_target(target_kind, N, 80, dev, g)
    w = torch.rand(N, generator=g).to(dev)
    results = []
    with impl_context(impl):
        for _ in range(5 if impl != 'interp' else 2):
            out = quality_focal_loss(pred, target, w, reduction=reduction,
                                     avg_factor=torch.tensor(33.0, device=dev))
            (grad,) = torch.autograd.grad(out, pred, torch.ones_like(out) * 0.5)
            results.append((out, grad))
    for out, grad in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('reduction', ['mean', 'sum', 'none'])
def test_eager_function_matches_registered_op(impl, reduction, monkeypatch):
    """The eager fast path and the registered op: bitwise the same loss and gradient."""
    dev = device_of(impl)
    g = make_generator('qfl-paths', impl, reduction)
    pred = make_pred(37, 80, torch.float32, dev, g)
    target = make_qfl_target('tuple', 37, 80, dev, g)
    w = torch.rand(37, generator=g).to(dev)
    up = torch.rand(37, generator=g).to(dev) if reduction == 'none' else 0.37
    outs = []
    for force in (False, True):
        monkeypatch.setattr(quality_focal, 'FORCE_OP', force)
        x = pred.clone().requires_grad_(True)
        with impl_context(impl):
            loss = quality_focal_loss(x, target, w, reduction=reduction)
            (loss * up).sum().backward()
        outs.append((loss.detach(), x.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('first', [1.0, 3.0])
def test_second_backward_with_retained_graph(impl, first, path):
    dev = device_of(impl)
    g = make_generator('qfl-retain', impl, first)
    pred = make_pred(50, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_qfl_target('tuple', 50, 80, dev, g)
    with impl_context(impl):
        out = quality_focal_loss(pred, target, avg_factor=4.0)
        (g1,) = torch.autograd.grad(out, pred, torch.tensor(first, device=dev), retain_graph=True)
        g1 = g1.clone()
        (g2,) = torch.autograd.grad(out, pred, torch.tensor(2.0, device=dev))
    xr = pred.detach().double().cpu().requires_grad_(True)
    (gr,) = torch.autograd.grad(reference_quality_focal_loss(xr, _cpu(target), avg_factor=4.0),
                                xr)
    assert rel_err(g1, first * gr) <= 1e-5
    assert rel_err(g2, 2.0 * gr) <= 1e-5


@pytest.mark.parametrize('impl', IMPLS)
def test_gradient_buffer_is_adopted_not_copied(impl, path, monkeypatch):
    """pred.grad is the buffer the forward wrote: peak memory of loss + backward is that one
    buffer, on both the eager and the registered-op path."""
    written = []
    impl_fn = quality_focal.forward_impl

    def spy(*args):
        out = impl_fn(*args)
        written.append(out[1].data_ptr())
        return out
    monkeypatch.setattr(quality_focal, 'forward_impl', spy)
    dev = device_of(impl)
    g = make_generator('qfl-adopt', impl)
    pred = make_pred(33, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_qfl_target('tuple', 33, 80, dev, g)
    with impl_context(impl):
        quality_focal_loss(pred, target, avg_factor=5.0).backward()
    assert len(written) == 1 and pred.grad.data_ptr() == written[0]


@pytest.mark.parametrize('impl', IMPLS)
def test_no_grad_writes_no_gradient(impl):
    dev = device_of(impl)
    g = make_generator('qfl-nograd', impl)
    pred = make_pred(64, 80, torch.float32, dev, g)
    target = make_qfl_target('tuple', 64, 80, dev, g)
    with impl_context(impl):
        a = quality_focal_loss(pred, target, avg_factor=5.0)
        with torch.no_grad():
            b = quality_focal_loss(pred.clone().requires_grad_(True), target, avg_factor=5.0)
        _, grad = torch.ops.mmdet_focal_triton.quality_focal_loss(
            pred, target[0], target[1], None, None, 2.0, 0.2,
            QualityFocalSpec(1, False, True, False, False, True).pack(), torch.float32)
    assert not a.requires_grad and not b.requires_grad and grad.numel() == 0
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_spec_packs_into_one_int():
    import itertools

    for values in itertools.product(range(3), *[(False, True)] * 5):
        spec = QualityFocalSpec(*values)
        back = QualityFocalSpec.unpack(spec.pack())
        assert back == spec and [type(v) for v in back] == [type(v) for v in spec]
