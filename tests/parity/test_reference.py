"""parity.reference: the float64 reference is mmdet's own formula, evaluated stably."""
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('mmdet.models')

from mmdet.models.losses.focal_loss import (  # noqa: E402
    FocalLoss,
    py_focal_loss_with_prob,
    py_sigmoid_focal_loss,
)

from mmdet_focal_triton.parity.reference import (  # noqa: E402
    FocalLossParams,
    float64_focal_loss,
    loss_and_grad,
    mmdet_focal_loss,
    rel_err,
)


def _mmdet_in_float64(pred, target, weight, avg_factor, reduction, p: FocalLossParams):
    """mmdet's python functions themselves, called in float64, as FocalLoss.forward on CPU."""
    if p.activated:
        fn = py_focal_loss_with_prob
    else:
        fn = py_sigmoid_focal_loss
        if pred.dim() != target.dim():
            target = F.one_hot(target, pred.size(1) + 1)[:, :pred.size(1)]
    return p.loss_weight * fn(pred, target, weight, gamma=p.gamma, alpha=p.alpha,
                              reduction=reduction, avg_factor=avg_factor)


@pytest.mark.parametrize('target_kind', ['index', 'onehot', 'soft'])
@pytest.mark.parametrize('weight_kind', [None, 'row', 'flat', 'elem'])
@pytest.mark.parametrize('reduction,avg_factor', [('mean', None), ('sum', None), ('none', None),
                                                  ('mean', 7.5), ('mean', 'tensor1')])
@pytest.mark.parametrize('activated', [False, True])
def test_float64_reference_is_mmdets_formula(target_kind, weight_kind, reduction, avg_factor,
                                              activated):
    g = torch.Generator().manual_seed(0)
    N, C = 37, 5
    x = torch.randn(N, C, generator=g, dtype=torch.float64) * 4  # moderate: mmdet is exact
    pred = x.sigmoid() if activated else x
    labels = torch.randint(0, C + 1, (N,), generator=g)
    target = {'index': labels, 'onehot': F.one_hot(labels, C + 1)[:, :C].double(),
              'soft': torch.rand(N, C, generator=g, dtype=torch.float64)}[target_kind]
    weight = {None: None, 'row': torch.rand(N, generator=g, dtype=torch.float64),
              'flat': torch.rand(N * C, generator=g, dtype=torch.float64),
              'elem': torch.rand(N, C, generator=g, dtype=torch.float64)}[weight_kind]
    af = torch.tensor([6.0], dtype=torch.float64) if avg_factor == 'tensor1' else avg_factor
    p = FocalLossParams(gamma=1.5, alpha=0.3, reduction=reduction, loss_weight=1.7,
                        activated=activated)
    args = (pred, target, weight, af)
    ref, ref_grad = loss_and_grad(float64_focal_loss, *args, params=p)
    mm, mm_grad = loss_and_grad(
        lambda *a, params: _mmdet_in_float64(*a[:4], reduction, params), *args, params=p)
    assert ref.shape == mm.shape
    assert rel_err(ref, mm) < 1e-13 and rel_err(ref_grad, mm_grad) < 1e-13
    # and mmdet_focal_loss is that call (in the inputs' dtype)
    mine, mine_grad = loss_and_grad(mmdet_focal_loss, *args, params=p)
    assert rel_err(mine, mm) == 0 and rel_err(mine_grad, mm_grad) == 0


def test_float64_reference_is_stable_where_mmdets_formula_is_not():
    """1 - sigmoid(x) is 0 in float64 above x ~ 36.7: mmdet's formula then has a NaN gradient
    for gamma < 1 even in float64; the reference computes it as sigmoid(-x)."""
    x = torch.tensor([[40.0, -3.0]], dtype=torch.float64)
    target = torch.tensor([0])  # column 0 positive
    p = FocalLossParams(gamma=0.5, reduction='sum')
    _, mm_grad = loss_and_grad(mmdet_focal_loss, x, target, params=p)
    assert torch.isnan(mm_grad[0, 0])
    loss, grad = loss_and_grad(float64_focal_loss, x, target, params=p)
    assert torch.isfinite(grad).all() and torch.isfinite(loss)
    # d/dx of 0.25 * softplus(-x) * sigmoid(-x) ** 0.5, ~ -0.25 * e^-x * e^(-x/2) at x = 40
    assert grad[0, 0] == pytest.approx(-0.25 * math.exp(-40) * math.exp(-20), rel=1e-6)


def test_params_from_config_and_module():
    p = FocalLossParams.from_config(dict(use_sigmoid=True, gamma=1.0, loss_weight=2.0))
    assert p == FocalLossParams(gamma=1.0, alpha=0.25, reduction='mean', loss_weight=2.0)
    m = FocalLoss(gamma=3.0, alpha=0.4, reduction='sum', loss_weight=0.5, activated=True)
    assert FocalLossParams.from_module(m) == FocalLossParams(
        gamma=3.0, alpha=0.4, reduction='sum', loss_weight=0.5, activated=True)
    with pytest.raises(ValueError, match='reduction_override'):
        float64_focal_loss(torch.zeros(2, 3), torch.tensor([0, 3]), reduction_override='avg')


def test_rel_err():
    ref = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert rel_err(ref.float(), ref) == 0.0
    assert rel_err(torch.tensor([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert rel_err(torch.tensor([float('nan'), 4.0]), ref) == math.inf
    assert rel_err(torch.tensor([0.5, 0.0]), torch.zeros(2)) == 0.5  # ref 0: absolute
    assert rel_err(torch.zeros(0, 3), torch.zeros(0, 3)) == 0.0
