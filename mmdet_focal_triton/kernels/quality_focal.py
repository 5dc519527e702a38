"""Triton kernel of the fused quality focal loss (mmdet's `QualityFocalLoss`, GFL / RTMDet / TOOD /
DDQ), and the element math it shares with the varifocal kernel.

The layout is the focal kernel's (`kernels/focal.py`): a persistent grid of programs striding
through blocks of rows, each row block walked in column chunks; per-row work (label, score,
weight, the row's one positive element) hoisted out of the inner loop; the gradient written in
the forward, already multiplied by weight, normalisation and loss weight; the reduction finished
in the same launch by the last program (`common.reduce_in_last_program`: fixed order, no float
atomics); labels outside [0, C] and probabilities outside [0, 1] reported through the sticky
host-mapped flag (`common.report_bad_input`). fp32 arithmetic, int64 offsets.

Math (mmdet 3.3.0), p = sigmoid(x) (p = x when activated), t the element's quality target (the
row's score at its label, 0 elsewhere, or the dense target):
    loss_elem = BCE(x, t) * |p - t| ** beta,        loss_row = sum over classes of loss_elem
and the row's weight multiplies loss_row. With t = 0 this is BCE(x, 0) * p ** beta: the focal
kernel's negative element with gamma = beta and no alpha (`focal._neg_focal`), which is the
inner loop of class-index targets. An element with a soft target costs one more formula
(`_logit_terms` + `_modulate`), evaluated once per row for class-index targets.

Derivative, with d = p - t: d loss / dz = dbce * |d|**beta + beta * bce * |d|**(beta-1) *
sign(d) * dd, where dbce = d BCE / dz and dd = d p / dz (z = x: dbce = d, dd = p (1 - p);
activated, z = p: torch's BCE derivative, dd = 1). The second term is written
beta * |d|**beta * dd * (bce / d), whose factors stay bounded where d -> 0 with t = 0
(bce / d -> 1); at d == 0 it is taken as 0 (mmdet: NaN for beta < 1).
"""
import triton
import triton.language as tl

from .common import (
    LN2,
    load_chunk,
    log1p_exp_neg,
    program_start,
    recip_1_2,
    reduce_in_last_program,
    report_bad_input,
    row_block,
)
from .focal import _neg_focal

# Compile-time modes (chosen by ops/quality_focal.py and ops/varifocal.py): MOD_MODE 0 (the
# exponent is 0: the modulating factor is 1), 2 (exponent 2, the default: d * d, no
# transcendental), 1 (any other: exp2(exponent * log2|d|)).


@triton.jit
def _logit_terms(x, t, FAST: tl.constexpr):
    """(bce, d, dd) for logits x and soft targets t (fp32): BCEWithLogits(x, t), d = sigmoid(x)
    - t (accurate also where both are close to 1), and d sigmoid / dx = p (1 - p)."""
    e, lp = log1p_exp_neg(tl.abs(x), FAST)
    r = recip_1_2(1.0 + e, FAST)  # sigmoid(|x|)
    ge = x >= 0.0
    p = tl.where(ge, r, e * r)
    q = tl.where(ge, e * r, r)  # 1 - p, accurate
    bce = tl.where(ge, x * (1.0 - t), -x * t) + lp  # max(x, 0) - x t + log1p(exp(-|x|))
    d = tl.where(t >= 0.5, (1.0 - t) - q, p - t)
    return bce, d, p * q


@triton.jit
def _prob_terms(p, t):
    """(bce, dbce, d) for probabilities p (activated): torch's binary_cross_entropy (logs
    clamped at -100) and its derivative (p - t) / max(p (1 - p), 1e-12); d = p - t."""
    logp = tl.maximum(tl.log2(p) * LN2, -100.0)
    log1mp = tl.maximum(tl.log2(1.0 - p) * LN2, -100.0)
    bce = -(t * logp + (1.0 - t) * log1mp)
    dbce = (p - t) / tl.maximum(p * (1.0 - p), 1e-12)
    return bce, dbce, p - t


@triton.jit
def _modulate(bce, dbce, d, dd, expo, MOD_MODE: tl.constexpr):
    """bce * |d| ** expo and its derivative dbce * |d|**expo + expo * |d|**expo * dd * bce / d
    (0 where d == 0)."""
    if MOD_MODE == 0:
        loss = bce
        dz = dbce
    elif MOD_MODE == 2:
        mod = d * d
        loss = bce * mod
        dz = dbce * mod + 2.0 * bce * d * dd
    else:
        nz = d != 0.0
        mod = tl.exp2(expo * tl.log2(tl.abs(d)))  # 0 where d == 0 (expo > 0)
        loss = bce * mod
        ratio = bce / tl.where(nz, d, 1.0)
        dz = dbce * mod + tl.where(nz, expo * mod * dd * ratio, 0.0)
    return loss, dz


@triton.jit
def _qfl_logit(x, t, beta, MOD_MODE: tl.constexpr, FAST: tl.constexpr):
    """Loss and d loss / dx of BCEWithLogits(x, t) * |sigmoid(x) - t| ** beta."""
    bce, d, dd = _logit_terms(x, t, FAST)
    return _modulate(bce, d, d, dd, beta, MOD_MODE)


@triton.jit
def _qfl_prob(p, t, beta, MOD_MODE: tl.constexpr):
    """Loss and d loss / dp of BCE(p, t) * |p - t| ** beta (activated: p is a probability)."""
    bce, dbce, d = _prob_terms(p, t)
    return _modulate(bce, dbce, d, 1.0, beta, MOD_MODE)


@triton.jit
def quality_focal_loss_kernel(
    X, stride_xr, stride_xc,  # logits (probabilities if ACTIVATED), viewed as (R, C), any strides
    T, stride_tr, stride_tc,  # targets: (R,) class indices if INDEX_TARGET, else dense (R, C)
    S, stride_sr,  # quality scores (R,) of the labelled classes, read only if INDEX_TARGET
    W, stride_wr,  # weights of the per-row losses (R,) (stride 0: one for all), if WEIGHTED
    UP, stride_ur,  # upstream gradient of the per-row loss (R,), read only if UPSTREAM
    LOSS, GRAD, OUT, PARTIAL, COUNTER, FLAG, AF,  # outputs, workspace, avg_factor (common.py)
    R,  # rows
    C,  # columns (classes)
    num_row_blocks,  # cdiv(R, BLOCK_R); the programs stride over them (persistent grid)
    beta,  # exponent of the modulating factor |p - t|
    scale, eps,  # the loss's factor, avg_factor's epsilon (common.py)
    INDEX_TARGET: tl.constexpr,  # (labels, scores) targets: labels in [0, C], C = background
    ACTIVATED: tl.constexpr,  # X holds probabilities, not logits
    WEIGHTED: tl.constexpr,  # multiply each row's loss by W
    MOD_MODE: tl.constexpr,  # 0: beta == 0, 2: beta == 2, 1: any
    HAS_AF: tl.constexpr, UPSTREAM: tl.constexpr, WRITE_LOSS: tl.constexpr,  # what the call
    REDUCE: tl.constexpr, WRITE_GRAD: tl.constexpr, CHECK: tl.constexpr,  # computes (common.py)
    EVEN_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # the block shape,
    BLOCK_P: tl.constexpr, FAST_MATH: tl.constexpr,  # MUFU lg2 / rcp on the GPU (common.py)
):
    pid, nprog, gscale = program_start(scale, AF, eps, HAS_AF, WRITE_GRAD)
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    bad_lab = tl.zeros([], tl.int32)  # labels: one reduction per row block (see focal.py)
    bad = tl.zeros([BLOCK_R, BLOCK_C], tl.int32)  # probabilities (activated inputs only)
    for rb in range(pid, num_row_blocks, nprog):
        rows, rmask, x_row, out_row = row_block(X, rb, R, C, stride_xr, BLOCK_R)  # int64
        # ---- per-row work ------------------------------------------------------------------
        w_l = tl.full([BLOCK_R], 1.0, tl.float32)  # factor of the row's loss
        if WEIGHTED:
            w_l = tl.load(W + rows * stride_wr, mask=rmask, other=0).to(tl.float32)
        w_g = w_l * gscale  # factor of the row's gradient
        if UPSTREAM:
            w_g = w_g * tl.load(UP + rows * stride_ur, mask=rmask, other=0).to(tl.float32)
        if INDEX_TARGET:
            # int64 whatever the label dtype (unsigned ones included)
            lab = tl.load(T + rows * stride_tr, mask=rmask, other=C).to(tl.int64)
            valid = (lab >= 0) & (lab < C)
            if CHECK:
                bad_lab = bad_lab | tl.max((((lab < 0) | (lab > C)) & rmask).to(tl.int32), axis=0)
            lab32 = tl.where(valid, lab, -1).to(tl.int32)  # -1 never matches a column
            pmask = rmask & valid
            s = tl.load(S + rows * stride_sr, mask=pmask, other=0).to(tl.float32)
            xp = tl.load(x_row + lab32 * stride_xc, mask=pmask, other=0.5).to(tl.float32)
            if ACTIVATED:
                lpos, dpos = _qfl_prob(xp, s, beta, MOD_MODE)
            else:
                lpos, dpos = _qfl_logit(xp, s, beta, MOD_MODE, FAST_MATH)
            lpos_w = lpos * w_l  # the positive's loss and gradient, weighted
            gpos_w = dpos * w_g
        row_acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
        # ---- the row's columns, chunk by chunk ---------------------------------------------
        for c0 in range(0, C, BLOCK_C):
            cols, mask, x = load_chunk(x_row, rmask, c0, C, stride_xc, 0.5, EVEN_C, BLOCK_R,
                                       BLOCK_C)
            if INDEX_TARGET:
                if ACTIVATED:
                    loss, dx = _qfl_prob(x, tl.zeros(x.shape, tl.float32), beta, MOD_MODE)
                else:
                    loss, dx = _neg_focal(x, beta, MOD_MODE, FAST_MATH)  # t = 0: the hot path
                # one select puts the row's positive in place
                is_pos = cols[None, :] == lab32[:, None]
                loss = tl.where(is_pos, lpos_w[:, None], loss * w_l[:, None])
                g = tl.where(is_pos, gpos_w[:, None], dx * w_g[:, None])
            else:
                t = tl.load(T + rows[:, None] * stride_tr + cols[None, :] * stride_tc,
                            mask=mask, other=0).to(tl.float32)
                if ACTIVATED:
                    loss, dx = _qfl_prob(x, t, beta, MOD_MODE)
                else:
                    loss, dx = _qfl_logit(x, t, beta, MOD_MODE, FAST_MATH)
                loss = loss * w_l[:, None]
                g = dx * w_g[:, None]
            if ACTIVATED:
                if CHECK:
                    bad = bad | ((((x < 0.0) | (x > 1.0)) & mask).to(tl.int32) * 2)
            if REDUCE:
                acc += tl.where(mask, loss, 0.0)
            if WRITE_LOSS:
                row_acc += tl.where(mask, loss, 0.0)
            if WRITE_GRAD:
                tl.store(GRAD + out_row[:, None] + cols[None, :], g.to(GRAD.dtype.element_ty),
                         mask=mask)
        if WRITE_LOSS:
            tl.store(LOSS + rows, (tl.sum(row_acc, axis=1) * scale).to(LOSS.dtype.element_ty),
                     mask=rmask)
    if CHECK:
        if ACTIVATED:
            bad_lab = bad_lab | tl.max(tl.max(bad & 2, axis=1), axis=0)
        report_bad_input(FLAG, bad_lab, C)
    if REDUCE:
        reduce_in_last_program(tl.sum(tl.sum(acc, axis=1), axis=0), PARTIAL, COUNTER, OUT, AF,
                               scale, eps, HAS_AF, BLOCK_P)
