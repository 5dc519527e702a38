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

from .common import reduce_in_last_program
from .quality_focal import _logit_terms, _modulate

# Compile-time modes (chosen by ops/varifocal.py): MOD_MODE as in quality_focal.py (for gamma);
# WEIGHT_MODE 0 (none), 1 (one weight per row: W's column stride is 0), 2 (any strides).


@triton.jit
def varifocal_loss_kernel(
    X, stride_xr, stride_xc,  # logits, viewed as (R, C), any strides
    T, stride_tr, stride_tc,  # targets (R, C), any real dtype
    W, stride_wr, stride_wc,  # weights broadcast to (R, C) (0 strides allowed), if WEIGHT_MODE
    UP, stride_ur, stride_uc,  # upstream gradient (R, C), read only if UPSTREAM
    LOSS,  # elementwise loss out, contiguous (R, C), written only if WRITE_LOSS
    GRAD,  # gradient out, contiguous (R, C), written only if WRITE_GRAD
    OUT,  # the reduced loss (one element), written only if REDUCE
    PARTIAL,  # fp32 workspace, one slot per program (REDUCE)
    COUNTER,  # int32 arrival counter of the reduction, 0 between launches (REDUCE)
    AF,  # avg_factor tensor (one element), read only if HAS_AF
    R,  # rows
    C,  # columns (classes)
    num_row_blocks,  # cdiv(R, BLOCK_R); the programs stride over them (persistent grid)
    alpha,  # factor of the elements with target <= 0
    gamma,  # exponent of their modulating factor |p - t|
    scale,  # loss_weight / normaliser: factor of the reduced loss, of a 'none' loss and of the
    #         gradient (which HAS_AF further divides by avg_factor + eps)
    eps,  # added to avg_factor (float32 machine epsilon, as mmdet)
    IOU_WEIGHTED: tl.constexpr,  # the elements with target > 0 are weighted by their target
    WEIGHT_MODE: tl.constexpr,  # 0 none, 1 per row, 2 per element
    MOD_MODE: tl.constexpr,  # 0: gamma == 0, 2: gamma == 2, 1: any
    HAS_AF: tl.constexpr,  # normalise by (avg_factor + eps), read from AF
    UPSTREAM: tl.constexpr,  # multiply the gradient by UP elementwise (backward of 'none')
    WRITE_LOSS: tl.constexpr,  # store the elementwise loss
    REDUCE: tl.constexpr,  # reduce the loss to OUT (sum * scale [/ (avg_factor + eps)])
    WRITE_GRAD: tl.constexpr,  # store the gradient
    EVEN_C: tl.constexpr,  # C % BLOCK_C == 0: no column mask
    BLOCK_R: tl.constexpr,  # rows per block
    BLOCK_C: tl.constexpr,  # columns per chunk; a program walks its rows chunk by chunk
    BLOCK_P: tl.constexpr,  # partial sums added per step by the reducing program
    FAST_MATH: tl.constexpr,  # MUFU lg2 / rcp through inline PTX (GPU only: not interpretable)
):
    pid = tl.program_id(0).to(tl.int64)
    nprog = tl.num_programs(0)
    gscale = scale  # of the gradient
    if WRITE_GRAD:
        if HAS_AF:
            gscale = scale / (tl.load(AF).to(tl.float32) + eps)
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    for rb in range(pid, num_row_blocks, nprog):
        rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)  # int64
        rmask = rows < R
        x_row = X + rows * stride_xr
        out_row = rows * C
        if WEIGHT_MODE == 1:
            w_r = tl.load(W + rows * stride_wr, mask=rmask, other=0).to(tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            if EVEN_C:
                mask = tl.broadcast_to(rmask[:, None], [BLOCK_R, BLOCK_C])
            else:
                mask = rmask[:, None] & (cols < C)[None, :]
            x = tl.load(x_row[:, None] + cols[None, :] * stride_xc, mask=mask,
                        other=0.0).to(tl.float32)
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
            if WRITE_LOSS:
                tl.store(LOSS + out_row[:, None] + cols[None, :],
                         (loss * scale).to(LOSS.dtype.element_ty), mask=mask)
            if WRITE_GRAD:
                g = dx * gscale
                if UPSTREAM:
                    up = tl.load(UP + rows[:, None] * stride_ur + cols[None, :] * stride_uc,
                                 mask=mask, other=0)
                    g = g * up.to(tl.float32)
                tl.store(GRAD + out_row[:, None] + cols[None, :], g.to(GRAD.dtype.element_ty),
                         mask=mask)
    if REDUCE:
        reduce_in_last_program(tl.sum(tl.sum(acc, axis=1), axis=0), PARTIAL, COUNTER, OUT, AF,
                               scale, eps, HAS_AF, BLOCK_P)
