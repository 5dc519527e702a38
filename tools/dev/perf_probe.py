#!/usr/bin/env python
"""Where does the fused kernel's time go? Ceilings of its memory access pattern, measured.

Times (GPU kernel time via torch.profiler) for a 2.4M x 80 fp32 problem:
  copy-flat       y = 2x over the flat tensor (BLOCK 4096): the streaming ceiling
  copy-rows-16    the same traffic in the focal kernel's pattern: row blocks, 16-column chunks
  copy-rows-128   row blocks, one padded 128-column chunk per row (C = 80)
  focal-16/-128   the real kernel (forward writing the gradient) with 16 / 128-column chunks
and the fraction of the copy bandwidth each reaches. See notes/perf.md.
`--check-cost`: instead, the GPU time of each kernel with the input check off / async / sync.
"""
import os.path as osp
import sys

import torch
import triton
import triton.language as tl

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # tools/ (benchmark helpers)
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))  # repo root


@triton.jit
def copy_flat(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(Y + offs, tl.load(X + offs, mask=m) * 2.0, mask=m)


@triton.jit
def copy_rows(X, Y, R, C, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        m = rmask[:, None] & (cols < C)[None, :]
        offs = rows[:, None] * C + cols[None, :]
        tl.store(Y + offs, tl.load(X + offs, mask=m) * 2.0, mask=m)


def kernel_ms(fn, iters=20):
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    return sum(e.self_device_time_total for e in prof.key_averages()) / iters / 1e3


def check_cost():
    """GPU time of each kernel of loss + backward with the input check off / async / sync (the
    check is fused into the loss kernel: its cost is that kernel's time difference)."""
    from benchmark import make_inputs
    from torch.profiler import ProfilerActivity, profile

    import mmdet_focal_triton as mft
    from mmdet_focal_triton import TritonFocalLoss

    loss = TritonFocalLoss()
    print(torch.cuda.get_device_name())
    for N, C, dtype in [(300_000, 1203, torch.float32), (300_000, 1203, torch.bfloat16),
                        (2_400_000, 80, torch.float32), (2_400_000, 80, torch.bfloat16)]:
        pred, lab, w, af = make_inputs(N, C, dtype, 'cuda')
        for mode in ('off', 'async', 'sync'):
            mft.set_input_checks(mode)

            def step():
                loss(pred, lab, w, avg_factor=af).backward()
                pred.grad = None
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as prof:
                for _ in range(10):
                    step()
                torch.cuda.synchronize()
            per = {e.key[:32]: e.self_device_time_total / 10 / 1e3 for e in prof.key_averages()
                   if e.self_device_time_total > 0}
            print(f'{N}x{C} {str(dtype)[6:]} check={mode}: ' +
                  ', '.join(f'{k} {v:.4f}' for k, v in per.items()))
        mft.set_input_checks(True)
        mft.check_pending_inputs()
        pred = lab = w = af = None
        torch.cuda.empty_cache()


def main():
    if '--check-cost' in sys.argv:
        return check_cost()
    from benchmark import copy_bandwidth, make_inputs

    import mmdet_focal_triton as mft
    from mmdet_focal_triton import TritonFocalLoss
    from mmdet_focal_triton.ops import tuning

    bw = copy_bandwidth('cuda')
    print(f'{torch.cuda.get_device_name()}: copy {bw:.0f} GB/s')
    for dtype, N, C in [(torch.float32, 2_400_000, 80), (torch.bfloat16, 2_400_000, 80),
                        (torch.float32, 300_000, 1203)]:
        x = torch.randn(N, C, device='cuda', dtype=dtype)
        y = torch.empty_like(x)
        nbytes = 2 * x.numel() * x.element_size()
        res = {}
        res['copy-flat'] = kernel_ms(lambda: copy_flat[(triton.cdiv(x.numel(), 4096),)](
            x, y, x.numel(), BLOCK=4096, num_warps=8))
        for bc in (16, 64, 128):
            res[f'copy-rows-{bc}'] = kernel_ms(lambda: copy_rows[(triton.cdiv(N, 2048 // bc),)](
                x, y, N, C, BLOCK_R=2048 // bc, BLOCK_C=bc, num_warps=8))
        pred, lab, w, af = make_inputs(N, C, dtype, 'cuda')
        loss = TritonFocalLoss()
        mft.set_input_checks(False)
        for bc in (None, 64, 256):
            for tile in (1024, 2048, 4096):
                tuning.set_tuning(block_c=bc, tile=tile, programs_per_sm=10 ** 9)

                def fwd():
                    loss(pred, lab, w, avg_factor=af)
                res[f'focal-fwd+grad-c{bc or "auto"}-t{tile}'] = kernel_ms(fwd)
        tuning.reset_tuning()
        mft.set_input_checks(True)
        print(f'\n{N}x{C} {dtype}: read+write {nbytes / 1e9:.2f} GB, floor '
              f'{nbytes / bw / 1e6:.3f} ms')
        for k, v in res.items():
            print(f'  {k:28s} {v:.4f} ms  {nbytes / (v * 1e-3) / 1e9 / bw:.3f} of copy bw')
        x = y = pred = None
        torch.cuda.empty_cache()


if __name__ == '__main__':
    main()
