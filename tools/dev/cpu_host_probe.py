#!/usr/bin/env python
"""The Python host cost of one loss + backward, measured on a machine without a GPU.

The Triton path is forced on CPU tensors and the kernel launches are replaced by no-ops
(`launcher.Kernel.launch` / `.run`), so what is timed is exactly our Python and torch's autograd
around the launches: the checks, the spec, the eager Function, the allocations, the launch
preparation, the backward. Four modules (TritonFocalLoss, TritonQualityFocalLoss,
TritonVarifocalLoss at one RetinaNet-P7-sized level, TritonGaussianFocalLoss on a 2 x 80 x 32 x 32
heatmap), against the same code of an older
revision (`--baseline DIR` from tools/dev/make_baseline.sh) and the floor pattern (an
autograd.Function with two allocations and no launch), in alternating blocks; the ratios are
medians of per-pair ratios (the host drifts). The GPU host's driver calls are not in it: use
tools/dev/host_probe.py there.
  python tools/dev/cpu_host_probe.py --baseline .baseline [--profile qfl]
"""
import argparse
import cProfile
import os.path as osp
import pstats
import statistics
import sys
import time
from importlib import import_module

import torch

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # repo root


def stub(pkg: str) -> None:
    """Triton path on CPU tensors, launches that do nothing (a JIT launch stores a fake
    compiled entry under its key, so that later calls take the direct path as on a GPU)."""
    launcher = import_module(pkg + '.ops.launcher')
    # where a revision's ops ask which path a call takes (fused_op since the shared dispatch)
    for m in ('focal', 'quality_focal', 'varifocal', 'autograd', 'fused_op'):
        import_module(f'{pkg}.ops.{m}').use_triton = lambda t: True

    def launch(self, key, grid, stream, args, options):
        entry = self.compiled.get(key) if key is not None else None
        if entry is None:
            if key is not None:
                self.compiled[key] = (lambda *a: None, 0, None)
            return
        self.run(entry, grid, stream, args)
    launcher.Kernel.launch = launch


class Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred):
        ctx.g = torch.empty_like(pred)
        return torch.empty((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, go):
        return ctx.g


def block(step, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t) / n * 1e6


def steps_of(pkg, N: int, C: int) -> dict:
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(N, C, generator=g).requires_grad_(True)
    lab = torch.full((N,), C, dtype=torch.long)
    lab[::100] = 3
    score, w, af = torch.rand(N, generator=g), torch.ones(N), torch.tensor(7.0)
    tgt = torch.zeros(N, C)
    tgt[::100, 3] = 0.7
    fl, qfl, vfl = pkg.TritonFocalLoss(), pkg.TritonQualityFocalLoss(), pkg.TritonVarifocalLoss()
    heat = torch.rand(2, 80, 32, 32, generator=g).requires_grad_(True)
    heat_t = torch.rand(2, 80, 32, 32, generator=g) ** 4
    heat_t[:, 3, 5, 5] = 1.0
    gfl = pkg.TritonGaussianFocalLoss()

    def focal():
        pred.grad = None
        fl(pred, lab, w, avg_factor=37.0).backward()

    def quality_focal():
        pred.grad = None
        qfl(pred, (lab, score), w, avg_factor=af).backward()

    def varifocal():
        pred.grad = None
        vfl(pred, tgt, avg_factor=37.0).backward()

    def gaussian():
        heat.grad = None
        gfl(heat, heat_t, avg_factor=af).backward()

    def floor():
        pred.grad = None
        Floor.apply(pred).backward()
    return dict(focal=focal, qfl=quality_focal, vfl=varifocal, gaussian=gaussian, floor=floor)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--baseline', help='folder holding mft_old/ (make_baseline.sh)')
    ap.add_argument('--rows', type=int, default=1386)
    ap.add_argument('--pairs', type=int, default=31)
    ap.add_argument('--calls', type=int, default=100, help='calls per block')
    ap.add_argument('--profile', choices=['focal', 'qfl', 'vfl', 'gaussian'],
                    help='cProfile of ours')
    args = ap.parse_args()
    import mmdet_focal_triton as new

    stub('mmdet_focal_triton')
    ours = steps_of(new, args.rows, 80)
    base = None
    if args.baseline:
        sys.path.insert(0, args.baseline)
        import mft_old

        stub('mft_old')
        base = steps_of(mft_old, args.rows, 80)
    print(f"{'loss':6s} {'ours':>7s} {'base':>7s} {'floor':>7s}  ours/base  ours/floor")
    for k in ('focal', 'qfl', 'vfl', 'gaussian'):
        impls = {'ours': ours[k], 'floor': ours['floor']}
        if base:
            impls['base'] = base[k]
        for s in impls.values():
            for _ in range(50):
                s()
        t = {name: [] for name in impls}
        for i in range(args.pairs):
            for name, s in (list(impls.items())[::-1] if i % 2 else impls.items()):
                t[name].append(block(s, args.calls))
        med = {n: statistics.median(v) for n, v in t.items()}
        ratio = lambda a, b: statistics.median(x / y for x, y in zip(t[a], t[b]))  # noqa: E731
        print(f"{k:6s} {med['ours']:7.1f} {med.get('base', float('nan')):7.1f} "
              f"{med['floor']:7.1f}  {ratio('ours', 'base') if base else float('nan'):9.3f}"
              f"  {ratio('ours', 'floor'):10.3f}")
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(2000):
            ours[args.profile]()
        pr.disable()
        pstats.Stats(pr).sort_stats('tottime').print_stats(25)


if __name__ == '__main__':
    main()
