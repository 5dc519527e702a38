"""Bad inputs of quality_focal_loss / varifocal_loss: a clear Python exception that names the
argument, never a device-side assert, a NaN or a silently wrong value."""
import contextlib

import pytest
import torch
from _inputs import IMPLS, device_of, impl_context
from conftest import INTERPRETER

import mmdet_focal_triton as mft
from mmdet_focal_triton import quality_focal_loss, varifocal_loss


def _qfl_inputs(impl, N=8, C=5):
    dev = device_of(impl)
    pred = torch.randn(N, C, device=dev, requires_grad=True)
    lab = torch.randint(0, C + 1, (N,), device=dev)
    score = torch.rand(N, device=dev)
    return pred, lab, score


@pytest.fixture
def check_mode():
    """Set the input check mode for one test; restore the default and drop anything reported."""
    yield mft.set_input_checks
    mft.set_input_checks(True)
    try:
        mft.check_pending_inputs()
    except ValueError:
        pass


def _raises_now_or_pending(match):
    """The error of a bad call: raised in the call ('sync', or any mode on CPU), or (async on
    CUDA) by the next resolution point; `check_pending_inputs()` is one."""
    @contextlib.contextmanager
    def ctx():
        with pytest.raises(ValueError, match=match):
            yield
            mft.check_pending_inputs()
    return ctx()


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('mode', ['sync', 'async'])
@pytest.mark.parametrize('bad_label', [-1, 6, 1000])
def test_label_out_of_range(impl, mode, bad_label, check_mode):
    """mmdet's QFL silently counts such labels as background; ours raises (with the checks off
    it counts them as background too: test_quality_focal.py)."""
    pred, lab, score = _qfl_inputs(impl)
    lab[3] = bad_label
    check_mode(mode)
    match = r'target holds class indices outside \[0, 5\]'
    with impl_context(impl):
        for red in ('mean', 'sum', 'none'):
            with _raises_now_or_pending(match):
                quality_focal_loss(pred, (lab, score), reduction=red)
        with torch.no_grad(), _raises_now_or_pending('target'):
            quality_focal_loss(pred, (lab, score))
        mft.check_pending_inputs()  # reported once: nothing left
        quality_focal_loss(pred, (lab.clamp(0, 5), score)).backward()
        mft.check_pending_inputs()


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('mode', ['sync', 'async'])
@pytest.mark.parametrize('dense', [False, True])
def test_activated_probabilities_out_of_range(impl, mode, dense, check_mode):
    """mmdet: torch's binary_cross_entropy raises a RuntimeError; ours a ValueError."""
    pred, lab, score = _qfl_inputs(impl)
    check_mode(mode)
    p = torch.sigmoid(pred.detach())
    p[1, 1] = 1.5 if dense else -0.25
    target = torch.rand_like(p) if dense else (lab, score)
    with impl_context(impl), _raises_now_or_pending(r'probabilities in \[0, 1\]'):
        quality_focal_loss(p, target, activated=True)


@pytest.mark.skipif(not INTERPRETER, reason='drives the Triton kernels on CPU tensors')
def test_async_check_is_raised_when_known(check_mode):
    """The asynchronous check of the QFL kernel, with the real kernel under the interpreter: a bad
    call does not raise; the next call (of any fused loss on the device) or the backward does."""
    check_mode('async')
    pred, lab, score = _qfl_inputs('interp')
    bad = lab.clone()
    bad[0] = 9
    with mft.backend('triton'):
        quality_focal_loss(pred, (bad, score))  # not raised by the call itself
        with pytest.raises(ValueError, match='asynchronous input check'):
            mft.sigmoid_focal_loss(pred, lab)  # the next call raises it, whichever loss
        quality_focal_loss(pred, (lab, score)).backward()
        loss = quality_focal_loss(pred, (bad, score))
        with pytest.raises(ValueError, match=r'outside \[0, 5\]'):
            loss.backward()
        mft.check_pending_inputs()


@pytest.mark.cuda
def test_async_check_does_not_synchronise(check_mode):
    """On CUDA the default check makes no host synchronisation in loss + backward, for QFL (with
    its check) and VFL."""
    pred, lab, score = _qfl_inputs('cuda', 1000, 80)
    target = torch.rand(1000, 80, device='cuda') * (torch.rand(1000, 80, device='cuda') < 0.02)
    check_mode('async')
    quality_focal_loss(pred, (lab, score)).backward()  # warm up: compilation, allocator
    varifocal_loss(pred, target).backward()
    torch.cuda.synchronize()
    mft.check_pending_inputs()
    af = torch.tensor(9.0, device='cuda')
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            quality_focal_loss(pred, (lab, score), avg_factor=af).backward()
            varifocal_loss(pred, target, avg_factor=af).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize('impl', IMPLS)
def test_qfl_argument_errors(impl):
    pred, lab, score = _qfl_inputs(impl)
    dev = pred.device
    N = 8
    cases = [
        (dict(target=(lab.float(), score)), TypeError, 'labels must have an integer dtype'),
        (dict(target=(lab.bool(), score)), TypeError, 'integer dtype'),
        (dict(target=(lab, (score * 10).long())), TypeError, 'scores must have a floating'),
        (dict(target=(lab[:5], score)), ValueError, r'labels and scores must have shape \(8,\)'),
        (dict(target=(lab, score[:, None])), ValueError, 'labels and scores must have shape'),
        (dict(target=(lab, score, score)), AssertionError, 'tuple of two elements'),
        (dict(target=(lab, score.tolist())), TypeError, r'target\[1\] \(scores\) must be'),
        (dict(target='labels'), TypeError, r'target must be a \(labels, scores\) pair'),
        (dict(target=torch.rand(8, 4, device=dev)), ValueError, 'dense target'),
        (dict(pred=torch.randn(5, device=dev), target=torch.rand(5, device=dev)), ValueError,
         'at least two dimensions'),
        (dict(pred=torch.randn(8, 5, 2, device=dev)), ValueError, r'shape \(N, C\)'),
        (dict(pred=torch.randint(0, 3, (8, 5), device=dev)), TypeError, 'pred must be a floating'),
        (dict(pred=[[1.0]]), TypeError, 'pred must be a torch.Tensor'),
        (dict(weight=torch.rand(7, device=dev)), ValueError, 'weight of shape'),
        (dict(weight=torch.rand(N, 1, device=dev)), ValueError, 'square matrix'),
        (dict(weight=torch.rand(N, 5, device=dev)), ValueError, 'per-row loss'),
        (dict(reduction='avg'), ValueError, 'reduction must be'),
        (dict(reduction='sum', avg_factor=3.0), ValueError, 'avg_factor can not be used'),
        (dict(avg_factor=torch.ones(2, device=dev)), ValueError, 'avg_factor must be a number'),
        (dict(avg_factor='3'), TypeError, 'avg_factor must be None'),
        (dict(beta=-1.0), ValueError, 'beta'),
        (dict(beta=float('nan')), ValueError, 'beta'),
        (dict(loss_weight='2'), TypeError, 'loss_weight'),
        (dict(target=(lab, score.clone().requires_grad_())), ValueError,
         r'target\[1\] \(scores\) must not require grad'),
        (dict(target=torch.rand(8, 5, device=dev, requires_grad=True)), ValueError,
         'target must not require grad'),
        (dict(weight=torch.rand(8, device=dev, requires_grad=True)), ValueError,
         'weight must not require grad'),
        (dict(target=(torch.randint(0, 5, (8,), device='meta'), score)), ValueError,
         r'target\[0\] \(labels\) is on meta'),
        (dict(weight=torch.rand(8, device='meta')), ValueError, 'weight is on meta'),
    ]
    for kw, exc, msg in cases:
        args = dict(pred=pred, target=(lab, score))
        args.update(kw)
        with impl_context(impl), pytest.raises(exc, match=msg):
            quality_focal_loss(**args)


@pytest.mark.parametrize('impl', IMPLS)
def test_vfl_argument_errors(impl):
    dev = device_of(impl)
    pred = torch.randn(8, 5, device=dev, requires_grad=True)
    target = torch.rand(8, 5, device=dev)
    cases = [
        (dict(target=target[:, :4]), ValueError, "target must have pred's shape"),
        (dict(target=(target, target)), TypeError, 'target must be a torch.Tensor'),
        (dict(target=target.to(torch.complex64)), TypeError, 'target must be real'),
        (dict(pred=torch.tensor(1.0, device=dev), target=torch.tensor(1.0, device=dev)),
         ValueError, 'at least one dimension'),
        (dict(pred=pred.detach().long()), TypeError, 'pred must be a floating'),
        (dict(weight=torch.rand(8, device=dev)), ValueError, 'does not broadcast'),
        (dict(weight=torch.rand(2, 8, 5, device=dev)), ValueError, 'does not broadcast'),
        (dict(reduction='avg'), ValueError, 'reduction must be'),
        (dict(reduction='sum', avg_factor=3.0), ValueError, 'avg_factor can not be used'),
        (dict(avg_factor=torch.ones(1, 1, device=dev)), ValueError, 'avg_factor must be'),
        (dict(gamma=-0.5), ValueError, 'gamma'),
        (dict(alpha=float('inf')), ValueError, 'alpha'),
        (dict(target=target.clone().requires_grad_()), ValueError, 'target must not require'),
        (dict(target=torch.rand(8, 5, device='meta')), ValueError, 'target is on meta'),
    ]
    for kw, exc, msg in cases:
        args = dict(pred=pred, target=target)
        args.update(kw)
        with impl_context(impl), pytest.raises(exc, match=msg):
            varifocal_loss(**args)
