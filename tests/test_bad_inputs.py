"""Every bad input of SPEC §2 raises a clear Python exception that names the argument, never a
device-side assert, a NaN or a silently wrong value: labels outside [0, C] and probabilities
outside [0, 1] (the in-kernel check, synchronous or deferred), and the argument errors of each
loss (types, shapes, devices, values)."""
import contextlib

import pytest
import torch
from _family import FOCAL, LOSSES, QFL, VFL
from _inputs import device_of, impl_context
from _tolerances import check
from conftest import INTERPRETER

import mmdet_focal_triton as mft
from mmdet_focal_triton.ops import checks

CHECKED = [loss for loss in LOSSES if loss.index_target]  # losses with class-index targets


def _backends(losses):
    return [pytest.param(loss, b.values[0], id=f'{loss.name}-{b.id}', marks=b.marks)
            for loss in losses for b in loss.backends]


def _inputs(loss, impl, N=8, C=5):
    """pred (N, C) and the class-index target of `loss` with labels in [0, C]."""
    dev = device_of(impl)
    pred = torch.randn(N, C, device=dev, requires_grad=True)
    labels = torch.randint(0, C + 1, (N,), device=dev)
    return pred, labels, torch.rand(N, device=dev)


@pytest.fixture
def check_mode():
    """Set the input check mode for one test; afterwards restore the default, and fail the test
    if it left an error unreported (a bad call whose error nobody raised)."""
    yield mft.set_input_checks
    mft.set_input_checks(True)
    mft.check_pending_inputs()


def _raises_now_or_pending(match):
    """The error of a bad call: raised in the call ('sync', or any mode on CPU), or (async on
    CUDA) by the next resolution point; `check_pending_inputs()` is one."""
    @contextlib.contextmanager
    def ctx():
        with pytest.raises(ValueError, match=match):
            yield
            mft.check_pending_inputs()
    return ctx()


@pytest.mark.parametrize('loss,impl', _backends(CHECKED))
@pytest.mark.parametrize('mode', ['sync', 'async'])
@pytest.mark.parametrize('bad_label', [-1, 6, 1000])
def test_label_out_of_range(loss, impl, mode, bad_label, check_mode):
    """mmdet's CPU paths one-hot them (an error for the focal loss, background for QFL); ours
    raises, once."""
    pred, labels, scores = _inputs(loss, impl)
    labels[3] = bad_label
    check_mode(mode)
    match = r'target holds class indices outside \[0, 5\]'
    with impl_context(impl):
        for red in ('mean', 'sum', 'none'):
            with _raises_now_or_pending(match):
                loss.call(pred, loss.from_labels(labels, scores, 5), reduction=red)
        with torch.no_grad(), _raises_now_or_pending('target'):
            loss.call(pred, loss.from_labels(labels, scores, 5))
        mft.check_pending_inputs()  # reported once: nothing left
        loss.call(pred, loss.from_labels(labels.clamp(0, 5), scores, 5)).backward()
        mft.check_pending_inputs()  # nothing left to raise


@pytest.mark.parametrize('loss,impl', _backends(CHECKED))
def test_unchecked_labels_are_background(loss, impl, check_mode):
    """With the checks off (no host synchronisation), a label outside [0, C] counts as
    background (exactly mmdet's QFL `(label >= 0) & (label < C)`) and reads nothing out of
    bounds."""
    pred, labels, scores = _inputs(loss, impl, 40, 7)
    labels[[2, 5, 9]] = torch.tensor([-3, 99, 8], device=labels.device)
    check_mode(False)
    with impl_context(impl):
        out = loss.call(pred, loss.from_labels(labels, scores, 7), reduction='sum')
        mft.check_pending_inputs()
    background = labels.clone()
    background[[2, 5, 9]] = 7
    ref = loss.ref(pred.detach(), loss.from_labels(background, scores, 7), reduction='sum')
    check(out, ref, impl)


@pytest.mark.parametrize('loss,impl', _backends(CHECKED))
@pytest.mark.parametrize('mode', ['sync', 'async'])
@pytest.mark.parametrize('dense', [False, True])
def test_activated_probabilities_out_of_range(loss, impl, mode, dense, check_mode):
    """mmdet: torch's binary_cross_entropy raises a RuntimeError; ours a ValueError."""
    pred, labels, scores = _inputs(loss, impl)
    check_mode(mode)
    p = torch.sigmoid(pred.detach())
    p[1, 1] = 1.5 if dense else -0.25
    target = torch.rand_like(p) if dense else loss.from_labels(labels, scores, 5)
    with impl_context(impl), _raises_now_or_pending(r'probabilities in \[0, 1\]'):
        loss.call(p, target, activated=True)


def test_check_mode_setting(check_mode):
    for given, mode in ((True, 'async'), ('sync', 'sync'), (False, 'off'), ('off', 'off'),
                        ('async', 'async')):
        check_mode(given)
        assert mft.get_input_checks() == mode
        assert mft.input_checks_enabled() == (mode != 'off')
    with pytest.raises(ValueError, match='input check mode'):
        mft.set_input_checks('later')


@pytest.mark.skipif(not INTERPRETER, reason='drives the Triton kernels on CPU tensors')
@pytest.mark.parametrize('loss', CHECKED, ids=str)
def test_async_check_is_raised_when_known(loss, check_mode):
    """The deferral logic of the asynchronous check, with the real kernel under the interpreter
    (which, like a GPU that has finished, has written the flag by the time the host looks): a
    bad call does not raise; the error comes at the next point that reads the flag (a later
    call of any of the losses, the backward, or check_pending_inputs), once; 'sync' raises in
    the call."""
    check_mode('async')
    pred, labels, scores = _inputs(loss, 'interp')
    good = loss.from_labels(labels, scores, 5)
    bad_labels = labels.clone()
    bad_labels[0] = 9
    bad = loss.from_labels(bad_labels, scores, 5)
    other = next(x for x in LOSSES if x is not loss)
    with mft.backend('triton'):
        loss.call(pred, bad)  # not raised by the call itself
        with pytest.raises(ValueError, match='asynchronous input check'):
            loss.call(pred, good)  # the next call raises it
        loss.call(pred, good).backward()  # reported once: the flag was cleared
        mft.check_pending_inputs()

        loss.call(pred, bad)
        with pytest.raises(ValueError, match='asynchronous input check'):
            other.call(pred, other.make_target(other.targets[-1], 8, 5, 'cpu',
                                               torch.Generator().manual_seed(0)))

        out = loss.call(pred, bad)
        with pytest.raises(ValueError, match=r'outside \[0, 5\]'):
            out.backward()  # or the backward of the bad loss itself

        loss.call(pred, bad, reduction='none')
        with pytest.raises(ValueError, match='asynchronous'):
            mft.check_pending_inputs()
        mft.check_pending_inputs()

        check_mode('sync')
        with pytest.raises(ValueError, match=r'means background\)$'):
            loss.call(pred, bad)  # in the call, and not called asynchronous
        loss.call(pred, good)


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
@pytest.mark.parametrize('loss', LOSSES, ids=str)
def test_async_check_does_not_synchronise(loss, check_mode):
    """On CUDA the default check makes no host synchronisation in loss + backward (CUDA's sync
    debug mode turns any into an error, as it does `.item()`), whereas 'sync' makes one."""
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(1000, 80, generator=g).cuda().requires_grad_(True)
    target = loss.make_target(loss.targets[0], 1000, 80, 'cuda', g)
    check_mode('async')
    loss.call(pred, target).backward()  # warm up: compilation, allocator, pinned pool
    torch.cuda.synchronize()
    mft.check_pending_inputs()
    af = torch.tensor(9.0, device='cuda')
    torch.cuda.set_sync_debug_mode('error')
    try:
        for _ in range(3):
            out = loss.call(pred, target, avg_factor=af)
            out.backward()
        with pytest.raises(RuntimeError, match='synchroniz'):
            out.item()  # the debug mode is on: a synchronisation raises
        if loss.index_target:
            check_mode('sync')
            with pytest.raises(RuntimeError, match='synchroniz'):
                loss.call(pred, target)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
@pytest.mark.parametrize('loss', CHECKED, ids=str)
@pytest.mark.parametrize('where', ['next_call', 'backward', 'check_pending_inputs'])
def test_async_check_on_cuda(loss, where, check_mode):
    """The error of a bad call is raised once, at the latest at the next resolution point after
    the GPU finished the call (here forced with torch.cuda.synchronize); it may come from the
    call itself when the GPU was already done by the end of it."""
    check_mode('async')
    pred, labels, scores = _inputs(loss, 'cuda', 1000, 80)
    bad_labels = labels.clone()
    bad_labels[500] = -7
    with pytest.raises(ValueError, match=r'outside \[0, 80\].*asynchronous'):
        out = loss.call(pred, loss.from_labels(bad_labels, scores, 80))
        torch.cuda.synchronize()
        if where == 'next_call':
            loss.call(pred, loss.from_labels(labels, scores, 80))
        elif where == 'backward':
            out.backward()
        else:
            mft.check_pending_inputs()
    loss.call(pred, loss.from_labels(labels, scores, 80)).backward()  # reported once
    mft.check_pending_inputs()


# ---- argument errors, per loss ---------------------------------------------------------------
def _reduction_cases(dev):
    """The reduction and avg_factor arguments, checked alike by every loss."""
    return [
        (dict(reduction='avg'), ValueError, 'reduction must be'),
        (dict(reduction='sum', avg_factor=3.0), ValueError, 'avg_factor can not be used'),
        (dict(avg_factor=torch.ones(2, device=dev)), ValueError, 'avg_factor must be a number'),
        (dict(avg_factor='3'), TypeError, 'avg_factor must be None'),
    ]


def _focal_cases(pred, lab, score, dev):
    return dict(target=lab), [
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
        *_reduction_cases(dev),
        (dict(gamma=-1.0), ValueError, 'gamma'),
        (dict(gamma=float('nan')), ValueError, 'gamma'),
        (dict(alpha=float('inf')), ValueError, 'alpha'),
        (dict(target=lab.float().requires_grad_()[:, None].expand(8, 5)), ValueError,
         'target must not require grad'),
        (dict(target=torch.randint(0, 5, (8,), device='meta')), ValueError,
         'target is on meta'),
        (dict(weight=torch.rand(8, device='meta')), ValueError, 'weight is on meta'),
    ]


def _qfl_cases(pred, lab, score, dev):
    return dict(target=(lab, score)), [
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
        (dict(weight=torch.rand(8, 1, device=dev)), ValueError, 'square matrix'),
        (dict(weight=torch.rand(8, 5, device=dev)), ValueError, 'per-row loss'),
        *_reduction_cases(dev),
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


def _vfl_cases(pred, lab, score, dev):
    target = torch.rand(8, 5, device=dev)
    return dict(target=target), [
        (dict(target=target[:, :4]), ValueError, "target must have pred's shape"),
        (dict(target=(target, target)), TypeError, 'target must be a torch.Tensor'),
        (dict(target=target.to(torch.complex64)), TypeError, 'target must be real'),
        (dict(pred=torch.tensor(1.0, device=dev), target=torch.tensor(1.0, device=dev)),
         ValueError, 'at least one dimension'),
        (dict(pred=pred.detach().long()), TypeError, 'pred must be a floating'),
        (dict(weight=torch.rand(8, device=dev)), ValueError, 'does not broadcast'),
        (dict(weight=torch.rand(2, 8, 5, device=dev)), ValueError, 'does not broadcast'),
        *_reduction_cases(dev),
        (dict(avg_factor=torch.ones(1, 1, device=dev)), ValueError, 'avg_factor must be'),
        (dict(gamma=-0.5), ValueError, 'gamma'),
        (dict(alpha=float('inf')), ValueError, 'alpha'),
        (dict(target=target.clone().requires_grad_()), ValueError, 'target must not require'),
        (dict(target=torch.rand(8, 5, device='meta')), ValueError, 'target is on meta'),
    ]


ARGUMENT_ERRORS = {FOCAL.name: _focal_cases, QFL.name: _qfl_cases, VFL.name: _vfl_cases}


@pytest.mark.parametrize('loss,impl', _backends(LOSSES))
def test_argument_errors(loss, impl):
    pred, labels, scores = _inputs(loss, impl)
    good, cases = ARGUMENT_ERRORS[loss.name](pred, labels, scores, pred.device)
    with impl_context(impl):
        loss.call(pred, **good)  # the unchanged call works
    for kw, exc, msg in cases:
        args = dict(pred=pred, **good)
        args.update(kw)
        with impl_context(impl), pytest.raises(exc, match=msg):
            loss.call(**args)
