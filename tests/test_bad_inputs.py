"""Every bad input of SPEC §2 raises a clear Python exception that names the argument."""
import pytest
import torch
from _inputs import IMPLS, device_of, impl_context
from reference import reference_focal_loss, rel_err

import mmdet_focal_triton as mft
from mmdet_focal_triton import sigmoid_focal_loss


def _inputs(impl, N=8, C=5):
    dev = device_of(impl)
    pred = torch.randn(N, C, device=dev, requires_grad=True)
    lab = torch.randint(0, C + 1, (N,), device=dev)
    return pred, lab


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('bad_label', [-1, 6, 1000])
def test_label_out_of_range(impl, bad_label):
    pred, lab = _inputs(impl)
    lab[3] = bad_label
    with impl_context(impl):
        for red in ('mean', 'sum', 'none'):
            with pytest.raises(ValueError, match=r'target holds class indices outside \[0, 5\]'):
                sigmoid_focal_loss(pred, lab, reduction=red)
        with torch.no_grad(), pytest.raises(ValueError, match='target'):
            sigmoid_focal_loss(pred, lab)


@pytest.mark.parametrize('impl', IMPLS)
def test_unchecked_labels_are_background(impl):
    """With the checks off (no host sync), an out-of-range label is background and reads nothing
    out of bounds."""
    pred, lab = _inputs(impl, 40, 7)
    lab[[2, 5]] = torch.tensor([-3, 99], device=lab.device)
    mft.set_input_checks(False)
    try:
        with impl_context(impl):
            out = sigmoid_focal_loss(pred, lab, reduction='sum')
    finally:
        mft.set_input_checks(True)
    fixed = lab.clone()
    fixed[[2, 5]] = 7
    ref = reference_focal_loss(pred.detach().cpu(), fixed.cpu(), reduction='sum')
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize('impl', IMPLS)
def test_activated_probabilities_out_of_range(impl):
    pred, lab = _inputs(impl)
    with impl_context(impl):
        p = torch.sigmoid(pred.detach())
        p[1, 1] = 1.5
        with pytest.raises(ValueError, match='probabilities in \\[0, 1\\]'):
            sigmoid_focal_loss(p, lab, activated=True)


@pytest.mark.parametrize('impl', IMPLS)
def test_argument_errors(impl):
    pred, lab = _inputs(impl)
    dev = pred.device
    cases = [
        (dict(target=lab.float()), TypeError, 'class-index target must have an integer dtype'),
        (dict(target=lab.bool()), TypeError, 'integer dtype'),
        (dict(target=lab[:5]), ValueError, 'target of shape'),
        (dict(target=torch.rand(8, 4, device=dev)), ValueError, 'dense target'),
        (dict(pred=torch.randint(0, 3, (8, 5), device=dev)), TypeError, 'pred must be a floating'),
        (dict(pred=[[1.0]]), TypeError, 'pred must be a torch.Tensor'),
        (dict(pred=torch.tensor(1.0, device=dev)), ValueError, 'pred must have at least one'),
        (dict(weight=torch.rand(7, device=dev)), ValueError, 'weight of shape'),
        (dict(weight=torch.rand(8, 2, device=dev)), ValueError, 'weight of shape'),
        (dict(weight=torch.rand(8, 5, 1, device=dev)), ValueError, 'weight of shape'),
        (dict(reduction='avg'), ValueError, 'reduction must be'),
        (dict(reduction='sum', avg_factor=3.0), ValueError, 'avg_factor can not be used'),
        (dict(avg_factor=torch.ones(2, device=dev)), ValueError, 'avg_factor must be a number'),
        (dict(avg_factor='3'), TypeError, 'avg_factor must be None'),
        (dict(gamma=-1.0), ValueError, 'gamma'),
        (dict(gamma=float('nan')), ValueError, 'gamma'),
        (dict(alpha=float('inf')), ValueError, 'alpha'),
        (dict(target=lab.float().requires_grad_()[:, None].expand(8, 5)), ValueError,
         'target must not require grad'),
        (dict(target=torch.randint(0, 5, (8,), device='meta')), ValueError,
         'target is on meta'),
        (dict(weight=torch.rand(8, device='meta')), ValueError, 'weight is on meta'),
    ]
    for kw, exc, msg in cases:
        args = dict(pred=pred, target=lab)
        args.update(kw)
        with impl_context(impl), pytest.raises(exc, match=msg):
            sigmoid_focal_loss(**args)
