"""TritonFocalLoss (module) against mmdet 3.3.0's FocalLoss (module), on CPU.

mmdet's CPU path (one-hot + python focal loss) evaluated in float64 is the reference. Our loss is
evaluated on the same inputs in float64 and in float32; both must agree with it to the
tolerance of what the path computes (tests/_tolerances.py: 1e-12 for float64, which the CPU path
computes in float64; SPEC §3's 1e-5 for fp32) for the loss value AND the gradient w.r.t. pred.
The output shape and dtype must be the ones mmdet returns for the same inputs in the same dtype.

Covered: every target form heads pass (class indices with background = C, dense one-hot, soft,
N-D dense, 1-D dense), every weight form (None, per-anchor (N,) and (N, 1), FSAF's flattened
N*C, elementwise (N, C)), avg_factor as None / int / float / 0-d tensor (float and int) /
shape-(1,) tensor, reduction_override None / 'none' / 'mean' / 'sum' over module reductions
'mean' and 'sum', loss_weight != 1, gamma 0 / 1.5 / 2 / 3, alpha != 0.25, activated=True
(probabilities), and the same exceptions as mmdet. (The module's constructor and assertions, and
empty inputs, for the whole family: tests/test_family_mmdet.py.)
"""
import copy
import os.path as osp
import zlib

import mmdet
import pytest
import torch
import torch.nn.functional as F
from _pairwise import all_pairs
from _tolerances import check, rel_err, tolerance
from mmdet.models.losses import FocalLoss as MMDetFocalLoss
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmdet.utils import register_all_modules
from mmengine.config import Config

import mmdet_focal_triton  # noqa: F401  (registers TritonFocalLoss)
from mmdet_focal_triton import TritonFocalLoss, swap_focal_loss

pytestmark = pytest.mark.usefixtures('one_torch_thread')

TOL = tolerance('cpu', torch.float32)  # SPEC §3: relative norm error for fp32 inputs

LOSS_CFGS = {
    'default': dict(),
    'lw2.5-alpha0.4': dict(loss_weight=2.5, alpha=0.4),
    'gamma1.5-alpha0.3': dict(gamma=1.5, alpha=0.3, loss_weight=0.7),
    'gamma0': dict(gamma=0.0),
    'sum-gamma3': dict(reduction='sum', gamma=3.0, loss_weight=1.3),
    'none-alpha0.5': dict(reduction='none', alpha=0.5),  # FSAF's module reduction
    'activated': dict(activated=True),
    'activated-gamma1.5-lw0.5': dict(activated=True, gamma=1.5, alpha=0.6, loss_weight=0.5),
}
TARGETS = ['index', 'index-all-background', 'onehot', 'soft']
WEIGHTS = [None, 'row', 'row-n1', 'flat', 'elem']
REDUCTIONS = [None, 'none', 'mean', 'sum']
AVG_FACTORS = [None, 'int', 'float', 'tensor0d', 'tensor0d-int', 'tensor1']


def _gen(*key) -> torch.Generator:
    """A generator seeded from the test case: fresh inputs per case, reproducible failures."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))




def make_inputs(g, target_kind, weight_kind, activated, N=41, C=7, dtype=torch.float64):
    logits = torch.randn(N, C, generator=g, dtype=torch.float64) * 3
    pred = logits.sigmoid() if activated else logits
    if target_kind == 'index':
        target = torch.randint(0, C + 1, (N,), generator=g)  # C = background
    elif target_kind == 'index-all-background':
        target = torch.full((N,), C, dtype=torch.long)
    elif target_kind == 'onehot':
        lab = torch.randint(0, C + 1, (N,), generator=g)
        target = F.one_hot(lab, C + 1)[:, :C]  # integer one-hot, as callers pass it
    elif target_kind == 'soft':
        target = torch.rand(N, C, generator=g, dtype=torch.float64)
        target[torch.rand(N, C, generator=g) < 0.5] = 0
    else:
        raise AssertionError(target_kind)
    if weight_kind is None:
        weight = None
    elif weight_kind == 'row':
        weight = torch.rand(N, generator=g, dtype=torch.float64)
    elif weight_kind == 'row-n1':
        weight = torch.rand(N, 1, generator=g, dtype=torch.float64)
    elif weight_kind == 'flat':
        weight = torch.rand(N * C, generator=g, dtype=torch.float64)
    elif weight_kind == 'elem':
        weight = torch.rand(N, C, generator=g, dtype=torch.float64)
    else:
        raise AssertionError(weight_kind)
    if weight is not None:
        weight[torch.rand(weight.shape, generator=g) < 0.2] = 0  # some ignored anchors
    return pred.to(dtype), (target.to(dtype) if target.is_floating_point() else target), \
        (None if weight is None else weight.to(dtype))


def make_avg_factor(kind, dtype):
    return {
        None: None,
        'int': 13,
        'float': 17.25,
        'tensor0d': torch.tensor(11.5, dtype=dtype),
        'tensor0d-int': torch.tensor(12),
        'tensor1': torch.tensor([9.75], dtype=dtype),
    }[kind]


def cast(x, dtype):
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        return x.to(dtype)
    return x


def run(module, pred, target, weight, avg_factor, reduction_override, upstream_key):
    """loss and d(sum(upstream * loss))/d(pred) for fresh leaf copies of pred."""
    p = pred.detach().clone().requires_grad_(True)
    loss = module(p, target, weight, avg_factor=avg_factor,
                  reduction_override=reduction_override)
    g = _gen('upstream', upstream_key)
    upstream = (torch.rand(loss.shape, generator=g, dtype=torch.float64) * 2 - 0.5)
    upstream = upstream.to(loss.dtype)
    loss.backward(upstream)
    return loss.detach(), p.grad


def expected_error(module_reduction, reduction_override, avg_factor):
    reduction = reduction_override if reduction_override else module_reduction
    return reduction == 'sum' and avg_factor is not None


def check_parity(loss_cfg, target_kind, weight_kind, reduction_override, avg_kind, dtype,
                 N=41, C=7):
    activated = loss_cfg.get('activated', False)
    key = (tuple(sorted(loss_cfg.items())), target_kind, weight_kind, reduction_override,
           avg_kind, str(dtype), N, C)
    pred64, target64, weight64 = make_inputs(_gen(key), target_kind, weight_kind, activated,
                                             N=N, C=C)
    ours = TritonFocalLoss(**loss_cfg)
    ref = MMDetFocalLoss(**loss_cfg)
    pred, target, weight = (cast(pred64, dtype), cast(target64, dtype), cast(weight64, dtype))
    # the reference sees exactly our inputs (rounded to `dtype`), evaluated in float64
    pred64, target64, weight64 = (cast(pred, torch.float64), cast(target, torch.float64),
                                  cast(weight, torch.float64))
    af = make_avg_factor(avg_kind, dtype)
    af64 = cast(af, torch.float64)

    if expected_error(ours.reduction, reduction_override, af):
        with pytest.raises(ValueError):
            ref(pred, target, weight, avg_factor=af, reduction_override=reduction_override)
        with pytest.raises(ValueError):
            ours(pred, target, weight, avg_factor=af, reduction_override=reduction_override)
        return

    pred_before, target_before = pred.clone(), target.clone()
    weight_before = None if weight is None else weight.clone()
    loss, grad = run(ours, pred, target, weight, af, reduction_override, key)
    # our inputs are not modified
    assert torch.equal(pred, pred_before) and torch.equal(target, target_before)
    assert weight is None or torch.equal(weight, weight_before)

    # reference values: mmdet in float64
    ref_loss, ref_grad = run(ref, pred64, target64, weight64, af64, reduction_override, key)
    # reference shape / dtype: mmdet on the very same inputs (same dtype)
    same = ref(pred, target, weight, avg_factor=af, reduction_override=reduction_override)

    assert loss.shape == same.shape, f'shape {tuple(loss.shape)} != mmdet {tuple(same.shape)}'
    assert loss.dtype == same.dtype, f'dtype {loss.dtype} != mmdet {same.dtype}'
    assert torch.isfinite(ref_loss).all()
    assert grad.dtype == pred.dtype and grad.shape == pred.shape
    check(loss, ref_loss, 'cpu', 'loss')
    check(grad, ref_grad, 'cpu', 'gradient')
    # a reference that is all zeros would make the comparison vacuous
    assert ref_grad.abs().sum() > 0 or (weight is not None and weight.abs().sum() == 0)


# every pair of values of any two of: dtype, loss config, target, weight, reduction_override,
# avg_factor (tests/_pairwise.py); mmdet's activated path takes class indices and dense targets
GRID = all_pairs([[torch.float32, torch.float64], list(LOSS_CFGS), TARGETS, WEIGHTS, REDUCTIONS,
                  AVG_FACTORS])


@pytest.mark.parametrize('dtype,cfg_name,target_kind,weight_kind,reduction_override,avg_kind',
                         GRID, ids=['-'.join(str(v).replace('torch.', '') for v in row)
                                    for row in GRID])
def test_parity(dtype, cfg_name, target_kind, weight_kind, reduction_override, avg_kind):
    check_parity(LOSS_CFGS[cfg_name], target_kind, weight_kind, reduction_override, avg_kind,
                 dtype)


@pytest.mark.parametrize('weight_kind', [None, 'row', 'flat'])
def test_parity_retinanet_sized(weight_kind):
    """A RetinaNet-like call: many anchors, 80 classes, ~1% positives, avg_factor = num_pos."""
    g = _gen('big', weight_kind)
    N, C = 6000, 80
    pred = (torch.randn(N, C, generator=g) * 3 - 4).requires_grad_(True)
    labels = torch.full((N,), C, dtype=torch.long)
    pos = torch.randperm(N, generator=g)[:60]
    labels[pos] = torch.randint(0, C, (60,), generator=g)
    weight = {None: None, 'row': (torch.rand(N, generator=g) > 0.1).float(),
              'flat': torch.rand(N * C, generator=g)}[weight_kind]
    avg = torch.tensor(60.0)
    loss = TritonFocalLoss()(pred, labels, weight, avg_factor=avg)
    loss.backward()
    p64 = pred.detach().double().requires_grad_(True)
    ref = MMDetFocalLoss()(p64, labels, None if weight is None else weight.double(),
                           avg_factor=avg.double())
    ref.backward()
    assert rel_err(loss, ref) <= TOL
    assert rel_err(pred.grad, p64.grad) <= TOL


@pytest.mark.parametrize('weighted', [False, True])
@pytest.mark.parametrize('reduction_override', REDUCTIONS, ids=str)
@pytest.mark.parametrize('shape', [(2, 5, 6, 7), (53,)], ids=['NCHW', '1-D'])
def test_parity_dense_any_dim(shape, reduction_override, weighted):
    """Dense targets of pred's shape with any number of dims (mmdet's own test uses NCHW)."""
    g = _gen('nd', shape, reduction_override, weighted)
    pred64 = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    target64 = (torch.rand(shape, generator=g, dtype=torch.float64) > 0.7).double()
    weight64 = torch.rand(shape, generator=g, dtype=torch.float64) if weighted else None
    for af in (None, 7.5):
        for dtype in (torch.float32, torch.float64):
            ours = TritonFocalLoss(gamma=1.5, loss_weight=2.0)
            ref = MMDetFocalLoss(gamma=1.5, loss_weight=2.0)
            key = (shape, reduction_override, weighted, af, str(dtype))
            if expected_error('mean', reduction_override, af):
                with pytest.raises(ValueError):
                    ours(pred64.to(dtype), target64.to(dtype), avg_factor=af,
                         reduction_override=reduction_override)
                continue
            pred, target, weight = (pred64.to(dtype), target64.to(dtype),
                                    cast(weight64, dtype))
            loss, grad = run(ours, pred, target, weight, af, reduction_override, key)
            ref_loss, ref_grad = run(ref, pred.double(), target.double(),
                                     cast(weight, torch.float64), af, reduction_override, key)
            assert loss.shape == ref_loss.shape and loss.dtype == dtype
            check(loss, ref_loss, 'cpu', 'loss')
            check(grad, ref_grad, 'cpu', 'gradient')


@pytest.mark.parametrize('weight_kind', [None, 'row', 'elem'])
@pytest.mark.parametrize('af_kind', [None, 'tensor0d', 'tensor1'])
@pytest.mark.parametrize('reduction_override', ['none', 'mean'])
def test_output_dtype_promotion_like_mmdet(weight_kind, af_kind, reduction_override):
    """fp32 predictions with float64 weights / avg_factor: mmdet's result is promoted by torch's
    rules (a float64 loss, except a 0-d avg_factor, which does not promote); ours must be too.
    (The values: fp32 arithmetic, fp32's tolerance.)"""
    g = _gen('promo', weight_kind, af_kind, reduction_override)
    pred, target, weight = make_inputs(g, 'index', weight_kind, False, N=13, C=4)
    pred = pred.float()
    af = make_avg_factor(af_kind, torch.float64)
    out = TritonFocalLoss()(pred, target, weight, avg_factor=af,
                            reduction_override=reduction_override)
    exp = MMDetFocalLoss()(pred, target, weight, avg_factor=af,
                           reduction_override=reduction_override)
    assert out.dtype == exp.dtype and out.shape == exp.shape
    assert rel_err(out, exp) <= TOL


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize('target_kind', ['index', 'soft'])
def test_half_precision_inputs(dtype, target_kind):
    """fp16 / bf16 inputs against mmdet in float64 on the same (rounded) inputs (within 1e-5
    beyond the rounding of the result, tests/_tolerances.py; the same dtype as mmdet returns;
    finite), including logits up to |x| = 1e4."""
    g = _gen('half', str(dtype), target_kind)
    pred64, target, weight = make_inputs(g, target_kind, 'row', False, N=64, C=9)
    pred64[0, :] = torch.tensor([1e4, -1e4, 30.0, -30.0, 9.0, -9.0, 0.0, 12.0, -12.0])
    pred = pred64.to(dtype).requires_grad_(True)
    target = target.to(dtype) if target.is_floating_point() else target
    loss = TritonFocalLoss()(pred, target, weight.to(dtype), avg_factor=20.0)
    loss.backward()
    p64 = pred.detach().double().requires_grad_(True)
    t64 = target.double() if target.is_floating_point() else target
    ref = MMDetFocalLoss()(p64, t64, weight.to(dtype).double(), avg_factor=20.0)
    ref.backward()
    same = MMDetFocalLoss()(pred.detach(), target, weight.to(dtype), avg_factor=20.0)
    assert loss.dtype == same.dtype == dtype
    assert torch.isfinite(loss).all() and torch.isfinite(pred.grad).all()
    check(loss, ref, 'cpu', 'loss')
    check(pred.grad, p64.grad, 'cpu', 'gradient')


# ------------------------------------------------------------------------------ whole models
# RetinaNet, FCOS and ATSS from mmdet's own configs, built with identical weights: as shipped
# (mmdet's FocalLoss) and after swap_focal_loss. To keep CI fast the backbone is ResNet-18 and
# the neck / head are 64 channels wide (the same mmdet code paths, 16x less compute).
# model.loss() on the same batch must give the same losses (all of them, not only loss_cls) and
# the same gradient for every parameter.
#
# fp32: "the same" is measured as SPEC §3 defines it, against a float64 evaluation of the loss.
# The reference ("gold") is the same fp32 model whose loss_cls is mmdet's FocalLoss evaluated in
# float64 on the fp32 predictions. Within 1e-5 of it: every loss, the gradient the loss hands to
# the network (d loss / d cls_score, every call), and the gradient of all parameters together.
# Per parameter, fp32 rounding anywhere in the loss (ours or mmdet's) is amplified by the
# backward pass where it sums terms that cancel (the P6/P7 FPN convs, fed by a handful of
# anchors): there mmdet's own fp32 FocalLoss is ~2e-5 away from the gold. So each parameter's
# gradient must be within max(1e-5, 3 x mmdet-fp32's own error) of the gold and of mmdet-fp32.
# float64: the same models in float64 (ours then runs its float64 path): no rounding to
# amplify, every parameter gradient within 1e-5 of mmdet's, with no allowance.
MODEL_BASES = {
    'retinanet': 'retinanet/retinanet_r50_fpn_1x_coco.py',
    'fcos': 'fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py',
    'atss': 'atss/atss_r50_fpn_1x_coco.py',
}
CLS_CONV = {'retinanet': 'retina_cls', 'fcos': 'conv_cls', 'atss': 'atss_cls'}
WIDTH = 64


def _small_model_cfg(rel):
    cfg = Config.fromfile(osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs', rel))
    model = cfg.model
    model.backbone.update(depth=18, init_cfg=None)
    model.neck.update(in_channels=[64, 128, 256, 512], out_channels=WIDTH)
    model.bbox_head.update(in_channels=WIDTH, feat_channels=WIDTH)
    return model.to_dict()


class _Float64FocalLoss(MMDetFocalLoss):
    """mmdet's FocalLoss evaluated in float64, result cast back to the prediction's dtype."""

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        def f64(t):
            return t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t
        return super().forward(f64(pred), f64(target), f64(weight), f64(avg_factor),
                               reduction_override).to(pred.dtype)


def _loss_and_grads(model, packed, dtype=torch.float32):
    """(losses, parameter gradients, d loss / d pred of each loss_cls call)."""
    preds = []

    def keep_pred(module, args):
        args[0].retain_grad()
        preds.append(args[0])

    handle = model.bbox_head.loss_cls.register_forward_pre_hook(keep_pred)
    model.train()
    data = model.data_preprocessor(copy.deepcopy(packed), True)
    losses = model.loss(data['inputs'].to(dtype), data['data_samples'])
    handle.remove()
    total, _ = model.parse_losses(losses)
    total.backward()
    losses = {k: (sum(v) if isinstance(v, (list, tuple)) else v).detach()
              for k, v in losses.items()}
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert preds
    return losses, grads, [p.grad for p in preds]


def _all_grads(grads):
    return torch.cat([g.reshape(-1).double() for g in grads.values() if g is not None])


def _build_pair(name, dtype=torch.float32):
    ref_cfg = _small_model_cfg(MODEL_BASES[name])
    swapped = dict(model=copy.deepcopy(ref_cfg))
    assert swap_focal_loss(swapped) == 1
    torch.manual_seed(0)
    ref = MODELS.build(ref_cfg)
    ref.init_weights()  # uninitialised RetinaNet gives NaN losses
    ours = MODELS.build(swapped['model'])
    ours.load_state_dict(ref.state_dict())
    assert type(ref.bbox_head.loss_cls) is MMDetFocalLoss
    assert type(ours.bbox_head.loss_cls) is TritonFocalLoss
    return ref.to(dtype), ours.to(dtype)


def _batch():
    return demo_mm_inputs(batch_size=2, image_shapes=[(3, 128, 128), (3, 96, 128)],
                          num_items=[4, 2], num_classes=80)


@pytest.fixture(scope='module', autouse=False)
def _mmdet_scope():
    register_all_modules()


@pytest.mark.parametrize('name', list(MODEL_BASES))
def test_model_losses_and_gradients_match_mmdet_fp32(name, _mmdet_scope):
    ref, ours = _build_pair(name)
    gold = copy.deepcopy(ref)
    old = gold.bbox_head.loss_cls
    gold.bbox_head.loss_cls = _Float64FocalLoss(gamma=old.gamma, alpha=old.alpha,
                                                reduction=old.reduction,
                                                loss_weight=old.loss_weight)
    packed = _batch()
    ref_losses, ref_grads, ref_dpred = _loss_and_grads(ref, packed)
    our_losses, our_grads, our_dpred = _loss_and_grads(ours, packed)
    gold_losses, gold_grads, gold_dpred = _loss_and_grads(gold, packed)

    assert set(ref_losses) == set(our_losses) == set(gold_losses)
    assert our_losses['loss_cls'] > 0
    for key in ref_losses:
        assert torch.isfinite(gold_losses[key]).all(), key
        assert our_losses[key].dtype == ref_losses[key].dtype == torch.float32, key
        assert rel_err(our_losses[key], gold_losses[key]) <= TOL, \
            f'{key}: gold {gold_losses[key]}, ours {our_losses[key]}'
        assert rel_err(our_losses[key], ref_losses[key]) <= TOL, \
            f'{key}: mmdet fp32 {ref_losses[key]}, ours {our_losses[key]}'
    # what the loss itself hands to the network
    assert len(our_dpred) == len(gold_dpred)
    for i, (a, b) in enumerate(zip(our_dpred, gold_dpred, strict=True)):
        assert rel_err(a, b) <= TOL, f'loss_cls call {i}: d loss/d pred rel err {rel_err(a, b)}'
    assert rel_err(_all_grads(our_grads), _all_grads(gold_grads)) <= TOL

    n_checked = 0
    for pname, g_gold in gold_grads.items():
        g_ref, g_our = ref_grads[pname], our_grads[pname]
        if g_gold is None:
            assert g_ref is None and g_our is None, pname
            continue
        assert g_our is not None and g_our.dtype == torch.float32, pname
        if g_gold.abs().max() == 0:  # e.g. zero-initialised residual branches: exactly zero
            assert g_our.abs().max() == 0 and g_ref.abs().max() == 0, pname
            continue
        bound = max(TOL, 3 * rel_err(g_ref, g_gold))
        for other, label in ((g_gold, 'gold'), (g_ref, 'mmdet fp32')):
            err = rel_err(g_our, other)
            assert err <= bound, f'{pname}: gradient rel err vs {label} {err:.3g} > {bound:.3g}'
        n_checked += 1
    # the classification branch, the neck and the backbone all received gradients
    assert n_checked > 20
    assert getattr(ours.bbox_head, CLS_CONV[name]).weight.grad.abs().sum() > 0
    assert ours.backbone.layer4[0].downsample[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['retinanet'])  # (the fp32 test runs all three)
def test_model_losses_and_gradients_match_mmdet_fp64(name, _mmdet_scope):
    ref, ours = _build_pair(name, torch.float64)
    packed = _batch()
    ref_losses, ref_grads, ref_dpred = _loss_and_grads(ref, packed, torch.float64)
    our_losses, our_grads, our_dpred = _loss_and_grads(ours, packed, torch.float64)
    assert set(ref_losses) == set(our_losses)
    assert our_losses['loss_cls'].dtype == ref_losses['loss_cls'].dtype == torch.float64
    for key in ref_losses:  # (FCOS's loss_bbox is fp32 even here: mmdet's points are fp32)
        assert our_losses[key].dtype == ref_losses[key].dtype, key
        check(our_losses[key], ref_losses[key], 'cpu', key)
    for a, b in zip(our_dpred, ref_dpred, strict=True):
        check(a, b, 'cpu', 'd loss / d pred')
    n_checked = 0
    for pname, g_ref in ref_grads.items():
        g_our = our_grads[pname]
        if g_ref is None:
            assert g_our is None, pname
            continue
        check(g_our, g_ref, 'cpu', pname)
        n_checked += int(g_ref.abs().max() > 0)
    assert n_checked > 20
