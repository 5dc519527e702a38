"""The three losses against the float64 transcriptions of mmdet's formulas (tests/reference*.py):
loss and gradient, on every backend, with the tolerance of what the path computes
(tests/_tolerances.py: float64 on the CPU path 1e-12, fp32 1e-5, fp16 / bf16 1e-5 beyond the
rounding of the result to its dtype).

Each case draws fresh inputs, poisons every uninitialised allocation with NaN (an output
element the op forgot to write fails), and uses an upstream gradient other than 1. The grids
are pairwise per backend (tests/_pairwise.py): every pair of values of any two parameters is
in a case; the CUDA backends run the full products.
"""
import pytest
import torch
from _family import FOCAL, LOSSES, QFL
from _inputs import (
    device_of,
    impl_context,
    make_avg_factor,
    make_generator,
    make_pred,
    non_contiguous,
)
from _pairwise import grid, is_cuda
from _tolerances import LOW_PRECISION, as_computed, check

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
RED_AF = [('none', None), ('mean', None), ('sum', None), ('mean', 'int'), ('mean', 'float'),
          ('mean', 't0'), ('mean', 't1'), ('mean', 'tlong'), ('none', 't0')]


INTERPRETER = 'cpu-triton-interpreter'


def family_grid(factors, losses=LOSSES, full=is_cuda, backends=None):
    """pytest params (loss, backend, *values): each loss's backends (or `backends`), each with a
    pairwise grid over `factors(loss, interpreter)` (a dict; the full product on CUDA).

    The Triton interpreter runs a block of a kernel in ~15 ms: on it, some grids leave out values
    that only the host side tells apart (an avg_factor number from another number, a 0-d tensor
    from a (1,) one; a plain mean from a sum), or that the kernels compute alike (float64 is fp32
    arithmetic there), and the costliest shapes; the PyTorch path and CUDA run them all."""
    params = []
    for loss in losses:
        for b in backends or loss.backends:
            for p in grid([b], factors(loss, b.id.startswith(INTERPRETER)), full=full):
                params.append(pytest.param(loss, *p.values, id=f'{loss.name}-{p.id}',
                                           marks=p.marks))
    return params


def argnames(factors):
    return 'loss,impl,' + ','.join(factors(FOCAL))


def upstream(out, pred_dtype, g):
    """The upstream gradient, in out's dtype (what autograd hands the loss). An elementwise loss
    gets a random one; a reduced loss 0.7 + U(0, 1), or for fp16 / bf16 inputs a power of two:
    their gradient is written in the forward and rescaled in place by the backward, in the
    input's dtype for bf16, which rounds twice for any other factor."""
    if out.dim() and out.numel() != 1:
        up = torch.randn(out.shape, generator=g, dtype=torch.float64)
    elif pred_dtype in LOW_PRECISION:
        up = torch.full(out.shape, (0.25, 0.5, 2.0, 4.0)[int(torch.randint(4, (), generator=g))])
    else:
        up = torch.full(out.shape, 0.7 + torch.rand((), generator=g).item())
    return up.to(out.dtype).to(out.device)


def run_case(loss, impl, N, C, dtype, target_kind, weight_kind, reduction, af_kind, *,
             layout='contiguous', scale=3.0, activated=False, loss_weight=1.0, **params):
    """One call of `loss` on `impl` against the float64 reference: shapes, dtypes, finiteness,
    loss and gradient within tolerance. Returns (loss, gradient)."""
    dev = device_of(impl)
    g = make_generator(loss.name, impl, N, C, str(dtype), target_kind, weight_kind, reduction,
                       af_kind, layout, scale, activated, loss_weight, sorted(params.items()))
    pred = make_pred(N, C, dtype, dev, g, layout, scale=scale, activated=activated)
    pred.requires_grad_(True)
    target = loss.make_target(target_kind, N, C, dev, g)
    if layout != 'contiguous':
        target = non_contiguous(target)
    weight = loss.make_weight(weight_kind, N, C, dev, g)
    kw = dict(loss.params, **params, reduction=reduction,
              avg_factor=make_avg_factor(af_kind, dev), loss_weight=loss_weight)
    if activated:
        kw['activated'] = True
    with impl_context(impl):
        out = loss.call(pred, target, weight, **kw)
        up = upstream(out, dtype, g)
        (grad,) = torch.autograd.grad(out, pred, up)
    xr = as_computed(pred, impl).requires_grad_(True)
    ref = loss.ref(xr, target, weight, **kw)
    (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())

    assert out.shape == ref.shape
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    assert torch.isfinite(out).all() or pred.numel() == 0, 'non-finite loss'
    assert torch.isfinite(grad).all(), 'non-finite gradient'
    check(out, ref, impl, 'loss')
    check(grad, gref, impl, 'gradient')
    return out, grad


def _grid_factors(loss, interpreter=False):
    red_af = [r for r in RED_AF if r not in (('mean', 'int'), ('mean', 't0'))] if interpreter \
        else RED_AF
    return {'dtype': DTYPES, 'target_kind': list(loss.targets),
            'weight_kind': list(loss.weights), 'reduction,af_kind': red_af}


@pytest.mark.parametrize(argnames(_grid_factors), family_grid(_grid_factors))
def test_grid(loss, impl, dtype, target_kind, weight_kind, reduction, af_kind, poison):
    """Every target form, weight form, reduction and avg_factor form, in every dtype."""
    run_case(loss, impl, 37, 80, dtype, target_kind, weight_kind, reduction, af_kind)


def _activated_factors(loss, interpreter=False):
    # not fp16: a probability that rounds to 1 has torch's BCE derivative 1e12, inf in fp16
    return {'dtype': [torch.float32, torch.bfloat16, torch.float64],
            'target_kind': list(loss.targets), 'weight_kind': list(loss.weights),
            'reduction,af_kind': [('none', None), ('mean', 't0'), ('sum', None),
                                  ('mean', None)]}


@pytest.mark.parametrize(argnames(_activated_factors),
                         family_grid(_activated_factors, [FOCAL, QFL]))
def test_activated(loss, impl, dtype, target_kind, weight_kind, reduction, af_kind, poison):
    """activated=True: pred holds probabilities, mmdet's plain-BCE paths (TOOD, DDQ)."""
    run_case(loss, impl, 29, 80, dtype, target_kind, weight_kind, reduction, af_kind,
             activated=True)


def _param_factors(loss, interpreter=False):
    factors = dict(loss.param_values)
    factors['target_kind'] = list(loss.targets)
    factors['activated'] = [False, True] if loss.activated else [False]
    return factors


def _param_grid():
    params = []
    for loss in LOSSES:
        names = list(_param_factors(loss))
        for p in grid(loss.backends, _param_factors(loss), full=is_cuda):
            impl, *values = p.values
            params.append(pytest.param(loss, impl, dict(zip(names, values, strict=True)),
                                       id=f'{loss.name}-{p.id}', marks=p.marks))
    return params


@pytest.mark.parametrize('loss,impl,case', _param_grid())
def test_parameters(loss, impl, case, poison):
    """The loss's own parameters (gamma / alpha, beta, alpha / gamma / iou_weighted) over their
    range, loss_weight != 1."""
    case = dict(case)
    target_kind, activated = case.pop('target_kind'), case.pop('activated')
    run_case(loss, impl, 23, 80, torch.float32, target_kind, loss.weights[1], 'mean', 'float',
             activated=activated, loss_weight=0.5, **case)


# the row block is 32 rows at C = 80; C = 1203 takes the flat layout (2,048-element blocks)
SHAPES = [(0, 80), (1, 80), (1, 1), (7, 1), (333, 1), (5, 1203), (1, 1203), (0, 1), (65, 80),
          (2049, 3), (3, 17), (9, 20), (33, 48), (5, 256), (130, 12)]


def _shape_factors(loss, interpreter=False):
    # the interpreter: one shape with C = 1203 (19 column chunks) and one with C = 1
    shapes = [s for s in SHAPES if s not in ((1, 1203), (333, 1), (1, 80))] if interpreter \
        else SHAPES
    reductions = [('none', None), ('mean', 't1'), ('sum', None)] + (
        [] if interpreter else [('mean', None)])
    return {'N,C': shapes, 'reduction,af_kind': reductions,
            'target_kind': list(loss.targets[:1] + loss.targets[-1:]),
            'weight_kind': ['none', loss.weights[1]]}


@pytest.mark.parametrize(argnames(_shape_factors), family_grid(_shape_factors))
def test_shapes(loss, impl, N, C, reduction, af_kind, target_kind, weight_kind, poison):
    """N = 0 ('mean' without avg_factor: NaN, as torch's mean of nothing), one row, one class,
    N not a multiple of the row block, C not a multiple of the column chunk."""
    run_case(loss, impl, N, C, torch.float32, target_kind, weight_kind, reduction, af_kind)


def _large_factors(loss, interpreter=False):
    return {'C': [80, 1203]}


@pytest.mark.parametrize(argnames(_large_factors), family_grid(_large_factors))
def test_large_rows(loss, impl, C, poison):
    """Many rows: many row blocks (the interpreter, which runs a block in ~15 ms: ten); 3.6M
    elements at C = 1203 where the float64 reference's one-hot costs seconds on CPU."""
    if impl.startswith('interp'):
        N = 300 if C == 80 else 20
    else:
        N = 3000 if C == 80 or impl.startswith('cuda') else 600
    run_case(loss, impl, N, C, torch.float32, loss.targets[0], loss.weights[1], 'mean', 't0')


def _layout_factors(loss, interpreter=False):
    return {'layout': ['strided', 'transposed'], 'target_kind': list(loss.targets),
            'weight_kind': list(loss.weights[:3]),
            'reduction,af_kind': [('none', None), ('mean', 't0'), ('sum', None)]}


def _rows_layout_grid():
    # non-contiguous inputs take the row-block kernel whatever the layout asked for: the flat
    # layout's backends would repeat the others' cases
    return [p for loss in LOSSES
            for p in family_grid(_layout_factors, [loss], backends=[
                b for b in loss.backends if not b.id.endswith('-flat')])]


@pytest.mark.parametrize(argnames(_layout_factors), _rows_layout_grid())
def test_non_contiguous(loss, impl, layout, target_kind, weight_kind, reduction, af_kind,
                        poison):
    """Strided and column-major pred, with non-contiguous targets (labels, scores, dense)."""
    run_case(loss, impl, 41, 80, torch.float32, target_kind, weight_kind, reduction, af_kind,
             layout=layout)


def _extreme_factors(loss, interpreter=False):
    return {'dtype': DTYPES[:3] if interpreter else DTYPES, 'scale': [30.0, 1e4],
            'target_kind': list(loss.targets)}


@pytest.mark.parametrize(argnames(_extreme_factors), family_grid(_extreme_factors))
def test_extreme_logits(loss, impl, dtype, scale, target_kind, poison):
    """|x| up to 1e4: finite and correct in every dtype (mmcv's fp16 op gives NaN from ~8.3).
    (QFL's per-row 'none' loss, a sum of 80 elements of up to ~|x|, exceeds fp16's range at 1e4
    for any implementation: loss_weight 1e-2 keeps it representable.)"""
    run_case(loss, impl, 31, 80, dtype, target_kind, loss.weights[1], 'mean', 't0', scale=scale)
    run_case(loss, impl, 31, 80, dtype, target_kind, 'none', 'none', None, scale=scale,
             loss_weight=1e-2 if loss.row_loss else 1.0)


def _confident_factors(loss, interpreter=False):
    return {'dtype': DTYPES[:3] if interpreter else DTYPES,
            'C': [80, 1203] if interpreter else [1, 80, 1203], 'reduction': ['mean', 'none']}


@pytest.mark.parametrize(argnames(_confident_factors), family_grid(_confident_factors))
def test_confident_predictions(loss, impl, dtype, C, reduction, poison):
    """Late in training every logit is confidently right: positives (quality 1 or 0.999) large,
    negatives very negative, every element loss tiny. Relative accuracy must hold there too
    (no cancellation in 1 - p or p - t)."""
    dev = device_of(impl)
    # a few row blocks (the interpreter runs a block in ~15 ms)
    N = (40 if C <= 80 else 4) if impl.startswith('interp') else (300 if C <= 80 else 40)
    g = make_generator('confident', loss.name, impl, str(dtype), C, reduction)
    labels = torch.randint(0, C, (N,), generator=g)
    scores = torch.where(torch.rand(N, generator=g) < 0.5, 1.0, 0.999)
    target = loss.from_labels(labels, scores, C)
    positive = torch.nn.functional.one_hot(labels, C).bool()
    mag = torch.rand(N, C, generator=g, dtype=torch.float64) * 12 + 3
    pred = torch.where(positive, mag, -mag).to(dtype).to(dev).requires_grad_(True)
    weight = loss.make_weight(loss.weights[1], N, C, dev, g)
    to_dev = (lambda t: tuple(x.to(dev) for x in t)) if isinstance(target, tuple) else \
        (lambda t: t.to(dev))
    kw = dict(reduction=reduction, avg_factor=5.0)
    with impl_context(impl):
        out = loss.call(pred, to_dev(target), weight, **kw)
        # fp16 training runs under a GradScaler (2**16 by default): gradients stay out of fp16's
        # subnormal range, where a stored value cannot be accurate anyway
        up = torch.full_like(out, 2.0 ** 12 if dtype == torch.float16 else 0.25)
        (grad,) = torch.autograd.grad(out, pred, up)
    xr = as_computed(pred, impl).requires_grad_(True)
    ref = loss.ref(xr, target, weight, **kw)
    (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
    check(out, ref, impl, 'loss')
    check(grad, gref, impl, 'gradient')


@pytest.mark.parametrize('loss,impl', [pytest.param(loss, b.values[0], id=f'{loss.name}-{b.id}',
                                                    marks=b.marks)
                                       for loss in LOSSES for b in loss.backends])
def test_dense_targets_of_any_shape(loss, impl, poison):
    """Dense targets of pred's shape with any number of dims (Grounding DINO passes (B, Q, C);
    QFL sums over dim 1 and weighs the per-row loss), 1-D too, with and without a weight."""
    dev = device_of(impl)
    g = make_generator('any-shape', loss.name, impl)
    for shape, wshape in loss.dense_shapes:
        pred = (torch.randn(shape, generator=g) * 3).to(dev).requires_grad_(True)
        target = torch.rand(shape, generator=g) * (torch.rand(shape, generator=g) < 0.3)
        for w, reduction in ((None, 'mean'), (torch.rand(wshape, generator=g), 'none')):
            with impl_context(impl):
                out = loss.call(pred, target.to(dev), None if w is None else w.to(dev),
                                reduction=reduction)
                up = torch.randn(out.shape, generator=g).to(dev) if out.dim() else \
                    torch.tensor(1.3, device=dev)
                (grad,) = torch.autograd.grad(out, pred, up)
            xr = as_computed(pred, impl).requires_grad_(True)
            ref = loss.ref(xr, target, w, reduction=reduction)
            (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
            assert out.shape == ref.shape == (loss.loss_shape(pred) if reduction == 'none'
                                              else ())
            check(out, ref, impl, f'{shape} loss')
            check(grad, gref, impl, f'{shape} gradient')


@pytest.mark.parametrize('loss,impl', [pytest.param(loss, b.values[0], id=f'{loss.name}-{b.id}',
                                                    marks=b.marks)
                                       for loss in LOSSES for b in loss.backends])
def test_empty(loss, impl):
    """No rows: 'mean' is NaN (torch's mean of nothing, as mmdet), 'sum' 0, 'none' empty, the
    gradient zero-size."""
    dev = device_of(impl)
    pred = torch.randn(0, 80, device=dev, requires_grad=True)
    labels = torch.zeros(0, dtype=torch.long, device=dev)
    target = loss.from_labels(labels, torch.zeros(0, device=dev), 80)
    with impl_context(impl):
        out = loss.call(pred, target)
        assert out.shape == () and torch.isnan(out)
        assert loss.call(pred, target, reduction='none').shape == loss.loss_shape(pred)
        out2 = loss.call(pred, target, reduction='sum')
        assert out2.shape == () and out2.item() == 0.0
        out2.backward()
    assert pred.grad.shape == (0, 80)


@pytest.mark.parametrize('impl', [pytest.param(b.values[0], id=b.id, marks=b.marks)
                                  for b in QFL.backends])
def test_rows_without_classes(impl):
    """QFL with C = 0: each row's loss is an empty sum, 0."""
    dev = device_of(impl)
    pred = torch.randn(4, 0, device=dev, requires_grad=True)
    target = torch.zeros(4, 0, device=dev)
    with impl_context(impl):
        assert QFL.call(pred, target).item() == 0.0
        torch.testing.assert_close(QFL.call(pred, target, reduction='none'),
                                   torch.zeros(4, device=dev), rtol=0, atol=0)


LABEL_DTYPES = [torch.int64, torch.int32, torch.int16, torch.uint8]


def _label_grid():
    params = []
    for loss in (FOCAL, QFL):
        factors = {'label_dtype': LABEL_DTYPES}
        if loss is QFL:
            factors['score_dtype'] = [torch.float32, torch.float16, torch.bfloat16,
                                      torch.float64]
        for p in grid(loss.backends, factors, full=is_cuda):
            impl, label_dtype, *score = p.values
            params.append(pytest.param(loss, impl, label_dtype, *(score or [None]),
                                       id=f'{loss.name}-{p.id}', marks=p.marks))
    return params


@pytest.mark.parametrize('loss,impl,label_dtype,score_dtype', _label_grid())
def test_label_and_score_dtypes(loss, impl, label_dtype, score_dtype, poison):
    """Class indices of any integer dtype (uint8 cannot hold the kernels' -1 or C sentinels),
    QFL's scores of any floating dtype: the same numbers."""
    dev = device_of(impl)
    g = make_generator('label-dtypes', loss.name, impl, str(label_dtype), str(score_dtype))
    pred = make_pred(53, 80, torch.float32, dev, g).requires_grad_(True)
    target = loss.make_target(loss.index_target, 53, 80, dev, g)
    if isinstance(target, tuple):
        target = (target[0].to(label_dtype), target[1].to(score_dtype))
    else:
        target = target.to(label_dtype)
    with impl_context(impl):
        out = loss.call(pred, target, reduction='mean', avg_factor=3.0)
        (grad,) = torch.autograd.grad(out, pred)
    xr = as_computed(pred, impl).requires_grad_(True)
    ref = loss.ref(xr, target, None, reduction='mean', avg_factor=3.0)
    (gref,) = torch.autograd.grad(ref, xr)
    check(out, ref, impl, 'loss')
    check(grad, gref, impl, 'gradient')


# ---- avg_factor = 0 ------------------------------------------------------------------------
# mmdet divides by (avg_factor + eps): 0 gives sum / eps (~8.4e6 x the sum), a number, never an
# error. Checked against mmdet's own modules in test_family_mmdet.py; here against float64.
ZERO_FORMS = {'int': lambda dev: 0, 'float': lambda dev: 0.0,
              't0': lambda dev: torch.tensor(0.0, device=dev),
              't1': lambda dev: torch.tensor([0.0], device=dev)}


def _zero_factors(loss, interpreter=False):
    return {'dtype': [torch.float32, torch.float64], 'zero': list(ZERO_FORMS),
            'target_kind': list(loss.targets), 'weight_kind': list(loss.weights[:2])}


@pytest.mark.parametrize(argnames(_zero_factors), family_grid(_zero_factors))
def test_avg_factor_zero(loss, impl, dtype, zero, target_kind, weight_kind, poison):
    dev = device_of(impl)
    g = make_generator('af-zero', loss.name, impl, str(dtype), zero, target_kind, weight_kind)
    pred = make_pred(37, 80, dtype, dev, g).requires_grad_(True)
    target = loss.make_target(target_kind, 37, 80, dev, g)
    weight = loss.make_weight(weight_kind, 37, 80, dev, g)
    kw = dict(reduction='mean', avg_factor=ZERO_FORMS[zero](dev))
    with impl_context(impl):
        out = loss.call(pred, target, weight, **kw)
        (grad,) = torch.autograd.grad(out, pred, torch.full_like(out, 0.5))
    xr = as_computed(pred, impl).requires_grad_(True)
    ref = loss.ref(xr, target, weight, **kw)
    (gref,) = torch.autograd.grad(ref, xr, torch.full_like(ref, 0.5))
    assert out.shape == ref.shape and ref.abs().sum() > 1e6  # sum / eps: large, finite
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    check(out, ref, impl, 'loss')
    check(grad, gref, impl, 'gradient')
