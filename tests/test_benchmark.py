"""The importable benchmark pieces (mmdet_focal_triton.benchmark), on CPU: shapes, the CSV, the
host-time loop, profiler sums, the registry, a host-mode run through the Triton interpreter, and
the summary tables. The tools' command lines are exercised in test_tools.py."""
import csv
import io
import math
import time

import pytest
import torch

from mmdet_focal_triton.benchmark import (
    FIELDS,
    BenchConfig,
    E2EConfig,
    Impl,
    LossFamily,
    append_csv,
    e2e_table,
    get_family,
    host_table,
    host_time,
    make_inputs,
    parse_shape,
    read_csv,
    register_family,
    resolve,
    retinanet_level_rows,
    run_benchmark,
    wall_table,
)
from mmdet_focal_triton.benchmark.host import fit_iters
from mmdet_focal_triton.benchmark.profiling import BEGIN, END, split_windows, window_time
from mmdet_focal_triton.benchmark.registry import FAMILIES
from mmdet_focal_triton.benchmark.results import add_floor_ratio, new_run_id


def render(renderable):
    from rich.console import Console

    buf = io.StringIO()
    Console(file=buf, width=250, color_system=None).print(renderable)
    return buf.getvalue()


# -- shapes ---------------------------------------------------------------------------------
def test_retinanet_level_rows():
    # 9 anchors per location; P3..P7 have strides 8..128 and round up (800 -> 100 .. 7)
    expected = [2 * 9 * math.ceil(800 / s) * math.ceil(1344 / s) for s in (8, 16, 32, 64, 128)]
    assert expected == [302400, 75600, 18900, 4914, 1386]  # SPEC 4b's P3, P6, P7
    assert retinanet_level_rows(2) == expected
    assert retinanet_level_rows(16) == [8 * n for n in expected]


@pytest.mark.parametrize('s,n,c', [('2.4Mx80', 2_400_000, 80), ('300kx1203', 300_000, 1203),
                                   ('50x3', 50, 3), ('1.5KX7', 1500, 7)])
def test_parse_shape(s, n, c):
    assert parse_shape(s) == (s, n, c)


# -- the CSV --------------------------------------------------------------------------------
def test_append_csv_new_then_append(tmp_path):
    path = tmp_path / 'r.csv'
    append_csv(path, [dict(run_id='a', impl='ours', host_us=12.34567, status='ok')])
    append_csv(path, [dict(run_id='b', impl='floor', host_us=float('nan'), status='ok')])
    rows = read_csv(path)
    assert list(rows[0]) == FIELDS
    assert [(r['run_id'], r['impl'], r['host_us']) for r in rows] == [
        ('a', 'ours', '12.3'), ('b', 'floor', 'nan')]


def test_run_ids_differ_within_one_second_and_sort_by_time():
    ids = [new_run_id() for _ in range(50)]
    assert len(set(ids)) == 50 and ids == sorted(ids), ids


def test_append_csv_upgrades_an_older_header(tmp_path):
    path = tmp_path / 'r.csv'
    old_fields = FIELDS[:FIELDS.index('error') + 1] + ['legacy']  # a file of the older tool
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=old_fields)
        w.writeheader()
        w.writerow(dict(run_id='old', impl='ours', mode='fwd_bwd', ms='0.5', legacy='x'))
    append_csv(path, [dict(run_id='new', impl='ours', mode='host', host_us=200.0)])
    rows = read_csv(path)
    assert list(rows[0]) == old_fields + [k for k in FIELDS if k not in old_fields]
    assert rows[0]['ms'] == '0.5' and rows[0]['legacy'] == 'x' and rows[0]['host_us'] == ''
    assert rows[1]['host_us'] == '200.0' and rows[1]['legacy'] == ''


def test_floor_ratio_per_shape_and_dtype():
    rows = [dict(impl='floor', shape='a', dtype='float32', host_us=100.0, status='ok'),
            dict(impl='ours', shape='a', dtype='float32', host_us=130.0, status='ok'),
            dict(impl='ours', shape='a', dtype='bfloat16', host_us=130.0, status='ok'),
            dict(impl='floor', shape='b', dtype='float32', host_us=50.0, status='ok'),
            dict(impl='ours', shape='b', dtype='float32', host_us=25.0, status='ok')]
    add_floor_ratio(rows, 'floor')
    assert [r['host_x_floor'] for r in rows if r['dtype'] == 'float32'] == [1.0, 1.3, 1.0, 0.5]
    assert math.isnan(rows[2]['host_x_floor'])  # no floor measured for bf16


# -- host time ------------------------------------------------------------------------------
class FakeQueue:
    """A step on a virtual clock whose host cost jumps once more than `depth` calls are pending
    since the last synchronisation: what a full launch queue does to a host that outruns its
    GPU (200 µs per call, then 2 ms: the GPU's pace)."""

    def __init__(self, depth):
        self.depth, self.pending, self.now = depth, 0, 0.0

    def step(self):
        self.pending += 1
        self.now += 2e-3 if self.pending > self.depth else 2e-4

    def sync(self):
        self.pending = 0

    def clock(self):
        return self.now


@pytest.mark.parametrize('depth,max_iters,iters', [(1000, 50, 50), (12, 50, 10), (12, 40, 10),
                                                   (3, 50, 5), (1000, 3, 3)])
def test_fit_iters_stops_before_the_queue_fills(depth, max_iters, iters, monkeypatch):
    from mmdet_focal_triton.benchmark import host

    q = FakeQueue(depth)
    monkeypatch.setattr(host, '_clock', q.clock)
    assert fit_iters(q.step, q.sync, max_iters) == iters
    t = host.host_time(q.step, q.sync, iters, min_blocks=3, max_blocks=3)
    assert t.host_us == pytest.approx(200 if depth >= iters else 200 + 1800 * (1 - depth / 5))


def test_host_time_blocks_and_sync():
    calls, syncs = [], []

    def step():
        calls.append(time.perf_counter())
        time.sleep(1e-4)

    t = host_time(step, lambda: syncs.append(len(calls)), iters=4, min_blocks=3, max_blocks=5,
                  budget_s=0.0)
    assert t.blocks == 3 and t.iters == 4 and len(calls) == 12
    # synchronised before and after every block, never inside one
    assert syncs == [0, 4, 4, 8, 8, 12]
    assert 100 <= t.host_us <= t.wall_us < 1e5
    t = host_time(step, lambda: None, iters=2, min_blocks=1, max_blocks=4, budget_s=10.0)
    assert t.blocks == 4


def test_profile_windows_split_at_markers():
    acts = [(END, 0, 1), ('lost-head-record', -1e8, 1), (END, 1, 1),  # the session's head
            (BEGIN, 10, 1), ('focal_loss_kernel', 11, 30.0), ('scale_kernel', 12, 2.0),
            ('focal_loss_kernel', 13, 30.0), ('scale_kernel', 14, 2.0), (END, 15, 1),
            ('warm-up call', 16, 99.0),  # between windows: counted nowhere
            (BEGIN, 20, 1), ('void at::elementwise_kernel<...>', 21, 5.0), (END, 22, 1)]
    w = split_windows(acts[::-1])  # any order in, time order out
    assert len(w) == 2 and [n for n, _ in w[1]] == ['void at::elementwise_kernel<...>']
    t = window_time(w[0], iters=2)
    assert t.ms == pytest.approx(0.032) and t.launches == 2
    t = window_time(w[0], iters=2, names=('focal_loss_kernel',))
    assert t.ms == pytest.approx(0.030) and t.launches == 1


def test_profile_windows_parse_a_session(monkeypatch):
    """The session's end, on profiler events as torch builds them (FunctionEvent, device side),
    including a session that lost its windows."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from mmdet_focal_triton.benchmark import ProfileWindows

    def ev(name, start, dur, device=DeviceType.CUDA):
        return FunctionEvent(id=0, name=name, thread=0, start_us=start, end_us=start + dur,
                             use_device='cuda', device_type=device)

    class FakeProfile:
        def __init__(self, events):
            self._events = events

        def __exit__(self, *exc):
            pass

        def events(self):
            return self._events

    monkeypatch.setattr(torch.cuda, 'synchronize', lambda: None)
    session = [ev(END, 0, 1), ev(BEGIN, 5, 1), ev('cudaLaunchKernel', 5, 3, DeviceType.CPU),
               ev('focal_loss_kernel', 6, 40), ev('scale_kernel', 50, 4), ev(END, 60, 1),
               ev(BEGIN, 70, 1), ev('trivial_kernel', 71, 2), ev(END, 80, 1)]
    pw = ProfileWindows()
    pw._prof, pw._keys = FakeProfile(session), [('ours', 2, None), ('floor', 1, None)]
    pw.__exit__(None, None, None)
    assert pw.results['ours'].ms == pytest.approx(0.022) and pw.results['ours'].launches == 1
    assert pw.results['floor'].ms == pytest.approx(0.002) and not pw.error
    pw = ProfileWindows()
    pw._prof, pw._keys = FakeProfile(session[:3]), [('ours', 2, None)]
    pw.__exit__(None, None, None)
    assert math.isnan(pw.results['ours'].ms) and '0 marked windows' in pw.error


def test_profile_windows_without_gpu_give_nan():
    from mmdet_focal_triton.benchmark import ProfileWindows, device_time

    with ProfileWindows() as pw:
        pw.measure('a', lambda: None)
    assert math.isnan(pw.results['a'].ms) and math.isnan(device_time(lambda: None).launches)


# -- registry and defaults ------------------------------------------------------------------
def test_focal_family_and_defaults():
    fam = get_family('focal')
    assert list(fam.impls) == ['ours', 'ours-nocheck', 'mmcv', 'mmdet-py', 'compile',
                               'torchvision']
    host = resolve(BenchConfig(mode='host', device='cuda', shapes=[('x', 10, 3)]))
    assert host.impls == list(fam.impls) + ['floor', 'floor-nobwd', 'sigmoid-sum', 'zero']
    assert host.dtypes == ['fp32', 'bf16']
    wall = resolve(BenchConfig(mode='wall', device='cpu'))
    assert wall.impls == ['ours', 'mmdet-py'] and wall.dtypes == ['fp32']
    assert [s[0] for s in wall.shapes] == ['tiny-300x80', 'tiny-64x1203']
    with pytest.raises(ValueError, match='unknown loss'):
        get_family('nope')
    with pytest.raises(ValueError, match='unknown implementation'):
        resolve(BenchConfig(impls=['nope'], device='cpu'))


def test_make_inputs_like_retinanet():
    pred, labels, w, af = make_inputs(2000, 80, torch.bfloat16, 'cpu')
    assert pred.shape == (2000, 80) and pred.dtype == torch.bfloat16 and pred.requires_grad
    assert labels.dtype == torch.long and labels.max() == 80 and 0 < (labels < 80).sum() < 60
    assert af.ndim == 0 and float(af) == (labels < 80).sum()
    assert 0 < (w == 0).sum() < 100


@pytest.fixture
def toy_family():
    """A family registered from outside the package: adding a loss is adding entries."""
    def inputs(N, C, dtype, device, seed=0):
        pred = torch.randn(N, C, dtype=dtype, device=device, requires_grad=True)
        return pred, None, None, torch.tensor(1.0)

    fam = register_family(LossFamily(
        name='toy', doc='a square', make_inputs=inputs, fused_bytes=lambda *a: 0,
        default_shapes=lambda quick: [('toy-8x2', 8, 2)],
        impls={'ours': Impl('ours', lambda: lambda p, t, w, avg_factor=None:
                            (p.float() ** 2).sum() / avg_factor, on_cpu=True)}))
    yield fam
    FAMILIES.pop('toy')


def test_a_new_family_runs_in_both_modes(toy_family, tmp_path):
    for mode in ('wall', 'host'):
        rows = run_benchmark(BenchConfig(loss='toy', mode=mode, device='cpu', quick=True,
                                         host_iters=2, host_blocks=1, host_budget_s=0.0),
                             tmp_path / 'r.csv', log=lambda m: None)
        assert rows and all(r['status'] == 'ok' and r['loss'] == 'toy' for r in rows), rows
    assert {r['mode'] for r in read_csv(tmp_path / 'r.csv')} >= {'fwd_bwd', 'host'}


# -- a host-mode run and the tables ---------------------------------------------------------
def test_host_mode_cpu_run(tmp_path):
    """Ours (through the Triton interpreter), mmdet's python path and every reference pattern
    (the floor pattern's trivial Triton kernel through the interpreter too), one tiny shape."""
    impls = ['ours', 'mmdet-py', 'floor', 'floor-nobwd', 'sigmoid-sum', 'zero']
    cfg = BenchConfig(mode='host', device='cpu', impls=impls, shapes=[('t-20x3', 20, 3)],
                      host_iters=2, host_blocks=2, host_budget_s=0.0)
    rows = run_benchmark(cfg, tmp_path / 'r.csv', log=lambda m: None)
    assert [r['impl'] for r in rows] == impls
    for r in rows:
        assert r['status'] == 'ok', r
        assert r['mode'] == 'host' and r['avg_factor'] == 'float'
        assert 0 < r['host_us'] <= r['wall_us'] and r['iters'] == 2 and r['blocks'] == 2
        assert math.isnan(r['gpu_us'])  # no GPU here
    by = {r['impl']: r for r in rows}
    assert by['floor']['host_x_floor'] == 1.0
    assert by['ours']['host_x_floor'] == pytest.approx(by['ours']['host_us'] /
                                                       by['floor']['host_us'])
    csv_rows = read_csv(tmp_path / 'r.csv')
    assert len(csv_rows) == len(impls)
    assert float(csv_rows[0]['host_x_floor']) == pytest.approx(by['ours']['host_x_floor'],
                                                               rel=1e-3)
    text = render(host_table(csv_rows, impls))
    assert 't-20x3' in text and 'ours / floor' in text
    assert f"{float(csv_rows[0]['host_x_floor']):.2f}" in text


def test_host_mode_records_a_failing_impl(tmp_path):
    cfg = BenchConfig(mode='host', device='cpu', impls=['mmcv', 'zero'],
                      shapes=[('t-4x2', 4, 2)], host_iters=1, host_blocks=1, host_budget_s=0.0)
    rows = run_benchmark(cfg, tmp_path / 'r.csv', log=lambda m: None)
    assert rows[0]['status'] == 'failed' and 'CUDA only' in rows[0]['error']
    assert rows[1]['status'] == 'ok'
    assert 'failed' in render(host_table(rows, ['zero', 'mmcv'], ours='zero'))


def test_wall_table():
    rows = [dict(shape='s', dtype='float32', impl='ours', mode='fwd_bwd', ms='0.5',
                 peak_mib='10', floor_ms='0.25', status='ok'),
            dict(shape='s', dtype='float32', impl='mmcv', mode='fwd_bwd', ms='',
                 status='failed', error='RuntimeError: x')]
    text = render(wall_table(rows, ['ours', 'mmcv'], 'dev'))
    assert '0.500 / 10 / 2.0x' in text and 'failed' in text


def test_e2e_table():
    results = {(2, 'fp32', 'mmdet'): 100.0, (2, 'fp32', 'ours'): 98.0,
               (2, 'fp32', 'zero'): 97.0}
    shares = {(2, 'fp32', 'mmdet'): dict(pct=3.0, low=1.5, high=4.5, resolved=True),
              (2, 'fp32', 'ours'): dict(pct=1.02, low=-0.4, high=2.4, resolved=False)}
    text = render(e2e_table(results, {(2, 'fp32', 'ours'): 0.49}, [2], ['fp32'],
                            ['mmdet', 'ours', 'zero'], 'step', shares))
    assert '+3.00 % [+1.50, +4.50]; not resolved [-0.40, +2.40]' in text
    assert 'n/a, 0.50%' in text


def test_e2e_step_minus_zero_from_paired_rounds():
    """The share of a variant over the zero stand-in comes from the rounds' paired medians:
    a steady 2 ms over 100 ms is resolved whatever the drift between rounds; noise alone is
    not."""
    from mmdet_focal_triton.benchmark.e2e import summarize, vs_zero

    drift = [100.0 + 10 * (k % 4) for k in range(12)]  # the host's speed wanders
    noise = [0.3 * ((-1) ** k) for k in range(12)]
    got = vs_zero({'zero': drift, 'ours': [z + 2.0 + e for z, e in zip(drift, noise)],
                   'mmdet': [z + e for z, e in zip(drift, noise)]})
    assert set(got) == {'ours', 'mmdet'}
    assert got['ours']['vs_zero_resolved'] == 'True'
    assert float(got['ours']['vs_zero_pct']) == pytest.approx(100 * 2.0 / 117.0, rel=1e-2)
    assert got['mmdet']['vs_zero_resolved'] == 'False'
    rows = [dict(batch='2', precision='fp32', variant=v, step_ms='1', loss_gpu_ms='', **f)
            for v, f in got.items()]
    shares = summarize(rows)[2]
    assert shares[(2, 'fp32', 'ours')]['resolved'] and not shares[(2, 'fp32', 'mmdet')][
        'resolved']
    assert vs_zero({'ours': drift}) == {}


def test_quiet_warnings_filters_known_and_records_others():
    import warnings

    from mmdet_focal_triton.benchmark.console import quiet_warnings, report_warnings

    with quiet_warnings() as caught:
        warnings.warn("`torch.cuda.amp.GradScaler(args...)` is deprecated. Please use "
                      "`torch.amp.GradScaler('cuda', args...)` instead.", FutureWarning,
                      stacklevel=1)
        warnings.warn('`torch.jit.script` is deprecated. Please switch to `torch.compile`',
                      DeprecationWarning, stacklevel=1)
        for _ in range(3):
            warnings.warn('something new', UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ['something new']
    from rich.console import Console

    buf = io.StringIO()
    report_warnings(caught, Console(file=buf, width=200))
    assert '1 warning(s)' in buf.getvalue() and 'UserWarning: something new' in buf.getvalue()
    with quiet_warnings(verbose=True) as caught, pytest.warns(UserWarning):
        warnings.warn('shown', UserWarning, stacklevel=1)
    assert caught == []


def test_paired_ratio_cancels_host_drift(monkeypatch):
    """Alternating blocks give the cost ratio of two steps although the host keeps slowing
    down (each block of b makes every later call 2 % slower)."""
    from mmdet_focal_triton.benchmark import host

    t, speed = [0.0], [1.0]
    monkeypatch.setattr(host, '_clock', lambda: t[0])

    def a():
        t[0] += 2e-6 * speed[0]

    def b():
        t[0] += 1e-6 * speed[0]
        speed[0] *= 1.002
    assert host.paired_ratio(a, b, lambda: None, iters=10) == pytest.approx(2.0, rel=0.03)


# -- the quality focal and varifocal families ---------------------------------------------
def test_family_level_rows():
    """Rows per level from mmdet's own prior generators (one prior per location)."""
    from mmdet_focal_triton.benchmark import level_rows
    from mmdet_focal_triton.benchmark.losses.varifocal import vfnet_rows

    assert level_rows('rtmdet/rtmdet_s_8xb32-300e_coco.py', 32, (640, 640)) == [
        204_800, 51_200, 12_800]
    gfl = [2 * math.ceil(800 / s) * math.ceil(1344 / s) for s in (8, 16, 32, 64, 128)]
    assert level_rows('gfl/gfl_r50_fpn_1x_coco.py', 2, (800, 1344)) == gfl == [
        33_600, 8_400, 2_100, 546, 154]
    assert vfnet_rows(2) == sum(gfl) == 44_800 and vfnet_rows(16) == 8 * 44_800


def test_qfl_and_vfl_families_and_defaults():
    qfl, vfl = get_family('qfl'), get_family('vfl')
    assert list(qfl.impls) == ['ours', 'ours-nocheck', 'mmdet-py', 'compile']
    assert list(vfl.impls) == ['ours', 'mmdet-py', 'compile']
    assert qfl.impls['ours'].kernels == ('quality_focal_loss_kernel', 'scale_kernel')
    assert vfl.impls['ours'].kernels == ('varifocal_loss_kernel', 'scale_kernel')
    assert [s[0] for s in qfl.default_shapes()] == [
        'rtmdet-s-b32-P3', 'rtmdet-s-b32-P4', 'rtmdet-s-b32-P5',
        'gfl-b2-P3', 'gfl-b2-P4', 'gfl-b2-P5', 'gfl-b2-P6', 'gfl-b2-P7']
    assert vfl.default_shapes() == [('vfnet-b2', 44_800, 80), ('vfnet-b16', 358_400, 80)]
    host = resolve(BenchConfig(loss='vfl', mode='host', device='cuda', shapes=[('x', 10, 3)]))
    assert host.impls == ['ours', 'mmdet-py', 'compile', 'floor', 'floor-nobwd', 'sigmoid-sum',
                          'zero']
    assert host.dtypes == ['fp32', 'bf16']
    wall = resolve(BenchConfig(loss='qfl', mode='wall', device='cpu'))
    assert wall.impls == ['ours', 'mmdet-py'] and wall.dtypes == ['fp32']
    with pytest.raises(ValueError, match='unknown implementation'):
        resolve(BenchConfig(loss='vfl', impls=['mmcv'], device='cpu'))


def test_family_byte_floors():
    qfl, vfl = get_family('qfl'), get_family('vfl')
    N, C = 1000, 80
    assert qfl.fused_bytes(N, C, torch.float32, 'fwd_bwd') == 2 * N * C * 4 + 16 * N
    assert qfl.fused_bytes(N, C, torch.bfloat16, 'fwd_bwd') == 2 * N * C * 2 + 16 * N
    assert qfl.fused_bytes(N, C, torch.bfloat16, 'fwd_nograd') == N * C * 2 + 16 * N
    assert vfl.fused_bytes(N, C, torch.bfloat16, 'fwd_bwd') == 2 * N * C * 2 + N * C * 4
    assert vfl.fused_bytes(N, C, torch.float32, 'fwd_nograd') == N * C * 4 + N * C * 4
    assert math.isnan(qfl.fused_bytes(N, C, torch.float32, 'bwd'))
    assert math.isnan(vfl.fused_bytes(N, C, torch.float32, 'bwd'))


def test_qfl_inputs_like_rtmdet_and_gfl():
    pred, (labels, scores), w, af = get_family('qfl').make_inputs(3000, 80, torch.bfloat16,
                                                                   'cpu')
    assert pred.shape == (3000, 80) and pred.dtype == torch.bfloat16 and pred.requires_grad
    pos = labels < 80
    assert labels.dtype == torch.long and labels.max() == 80 and 5 < pos.sum() < 60
    assert scores.dtype == torch.float32 and (scores[~pos] == 0).all()
    assert (scores[pos] > 0).all() and (scores[pos] <= 1).all()
    assert (w == 1).all() and w.shape == (3000,)
    assert af.ndim == 0 and float(af) == pos.sum()
    assert get_family('qfl').make_inputs(5, 3, torch.float32, 'cpu')[1][0][0] < 3  # a positive


def test_vfl_inputs_like_vfnet():
    pred, target, w, af = get_family('vfl').make_inputs(3000, 80, torch.float32, 'cpu')
    assert pred.shape == target.shape == (3000, 80) and target.dtype == torch.float32
    assert w is None
    per_row = (target > 0).sum(1)
    assert per_row.max() == 1 and 5 < per_row.sum() < 60
    assert target[target > 0].min() >= 1e-6 and target.max() <= 1 and (target >= 0).all()
    assert af.ndim == 0 and float(af) == per_row.sum()


@pytest.mark.parametrize('loss', ['qfl', 'vfl', 'gaussian'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_family_peers_compute_the_same_loss(loss, dtype):
    """Ours (through the Triton interpreter) and mmdet's module give the same loss and gradient
    on the family's inputs, also with bf16 logits (mmdet's QFL gets the scores in pred's dtype:
    with fp32 ones it fails)."""
    import mmdet_focal_triton as mft

    fam = get_family(loss)
    pred, target, w, af = fam.make_inputs(200, 7, dtype, 'cpu')
    out = {}
    old = mft.get_backend()
    mft.set_backend('triton')
    try:
        for name in ('ours', 'mmdet-py'):
            with fam.impls[name].context():
                val = fam.impls[name].build()(pred, target, w, avg_factor=float(af))
                val.backward()
            out[name] = val.float().detach(), pred.grad.float()
            pred.grad = None
    finally:
        mft.set_backend(old)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(out['ours'][0], out['mmdet-py'][0], **tol)
    torch.testing.assert_close(out['ours'][1], out['mmdet-py'][1], **tol)
    assert out['ours'][0] > 0


def test_gaussian_family_like_centernet():
    fam = get_family('gaussian')
    assert list(fam.impls) == ['ours', 'mmdet-py', 'compile']
    assert fam.impls['ours'].kernels == ('flat_loss_kernel', 'scale_kernel')
    assert fam.default_shapes() == [('centernet-b2', 2 * 128 * 128, 80),
                                    ('centernet-b16', 16 * 128 * 128, 80)]
    N, C = 1000, 80
    assert fam.fused_bytes(N, C, torch.bfloat16, 'fwd_bwd') == 2 * N * C * 2 + N * C * 4
    assert fam.fused_bytes(N, C, torch.float32, 'fwd_nograd') == N * C * 4 + N * C * 4
    pred, target, w, af = fam.make_inputs(2 * 128 * 128, 3, torch.float32, 'cpu')
    assert pred.shape == target.shape == (2, 3, 128, 128) and pred.requires_grad and w is None
    assert pred.min() >= 0.004 and pred.max() <= 0.996
    peaks = int((target == 1).sum())
    assert target.view(-1)[0] == 1 and 20 < peaks < 100 and float(af) == peaks
    assert fam.make_inputs(30, 4, torch.float32, 'cpu')[0].shape == (30, 4)


def test_gaussian_peers_take_the_weight_as_the_registry_passes_it():
    """The registry calls fn(pred, target, weight, avg_factor=...); GaussianFocalLoss's third
    positional argument is pos_inds, so the peers must hand the weight on by name: each gives
    mmdet's weighted loss (through the PyTorch path here)."""
    from mmdet.models.losses.gaussian_focal_loss import gaussian_focal_loss

    fam = get_family('gaussian')
    pred, target, _, af = fam.make_inputs(300, 5, torch.float32, 'cpu')
    weight = torch.rand(pred.shape, generator=torch.Generator().manual_seed(1))
    want = gaussian_focal_loss(pred.detach(), target, weight, alpha=2.0, gamma=4.0,
                               reduction='mean', avg_factor=float(af))
    for name in ('ours', 'mmdet-py'):
        with fam.impls[name].context():
            got = fam.impls[name].build()(pred, target, weight, avg_factor=float(af))
        torch.testing.assert_close(got.detach(), want, rtol=1e-5, atol=0, msg=name)


def test_scores_in_pred_dtype_casts_once_per_target():
    from mmdet_focal_triton.benchmark.losses.quality_focal import scores_in_pred_dtype

    seen = []
    fn = scores_in_pred_dtype(lambda p, t, w, avg_factor=None: seen.append(t[1]))
    pred = torch.zeros(4, 3, dtype=torch.bfloat16)
    target = (torch.zeros(4, dtype=torch.long), torch.rand(4))
    fn(pred, target, None)
    fn(pred, target, None)
    assert seen[0].dtype == torch.bfloat16 and seen[0] is seen[1]
    fn(pred.float(), target, None)
    assert seen[2] is target[1]  # already pred's dtype: passed as it is
    other = (target[0], torch.rand(4))
    fn(pred, other, None)
    assert torch.equal(seen[3], other[1].to(torch.bfloat16)) and seen[3] is not seen[0]


@pytest.mark.parametrize('loss', ['qfl', 'vfl'])
def test_family_runs_in_both_modes(loss, tmp_path):
    """ours (Triton interpreter) and mmdet's module, wall then host mode (+ the floor pattern),
    one tiny shape; the byte floor lands in the wall rows."""
    impls = ['ours', 'mmdet-py']
    for mode, extra in (('wall', []), ('host', ['floor'])):
        rows = run_benchmark(BenchConfig(loss=loss, mode=mode, device='cpu', quick=True,
                                         impls=impls + extra, shapes=[('t-30x4', 30, 4)],
                                         host_iters=2, host_blocks=1, host_budget_s=0.0),
                             tmp_path / 'r.csv', log=lambda m: None)
        assert all(r['status'] == 'ok' and r['loss'] == loss for r in rows), rows
        assert {r['impl'] for r in rows} == set(impls + extra)
    csv_rows = read_csv(tmp_path / 'r.csv')
    fb = [r for r in csv_rows if r['mode'] == 'fwd_bwd' and r['impl'] == 'ours'][0]
    assert float(fb['bytes']) == get_family(loss).fused_bytes(30, 4, torch.float32, 'fwd_bwd')
    host = {r['impl']: r for r in csv_rows if r['mode'] == 'host'}
    assert float(host['floor']['host_x_floor']) == 1.0 and float(host['ours']['host_us']) > 0


# -- the end-to-end models ------------------------------------------------------------------
def test_e2e_models_and_variant_configs():
    from mmdet_focal_triton.benchmark.e2e import MODELS, ZERO_TYPE, loss_cfg, variant_kernels

    assert list(MODELS) == ['retinanet', 'rtmdet-tiny']
    rtm, ret = MODELS['rtmdet-tiny'], MODELS['retinanet']
    assert rtm.img == (640, 640) and rtm.batches == (32,) and ret.img == (800, 1344)
    lc = dict(type='QualityFocalLoss', use_sigmoid=True, beta=2.0, loss_weight=1.0)
    assert loss_cfg('ours', rtm, lc) == dict(lc, type='TritonQualityFocalLoss')
    assert loss_cfg('ours-nocheck', ret, dict(type='FocalLoss')) == dict(type='TritonFocalLoss')
    assert loss_cfg('mmdet', rtm, lc) == lc
    assert loss_cfg('zero', rtm, lc) == dict(type=ZERO_TYPE, use_sigmoid=True)
    assert variant_kernels('ours', rtm) == ('quality_focal_loss_kernel', 'scale_kernel')
    assert variant_kernels('mmdet', rtm) == () and variant_kernels('zero', ret) == ()
    assert variant_kernels('mmdet', ret) == ('sigmoid_focal_loss_forward',
                                             'sigmoid_focal_loss_backward')
    cfg = E2EConfig(model='rtmdet-tiny').resolved()
    assert cfg.batches == (32,) and cfg.img == (640, 640)
    assert E2EConfig().resolved().batches == (2, 8)
    assert E2EConfig(model='rtmdet-tiny', batches=(4,), img=(64, 64)).resolved().img == (64, 64)
    with pytest.raises(ValueError, match='unknown model'):
        E2EConfig(model='nope').resolved()


@pytest.mark.parametrize('variant', ['ours', 'zero'])
def test_e2e_rtmdet_tiny_builds_and_steps(variant, one_torch_thread):
    """RTMDet-tiny with our loss (or the zero stand-in, which takes the (labels, scores)
    target) builds on CPU with BN for SyncBN and takes a training step on a tiny image."""
    from mmdet.utils import register_all_modules

    import mmdet_focal_triton  # noqa: F401
    from mmdet_focal_triton.benchmark.e2e import build_model, make_batch, register_zero_loss

    register_all_modules()
    zero = register_zero_loss()
    model, ow = build_model(variant, 'fp32', 'cpu', model='rtmdet-tiny')
    want = zero if variant == 'zero' else mmdet_focal_triton.TritonQualityFocalLoss
    assert type(model.bbox_head.loss_cls) is want
    assert model.bbox_head.use_sigmoid_cls
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    log = model.train_step(make_batch(1, (64, 64)), ow)
    loss_cls, loss_bbox = float(log['loss_cls'].detach()), float(log['loss_bbox'].detach())
    assert math.isfinite(loss_cls) and math.isfinite(loss_bbox)
    assert (loss_cls == 0.0) == (variant == 'zero')
