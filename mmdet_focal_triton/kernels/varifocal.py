"""Triton kernel of the fused varifocal loss (mmdet's `VarifocalLoss`, VFNet).

The layout is the focal kernel's (`kernels/focal.py`): a persistent grid of programs striding
through blocks of rows, each walked in column chunks; the gradient written in the forward,
already multiplied by weight, normalisation and loss weight; the reduction finished in the same
launch by the last program (`common.reduce_in_last_program`: fixed order, no float atomics).
fp32 arithmetic, int64 offsets. VFL's targets are dense IoU-aware scores: there is no label to
check, so there is no input-check flag.

Math (mmdet 3.3.0), p = sigmoid(x), t the target:
    loss = BCEWithLogits(x, t) * fw,   fw = t (iou_weighted) or 1            where t > 0
                                       fw = alpha * |p - t| ** gamma          where t <= 0
mmdet does not detach fw, so where t <= 0 the gradient also flows through |p - t| ** gamma:
that is the quality focal element of `quality_focal.py` (`_logit_terms` + `_modulate`) times
alpha; where t > 0, d loss / dx = fw * (p - t).
"""
import triton
import triton.language as tl

from .common import (
    load_chunk,
    program_start,
    reduce_in_last_program,
    row_block,
    store_tile,
)
from .quality_focal import _logit_terms, _modulate

# Compile-time modes (chosen by ops/varifocal.py): MOD_MODE as in quality_focal.py (for gamma);
# WEIGHT_MODE 0 (none), 1 (one weight per row: W's column stride is 0), 2 (any strides).


@triton.jit
def varifocal_loss_kernel(
    X, stride_xr, stride_xc,  # logits, viewed as (R, C), any strides
    T, stride_tr, stride_tc,  # targets (R, C), any real dtype
    W, stride_wr, stride_wc,  # weights broadcast to (R, C) (0 strides allowed), if WEIGHT_MODE
    UP, stride_ur, stride_uc,  # upstream gradient (R, C), read only if UPSTREAM
    LOSS, GRAD, OUT, PARTIAL, COUNTER, AF,  # outputs, workspace, avg_factor (common.py)
    R,  # rows
    C,  # columns (classes)
    num_row_blocks,  # cdiv(R, BLOCK_R); the programs stride over them (persistent grid)
    alpha,  # factor of the elements with target <= 0
    gamma,  # exponent of their modulating factor |p - t|
    scale, eps,  # the loss's factor, avg_factor's epsilon (common.py)
    IOU_WEIGHTED: tl.constexpr,  # the elements with target > 0 are weighted by their target
    WEIGHT_MODE: tl.constexpr,  # 0 none, 1 per row, 2 per element
    MOD_MODE: tl.constexpr,  # 0: gamma == 0, 2: gamma == 2, 1: any
    HAS_AF: tl.constexpr, UPSTREAM: tl.constexpr, WRITE_LOSS: tl.constexpr,  # what the call
    REDUCE: tl.constexpr, WRITE_GRAD: tl.constexpr,  # computes (common.py)
    EVEN_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # the block shape,
    BLOCK_P: tl.constexpr, FAST_MATH: tl.constexpr,  # MUFU lg2 / rcp on the GPU (common.py)
):
    pid, nprog, gscale = program_start(scale, AF, eps, HAS_AF, WRITE_GRAD)
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for rb in range(pid, num_row_blocks, nprog):
        rows, rmask, x_row, out_row = row_block(X, rb, R, C, stride_xr, BLOCK_R)  # int64
        if WEIGHT_MODE == 1:
            w_r = tl.load(W + rows * stride_wr, mask=rmask, other=0).to(tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols, mask, x = load_chunk(x_row, rmask, c0, C, stride_xc, 0.0, EVEN_C, BLOCK_R,
                                       BLOCK_C)
            t = tl.load(T + rows[:, None] * stride_tr + cols[None, :] * stride_tc, mask=mask,
                        other=0).to(tl.float32)
            bce, d, dd = _logit_terms(x, t, FAST_MATH)
            lneg, dneg = _modulate(bce, d, d, dd, gamma, MOD_MODE)
            pos = t > 0.0
            if IOU_WEIGHTED:
                fw = t
            else:
                fw = tl.full(t.shape, 1.0, tl.float32)
            loss = tl.where(pos, fw * bce, alpha * lneg)
            dx = tl.where(pos, fw * d, alpha * dneg)
            if WEIGHT_MODE == 1:
                loss = loss * w_r[:, None]
                dx = dx * w_r[:, None]
            elif WEIGHT_MODE == 2:
                w = tl.load(W + rows[:, None] * stride_wr + cols[None, :] * stride_wc,
                            mask=mask, other=0).to(tl.float32)
                loss = loss * w
                dx = dx * w
            if REDUCE:
                acc += tl.where(mask, loss, 0.0)
            store_tile(LOSS, GRAD, UP, out_row, rows, cols, stride_ur, stride_uc, mask, loss,
                       dx * gscale, scale, WRITE_LOSS, WRITE_GRAD, UPSTREAM)
    if REDUCE:
        reduce_in_last_program(tl.sum(tl.sum(acc, axis=1), axis=0), PARTIAL, COUNTER, OUT, AF,
                               scale, eps, HAS_AF, BLOCK_P)
