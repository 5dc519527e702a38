"""The host-side launch path of the fused losses, checked on the CPU.

The GPU takes two paths to a kernel: Triton's JIT launch with tensors (the first call of a
specialisation; it compiles and caches the kernel under the call's key) and the direct launch of
the cached kernel with pointers as ints (every later call). The Triton interpreter, which runs
the kernels in CI, always takes the first. Here the kernel launches are replaced by recorders
(nothing runs), the Triton path is taken for CPU tensors, and the direct launch's arguments are
compared with the JIT launch's of an identical call: the same values in every position, each
tensor replaced by its data pointer. Also: the retained-graph guard, the packed flags, and
the functorch-wrapper route of the eager Function.
"""
import pytest
import torch
from _family_inputs import make_qfl_target, make_row_weight, make_vfl_target, make_vfl_weight
from _inputs import (
    IMPLS,
    device_of,
    impl_context,
    make_generator,
    make_pred,
    make_target,
    make_weight,
)

import mmdet_focal_triton as mft
from mmdet_focal_triton.ops import (
    autograd,
    flat,
    focal,
    fused_op,
    gaussian_focal,
    launcher,
    quality_focal,
    tuning,
    varifocal,
)
from mmdet_focal_triton.ops.spec import FocalSpec, QualityFocalSpec, VarifocalSpec

OPS = (focal, quality_focal, varifocal, flat)  # where the launches allocate their outputs


class Recorder:
    """Stands in for `launcher.Kernel.launch` / `.run`: records each launch's arguments; a
    JIT launch with a key stores a fake compiled entry, so that the next call launches it
    directly (as on the GPU)."""

    def __init__(self, monkeypatch):
        self.calls = []
        rec = self

        def launch(kernel, key, grid, stream, args, options):
            entry = kernel.compiled.get(key) if key is not None else None
            if entry is not None:
                kernel.run(entry, grid, stream, args)
                return
            rec.calls.append(('jit', kernel.fn.__name__, key, grid, args))
            if key is not None:
                kernel.compiled[key] = ('fake', None, None)

        def run(kernel, entry, grid, stream, args):
            rec.calls.append(('direct', kernel.fn.__name__, None, grid, args))

        monkeypatch.setattr(launcher.Kernel, 'launch', launch)
        monkeypatch.setattr(launcher.Kernel, 'run', run)
        for mod in (fused_op, autograd):  # where the ops ask which path a call takes
            monkeypatch.setattr(mod, 'use_triton', lambda t: True)
        self.outputs = []
        for mod in OPS:
            real = mod.new_outputs

            def spy(*a, real=real):
                out = real(*a)
                self.outputs.append(out)
                return out
            monkeypatch.setattr(mod, 'new_outputs', spy)
        launcher.clear_cache()


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder(monkeypatch)
    yield rec
    launcher.clear_cache()  # the fake compiled entries


def _direct_form(jit_args, outs_jit, outs_direct):
    """The arguments a direct launch must get for a JIT launch's `jit_args`: ints for tensors
    (the call's own outputs mapped to the second call's outputs), everything else equal."""
    swap = {id(a): b for a, b in zip(outs_jit, outs_direct) if a is not None}
    return tuple(swap.get(id(a), a).data_ptr() if isinstance(a, torch.Tensor) else a
                 for a in jit_args)


def _focal_call(case, g, dev='cpu'):
    target_kind, weight_kind, reduction, af = case
    af = af.to(dev) if isinstance(af, torch.Tensor) else af
    pred = make_pred(37, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_target(target_kind, 37, 80, dev, g)
    weight = make_weight(weight_kind, 37, 80, dev, g)
    return pred, lambda: mft.sigmoid_focal_loss(pred, target, weight, reduction=reduction,
                                                avg_factor=af)


def _qfl_call(case, g, dev='cpu'):
    target_kind, weight_kind, reduction, af = case
    af = af.to(dev) if isinstance(af, torch.Tensor) else af
    pred = make_pred(37, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_qfl_target(target_kind, 37, 80, dev, g)
    weight = make_row_weight(weight_kind, 37, dev, g)
    return pred, lambda: mft.quality_focal_loss(pred, target, weight, reduction=reduction,
                                                avg_factor=af)


def _vfl_call(case, g, dev='cpu'):
    target_kind, weight_kind, reduction, af = case
    af = af.to(dev) if isinstance(af, torch.Tensor) else af
    pred = make_pred(37, 80, torch.float32, dev, g).requires_grad_(True)
    target = make_vfl_target(target_kind, 37, 80, dev, g)
    weight = make_vfl_weight(weight_kind, 37, 80, dev, g)
    return pred, lambda: mft.varifocal_loss(pred, target, weight, reduction=reduction,
                                            avg_factor=af)


def _gaussian_call(case, g, dev='cpu'):
    target_kind, weight_kind, reduction, af = case
    af = af.to(dev) if isinstance(af, torch.Tensor) else af
    pred = make_pred(37, 80, torch.float32, dev, g, activated=True).requires_grad_(True)
    target = make_vfl_target('soft', 37, 80, dev, g).clamp_min(0)
    target[3, :5] = 1.0
    weight = make_vfl_weight(weight_kind, 37, 80, dev, g)
    return pred, lambda: mft.gaussian_focal_loss(pred, target, weight, reduction=reduction,
                                                 avg_factor=af)


AF = torch.tensor(5.0)
CASES = {
    'focal': (_focal_call, [(t, w, r, a) for t in ('index', 'soft')
                            for w in ('none', 'row', 'elem')
                            for r, a in (('mean', None), ('mean', 3.0), ('mean', AF),
                                         ('sum', None), ('none', None))]),
    'qfl': (_qfl_call, [(t, w, r, a) for t in ('tuple', 'dense') for w in ('none', 'row', 'one')
                        for r, a in (('mean', None), ('mean', AF), ('sum', None),
                                     ('none', None))]),
    'vfl': (_vfl_call, [(t, w, r, a) for t in ('iou',) for w in ('none', 'elem', 'row1', 'col')
                        for r, a in (('mean', None), ('mean', AF), ('sum', None),
                                     ('none', None))]),
    # (a broadcast weight is made contiguous per call: a new tensor, at a new address)
    'gaussian': (_gaussian_call, [('heatmap', w, r, a) for w in ('none', 'elem')
                                  for r, a in (('mean', None), ('mean', AF), ('sum', None),
                                               ('none', None))]),
}
PARAMS = [(loss, case) for loss, (_, cases) in CASES.items() for case in cases]


@pytest.mark.parametrize('loss,case', PARAMS, ids=[f'{k}-{"-".join(map(str, c[:3]))}-'
                                                  f'{type(c[3]).__name__}' for k, c in PARAMS])
def test_direct_launch_gets_the_jit_launchs_arguments(loss, case, recorder):
    """Two identical calls (forward and backward each): the first compiles through the JIT
    path, the second launches directly with exactly the same arguments as ints."""
    rec = recorder
    build, _ = CASES[loss]
    pred, call = build(case, make_generator('direct-args', loss, *map(str, case)))
    up = None
    for _ in range(2):
        out = call()
        up = torch.full(out.shape, 0.5) if up is None else up  # the same tensor both times
        torch.autograd.grad(out, pred, up)
    half, h = len(rec.calls) // 2, len(rec.outputs) // 2
    first, second = rec.calls[:half], rec.calls[half:]
    assert len(first) == len(second) >= 1 and len(rec.outputs) == 2 * h
    assert all(c[0] == 'jit' and c[2] is not None for c in first)  # contiguous: a key
    assert all(c[0] == 'direct' for c in second)
    # the second call's outputs in place of the first call's (allocated in the same order)
    outs_jit = [t for pair in rec.outputs[:h] for t in pair]
    outs_direct = [t for pair in rec.outputs[h:] for t in pair]
    for a, b in zip(first, second):
        assert a[1] == b[1] and a[3] == b[3]  # kernel, grid
        want = _direct_form(a[4], outs_jit, outs_direct)
        assert len(b[4]) == len(want)
        for pos, (got, exp) in enumerate(zip(b[4], want)):
            assert type(got) is type(exp) and got == exp, (a[1], pos, got, exp)


def test_non_contiguous_inputs_take_the_jit_path(recorder):
    """A transposed pred has no canonical strides: no key, no cached kernel, the JIT path with
    its real strides every time."""
    rec = recorder
    g = make_generator('jit-path')
    pred = make_pred(40, 80, torch.float32, 'cpu', g, 'transposed').requires_grad_(True)
    target = make_qfl_target('tuple', 40, 80, 'cpu', g)
    for _ in range(2):
        mft.quality_focal_loss(pred, target, avg_factor=3.0).backward()
    qfl_calls = [c for c in rec.calls if c[1] == 'quality_focal_loss_kernel']
    assert len(qfl_calls) == 2 and all(c[0] == 'jit' and c[2] is None for c in qfl_calls)
    assert qfl_calls[0][4][1:3] == pred.stride()


@pytest.mark.parametrize('loss', ['focal', 'qfl', 'vfl', 'gaussian'])
@pytest.mark.parametrize('impl', IMPLS)
def test_second_backward_after_the_gradient_changed_in_place(loss, impl):
    """A second backward through a retained graph rescales the buffer the first one handed over
    as pred.grad: unchanged, it gives the exact gradient; changed in place since (as
    zero_grad(set_to_none=False) does), a clear error instead of a silently wrong gradient."""
    build, cases = CASES[loss]
    case = next(c for c in cases if c[2] == 'mean' and c[3] is AF)
    dev = device_of(impl)
    pred, call = build(case, make_generator('retain-inplace', loss, impl), dev)
    with impl_context(impl):
        out = call()
        (want,) = torch.autograd.grad(call(), pred)
        out.backward(retain_graph=True)
        pred.grad = None  # set_to_none: the buffer itself is untouched
        out.backward(torch.tensor(2.0, device=dev), retain_graph=True)
        torch.testing.assert_close(pred.grad, 2.0 * want, rtol=1e-6, atol=0)
        out2 = call()
        pred.grad = None
        out2.backward(retain_graph=True)  # pred.grad is the buffer
        pred.grad.zero_()
        with pytest.raises(RuntimeError, match='modified in place'):
            out2.backward()


@pytest.mark.parametrize('spec_cls,fields', [(FocalSpec, [range(3), range(3)] + [(0, 1)] * 4),
                                             (QualityFocalSpec, [range(3)] + [(0, 1)] * 5),
                                             (VarifocalSpec, [range(3)] + [(0, 1)] * 3)])
def test_flags_from_values_equal_packed_spec(spec_cls, fields):
    import itertools

    for values in itertools.product(*fields):
        typed = [bool(v) if spec_cls.__annotations__[f] is bool else v
                 for f, v in zip(spec_cls._fields, values)]
        assert spec_cls.flags(*typed) == spec_cls(*typed).pack()
        back = spec_cls.unpack(spec_cls.flags(*typed))
        assert back == spec_cls(*typed) and [type(v) for v in back] == [type(v) for v in typed]


def test_tensor_leaked_from_a_torch_func_transform():
    """A tensor that escaped a finished torch.func transform (a dead functorch wrapper) takes
    Function.apply's own route, which unwraps it: the loss is still right."""
    from torch.func import grad

    leaked = []

    def f(x):
        leaked.append(x * 1)
        return x.sum()
    x = torch.randn(20, 80)
    grad(f)(x)
    lab = torch.randint(0, 81, (20,))
    assert torch._C._functorch.is_functorch_wrapped_tensor(leaked[0])
    torch.testing.assert_close(mft.sigmoid_focal_loss(leaked[0], lab),
                               mft.sigmoid_focal_loss(x, lab))


def test_launch_config_precedence():
    """TUNING overrides the measured table, which overrides the rule of default_block_c; the
    resolved configuration is cached, and set_tuning drops the cache."""
    assert tuning.launch_config(48, torch.float32)['block_c'] == tuning.default_block_c(48) == 16
    measured = tuning.launch_config(80, torch.float32)
    assert (measured['block_r'], measured['block_c']) == (32, 32)  # the H200 sweep's winner
    assert tuning.launch_config(80, torch.float32) is measured  # cached
    try:
        tuning.set_tuning(block_c=16, tile=4096, num_warps=4)
        cfg = tuning.launch_config(80, torch.float32)
        assert (cfg['block_r'], cfg['block_c'], cfg['num_warps']) == (256, 16, 4)
        with pytest.raises(ValueError, match='unknown tuning keys'):
            tuning.set_tuning(blocks=3)
    finally:
        tuning.reset_tuning()
    assert tuning.launch_config(80, torch.float32) == measured


# ---- on the GPU ------------------------------------------------------------------------------
def _kernel_of(loss, layout):
    if loss == 'focal':
        return focal._KERNELS[layout]()
    if loss == 'gaussian':
        return gaussian_focal._Variant.KERNEL()
    return quality_focal._kernel() if loss == 'qfl' else varifocal._kernel()


@pytest.mark.cuda
@pytest.mark.parametrize('loss,layout', [('focal', 'rows'), ('focal', 'flat'), ('qfl', None),
                                         ('vfl', None), ('gaussian', None)])
@pytest.mark.parametrize('reduction', ['mean', 'none'])
def test_direct_launch_matches_jit_launch_cuda(loss, layout, reduction):
    """On the GPU: the first call of a specialisation compiles through Triton's JIT (tensors),
    the next ones launch the cached kernel directly (pointers as ints): bitwise the same loss
    and gradient, and the direct launches counted (the focal loss in both of its layouts)."""
    if layout:
        mft.set_tuning(layout=layout)  # also drops the compiled-kernel cache
    launcher.clear_cache()
    try:
        build, cases = CASES[loss]
        case = next(c for c in cases if c[1] != 'none' and c[2] == reduction)
        g = make_generator('direct-cuda', loss, layout, reduction)
        af = torch.tensor(9.0, device='cuda') if reduction == 'mean' else None
        pred, call = build((*case[:3], af), g, 'cuda')
        results = []
        for i in range(3):
            out = call()
            up = torch.full(out.shape, 0.5, device='cuda')
            (grad,) = torch.autograd.grad(out, pred, up)
            if i == 0:
                before = _kernel_of(loss, layout).direct_launches
                # a reduced loss reduces in a workspace of the stream's own
                assert reduction == 'none' or len(launcher._WORKSPACES) >= 1
            results.append((out, grad))
        launches = 2 if reduction == 'mean' else 4  # 'none': the backward is a launch of it too
        assert _kernel_of(loss, layout).direct_launches - before == launches
        for out, grad in results[1:]:
            assert torch.equal(out, results[0][0]) and torch.equal(grad, results[0][1])
    finally:
        mft.set_tuning(layout=None)


@pytest.mark.cuda
def test_streams_get_their_own_workspace():
    """Losses on two streams at once: each stream reduces in its own workspace."""
    g = make_generator('streams')
    preds = [make_pred(20000, 80, torch.float32, 'cuda', g) for _ in range(2)]
    labs = [make_target('index', 20000, 80, 'cuda', g) for _ in range(2)]
    want = [mft.sigmoid_focal_loss(p, t) for p, t in zip(preds, labs)]
    streams = [torch.cuda.Stream() for _ in range(2)]
    torch.cuda.synchronize()
    outs = []
    for _ in range(20):
        for s, p, t in zip(streams, preds, labs):
            with torch.cuda.stream(s):
                outs.append(mft.sigmoid_focal_loss(p, t))
    torch.cuda.synchronize()
    for i, out in enumerate(outs):
        assert torch.equal(out, want[i % 2])


@pytest.mark.cuda
def test_cuda_graph_replay_with_input_check():
    """Captured in a CUDA graph, the loss + backward replays right, and the input check (a
    kernel write to host-mapped memory) still reports bad labels of a replay."""
    g = make_generator('graph')
    base = make_pred(5000, 80, torch.float32, 'cuda', g)
    lab = make_target('index', 5000, 80, 'cuda', g)
    x = base.clone().requires_grad_(True)
    ref = mft.sigmoid_focal_loss(x, lab, avg_factor=7.0)
    (gref,) = torch.autograd.grad(ref, x)
    ref = ref.detach()
    # the captured graph's leaf: first used, warmed up and captured on one side stream (its
    # AccumulateGrad node belongs to the stream of its first use)
    pred = base.clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            (grad,) = torch.autograd.grad(mft.sigmoid_focal_loss(pred, lab, avg_factor=7.0), pred)
    torch.cuda.current_stream().wait_stream(side)
    del grad
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):
        out = mft.sigmoid_focal_loss(pred, lab, avg_factor=7.0)
        (grad,) = torch.autograd.grad(out, pred)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, ref) and torch.equal(grad, gref)
    lab[17] = 1000  # a bad label, seen by the next replay
    graph.replay()
    with pytest.raises(ValueError, match=r'outside \[0, 80\]'):
        mft.check_pending_inputs()
