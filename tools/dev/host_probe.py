#!/usr/bin/env python
"""Host and GPU cost of one loss + backward, side by side: this checkout's op against another
version of it (a copy of an older `mmdet_focal_triton` with its ops renamed, `--baseline DIR`,
made by `tools/dev/make_baseline.sh REV DIR`), the floor pattern of an eager op, and
`x.sigmoid().sum()`. For notes/perf.md. `--loss qfl|vfl`: the family's modules instead, with
mmdet's, at the family's benchmark shapes (paired ratios to the floor and the baseline; wall
time of mmdet's loss over ours and over `x.sigmoid().sum()`, two native ops whose C++ backward
nodes bound what any eager loss + backward can reach).

Per shape and dtype (RetinaNet R50-FPN levels at batch 2, 800x1344, plus 2.4Mx80 and 300kx1203):
  host_us    host time per call: a loop of `x.grad = None; loss(...).backward()` without a
             synchronisation, 40 calls per block (the launch queue never fills), median of blocks
  wall_us    triton.testing.do_bench of the same (median)
  kernel_us  GPU time per call of every kernel it launches (torch.profiler)
`--profile`: cProfile of this checkout's op at the smallest level (top functions by self time).
`--maxnreg`: kernel time with and without the register cap at C = 1203.
  python tools/dev/host_probe.py --baseline .baseline [--profile] [--maxnreg]
"""
import argparse
import os.path as osp
import statistics
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # repo root

B2_LEVELS = [302_400, 75_600, 18_900, 4_914, 1_386]  # RetinaNet R50-FPN, 800x1344, batch 2


@triton.jit
def _trivial(X):
    tl.store(X, 1.0)


class FloorPattern(torch.autograd.Function):
    """The floor of an eager fused loss: allocate the gradient and the output, one trivial
    Triton launch in the forward and one in the backward, return the gradient buffer."""

    @staticmethod
    def forward(ctx, x):
        out = torch.empty((), device=x.device, dtype=torch.float32)
        ctx.g = torch.empty_like(x)
        _trivial[(1,)](out)
        return out

    @staticmethod
    def backward(ctx, go):
        _trivial[(1,)](ctx.g)
        g, ctx.g = ctx.g, None
        return g


def inputs(N, C, dtype, seed=0):
    g = torch.Generator(device='cuda').manual_seed(seed)
    x = (torch.randn(N, C, device='cuda', generator=g) * 2).to(dtype).requires_grad_(True)
    lab = torch.full((N,), C, device='cuda', dtype=torch.long)
    pos = torch.rand(N, device='cuda', generator=g) < 0.01
    lab[pos] = torch.randint(0, C, (N,), device='cuda', generator=g)[pos]
    w = (torch.rand(N, device='cuda', generator=g) > 0.02).float()
    return x, lab, w, 37.0


def host_blocks(steps: dict, blocks=15, per_block=40) -> dict:
    """Host time per call of each step in each of `blocks` rounds, the steps timed in
    interleaved blocks (so that the host's drift hits all of them alike; the order alternates)."""
    for step in steps.values():
        for _ in range(5):
            step()
    times = {k: [] for k in steps}
    for i in range(blocks):
        for name, step in (list(steps.items())[::-1] if i % 2 else steps.items()):
            _sync()
            t = time.perf_counter()
            for _ in range(per_block):
                step()
            times[name].append((time.perf_counter() - t) / per_block * 1e6)
    _sync()
    return times


def host_us(steps: dict, blocks=15, per_block=40) -> dict:
    """Median host time per call of each step (`host_blocks`)."""
    return {k: statistics.median(v) for k, v in host_blocks(steps, blocks, per_block).items()}


def paired(times: dict, a: str, b: str) -> float:
    """Median over rounds of a's host time over b's in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def family_main(loss: str, baseline: bool, dtypes, quick: bool = False) -> None:
    """--loss qfl / vfl: the module of this checkout against the baseline's (same inputs, the
    family's benchmark shapes), the floor pattern, and mmdet's module; host µs per loss +
    backward in interleaved rounds, with paired ratios."""
    import mmdet_focal_triton as mft
    from mmdet_focal_triton.benchmark.losses import quality_focal, varifocal

    fam = {'qfl': quality_focal, 'vfl': varifocal}[loss]
    cls = {'qfl': 'TritonQualityFocalLoss', 'vfl': 'TritonVarifocalLoss'}[loss]
    impls = {'ours': getattr(mft, cls)()}
    if baseline:
        import mft_old

        impls['baseline'] = getattr(mft_old, cls)()
    from mmdet.models.losses import QualityFocalLoss, VarifocalLoss

    mmdet_mod = QualityFocalLoss() if loss == 'qfl' else VarifocalLoss()
    impls['mmdet'] = (quality_focal.scores_in_pred_dtype(mmdet_mod) if loss == 'qfl'
                      else mmdet_mod)
    dts = {'fp32': torch.float32, 'bf16': torch.bfloat16}
    refs = ['floor', 'sigmoid']
    print(f"{'shape':<22}{'dtype':<6}" + ''.join(f'{k:>10}' for k in [*impls, *refs])
          + '  ours/floor  ours/base  mmdet/ours(wall)  mmdet/sigmoid(wall)', flush=True)
    dev = 'cuda' if torch.cuda.is_available() else 'cpu'
    for name, N, C in fam.default_shapes(quick):
        for dt in dtypes:
            pred, target, weight, af = fam.make_inputs(N, C, dts[dt], dev)
            steps = {}
            for impl, fn in impls.items():
                def step(fn=fn):
                    pred.grad = None
                    fn(pred, target, weight, avg_factor=af).backward()
                try:
                    step()
                except Exception as e:  # mmdet's loss in bf16, e.g.: a row without it
                    print(f'  {impl} {name} {dt}: {type(e).__name__}: {e}'[:200], flush=True)
                    continue
                steps[impl] = step

            def floor():
                pred.grad = None
                FloorPattern.apply(pred).backward()
            def sigmoid():  # two native ops with C++ backward nodes: below any eager loss
                pred.grad = None
                pred.sigmoid().sum().backward()
            steps['floor'] = floor
            steps['sigmoid'] = sigmoid
            times = host_blocks(steps, blocks=3 if quick else 11, per_block=20)
            med = {k: statistics.median(v) for k, v in times.items()}
            line = f'{name:<22}{dt:<6}' + ''.join(
                f'{med[k]:>10.1f}' if k in med else f'{"-":>10}' for k in [*impls, *refs])
            line += f"  {paired(times, 'ours', 'floor'):>10.3f}"
            line += (f"  {paired(times, 'ours', 'baseline'):>9.3f}" if 'baseline' in times
                     else '  ' + 9 * '-')
            if 'mmdet' in steps and dev == 'cuda':
                from triton.testing import do_bench

                wall = {k: do_bench(steps[k], warmup=5, rep=30, return_mode='median') * 1e3
                        for k in ('ours', 'mmdet', 'sigmoid')}
                line += f"  {wall['mmdet'] / wall['ours']:>8.1f} ({wall['ours']:.0f} us)"
                line += f"  {wall['mmdet'] / wall['sigmoid']:>11.1f} ({wall['sigmoid']:.0f} us)"
            print(line, flush=True)
            mft.check_pending_inputs()
            pred = target = weight = af = steps = None
            torch.cuda.empty_cache()
    kern = (mft.ops.quality_focal if loss == 'qfl' else mft.ops.varifocal)._kernel.loaded
    if kern is not None:  # None: the PyTorch path ran (CPU)
        print(f'{loss} kernel: {kern.direct_launches} direct launches, {len(kern.compiled)} '
              'compiled specialisations')


def kernel_us(step, iters=20):
    from torch.profiler import ProfilerActivity, profile

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            step()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters


_COMPILED = []


def compiled_peer():
    """torch.compile of mmdet's python focal loss (one compilation, dynamic shapes)."""
    if not _COMPILED:
        from mmdet.models.losses.focal_loss import py_sigmoid_focal_loss

        _COMPILED.append(torch.compile(py_sigmoid_focal_loss, dynamic=True))
    return _COMPILED[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--baseline', default=None, help='folder holding mft_old/ (renamed ops)')
    ap.add_argument('--profile', action='store_true')
    ap.add_argument('--maxnreg', action='store_true')
    ap.add_argument('--compile', action='store_true',
                    help='also torch.compile of mmdet python loss at 2.4Mx80 and 300kx1203')
    ap.add_argument('--dtypes', nargs='+', default=['fp32', 'bf16'])
    ap.add_argument('--quick', action='store_true', help='--loss qfl|vfl: tiny shapes (a smoke '
                    'test, also on the CPU)')
    ap.add_argument('--loss', default='focal', choices=['focal', 'qfl', 'vfl'],
                    help='qfl / vfl: the family modules at their benchmark shapes, against the '
                    'baseline, the floor pattern and mmdet')
    args = ap.parse_args()
    if args.loss != 'focal':
        if args.baseline:
            sys.path.insert(0, args.baseline)
        family_main(args.loss, bool(args.baseline), args.dtypes, args.quick)
        return
    from triton.testing import do_bench

    import mmdet_focal_triton as mft
    from mmdet_focal_triton.ops import focal

    impls = {'ours': mft.sigmoid_focal_loss}
    if args.baseline:
        sys.path.insert(0, args.baseline)
        import mft_old

        impls['baseline'] = mft_old.sigmoid_focal_loss
    print(torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    shapes = [(f'b2-P{i + 3}', n, 80) for i, n in enumerate(B2_LEVELS)]
    shapes += [('2.4Mx80', 2_400_000, 80), ('300kx1203', 300_000, 1203)]
    dtypes = {'fp32': torch.float32, 'bf16': torch.bfloat16}
    print(f"{'shape':<12}{'dtype':<6}{'impl':<10}{'host_us':>9}{'wall_us':>9}{'kernel_us':>10}")
    for name, N, C in shapes:
        for dt in args.dtypes:
            x, lab, w, af = inputs(N, C, dtypes[dt])
            steps = {}
            for impl, fn in impls.items():
                def step(fn=fn):
                    x.grad = None
                    fn(x, lab, w, avg_factor=af).backward()
                steps[impl] = step

            def floor():
                x.grad = None
                FloorPattern.apply(x).backward()

            def sig():
                x.grad = None
                x.sigmoid().sum().backward()
            steps['floor'] = floor
            steps['sigmoid'] = sig
            if N * C >= 10 ** 8 and args.compile:  # the strongest peer, at large sizes
                compiled = compiled_peer()

                def comp():
                    x.grad = None
                    onehot = torch.nn.functional.one_hot(lab, C + 1)[:, :C]
                    compiled(x, onehot, w, 2.0, 0.25, 'mean', af).backward()
                steps['compile'] = comp
            hosts = host_us(steps)
            for impl, step in steps.items():
                wall = do_bench(step, warmup=10, rep=50, return_mode='median') * 1e3
                k = kernel_us(step)
                print(f'{name:<12}{dt:<6}{impl:<10}{hosts[impl]:>9.1f}{wall:>9.1f}{k:>10.1f}',
                      flush=True)
            mft.check_pending_inputs()
            x = lab = w = None
            torch.cuda.empty_cache()
    for layout, lazy in focal._KERNELS.items():
        k = lazy.loaded or lazy()
        print(f'{layout} kernel: {k.direct_launches} direct launches, {len(k.compiled)} '
              'compiled specialisations')
    if args.profile:
        import cProfile
        import pstats

        x, lab, w, af = inputs(1386, 80, torch.float32)

        def step():
            x.grad = None
            mft.sigmoid_focal_loss(x, lab, w, avg_factor=af).backward()
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(500):
            step()
        pr.disable()
        torch.cuda.synchronize()
        pstats.Stats(pr).sort_stats('tottime').print_stats(22)
    if args.maxnreg:
        from mmdet_focal_triton.ops import tuning

        for dt in args.dtypes:
            for N, C in ((300_000, 1203), (2_400_000, 80)):
                x, lab, w, af = inputs(N, C, dtypes[dt])
                res = {}
                for cap in (0, 128, None):
                    tuning.set_tuning(maxnreg=cap)

                    def step():
                        x.grad = None
                        mft.sigmoid_focal_loss(x, lab, w, avg_factor=af).backward()
                    res[cap] = kernel_us(step)
                tuning.reset_tuning()
                print(f'{N}x{C} {dt} kernel us by maxnreg (0 = none, None = default rule): '
                      + ', '.join(f'{k}: {v:.1f}' for k, v in res.items()), flush=True)
                x = lab = w = None
                torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
