"""The three losses against mmdet 3.3.0's own modules (FocalLoss, QualityFocalLoss,
VarifocalLoss), on the same inputs: the module's constructor, attributes and assertions; the
output dtype and shape of every combination mmdet computes; the numbers through our modules
(fp32 and float64, on CPU, where mmdet runs its python formulas); avg_factor = 0 and empty
inputs; and where mmdet's formula breaks down, ours follows the mathematics.
"""
import pytest
import torch
from _family import FOCAL, LOSSES, QFL, VFL, cpu, floats_to
from _inputs import device_of, impl_context, make_generator, make_pred
from _pairwise import grid, is_cuda
from _tolerances import as_computed, check
from mmdet.registry import MODELS

pytestmark = pytest.mark.usefixtures('mmdet_scope')


def _family_params(factors, losses=LOSSES, full=is_cuda):
    params = []
    for loss in losses:
        for p in grid(loss.backends, factors(loss), full=full):
            params.append(pytest.param(loss, *p.values, id=f'{loss.name}-{p.id}',
                                       marks=p.marks))
    return params


def _names(factors):
    return 'loss,impl,' + ','.join(factors(FOCAL))


# ---- the module ----------------------------------------------------------------------------
# constructor arguments mmdet asserts on, per loss
BAD_CONSTRUCTORS = {'focal': [dict(use_sigmoid=False)], 'qfl': [dict(use_sigmoid=False)],
                    'vfl': [dict(use_sigmoid=False), dict(alpha=-0.1)]}


def _hyper_parameters(loss):
    return ['use_sigmoid', 'reduction', 'loss_weight', *loss.params] + (
        ['activated'] if loss.activated else [])


@pytest.mark.parametrize('loss', LOSSES, ids=str)
def test_module_is_mmdets(loss):
    """Built from a config dict (also scoped), the same hyper-parameters, defaults and
    assertions as mmdet's module; a subclass of it where heads test isinstance (QFL, VFL)."""
    values = {'focal': dict(gamma=1.5, alpha=0.3), 'qfl': dict(beta=1.5),
              'vfl': dict(alpha=0.5, gamma=1.5, iou_weighted=False)}[loss.name]
    kw = dict(values, reduction='sum', loss_weight=2.0, **({'activated': True}
                                                           if loss.activated else {}))
    ours = MODELS.build(dict(type=loss.module.__name__, **kw))
    assert type(ours) is loss.module
    assert type(MODELS.build(dict(type=f'mmdet.{loss.module.__name__}'))) is loss.module
    theirs = loss.mmdet_module(**kw)
    defaults, their_defaults = loss.module(), loss.mmdet_module()
    for name in _hyper_parameters(loss):
        assert getattr(ours, name) == getattr(theirs, name), name
        assert getattr(defaults, name) == getattr(their_defaults, name), name
    # heads test isinstance(loss_cls, QualityFocalLoss / VarifocalLoss); none tests FocalLoss
    assert issubclass(loss.module, loss.mmdet_module) or loss is FOCAL
    assert list(ours.parameters()) == []
    for bad in BAD_CONSTRUCTORS[loss.name]:
        with pytest.raises(AssertionError) as theirs_err:
            loss.mmdet_module(**bad)
        with pytest.raises(AssertionError) as ours_err:
            loss.module(**bad)
        assert str(ours_err.value) == str(theirs_err.value)
    g = make_generator('module', loss.name)
    pred = make_pred(6, 4, torch.float32, 'cpu', g)
    target = loss.make_target(loss.targets[0], 6, 4, 'cpu', g)
    for bad in ('avg', 'Mean', True, 0):
        with pytest.raises(AssertionError):
            their_defaults(pred, target, reduction_override=bad)
        with pytest.raises(AssertionError) as e:
            defaults(pred, target, reduction_override=bad)
        assert str(e.value) == ("reduction_override must be None, 'none', 'mean' or 'sum', got "
                                f'{bad!r}')
    for module in (loss.mmdet_module(reduction='sum'), loss.module(reduction='sum')):
        with pytest.raises(ValueError, match='avg_factor can not be used'):
            module(pred, target, avg_factor=2.0)
    defaults.use_sigmoid = False
    with pytest.raises(NotImplementedError):
        defaults(pred, target)


# ---- output dtype and shape ----------------------------------------------------------------
RED_AF = [('mean', None), ('sum', None), ('none', None), ('mean', 'number'), ('mean', 't0'),
          ('mean', 't1'), ('mean', 't0-long'), ('mean', 't1-half')]


def _avg_factor(kind, device):
    return {None: None, 'number': 3.0, 't0': torch.tensor(3.0, device=device),
            't1': torch.tensor([3.0], device=device),
            't0-long': torch.tensor(3, device=device),
            't1-half': torch.tensor([3.0], device=device, dtype=torch.float16)}[kind]


def _dtype_factors(loss):
    return {'dtype': [torch.float16, torch.bfloat16, torch.float32, torch.float64],
            'target_kind': list(loss.targets) + ['low-precision'],
            'weight_dtype': [None, torch.float32, 'pred', torch.float64],
            'reduction,af_kind': RED_AF}


def _same_dtype_inputs(loss, target_kind, dtype, N, C, device, g):
    """A target of `target_kind` as a head would pass it with fp16 / bf16 logits: scores and
    dense targets in pred's dtype for 'low-precision' (mmdet's QFL index_put needs the scores
    in pred's dtype), fp32 ones otherwise."""
    kind = loss.targets[0] if target_kind == 'low-precision' else target_kind
    target = loss.make_target(kind, N, C, device, g)
    if target_kind == 'low-precision':
        if isinstance(target, tuple):
            target = (target[0], target[1].to(dtype))
        elif target.is_floating_point():
            target = target.to(dtype)
    elif loss is QFL and isinstance(target, tuple):
        target = (target[0], target[1].to(dtype))
    return target


@pytest.mark.parametrize(_names(_dtype_factors), _family_params(_dtype_factors))
def test_output_dtype_and_shape_match_mmdets(loss, impl, dtype, target_kind, weight_dtype,
                                             reduction, af_kind):
    """Torch's promotion as in mmdet: fp32 weights promote an fp16 loss, a (1,) avg_factor
    gives a (1,) loss of its dtype, a 0-d one promotes the mean; VFL's loss is at least fp32
    (mmdet's focal weight is an fp32 tensor)."""
    dev = device_of(impl)
    g = make_generator('dtype', loss.name, impl, str(dtype), target_kind, str(weight_dtype),
                       reduction, af_kind)
    pred = make_pred(16, 80, dtype, dev, g)
    target = _same_dtype_inputs(loss, target_kind, dtype, 16, 80, dev, g)
    weight = loss.make_weight(loss.weights[1], 16, 80, dev, g) if weight_dtype else None
    if weight is not None:
        weight = weight.to(dtype if weight_dtype == 'pred' else weight_dtype)
    af = _avg_factor(af_kind, dev)
    with impl_context(impl):
        ours = loss.call(pred, target, weight, reduction=reduction, avg_factor=af)
    theirs = loss.mmdet_module(reduction=reduction)(cpu(pred), cpu(target), cpu(weight),
                                                    avg_factor=cpu(af))
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape


# ---- the numbers, through the modules --------------------------------------------------------
# mmdet's FocalLoss, QualityFocalLoss and VarifocalLoss on CPU are python formulas: in float64
# they are a second float64 reference, and the float64 CPU path must match them to 1e-12.
FORWARD_KW = [dict(), dict(avg_factor=17.0), dict(reduction_override='sum'),
              dict(reduction_override='none'), dict(avg_factor=torch.tensor([4.0])),
              dict(avg_factor=torch.tensor(0.5))]


def _module_factors(loss):
    factors = {'dtype': [torch.float32, torch.float64], 'C': [1, 80, 1203],
               'target_kind': list(loss.targets), 'weight_kind': list(loss.weights),
               'forward_kw': list(range(len(FORWARD_KW)))}
    if loss.activated:
        factors['activated'] = [False, True]
    return factors


def _module_params():
    params = []
    for loss in LOSSES:
        factors = _module_factors(loss)
        for row in grid([pytest.param('cpu', id='cpu')], factors):
            _, *values = row.values
            case = dict(zip(factors, values, strict=True))
            params.append(pytest.param(loss, case, id=f'{loss.name}-{row.id[4:]}'))
    return params


@pytest.mark.parametrize('loss,case', _module_params())
def test_module_matches_mmdets(loss, case):
    """Our module and mmdet's on the same CPU inputs: loss (value, shape, dtype) and gradient,
    every target form, weight form, reduction_override and avg_factor form, C = 1 to 1203."""
    dtype, C, kind = case['dtype'], case['C'], case['target_kind']
    activated = case.get('activated', False)
    g = make_generator('module-mmdet', loss.name, sorted(map(str, case.items())))
    N = 300 if C <= 80 else 40
    pred = make_pred(N, C, dtype, 'cpu', g, activated=activated).requires_grad_(True)
    target = floats_to(loss.make_target(kind, N, C, 'cpu', g), dtype)
    weight = floats_to(loss.make_weight(case['weight_kind'], N, C, 'cpu', g), dtype)
    kw = {k: floats_to(v, dtype) for k, v in FORWARD_KW[case['forward_kw']].items()}
    args = dict(loss_weight=1.5, **({'activated': True} if activated else {}))
    theirs = loss.mmdet_module(**args)(pred, target, weight, **kw)
    up = torch.rand(theirs.shape, generator=g, dtype=dtype) + 0.5
    (g_theirs,) = torch.autograd.grad(theirs, pred, up)
    ours = loss.module(**args)(pred, target, weight, **kw)
    (g_ours,) = torch.autograd.grad(ours, pred, up)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    check(ours, theirs, 'cpu', 'loss')
    check(g_ours, g_theirs, 'cpu', 'gradient')


# ---- avg_factor = 0, and the empty input ---------------------------------------------------
ZEROS = {'int': lambda dev: 0, 'float': lambda dev: 0.0,
         't0': lambda dev: torch.tensor(0.0, device=dev),
         't1': lambda dev: torch.tensor([0.0], device=dev)}


def _zero_factors(loss):
    return {'reduction': ['none', 'mean', 'sum'], 'zero': list(ZEROS),
            'dtype': [torch.float32, torch.float64], 'N': [37, 0]}


@pytest.mark.parametrize(
    _names(_zero_factors),
    _family_params(_zero_factors, full=lambda b: is_cuda(b) or b.id == 'cpu-torch'))
def test_avg_factor_zero_matches_mmdets(loss, impl, reduction, zero, dtype, N):
    """avg_factor = 0 as a number, a 0-d and a (1,) tensor: mmdet's 'mean' is sum / eps (a large
    number, 0 for an empty input), 'none' ignores it, 'sum' raises. Every loss and reduction
    (the full product on the CPU path), against mmdet's module on the same inputs: value,
    shape, dtype and gradient."""
    dev = device_of(impl)
    g = make_generator('af0-mmdet', loss.name, impl, reduction, zero, str(dtype), N)
    pred = make_pred(N, 80, dtype, dev, g).requires_grad_(True)
    target = floats_to(loss.make_target(loss.targets[0], N, 80, dev, g), dtype)
    weight = floats_to(loss.make_weight(loss.weights[1], N, 80, dev, g), dtype)
    af = floats_to(ZEROS[zero](dev), dtype)
    theirs_module = loss.mmdet_module(reduction=reduction)
    ours_module = loss.module(reduction=reduction)
    if reduction == 'sum':
        with pytest.raises(ValueError, match='avg_factor can not be used'):
            theirs_module(cpu(pred), cpu(target), cpu(weight), avg_factor=cpu(af))
        with impl_context(impl), pytest.raises(ValueError, match='avg_factor can not be used'):
            ours_module(pred, target, weight, avg_factor=af)
        return
    xr = as_computed(pred, impl).to(dtype).requires_grad_(True)  # mmdet on what we compute
    theirs = theirs_module(xr, cpu(target), cpu(weight), avg_factor=cpu(af))
    up = torch.full(theirs.shape, 0.5, dtype=theirs.dtype)
    (g_theirs,) = torch.autograd.grad(theirs, xr, up) if N else (torch.zeros_like(xr),)
    with impl_context(impl):
        ours = ours_module(pred, target, weight, avg_factor=af)
        (g_ours,) = torch.autograd.grad(ours, pred, up.to(dev)) if N else (pred.grad,)
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    if reduction == 'mean':
        assert torch.isfinite(ours).all() and (ours.abs() > 1e6).all() if N else \
            (ours == 0).all()
    check(ours, theirs, impl, 'loss')
    if N:
        check(g_ours, g_theirs, impl, 'gradient')


# ---- where mmdet's formula breaks down -------------------------------------------------------
def test_qfl_where_mmdet_misbehaves():
    """- beta < 1 and a negative whose sigmoid underflows to 0 in fp32 (logit < -104): mmdet's
      pow(0, beta) has an infinite derivative, times sigmoid' = 0: a NaN gradient; the true
      derivative beta * p**beta * ... is 0;
    - fp16 / bf16 logits with fp32 scores outside autocast: mmdet's index_put fails ("Index put
      requires the source and destination dtypes match"); ours computes it (fp32 inside)."""
    pred = torch.full((4, 3), -120.0).requires_grad_(True)
    target = (torch.tensor([0, 3, 3, 1]), torch.tensor([0.5, 0.0, 0.0, 0.8]))
    (g_mmdet,) = torch.autograd.grad(QFL.mmdet_module(beta=0.5)(pred, target), pred)
    assert torch.isnan(g_mmdet).any()
    ours = QFL.call(pred, target, beta=0.5)
    (g_ours,) = torch.autograd.grad(ours, pred)
    xr = pred.detach().double().requires_grad_(True)  # float64: no underflow, no NaN
    ref = QFL.ref(xr, target, beta=0.5)
    (gref,) = torch.autograd.grad(ref, xr)
    check(ours, ref, 'cpu', 'loss')
    check(g_ours, gref, 'cpu', 'gradient')

    half = (torch.randn(8, 5) * 3).half().requires_grad_(True)
    target = (torch.tensor([0, 5, 2, 5, 5, 4, 1, 5]), torch.rand(8))
    with pytest.raises(RuntimeError, match='Index put requires'):
        QFL.mmdet_module()(half, target)
    ours = QFL.call(half, target)
    ref = QFL.ref(half.detach().double(), target)
    assert ours.dtype == torch.float16
    check(ours, ref, 'cpu', 'loss')


def test_vfl_where_mmdet_misbehaves():
    """gamma < 1 and a negative (t = 0) whose sigmoid underflows to 0 in fp32 (logit < -104):
    mmdet's |p - t| ** gamma has an infinite derivative at 0, times sigmoid' = 0: a NaN
    gradient. The true derivative is 0; ours gives it (and matches float64)."""
    pred = torch.tensor([[-120.0, 3.0], [-200.0, -1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.6], [0.0, 0.0]])
    (g_mmdet,) = torch.autograd.grad(VFL.mmdet_module(gamma=0.5)(pred, target), pred)
    assert torch.isnan(g_mmdet).any()
    ours = VFL.call(pred, target, gamma=0.5)
    (g_ours,) = torch.autograd.grad(ours, pred)
    xr = pred.detach().double().requires_grad_(True)
    ref = VFL.ref(xr, target, gamma=0.5)
    (gref,) = torch.autograd.grad(ref, xr)
    assert torch.isfinite(g_ours).all()
    check(ours, ref, 'cpu', 'loss')
    check(g_ours, gref, 'cpu', 'gradient')



def _empty_factors(loss):
    return {'reduction_override': [None, 'none', 'mean', 'sum'],
            'avg_factor': [None, 4, 't1'], 'target_kind': list(loss.targets)}


@pytest.mark.parametrize(_names(_empty_factors),
                         _family_params(_empty_factors, full=lambda b: True))
def test_empty_input_matches_mmdets(loss, impl, reduction_override, avg_factor, target_kind):
    """N = 0: the same result as mmdet (0 for 'sum' and with avg_factor, NaN for a plain mean,
    an empty tensor for 'none'; 'sum' with avg_factor raises), the same shape and dtype, and a
    zero-size gradient. (avg_factor = 0 on empty inputs: test_avg_factor_zero_matches_mmdets.)"""
    dev = device_of(impl)
    g = make_generator('empty', loss.name)
    pred = torch.zeros(0, 5, device=dev, requires_grad=True)
    target = loss.make_target(target_kind, 0, 5, dev, g)
    af = torch.tensor([3.0], device=dev) if avg_factor == 't1' else avg_factor
    kw = dict(avg_factor=af, reduction_override=reduction_override)
    if reduction_override == 'sum' and af is not None:
        with impl_context(impl), pytest.raises(ValueError, match='avg_factor can not be used'):
            loss.module()(pred, target, **kw)
        return
    theirs = loss.mmdet_module()(cpu(pred.detach()), cpu(target), avg_factor=cpu(af),
                                 reduction_override=reduction_override)
    with impl_context(impl):
        ours = loss.module()(pred, target, **kw)
        ours.sum().backward()
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert torch.equal(cpu(ours.isnan()), theirs.isnan())
    assert torch.equal(cpu(torch.nan_to_num(ours.detach())), torch.nan_to_num(theirs))
    assert pred.grad is not None and pred.grad.shape == (0, 5)
