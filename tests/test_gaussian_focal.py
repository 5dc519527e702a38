"""GaussianFocalLoss (CenterNet, CenterNet-update, CornerNet, CentripetalNet): the fused loss
against the float64 transcription of mmdet 3.3.0's two functions (tests/reference_family.py),
against mmdet's own module, and its argument and input checks.

The float64 grids follow tests/test_family_numbers.py: fresh inputs per case, every
uninitialised allocation poisoned with NaN, an upstream gradient other than 1, the tolerance of
what the path computes (tests/_tolerances.py), pairwise grids per backend (the full product on
CUDA). Probabilities are kept in [0.004, 0.996], where bfloat16 does not round them to 0 or 1
(the loss is infinite there: `test_where_mmdet_misbehaves`).
"""
import warnings

import pytest
import torch
from _inputs import IMPLS, device_of, impl_context, make_avg_factor, make_generator
from _pairwise import grid, is_cuda
from _tolerances import LOW_PRECISION, as_computed, check, rel_err
from mmdet.models.losses import GaussianFocalLoss
from mmdet.registry import MODELS
from reference_family import reference_gaussian_focal_loss

import mmdet_focal_triton as mft
from mmdet_focal_triton import TritonGaussianFocalLoss, gaussian_focal_loss
from mmdet_focal_triton.ops import gaussian_focal as op_module
from mmdet_focal_triton.ops.spec import GaussianFocalSpec

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
RED_AF = [('none', None), ('mean', None), ('sum', None), ('mean', 'int'), ('mean', 'float'),
          ('mean', 't0'), ('mean', 't1'), ('mean', 'tlong'), ('none', 't0')]
# (N, C, H, W) heatmaps (CenterNet / CornerNet), (N, C) points (CenterNet-update), C = 1, and
# sizes that are not a multiple of the kernel's block of 2048 elements
SHAPES = [(2, 3, 13, 17), (5, 1), (7, 80), (3, 1203)]


def make_probs(shape, dtype, device, g, layout='contiguous'):
    """Probabilities as heads pass them (sigmoid of logits), kept in [0.004, 0.996]."""
    p = torch.sigmoid(torch.randn(shape, generator=g, dtype=torch.float64) * 3)
    p = p.clamp(0.004, 0.996).to(dtype).to(device)
    if layout == 'transposed':  # the same values, another memory layout
        p = p.transpose(0, -1).contiguous().transpose(0, -1)
    return p


def make_heatmap(kind, shape, device, g):
    """'heatmap': Gaussian peaks as CenterNet draws them: about 2 % of the elements exactly 1,
    the rest exp(-d^2)-like values, many 0. 'soft': U(0, 1) with a few exact 1s and 0s."""
    u = torch.rand(shape, generator=g, dtype=torch.float64)
    if kind == 'heatmap':
        t = torch.where(u > 0.6, (u - 0.6) / 0.4, torch.zeros((), dtype=torch.float64)) ** 3
        t[u > 0.98] = 1.0
    else:
        t = u.clone()
        t[u > 0.95] = 1.0
        t[u < 0.05] = 0.0
    return t.float().to(device)


def make_gaussian_weight(kind, shape, device, g):
    if kind == 'none':
        return None
    wshape = {'elem': shape, 'row1': shape[:1] + (1,) * (len(shape) - 1), 'scalar': ()}[kind]
    return torch.rand(wshape, generator=g).to(device)


def _upstream(out, dtype, g):
    """As tests/test_family_numbers.py: random for 'none', a power of two for fp16 / bf16."""
    if out.dim() and out.numel() != 1:
        up = torch.randn(out.shape, generator=g, dtype=torch.float64)
    elif dtype in LOW_PRECISION:
        up = torch.full(out.shape, 0.5)
    else:
        up = torch.full(out.shape, 0.7 + torch.rand((), generator=g).item())
    return up.to(out.dtype).to(out.device)


def _check_call(impl, pred, target, weight=None, **kw):
    """Ours against the float64 reference (loss and gradient, with a random upstream)."""
    g = make_generator('upstream', impl, tuple(pred.shape), sorted(map(str, kw.items())))
    pred = pred.requires_grad_(True)
    with impl_context(impl):
        out = gaussian_focal_loss(pred, target, weight, **kw)
        up = _upstream(out, pred.dtype, g)
        (grad,) = torch.autograd.grad(out, pred, up)
    xr = as_computed(pred, impl).requires_grad_(True)
    rkw = {k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    ref = reference_gaussian_focal_loss(xr, target.cpu(), None if weight is None
                                        else weight.cpu(), **rkw)
    (gref,) = torch.autograd.grad(ref, xr, up.double().cpu())
    assert out.shape == ref.shape
    assert grad.shape == pred.shape and grad.dtype == pred.dtype
    assert torch.isfinite(out).all() and torch.isfinite(grad).all()
    check(out, ref, impl, 'loss')
    check(grad, gref, impl, 'gradient')
    return out, grad


def _grid_factors(interpreter):
    return {'dtype': DTYPES, 'shape': SHAPES[:3] if interpreter else SHAPES,
            'target_kind': ['heatmap', 'soft'], 'weight_kind': ['none', 'elem', 'row1', 'scalar'],
            'reduction,af_kind': RED_AF, 'layout': ['contiguous', 'transposed']}


def _params(factors):
    return [p for b in IMPLS
            for p in grid([b], factors(b.id.startswith('cpu-triton-interpreter')), full=is_cuda)]


@pytest.mark.parametrize('impl,dtype,shape,target_kind,weight_kind,reduction,af_kind,layout',
                         _params(_grid_factors))
def test_grid(impl, dtype, shape, target_kind, weight_kind, reduction, af_kind, layout, poison):
    """The dense form (CenterNet, CornerNet) against float64: dtypes, shapes, targets,
    weights, reductions, avg_factor kinds, memory layouts."""
    dev = device_of(impl)
    g = make_generator('gaussian', impl, str(dtype), shape, target_kind, weight_kind, reduction,
                       af_kind, layout)
    pred = make_probs(shape, dtype, dev, g, layout)
    target = make_heatmap(target_kind, shape, dev, g)
    weight = make_gaussian_weight(weight_kind, shape, dev, g)
    _check_call(impl, pred, target, weight, reduction=reduction,
                avg_factor=make_avg_factor(af_kind, dev), loss_weight=1.5)


def _parameter_factors(interpreter):
    return {'alpha': [2.0, 0.0, 1.5, 4.0], 'gamma': [4.0, 0.0, 2.0, 2.5],
            'pos_weight,neg_weight': [(1.0, 1.0), (0.25, 0.75), (2.0, 0.0)],
            'reduction': ['mean', 'none']}


@pytest.mark.parametrize('impl,alpha,gamma,pos_weight,neg_weight,reduction',
                         _params(_parameter_factors))
def test_parameters(impl, alpha, gamma, pos_weight, neg_weight, reduction, poison):
    """Every exponent mode of the kernel (0, 2, 4 and any other value) and the two weights."""
    dev = device_of(impl)
    g = make_generator('gaussian-params', impl, alpha, gamma, pos_weight, neg_weight, reduction)
    shape = (2, 3, 11, 9)
    _check_call(impl, make_probs(shape, torch.float32, dev, g),
                make_heatmap('heatmap', shape, dev, g), alpha=alpha, gamma=gamma,
                pos_weight=pos_weight, neg_weight=neg_weight, reduction=reduction)


def _pos_inds(N, C, npos, g, device, duplicates):
    rows = torch.randperm(N, generator=g)[:npos]
    labels = torch.randint(0, C, (npos,), generator=g)
    if duplicates and npos >= 2:  # two objects of one class centred on one point
        rows[1], labels[1] = rows[0], labels[0]
    return rows.to(device), labels.to(device)


def _pos_factors(interpreter):
    return {'dtype': DTYPES, 'reduction,af_kind': [r for r in RED_AF if r[0] != 'none'],
            'npos': [7, 1, 0, 300] if not interpreter else [7, 1, 0],
            'duplicates': [False, True], 'index_dtype': [torch.int64, torch.int32]}


@pytest.mark.parametrize('impl,dtype,reduction,af_kind,npos,duplicates,index_dtype',
                         _params(_pos_factors))
def test_pos_inds_form(impl, dtype, reduction, af_kind, npos, duplicates, index_dtype, poison):
    """CenterNet-update's form: (N, C) points, positives listed by (pos_inds, pos_labels), the
    two terms reduced apart; duplicated positives add up; no positive: mmdet's mean of nothing
    (NaN) without avg_factor."""
    dev = device_of(impl)
    g = make_generator('gaussian-pos', impl, str(dtype), reduction, af_kind, npos, duplicates)
    N, C = 400, 7
    pred = make_probs((N, C), dtype, dev, g)
    target = make_heatmap('heatmap', (N, C), dev, g)
    rows, labels = _pos_inds(N, C, npos, g, dev, duplicates)
    target[rows, labels] = 1.0
    kw = dict(reduction=reduction, avg_factor=make_avg_factor(af_kind, dev),
              pos_inds=rows.to(index_dtype), pos_labels=labels.to(index_dtype),
              pos_weight=0.25, neg_weight=0.75)
    if npos == 0 and reduction == 'mean' and af_kind is None:
        with impl_context(impl):
            out = gaussian_focal_loss(pred.requires_grad_(True), target, **kw)
            (grad,) = torch.autograd.grad(out, pred)
        assert out.isnan() and torch.isfinite(grad).all()
        return
    _check_call(impl, pred, target, **kw)


def test_pos_inds_accepts_a_row_mask():
    g = make_generator('gaussian-mask')
    pred, target = make_probs((30, 4), torch.float32, 'cpu', g), make_heatmap('soft', (30, 4),
                                                                               'cpu', g)
    mask = torch.zeros(30, dtype=torch.bool)
    mask[[3, 11, 12]] = True
    labels = torch.tensor([0, 3, 1])
    a = gaussian_focal_loss(pred, target, pos_inds=mask, pos_labels=labels)
    b = gaussian_focal_loss(pred, target, pos_inds=mask.nonzero().squeeze(1), pos_labels=labels)
    assert torch.equal(a, b)


# ---- against mmdet's module ------------------------------------------------------------------
@pytest.mark.usefixtures('mmdet_scope')
def test_module_is_mmdets():
    """Built from a config dict (also scoped), a subclass of mmdet's class with its defaults and
    attributes, no parameters."""
    kw = dict(alpha=1.5, gamma=3.0, reduction='sum', loss_weight=2.0, pos_weight=0.25,
              neg_weight=0.75)
    ours = MODELS.build(dict(type='TritonGaussianFocalLoss', **kw))
    assert type(ours) is TritonGaussianFocalLoss
    assert type(MODELS.build(dict(type='mmdet.TritonGaussianFocalLoss'))) is \
        TritonGaussianFocalLoss
    assert issubclass(TritonGaussianFocalLoss, GaussianFocalLoss)
    theirs, d_ours, d_theirs = GaussianFocalLoss(**kw), TritonGaussianFocalLoss(), \
        GaussianFocalLoss()
    for name in ('alpha', 'gamma', 'reduction', 'loss_weight', 'pos_weight', 'neg_weight'):
        assert getattr(ours, name) == getattr(theirs, name), name
        assert getattr(d_ours, name) == getattr(d_theirs, name), name
    assert list(ours.parameters()) == []
    assert 'pos_weight=0.25' in repr(ours)
    pred, target = torch.full((3, 4), 0.5), torch.zeros(3, 4)
    for bad in ('avg', 'Mean', True, 0):
        with pytest.raises(AssertionError):
            d_theirs(pred, target, reduction_override=bad)
        with pytest.raises(AssertionError, match='reduction_override must be'):
            d_ours(pred, target, reduction_override=bad)


def _mmdet_factors(interpreter):
    reductions = [('mean', None), ('sum', None), ('mean', 4.0), ('none', None), ('mean', 't0')]
    return {'dtype': [torch.float32, torch.float64],
            'form,reduction,af': [(form, *r) for form in ('dense', 'dense-weight', 'pos_inds')
                                  for r in reductions
                                  # 'none' with pos_inds is an error of ours (test_bad_arguments)
                                  if not (form == 'pos_inds' and r[0] == 'none')]}


@pytest.mark.usefixtures('mmdet_scope')
@pytest.mark.parametrize('impl,dtype,form,reduction,af', _params(_mmdet_factors))
def test_against_mmdet(impl, dtype, form, reduction, af):
    """mmdet's GaussianFocalLoss and ours on the same inputs, through the modules: the loss, its
    dtype and shape, and the gradient. Probabilities in [1e-4, 1 - 1e-4] (CenterNet-update
    clamps its sigmoid there), where mmdet's eps of 1e-12 moves a log by < 1e-8; float32
    values, so that the Triton kernels' fp32 arithmetic sees float64 inputs unrounded."""
    dev = device_of(impl)
    g = make_generator('gaussian-mmdet', impl, str(dtype), form, reduction, str(af))
    N, C = 300, 5
    p = torch.sigmoid(torch.randn(N, C, generator=g, dtype=torch.float64) * 4)
    p = p.clamp(1e-4, 1 - 1e-4).float().to(dtype)
    target = make_heatmap('heatmap', (N, C), 'cpu', g).to(dtype)
    kw = dict(avg_factor=torch.tensor(6.0, dtype=dtype) if af == 't0' else af,
              reduction_override=reduction)
    if form == 'pos_inds':
        kw['pos_inds'], kw['pos_labels'] = _pos_inds(N, C, 20, g, 'cpu', True)
        target[kw['pos_inds'], kw['pos_labels']] = 1.0
    elif form == 'dense-weight':
        kw['weight'] = torch.rand(N, 1, generator=g, dtype=dtype)
    args = dict(alpha=2.0, gamma=4.0, loss_weight=1.3, pos_weight=0.25, neg_weight=0.75)
    theirs_x = p.clone().requires_grad_(True)
    theirs = GaussianFocalLoss(**args)(theirs_x, target, **kw)
    up = torch.rand(theirs.shape, generator=g, dtype=dtype) + 0.5
    (theirs_g,) = torch.autograd.grad(theirs, theirs_x, up)
    ours_x = p.clone().to(dev).requires_grad_(True)
    dkw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    with impl_context(impl):
        ours = TritonGaussianFocalLoss(**args)(ours_x, target.to(dev), **dkw)
        (ours_g,) = torch.autograd.grad(ours, ours_x, up.to(dev))
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    tol = 1e-7 if dtype == torch.float64 and impl == 'cpu' else 2e-6
    assert rel_err(ours, theirs) <= tol
    assert rel_err(ours_g, theirs_g) <= tol


@pytest.mark.parametrize('impl', IMPLS)
def test_where_mmdet_misbehaves(impl):
    """p at 0 or 1, where mmdet's eps = 1e-12 decides its numbers: ours follows the
    mathematics. A positive at p = 0 and a negative at p = 1 have an infinite loss (mmdet:
    27.6 * their factor); a positive at p = 1 and a negative at p = 0 lose nothing, with a zero
    gradient (alpha > 1); the negative term at t = 1 (factor 0) is 0 even at p = 1, not 0 * inf
    (the pos_inds form computes it everywhere)."""
    dev = device_of(impl)
    pred = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.3]], device=dev)
    target = torch.tensor([[1.0, 0.2, 1.0, 0.5, 0.0]], device=dev)
    with impl_context(impl), warnings.catch_warnings():
        # the interpreter evaluates log(0) and 1 / 0 with numpy, which warns
        warnings.simplefilter('ignore', RuntimeWarning)
        x = pred.clone().requires_grad_(True)
        loss = gaussian_focal_loss(x, target, reduction='none')
        (grad,) = torch.autograd.grad(loss.sum(), x)
        pos = gaussian_focal_loss(pred, target, pos_inds=torch.tensor([0], device=dev),
                                  pos_labels=torch.tensor([2], device=dev), reduction='sum')
    assert loss[0, :2].tolist() == [float('inf')] * 2
    assert loss[0, 2:4].tolist() == [0.0, 0.0] and grad[0, 2:4].tolist() == [0.0, 0.0]
    assert grad[0, 0] == -float('inf') and grad[0, 1] == float('inf')
    mmdet = GaussianFocalLoss(reduction='none')(pred.cpu(), target.cpu())
    assert mmdet[0, 0].item() == pytest.approx(27.631, abs=1e-3)
    # pos_inds form: the positive (0, 2) at p = 1 loses nothing; the negative term at t = 1
    # (elements 0 and 2) is 0; what remains is the negatives at 1 (inf)
    assert pos.item() == float('inf')
    ok = gaussian_focal_loss(pred[:, 2:], target[:, 2:], pos_inds=torch.tensor([0], device=dev),
                             pos_labels=torch.tensor([0], device=dev), reduction='sum')
    assert torch.isfinite(ok)


# ---- arguments and inputs ----------------------------------------------------------------
def _bad_calls(dev):
    p = torch.full((4, 3), 0.5, device=dev)
    t = torch.zeros(4, 3, device=dev)
    idx = torch.tensor([0, 2], device=dev)
    return [
        (dict(pred=[0.5]), TypeError, 'pred must be a torch.Tensor'),
        (dict(pred=torch.ones(4, 3, dtype=torch.int64, device=dev)), TypeError,
         'floating-point'),
        (dict(pred=torch.tensor(0.5, device=dev), target=torch.tensor(0.0, device=dev)),
         ValueError, 'at least one dimension'),
        (dict(target=torch.zeros(4, 2, device=dev)), ValueError, "target must have pred's"),
        (dict(target=torch.zeros(4, 3, device=dev, requires_grad=True)), ValueError,
         'target must not require grad'),
        (dict(weight=torch.ones(3, 4, device=dev)), ValueError, 'does not broadcast'),
        (dict(alpha=-1.0), ValueError, 'alpha must be a finite number >= 0'),
        (dict(gamma=float('nan')), ValueError, 'gamma must be a finite number >= 0'),
        (dict(pos_weight=float('inf')), ValueError, 'pos_weight must be a finite number'),
        (dict(neg_weight='1'), ValueError, 'neg_weight must be a finite number'),
        (dict(reduction='avg'), ValueError, 'reduction must be'),
        (dict(reduction='sum', avg_factor=2.0), ValueError, 'avg_factor can not be used'),
        (dict(pos_inds=idx), ValueError, 'pos_inds is given without pos_labels'),
        (dict(pos_labels=idx), ValueError, 'pos_labels is given without pos_inds'),
        (dict(pos_inds=idx, pos_labels=idx, reduction='none'), ValueError,
         "reduction='none' can not be used with pos_inds"),
        (dict(pos_inds=idx, pos_labels=idx, weight=torch.ones(4, 3, device=dev)), ValueError,
         'weight can not be used with pos_inds'),
        (dict(pos_inds=idx.float(), pos_labels=idx), TypeError, 'pos_inds must be a 1-d tensor'),
        (dict(pos_inds=idx, pos_labels=idx[:1]), ValueError, 'one length'),
        (dict(pred=torch.full((2, 2, 3), 0.5, device=dev), target=torch.zeros(2, 2, 3,
                                                                               device=dev),
              pos_inds=idx, pos_labels=idx), ValueError, r'shape \(N, C\) with pos_inds'),
    ], p, t


@pytest.mark.parametrize('impl', IMPLS)
def test_bad_arguments(impl):
    """Each bad argument raises before anything runs, naming the argument."""
    cases, p, t = _bad_calls(device_of(impl))
    for kw, exc, msg in cases:
        kw = dict(dict(pred=p, target=t), **kw)
        with impl_context(impl), pytest.raises(exc, match=msg):
            gaussian_focal_loss(kw.pop('pred'), kw.pop('target'), **kw)


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('what', ['probability', 'positive'])
def test_bad_inputs(impl, what):
    """Probabilities outside [0, 1] and positives outside the heatmap raise a ValueError: in
    the call on the PyTorch path, by the asynchronous check on the kernels' (at the next call
    or check_pending_inputs); with the checks off nothing is read out of bounds."""
    dev = device_of(impl)
    p = torch.full((6, 3), 0.5, device=dev)
    t = torch.zeros(6, 3, device=dev)
    kw = {}
    msg = r'probabilities in \[0, 1\]'
    if what == 'probability':
        p[2, 1] = 1.5
    else:
        kw = dict(pos_inds=torch.tensor([1, 6], device=dev), pos_labels=torch.tensor([0, 2],
                                                                                     device=dev))
        msg = 'pos_inds / pos_labels name elements outside pred'
    with impl_context(impl), warnings.catch_warnings():
        warnings.simplefilter('ignore', RuntimeWarning)  # the interpreter's log of -0.5
        with pytest.raises(ValueError, match=msg):
            gaussian_focal_loss(p, t, **kw)
            mft.check_pending_inputs()
        mft.set_input_checks(False)
        try:
            gaussian_focal_loss(p, t, **kw)  # no error, nothing read out of bounds
            mft.check_pending_inputs()
        finally:
            mft.set_input_checks(True)


@pytest.mark.parametrize('impl', IMPLS)
def test_empty(impl):
    """No element: 'mean' is NaN (torch's mean of nothing, as mmdet), 'sum' 0, 'none' empty;
    the gradient is an empty zero tensor."""
    dev = device_of(impl)
    pred = torch.zeros(0, 80, device=dev, requires_grad=True)
    with impl_context(impl):
        for reduction, expect in (('mean', 'nan'), ('sum', 0.0)):
            out = gaussian_focal_loss(pred, torch.zeros(0, 80, device=dev), reduction=reduction)
            (grad,) = torch.autograd.grad(out, pred)
            assert (out.isnan() if expect == 'nan' else out == expect) and grad.shape == (0, 80)
        out = gaussian_focal_loss(pred, torch.zeros(0, 80, device=dev), reduction='none')
        assert out.shape == (0, 80)


@pytest.mark.parametrize('impl', [p for p in IMPLS if p.id != 'cpu-triton-interpreter'])
@pytest.mark.parametrize('form', ['dense', 'pos_inds'])
def test_opcheck(impl, form):
    """torch.library.opcheck of the op (schema, fake tensors, autograd) and of its 'none'
    backward."""
    dev = device_of(impl)
    g = make_generator('gaussian-opcheck', impl, form)
    pred = make_probs((40, 6), torch.float32, dev, g).requires_grad_(True)
    target = make_heatmap('heatmap', (40, 6), dev, g)
    rows, labels = _pos_inds(40, 6, 5, g, dev, False)
    if form == 'pos_inds':
        flags = GaussianFocalSpec(1, False, True, True, True).pack()
        args = (pred, target, None, rows, labels, torch.tensor([3.0], device=dev), 2.0, 4.0, 0.25,
                0.75, 1.0, flags, torch.float32)
    else:
        flags = GaussianFocalSpec(0, True, False, False, True).pack()
        args = (pred, target, torch.rand(40, 6, generator=g).to(dev), None, None, None, 2.0,
                4.0, 1.0, 1.0, 0.5, flags, torch.float32)
        up = torch.randn(40, 6, generator=g).to(dev)
        torch.library.opcheck(op_module.gaussian_focal_loss.none_op,
                              (up, pred.detach(), *args[1:5], *args[6:-1]))
    with impl_context(impl):
        torch.library.opcheck(op_module.gaussian_focal_loss.op, args)


def test_compiles_without_graph_breaks():
    """torch.compile(fullgraph=True) of a CenterNet-style loss call (the registered op)."""
    g = make_generator('gaussian-compile')
    pred = make_probs((2, 3, 8, 8), torch.float32, 'cpu', g).requires_grad_(True)
    target = make_heatmap('heatmap', (2, 3, 8, 8), 'cpu', g)

    def step(x):
        return gaussian_focal_loss(x, target, avg_factor=4.0) * 2

    compiled = torch.compile(step, fullgraph=True, backend='aot_eager')
    a = compiled(pred)
    (ga,) = torch.autograd.grad(a, pred)
    b = step(pred)
    (gb,) = torch.autograd.grad(b, pred)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ga, gb)
