#!/usr/bin/env python
"""Benchmark the fused focal loss against its peers; append rows to a CSV and plot from it.

Implementations (each where it runs; a failure is recorded with its error, not hidden):
  ours          TritonFocalLoss (fused Triton kernels; gradient written in the forward pass)
  ours-nocheck  the same with the label-range check off (no host synchronisation)
  mmcv          mmdet's FocalLoss on CUDA = mmcv's CUDA op (`mmcv.ops.sigmoid_focal_loss`)
  mmdet-py      mmdet's python path: one-hot + `py_sigmoid_focal_loss`
  compile       torch.compile of that python path
  torchvision   torchvision.ops.sigmoid_focal_loss on the one-hot target (+ weight, avg_factor)

Every implementation computes the same thing: the mean focal loss of (N, C) logits with class-index
targets (background = C), per-anchor weights and a 0-d tensor avg_factor, as a RetinaNet head does.
Modes: `fwd` (forward with autograd recording, pred requires grad), `fwd_bwd` (forward + backward),
`bwd` (= fwd_bwd - fwd), `fwd_nograd` (inference). Times are medians of
`triton.testing.do_bench` on CUDA (torch.utils.benchmark on CPU); memory is the peak allocated
during fwd_bwd above what was allocated before it (the gradient included). GB/s counts the bytes
a fused kernel must move (read logits, labels, weights; write the gradient for fwd_bwd) over the
measured time, and `frac_copy` divides that by the device-to-device copy bandwidth measured at
the start of the run.

Examples:
  python tools/benchmark.py                                   # full default set on the GPU
  python tools/benchmark.py --shapes 2.4Mx80 --dtypes bf16 --impls ours compile
  python tools/benchmark.py --device cpu --quick              # a tiny CPU run (CI)
  python tools/benchmark.py --plot-only --csv work_dirs/benchmark/results.csv
"""
import argparse
import csv
import datetime
import math
import os
import os.path as osp
import platform
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
ALL_IMPLS = ['ours', 'ours-nocheck', 'mmcv', 'mmdet-py', 'compile', 'torchvision']
FIELDS = ['run_id', 'timestamp', 'device', 'torch', 'triton', 'mmcv', 'mmdet', 'impl', 'shape',
          'N', 'C', 'dtype', 'mode', 'ms', 'peak_mib', 'grad_mib', 'bytes', 'gbps', 'frac_copy',
          'floor_ms', 'copy_gbps', 'status', 'error']


# ------------------------------------------------------------------------------------------
# shapes
# ------------------------------------------------------------------------------------------
def retinanet_level_rows(batch, img_hw=(800, 1344)):
    """Anchors per FPN level for RetinaNet R50-FPN at `img_hw`, from mmdet's anchor generator.

    Feature-map sizes follow the conv arithmetic of ResNet + FPN (every stride-2 conv with
    'same'-style padding rounds up: 800 -> 100, 50, 25, 13, 7 for strides 8..128)."""
    from mmdet.registry import TASK_UTILS
    from mmdet.utils import register_all_modules

    from mmdet_focal_triton.mm_utils import load_mmdet_config

    register_all_modules()
    cfg = load_mmdet_config('retinanet/retinanet_r50_fpn_1x_coco.py')
    gen = TASK_UTILS.build(cfg.model.bbox_head.anchor_generator)
    h, w = img_hw
    sizes = []
    for _ in range(2):  # stem conv + max-pool: stride 4
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    for _ in range(5):  # C3, C4, C5, P6, P7: strides 8 .. 128
        h, w = math.ceil(h / 2), math.ceil(w / 2)
        sizes.append((h, w))
    priors = gen.grid_priors(sizes, device='cpu')
    return [batch * p.shape[0] for p in priors]


def default_shapes(quick=False):
    if quick:
        return [('tiny-300x80', 300, 80), ('tiny-64x1203', 64, 1203)]
    shapes = []
    for batch in (2, 16):
        for lvl, n in enumerate(retinanet_level_rows(batch)):
            shapes.append((f'retina-b{batch}-P{lvl + 3}', n, 80))
    shapes += [('2.4Mx80', 2_400_000, 80), ('300kx1203', 300_000, 1203)]
    return shapes


def parse_shape(s):
    """'2.4Mx80' -> ('2.4Mx80', 2400000, 80)."""
    n, c = s.lower().split('x')
    mult = {'k': 1_000, 'm': 1_000_000}.get(n[-1], 1)
    n = float(n[:-1]) if n[-1] in 'km' else float(n)
    return (s, int(n * mult), int(c))


# ------------------------------------------------------------------------------------------
# inputs and implementations
# ------------------------------------------------------------------------------------------
def make_inputs(N, C, dtype, device, seed=0):
    g = torch.Generator(device='cpu').manual_seed(seed)
    pred = (torch.randn(N, C, generator=g) * 2).to(device=device, dtype=dtype)
    labels = torch.full((N,), C, dtype=torch.long)
    pos = torch.rand(N, generator=g) < 0.01  # ~1 % positive anchors, like RetinaNet
    labels[pos] = torch.randint(0, C, (int(pos.sum()),), generator=g)
    weights = (torch.rand(N, generator=g) > 0.02).float()  # a few ignored anchors
    avg_factor = torch.tensor(float(max(int(pos.sum()), 1)))
    return (pred.requires_grad_(True), labels.to(device), weights.to(device),
            avg_factor.to(device))


def _one_hot(labels, C):
    return F.one_hot(labels, num_classes=C + 1)[:, :C]


_COMPILED = {}


def build_impl(name):
    """Return fn(pred, labels, weights, avg_factor) -> scalar loss."""
    if name in ('ours', 'ours-nocheck'):
        from mmdet_focal_triton import TritonFocalLoss

        loss = TritonFocalLoss(gamma=2.0, alpha=0.25)
        return lambda p, lab, w, af: loss(p, lab, w, avg_factor=af)
    if name == 'mmcv':
        from mmdet.models.losses.focal_loss import sigmoid_focal_loss

        def mmcv_fn(p, lab, w, af):
            if not p.is_cuda:
                raise RuntimeError('mmcv CUDA op: CUDA only')
            return sigmoid_focal_loss(p, lab, w, 2.0, 0.25, 'mean', af)
        return mmcv_fn
    if name in ('mmdet-py', 'compile'):
        from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

        def py(p, lab, w, af):
            return py_sigmoid_focal_loss(p, _one_hot(lab, p.shape[1]), w, 2.0, 0.25, 'mean', af)
        if name == 'mmdet-py':
            return py
        if 'compile' not in _COMPILED:  # one compilation with dynamic shapes for every shape
            _COMPILED['compile'] = torch.compile(py, dynamic=True)
        return _COMPILED['compile']
    if name == 'torchvision':
        from torchvision.ops import sigmoid_focal_loss as tv_focal

        def tv(p, lab, w, af):
            loss = tv_focal(p, _one_hot(lab, p.shape[1]).to(p.dtype), 0.25, 2.0, 'none')
            return (loss * w[:, None]).sum() / (af + torch.finfo(torch.float32).eps)
        return tv
    raise ValueError(name)


# ------------------------------------------------------------------------------------------
# measurement
# ------------------------------------------------------------------------------------------
def bench_ms(fn, device, grad_to_none=None, quick=False):
    if device == 'cuda':
        from triton.testing import do_bench

        return do_bench(fn, warmup=25 if not quick else 5, rep=100 if not quick else 20,
                        grad_to_none=grad_to_none, return_mode='median')
    from torch.utils.benchmark import Timer

    def run():
        if grad_to_none:
            for t in grad_to_none:
                t.grad = None
        fn()
    fn()  # warm-up
    m = Timer(stmt='run()', globals={'run': run}).blocked_autorange(min_run_time=0.05 if quick
                                                                    else 0.5)
    return m.median * 1e3


def copy_bandwidth(device):
    """Device-to-device copy bandwidth (bytes read + written per second), GB/s."""
    if device != 'cuda':
        return float('nan')
    from triton.testing import do_bench

    n = 1 << 28  # 1 GiB of fp32
    x = torch.empty(n, device=device).normal_()
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode='median')
    x = y = None  # free the 2 GiB before the benchmark
    return 2 * 4 * n / (ms * 1e-3) / 1e9


def fused_bytes(N, C, dtype, mode):
    """Bytes a fused implementation must move in `mode`; NaN for 'bwd' (= fwd_bwd - fwd), which
    has no floor of its own: a fused forward leaves nothing for the backward to move."""
    if mode == 'bwd':
        return float('nan')
    esize = torch.tensor([], dtype=dtype).element_size()
    per_row = 8 + 4  # int64 label + fp32 weight
    b = N * C * esize + N * per_row
    if mode in ('fwd_bwd', 'fwd'):  # the fused forward writes the gradient
        b += N * C * esize
    return b


def measure(impl, fn, N, C, dtype, device, quick):
    """Yield result dicts for the modes of one (impl, shape, dtype)."""
    import mmdet_focal_triton as mft

    pred, labels, weights, af = make_inputs(N, C, dtype, device)
    mft.set_input_checks(impl != 'ours-nocheck')
    try:
        def fwd():
            return fn(pred, labels, weights, af)

        def fwd_bwd():
            fn(pred, labels, weights, af).backward()

        def fwd_nograd():
            with torch.no_grad():
                return fn(pred, labels, weights, af)

        out = fwd()  # compile / first call outside timing; also checks it runs
        if not torch.isfinite(out).all():
            raise FloatingPointError(f'non-finite loss {out.item()}')
        out.backward()
        pred.grad = None
        del out
        res = {}
        res['fwd'] = bench_ms(fwd, device, quick=quick)
        res['fwd_nograd'] = bench_ms(fwd_nograd, device, quick=quick)
        res['fwd_bwd'] = bench_ms(fwd_bwd, device, grad_to_none=[pred], quick=quick)
        res['bwd'] = max(res['fwd_bwd'] - res['fwd'], 0.0)
        peak = float('nan')
        if device == 'cuda':
            pred.grad = None
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fwd_bwd()
            torch.cuda.synchronize()
            peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
            pred.grad = None
        for mode, ms in res.items():
            yield dict(mode=mode, ms=ms, peak_mib=peak if mode == 'fwd_bwd' else float('nan'),
                       status='ok', error='')
    finally:
        mft.set_input_checks(True)


def versions():
    out = {'torch': torch.__version__}
    for mod in ('triton', 'mmcv', 'mmdet'):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = ''
    return out


# ------------------------------------------------------------------------------------------
# plotting
# ------------------------------------------------------------------------------------------
def plot(csv_path, png_path, run_id=None):
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    run_id = run_id or rows[-1]['run_id']
    rows = [r for r in rows if r['run_id'] == run_id and r['mode'] == 'fwd_bwd']
    groups = []
    for r in rows:
        key = (r['shape'], r['dtype'])
        if key not in groups:
            groups.append(key)
    impls = [i for i in ALL_IMPLS if any(r['impl'] == i for r in rows)]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(groups) + 2), 5))
    width = 0.8 / max(len(impls), 1)
    for k, impl in enumerate(impls):
        xs, ys = [], []
        for gi, (shape, dt) in enumerate(groups):
            for r in rows:
                if (r['impl'], r['shape'], r['dtype']) == (impl, shape, dt) and r['status'] == 'ok':
                    xs.append(gi + k * width)
                    ys.append(float(r['ms']))
        ax.bar(xs, ys, width=width, label=impl)
    floors = []
    for gi, (shape, dt) in enumerate(groups):
        f = [float(r['floor_ms']) for r in rows if (r['shape'], r['dtype']) == (shape, dt)
             and r['floor_ms'] not in ('', 'nan')]
        if f:
            floors.append(gi + 0.4 - width / 2)
            ax.hlines(f[0], gi - width / 2, gi + 0.8 - width / 2, colors='k', linestyles='dashed',
                      linewidth=1)
    ax.set_xticks([gi + 0.4 - width / 2 for gi in range(len(groups))])
    ax.set_xticklabels([f'{s}\n{d}' for s, d in groups], rotation=60, fontsize=7, ha='right')
    ax.set_yscale('log')
    ax.set_ylabel('loss + backward, median ms (log)')
    dev = rows[0]['device'] if rows else ''
    ax.set_title(f'Focal loss + backward on {dev} (dashed: memory-bandwidth floor)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path


# ------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split('\n', 1)[1])
    ap.add_argument('--device', default='auto', choices=['auto', 'cuda', 'cpu'])
    ap.add_argument('--impls', nargs='+', default=None, choices=ALL_IMPLS,
                    help='implementations (default: all; on CPU: ours, mmdet-py)')
    ap.add_argument('--dtypes', nargs='+', default=None, choices=list(DTYPES),
                    help='default: fp32 fp16 bf16 (CPU: fp32)')
    ap.add_argument('--shapes', nargs='+', default=None,
                    help='e.g. 2.4Mx80 300kx1203 (default on CUDA: RetinaNet levels at batch 2 '
                         'and 16 for 800x1344, 2.4Mx80, 300kx1203; on CPU: two small shapes)')
    ap.add_argument('--quick', action='store_true', help='tiny shapes, short timing (CI)')
    ap.add_argument('--out-dir', default='work_dirs/benchmark')
    ap.add_argument('--csv', default=None, help='CSV to append to (default OUT_DIR/results.csv)')
    ap.add_argument('--plot-only', action='store_true', help='only redraw the PNG from the CSV')
    args = ap.parse_args(argv)

    os.makedirs(args.out_dir, exist_ok=True)
    csv_path = args.csv or osp.join(args.out_dir, 'results.csv')
    png_path = osp.join(args.out_dir, 'focal_loss_benchmark.png')
    if args.plot_only:
        print(plot(csv_path, png_path))
        return 0

    device = args.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    if device == 'cpu' and os.environ.get('TRITON_INTERPRET') == '1':
        import mmdet_focal_triton as mft

        mft.set_backend('triton')  # exercise the kernels through the interpreter
    impls = args.impls or (ALL_IMPLS if device == 'cuda' else ['ours', 'mmdet-py'])
    dtypes = [DTYPES[d] for d in (args.dtypes or (['fp32', 'fp16', 'bf16'] if device == 'cuda'
                                                   else ['fp32']))]
    # on CPU the full-size shapes take minutes per call: small ones unless --shapes is given
    shapes = [parse_shape(s) for s in args.shapes] if args.shapes else default_shapes(
        args.quick or device == 'cpu')

    import torch._dynamo as dynamo
    from rich.progress import Progress

    dynamo.config.recompile_limit = 64  # dtypes x shapes of the compiled peer

    import mmdet_focal_triton  # noqa: F401  (registers the loss, patches mmengine)

    ver = versions()
    dev_name = torch.cuda.get_device_name() if device == 'cuda' else platform.processor() or 'cpu'
    copy_gbps = copy_bandwidth(device)
    run_id = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    print(f'device: {dev_name}; copy bandwidth {copy_gbps:.0f} GB/s; {ver}')
    new_file = not osp.exists(csv_path)
    rows = []
    with open(csv_path, 'a', newline='') as f, Progress() as progress:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new_file:
            writer.writeheader()
        task = progress.add_task('benchmark', total=len(shapes) * len(dtypes) * len(impls))
        for name, N, C in shapes:
            for dtype in dtypes:
                for impl in impls:
                    progress.update(task, description=f'{impl} {name} {dtype}')
                    base = dict(run_id=run_id, timestamp=datetime.datetime.now().isoformat(
                        timespec='seconds'), device=dev_name, impl=impl, shape=name, N=N, C=C,
                        dtype=str(dtype).replace('torch.', ''), copy_gbps=f'{copy_gbps:.1f}',
                        grad_mib=N * C * torch.tensor([], dtype=dtype).element_size() / 2 ** 20,
                        **ver)
                    try:
                        fn = build_impl(impl)
                        results = list(measure(impl, fn, N, C, dtype, device, args.quick))
                    except Exception as e:  # noqa: BLE001  a failing peer is a result
                        msg = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'
                        results = [dict(mode='fwd_bwd', ms=float('nan'), peak_mib=float('nan'),
                                        status='failed', error=msg[:300])]
                        if os.environ.get('BENCH_DEBUG'):
                            traceback.print_exc()
                    for r in results:
                        b = fused_bytes(N, C, dtype, r['mode'])
                        floor = b / (copy_gbps * 1e9) * 1e3 if copy_gbps == copy_gbps else \
                            float('nan')
                        gbps = b / (r['ms'] * 1e-3) / 1e9 if r['ms'] == r['ms'] and r['ms'] > 0 \
                            else float('nan')
                        row = dict(base, **r, bytes=b, gbps=f'{gbps:.1f}',
                                   frac_copy=f'{gbps / copy_gbps:.3f}' if copy_gbps == copy_gbps
                                   else '', floor_ms=f'{floor:.4f}')
                        row['ms'] = f"{r['ms']:.4f}"
                        row['peak_mib'] = f"{r['peak_mib']:.1f}"
                        row['grad_mib'] = f"{row['grad_mib']:.1f}"
                        writer.writerow(row)
                        rows.append(row)
                    f.flush()
                    progress.advance(task)
                    if device == 'cuda':
                        torch.cuda.empty_cache()
    # summary table (fwd_bwd)
    print(f'\nloss + backward, median ms ({dev_name}); peak MiB above inputs; x floor')
    hdr = f"{'shape':<20}{'dtype':<10}" + ''.join(f'{i:>22}' for i in impls)
    print(hdr)
    for name, _, _ in shapes:
        for dtype in dtypes:
            dt = str(dtype).replace('torch.', '')
            cells = []
            for impl in impls:
                r = [x for x in rows if x['impl'] == impl and x['shape'] == name and
                     x['dtype'] == dt and x['mode'] == 'fwd_bwd']
                if not r or r[0]['status'] != 'ok':
                    cells.append(f"{'failed':>22}")
                    continue
                r = r[0]
                ratio = float(r['ms']) / float(r['floor_ms']) if r['floor_ms'] not in (
                    'nan', '') and float(r['floor_ms']) > 0 else float('nan')
                cells.append(f"{float(r['ms']):>9.3f} {float(r['peak_mib']):>6.0f}M "
                             f"{ratio:>4.1f}x")
            print(f'{name:<20}{dt:<10}' + ''.join(cells))
    failed = sorted({(r['impl'], r['dtype'], r['error']) for r in rows if r['status'] != 'ok'})
    for impl, dt, err in failed:
        print(f'  {impl} {dt}: {err}')
    png = plot(csv_path, png_path, run_id)
    print(f'\nCSV: {csv_path}\nplot: {png}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
