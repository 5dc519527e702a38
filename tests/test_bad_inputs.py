"""Every bad input of SPEC §2 raises a clear Python exception that names the argument."""
import contextlib

import pytest
import torch
from _inputs import FOCAL_IMPLS, device_of, impl_context
from conftest import INTERPRETER
from reference import reference_focal_loss, rel_err

import mmdet_focal_triton as mft
from mmdet_focal_triton import sigmoid_focal_loss
from mmdet_focal_triton.ops import checks


def _inputs(impl, N=8, C=5):
    dev = device_of(impl)
    pred = torch.randn(N, C, device=dev, requires_grad=True)
    lab = torch.randint(0, C + 1, (N,), device=dev)
    return pred, lab


@pytest.fixture
def check_mode():
    """Set the input check mode for one test; restore the default and drop anything reported."""
    yield mft.set_input_checks
    mft.set_input_checks(True)
    try:
        mft.check_pending_inputs()
    except ValueError:
        pass


def _raises_now_or_pending(mode, match):
    """The error of a bad call: raised in the call ('sync', or any mode on CPU), or (async on
    CUDA) by the next resolution point; `check_pending_inputs()` is one."""
    @contextlib.contextmanager
    def ctx():
        with pytest.raises(ValueError, match=match):
            yield
            mft.check_pending_inputs()
    return ctx()


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('mode', ['sync', 'async'])
@pytest.mark.parametrize('bad_label', [-1, 6, 1000])
def test_label_out_of_range(impl, mode, bad_label, check_mode):
    pred, lab = _inputs(impl)
    lab[3] = bad_label
    check_mode(mode)
    match = r'target holds class indices outside \[0, 5\]'
    with impl_context(impl):
        for red in ('mean', 'sum', 'none'):
            with _raises_now_or_pending(mode, match):
                sigmoid_focal_loss(pred, lab, reduction=red)
        with torch.no_grad(), _raises_now_or_pending(mode, 'target'):
            sigmoid_focal_loss(pred, lab)
        mft.check_pending_inputs()  # reported once: nothing left
        sigmoid_focal_loss(pred, lab.clamp(0, 5)).backward()  # nothing left to raise
        mft.check_pending_inputs()


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
def test_unchecked_labels_are_background(impl, check_mode):
    """With the checks off (no host sync), an out-of-range label is background and reads nothing
    out of bounds."""
    pred, lab = _inputs(impl, 40, 7)
    lab[[2, 5]] = torch.tensor([-3, 99], device=lab.device)
    check_mode(False)
    with impl_context(impl):
        out = sigmoid_focal_loss(pred, lab, reduction='sum')
        mft.check_pending_inputs()
    fixed = lab.clone()
    fixed[[2, 5]] = 7
    ref = reference_focal_loss(pred.detach().cpu(), fixed.cpu(), reduction='sum')
    assert rel_err(out, ref) <= 1e-5


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
@pytest.mark.parametrize('mode', ['sync', 'async'])
def test_activated_probabilities_out_of_range(impl, mode, check_mode):
    pred, lab = _inputs(impl)
    check_mode(mode)
    with impl_context(impl):
        p = torch.sigmoid(pred.detach())
        p[1, 1] = 1.5
        with _raises_now_or_pending(mode, 'probabilities in \\[0, 1\\]'):
            sigmoid_focal_loss(p, lab, activated=True)


def test_check_mode_setting(check_mode):
    for given, mode in ((True, 'async'), ('sync', 'sync'), (False, 'off'), ('off', 'off'),
                        ('async', 'async')):
        check_mode(given)
        assert mft.get_input_checks() == mode
        assert mft.input_checks_enabled() == (mode != 'off')
    with pytest.raises(ValueError, match='input check mode'):
        mft.set_input_checks('later')


@pytest.mark.skipif(not INTERPRETER, reason='drives the Triton kernels on CPU tensors')
def test_async_check_is_raised_when_known(check_mode):
    """The deferral logic of the asynchronous check, with the real kernel under the interpreter
    (which, like a GPU that has finished, has written the flag by the time the host looks): a
    bad call does not raise; the error comes at the next point that reads the flag (a later
    call, the backward, or check_pending_inputs), once; 'sync' raises in the call."""
    check_mode('async')
    pred, lab = _inputs('interp')
    bad = lab.clone()
    bad[0] = 9
    with mft.backend('triton'):
        sigmoid_focal_loss(pred, bad)  # not raised by the call itself
        with pytest.raises(ValueError, match='asynchronous input check'):
            sigmoid_focal_loss(pred, lab)  # the next call raises it
        sigmoid_focal_loss(pred, lab).backward()  # reported once: the flag was cleared
        mft.check_pending_inputs()

        loss = sigmoid_focal_loss(pred, bad)
        with pytest.raises(ValueError, match=r'outside \[0, 5\]'):
            loss.backward()  # or the backward of the bad loss itself

        sigmoid_focal_loss(pred, bad, reduction='none')
        with pytest.raises(ValueError, match='asynchronous'):
            mft.check_pending_inputs()
        mft.check_pending_inputs()

        check_mode('sync')
        with pytest.raises(ValueError, match=r'means background\)$'):
            sigmoid_focal_loss(pred, bad)  # in the call, and not called asynchronous
        sigmoid_focal_loss(pred, lab)


def test_flag_word_names_the_class_count(check_mode):
    """The word a kernel writes (bits | C << 2) becomes the ValueError of that loss's C, once."""
    checks.flag_arg(-1)  # the slot of CPU tensors (Triton interpreter)
    checks.FLAGS.view[0] = 1203 << 2 | checks.LABEL_BIT
    with pytest.raises(ValueError, match=r'outside \[0, 1203\].*asynchronous'):
        checks.poll(-1)
    checks.poll(-1)  # cleared
    checks.FLAGS.view[0] = 80 << 2 | checks.PROB_BIT
    with pytest.raises(ValueError, match=r'probabilities in \[0, 1\]'):
        mft.check_pending_inputs(wait=False)


@pytest.mark.cuda
def test_async_check_does_not_synchronise(check_mode):
    """On CUDA the default check makes no host synchronisation in loss + backward (CUDA's sync
    debug mode turns any into an error), whereas 'sync' makes one."""
    pred, lab = _inputs('cuda', 1000, 80)
    check_mode('async')
    sigmoid_focal_loss(pred, lab).backward()  # warm up: compilation, allocator, pinned pool
    torch.cuda.synchronize()
    mft.check_pending_inputs()
    af = torch.tensor(9.0, device='cuda')
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            sigmoid_focal_loss(pred, lab, avg_factor=af).backward()
        check_mode('sync')
        with pytest.raises(RuntimeError, match='synchroniz'):
            sigmoid_focal_loss(pred, lab)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
@pytest.mark.parametrize('where', ['next_call', 'backward', 'check_pending_inputs'])
def test_async_check_on_cuda(where, check_mode):
    """The error of a bad call is raised once, at the latest at the next resolution point after
    the GPU finished the call (here forced with torch.cuda.synchronize); it may come from the
    call itself when the GPU was already done by the end of it."""
    check_mode('async')
    pred, lab = _inputs('cuda', 1000, 80)
    bad = lab.clone()
    bad[500] = -7
    with pytest.raises(ValueError, match=r'outside \[0, 80\].*asynchronous'):
        loss = sigmoid_focal_loss(pred, bad)
        torch.cuda.synchronize()
        if where == 'next_call':
            sigmoid_focal_loss(pred, lab)
        elif where == 'backward':
            loss.backward()
        else:
            mft.check_pending_inputs()
    sigmoid_focal_loss(pred, lab).backward()  # reported once
    mft.check_pending_inputs()


@pytest.mark.parametrize('impl', FOCAL_IMPLS)
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
