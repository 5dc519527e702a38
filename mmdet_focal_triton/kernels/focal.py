"""Triton kernel of the fused sigmoid focal loss (mmdet's `FocalLoss`).

One launch computes, over a persistent grid of programs that stride through blocks of rows
(walking each row block in column chunks), any of: the elementwise loss, the reduced loss, and
the gradient with respect to the logits (already multiplied by weight, normalisation and loss
weight, so that the backward pass only rescales). The reduction is finished inside the same
launch by the last program to arrive (`common.reduce_in_last_program`: fixed order, no float
atomics). With class-index targets, per-row work (label, weight, validity, and the row's one
positive element) is done once per row and the inner loop evaluates only the negative-target
formula; see notes/perf.md. Labels outside [0, C] (and probabilities outside [0, 1] when
activated) raise a sticky flag in host-mapped memory (`common.report_bad_input`), read by the
host without a synchronisation (`ops/checks.py`).

All arithmetic is fp32 whatever the storage dtype; offsets are int64.

Math (p = sigmoid(x), y the target, aw = alpha*y + (1-alpha)*(1-y), pt = (1-p)*y + p*(1-y)):
    loss = BCEWithLogits(x, y) * aw * pt**gamma
For hard targets (class indices), with z = x for a negative and z = -x for a positive
(`_neg_focal`):
    BCE = softplus(z),  pt = sigmoid(z),  d loss / dz = aw * pt**gamma * (pt + gamma*BCE*(1-pt))
so neither log(0) nor pt**(gamma-1) appears, for any finite x.
"""
import triton
import triton.language as tl

from .common import (
    LN2,
    LOG2E,
    load_chunk,
    log1p_exp_neg,
    pow_gamma,
    program_start,
    recip_1_2,
    reduce_in_last_program,
    report_bad_input,
    row_block,
    store_flat,
    store_tile,
)

# Compile-time modes (chosen by ops/focal.py): GAMMA_MODE 0 (gamma == 0: the modulating factor
# is 1), 2 (gamma == 2, the default: pt * pt, no transcendental), 1 (any other:
# exp2(gamma*log2(pt))); WEIGHT_MODE 0 (none), 1 (one weight per row), 2 (one weight per element).


@triton.jit
def _focal_soft(x, y, gamma, alpha, GAMMA_MODE: tl.constexpr, FAST: tl.constexpr):
    """Loss and d loss / dx for dense (possibly soft) targets y in [0, 1] (fp32)."""
    ax = tl.abs(x)
    e, lp = log1p_exp_neg(ax, FAST)
    bce = tl.maximum(x, 0.0) - x * y + lp
    r = recip_1_2(1.0 + e, FAST)
    p = tl.where(x >= 0.0, r, e * r)
    q = tl.where(x >= 0.0, e * r, r)  # 1 - p, accurate
    pt = q * y + p * (1.0 - y)
    log2_pt = tl.log2(pt)
    mod = pow_gamma(pt, log2_pt, gamma, GAMMA_MODE)
    aw = alpha * y + (1.0 - alpha) * (1.0 - y)
    loss = aw * bce * mod
    # d pt**gamma / dx = gamma * pt**gamma * (1-2y) * p*q / pt; the term vanishes where pt == 0
    ratio = tl.where(pt > 0.0, (p * q) / tl.where(pt > 0.0, pt, 1.0), 0.0)
    dx = aw * ((p - y) * mod + bce * gamma * mod * (1.0 - 2.0 * y) * ratio)
    return loss, dx


@triton.jit
def _focal_prob(p, y, gamma, alpha, GAMMA_MODE: tl.constexpr):
    """activated=True: p holds probabilities; torch's binary_cross_entropy (log clamped at -100)."""
    logp = tl.maximum(tl.log2(p) * LN2, -100.0)
    log1mp = tl.maximum(tl.log2(1.0 - p) * LN2, -100.0)
    bce = -(y * logp + (1.0 - y) * log1mp)
    pt = (1.0 - p) * y + p * (1.0 - y)
    log2_pt = tl.log2(pt)
    mod = pow_gamma(pt, log2_pt, gamma, GAMMA_MODE)
    aw = alpha * y + (1.0 - alpha) * (1.0 - y)
    loss = aw * bce * mod
    # torch's BCE backward: (p - y) / max(p * (1 - p), 1e-12)
    dbce = (p - y) / tl.maximum(p * (1.0 - p), 1e-12)
    # d pt**gamma / dp = gamma * pt**(gamma-1) * (1-2y)
    if GAMMA_MODE == 0:
        dmod = tl.zeros(p.shape, tl.float32)
    elif GAMMA_MODE == 2:
        dmod = 2.0 * pt * (1.0 - 2.0 * y)
    else:
        pm1 = tl.where(gamma == 1.0, 1.0, tl.exp2((gamma - 1.0) * log2_pt))
        dmod = gamma * pm1 * (1.0 - 2.0 * y)
    dx = aw * (dbce * mod + bce * dmod)
    return loss, dx


@triton.jit
def _neg_focal(x, gamma, GAMMA_MODE: tl.constexpr, FAST: tl.constexpr):
    """Loss and d loss / dx of a *negative* (target 0) element, without the (1 - alpha) factor.

    The hot path: every element of a class-index row but one is negative. A positive element
    is the same formula at -x (z = -x below), times alpha instead of (1 - alpha)."""
    e, lp = log1p_exp_neg(tl.abs(x), FAST)
    r = recip_1_2(1.0 + e, FAST)  # sigmoid(|x|)
    er = e * r  # sigmoid(-|x|)
    ge = x >= 0.0
    pt = tl.where(ge, r, er)  # sigmoid(x) = p: the modulating base of a negative
    q = tl.where(ge, er, r)  # 1 - p
    bce = tl.maximum(x, 0.0) + lp  # softplus(x)
    mod = pow_gamma(pt, (x - bce) * LOG2E, gamma, GAMMA_MODE)
    loss = bce * mod
    dx = mod * (pt + gamma * bce * q)
    return loss, dx


@triton.jit
def focal_loss_kernel(
    X, stride_xr, stride_xc,  # logits (probabilities if ACTIVATED), viewed as (R, C), any strides
    T, stride_tr, stride_tc,  # targets: (R,) class indices if INDEX_TARGET else (R, C) dense
    W, stride_wr, stride_wc,  # weights: (R,) if WEIGHT_MODE == 1, (R, C) if 2, unused if 0
    UP, stride_ur, stride_uc,  # upstream gradient (R, C), read only if UPSTREAM
    LOSS, GRAD, OUT, PARTIAL, COUNTER, FLAG, AF,  # outputs, workspace, avg_factor (common.py)
    R,  # rows
    C,  # columns (classes)
    num_row_blocks,  # cdiv(R, BLOCK_R); the programs stride over them (persistent grid)
    gamma, alpha,  # focal parameters
    scale, eps,  # the loss's factor, avg_factor's epsilon (common.py)
    INDEX_TARGET: tl.constexpr,  # targets are class indices in [0, C], C = background
    ACTIVATED: tl.constexpr,  # X holds probabilities, not logits
    WEIGHT_MODE: tl.constexpr,  # 0 none, 1 per row, 2 per element
    GAMMA_MODE: tl.constexpr,  # 0: gamma == 0, 2: gamma == 2, 1: any
    HAS_AF: tl.constexpr, UPSTREAM: tl.constexpr, WRITE_LOSS: tl.constexpr,  # what the call
    REDUCE: tl.constexpr, WRITE_GRAD: tl.constexpr, CHECK: tl.constexpr,  # computes (common.py)
    EVEN_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # the block shape,
    BLOCK_P: tl.constexpr, FAST_MATH: tl.constexpr,  # MUFU lg2 / rcp on the GPU (common.py)
):
    # class-index targets with logits: negatives-only inner loop + one positive per row
    HARD: tl.constexpr = INDEX_TARGET and not ACTIVATED
    pid, nprog, gscale = program_start(scale, AF, eps, HAS_AF, WRITE_GRAD)
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    # invalid-input flags: a scalar for the labels (one reduction per row block: a row-vector
    # carried across the loop instead cost 27 registers at C = 1203, and half the occupancy),
    # a tensor for the probabilities (activated inputs only)
    bad_lab = tl.zeros([], tl.int32)
    bad = tl.zeros([BLOCK_R, BLOCK_C], tl.int32)
    for rb in range(pid, num_row_blocks, nprog):
        rows, rmask, x_row, out_row = row_block(X, rb, R, C, stride_xr, BLOCK_R)  # int64
        # ---- per-row work ------------------------------------------------------------------
        w_r = tl.full([BLOCK_R], 1.0, tl.float32)
        if WEIGHT_MODE == 1:
            w_r = tl.load(W + rows * stride_wr, mask=rmask, other=0).to(tl.float32)
        if INDEX_TARGET:
            # int64 whatever the labels' dtype (uint8 labels cannot hold -1 or C)
            lab = tl.load(T + rows * stride_tr, mask=rmask, other=0).to(tl.int64)
            valid = (lab >= 0) & (lab < C)
            if CHECK:
                bad_lab = bad_lab | tl.max((((lab < 0) | (lab > C)) & rmask).to(tl.int32), axis=0)
            lab32 = tl.where(valid, lab, -1).to(tl.int32)  # -1 never matches a column
        if HARD:
            pmask = rmask & valid
            xp = tl.load(x_row + lab32 * stride_xc, mask=pmask, other=0.0).to(tl.float32)
            lpos, dpos = _neg_focal(-xp, gamma, GAMMA_MODE, FAST_MATH)  # the positive: z = -x
            w_p = w_r
            if WEIGHT_MODE == 2:
                w_p = tl.load(W + rows * stride_wr + lab32 * stride_wc, mask=pmask,
                              other=0).to(tl.float32)
            lpos_w = alpha * lpos * w_p  # its loss and gradient, weighted
            gpos_w = -alpha * dpos * w_p * gscale
            wn_l = (1.0 - alpha) * w_r  # per-row factors of the negatives
            wn_g = wn_l * gscale
        # ---- the row's columns, chunk by chunk ---------------------------------------------
        for c0 in range(0, C, BLOCK_C):
            cols, mask, x = load_chunk(x_row, rmask, c0, C, stride_xc, 0.5, EVEN_C, BLOCK_R,
                                       BLOCK_C)
            if HARD:
                loss, dx = _neg_focal(x, gamma, GAMMA_MODE, FAST_MATH)
                if WEIGHT_MODE == 2:
                    w = tl.load(W + rows[:, None] * stride_wr + cols[None, :] * stride_wc,
                                mask=mask, other=0).to(tl.float32) * (1.0 - alpha)
                    loss = loss * w
                    dx = dx * (w * gscale)
                else:
                    loss = loss * wn_l[:, None]
                    dx = dx * wn_g[:, None]
                # one select puts the row's positive in place (a subtract-and-correct would
                # cancel catastrophically when the positive is well classified)
                is_pos = cols[None, :] == lab32[:, None]
                loss = tl.where(is_pos, lpos_w[:, None], loss)
                g = tl.where(is_pos, gpos_w[:, None], dx)
            else:
                if INDEX_TARGET:  # activated (probability) inputs with class indices
                    y = (cols[None, :] == lab32[:, None]).to(tl.float32)
                else:
                    y = tl.load(T + rows[:, None] * stride_tr + cols[None, :] * stride_tc,
                                mask=mask, other=0).to(tl.float32)
                if ACTIVATED:
                    loss, dx = _focal_prob(x, y, gamma, alpha, GAMMA_MODE)
                    if CHECK:
                        bad = bad | ((((x < 0.0) | (x > 1.0)) & mask).to(tl.int32) * 2)
                else:
                    loss, dx = _focal_soft(x, y, gamma, alpha, GAMMA_MODE, FAST_MATH)
                if WEIGHT_MODE == 2:
                    w = tl.load(W + rows[:, None] * stride_wr + cols[None, :] * stride_wc,
                                mask=mask, other=0).to(tl.float32)
                    loss = loss * w
                    dx = dx * w
                elif WEIGHT_MODE == 1:
                    loss = loss * w_r[:, None]
                    dx = dx * w_r[:, None]
                g = dx * gscale
            if REDUCE:
                acc += tl.where(mask, loss, 0.0)
            store_tile(LOSS, GRAD, UP, out_row, rows, cols, stride_ur, stride_uc, mask, loss, g,
                       scale, WRITE_LOSS, WRITE_GRAD, UPSTREAM)
    if CHECK:
        if ACTIVATED:
            bad_lab = bad_lab | tl.max(tl.max(bad & 2, axis=1), axis=0)
        report_bad_input(FLAG, bad_lab, C)
    if REDUCE:
        reduce_in_last_program(tl.sum(tl.sum(acc, axis=1), axis=0), PARTIAL, COUNTER, OUT, AF,
                               scale, eps, HAS_AF, BLOCK_P)


@triton.jit
def focal_loss_flat_kernel(
    X,  # logits (probabilities if ACTIVATED), contiguous, R * C elements
    T,  # targets: (R,) class indices if INDEX_TARGET else R * C dense, contiguous
    W,  # weights: (R,) if WEIGHT_MODE == 1, R * C if 2, unused if 0; contiguous
    UP,  # upstream gradient, R * C contiguous, read only if UPSTREAM
    LOSS, GRAD, OUT, PARTIAL, COUNTER, FLAG, AF,  # outputs, workspace, avg_factor (common.py)
    R,  # rows
    C,  # columns (classes)
    inv_C,  # 1 / C in fp32: row of an element within a block by one multiply (exact here)
    num_blocks,  # cdiv(R * C, BLOCK); the programs stride over them (persistent grid)
    gamma, alpha, scale, eps,  # as in focal_loss_kernel
    INDEX_TARGET: tl.constexpr, ACTIVATED: tl.constexpr,  # the loss's modes, as in
    WEIGHT_MODE: tl.constexpr, GAMMA_MODE: tl.constexpr,  # focal_loss_kernel
    HAS_AF: tl.constexpr, UPSTREAM: tl.constexpr, WRITE_LOSS: tl.constexpr,  # what the call
    REDUCE: tl.constexpr, WRITE_GRAD: tl.constexpr, CHECK: tl.constexpr,  # computes (common.py)
    BLOCK: tl.constexpr,  # elements per block (a flat, aligned run of memory)
    CHECK_ROWS: tl.constexpr,  # labels checked per step of the label-check loop
    BLOCK_P: tl.constexpr,  # partial sums added per step by the reducing program
    FAST_MATH: tl.constexpr,  # MUFU lg2 / rcp through inline PTX (GPU only)
):
    """The same results as `focal_loss_kernel` for contiguous inputs, walking the (R, C) matrix
    as one flat array in blocks of BLOCK elements: every load and store is a full-width vector
    access whatever C is (rows of C = 1203 fp32 are not 16-byte aligned, which limits the
    row-block layout to scalar accesses). The row of an element (for its label and weight) is
    found by one fp32 multiply; a class-index element's target is `column == label`, and a
    positive is the negative formula at -x (one select each way)."""
    HARD: tl.constexpr = INDEX_TARGET and not ACTIVATED
    pid, nprog, gscale = program_start(scale, AF, eps, HAS_AF, WRITE_GRAD)
    n = tl.cast(R, tl.int64) * C  # (R may be the constant 1)
    if CHECK:
        if INDEX_TARGET:  # the labels, once: a short loop over R, apart from the main loop
            bad = tl.zeros([], tl.int32)
            for r0 in range(pid * CHECK_ROWS, R, nprog * CHECK_ROWS):
                rr = r0 + tl.arange(0, CHECK_ROWS)
                lab = tl.load(T + rr, mask=rr < R, other=0).to(tl.int64)
                bad = bad | tl.max(((lab < 0) | (lab > C)).to(tl.int32), axis=0)
            report_bad_input(FLAG, bad, C)
    acc = tl.zeros([BLOCK], tl.float32)
    badp = tl.zeros([BLOCK], tl.int32)
    for b in range(pid, num_blocks, nprog):
        start = b * BLOCK  # int64
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(X + offs, mask=mask, other=0.5).to(tl.float32)
        if INDEX_TARGET or WEIGHT_MODE == 1:
            row0 = start // C  # one 64-bit division per block
            local = (start - row0 * C).to(tl.int32) + tl.arange(0, BLOCK)  # < C + BLOCK
            rl = ((local.to(tl.float32) + 0.5) * inv_C).to(tl.int32)  # row within the block
            row = row0 + rl
        if INDEX_TARGET:
            lab = tl.load(T + row, mask=mask, other=0).to(tl.int64)
            # compared as int64: labels outside [0, C) match no column
            is_pos = (local - rl * C) == lab
        w = 1.0
        if WEIGHT_MODE == 1:
            w = tl.load(W + row, mask=mask, other=0).to(tl.float32)
        elif WEIGHT_MODE == 2:
            w = tl.load(W + offs, mask=mask, other=0).to(tl.float32)
        if HARD:
            z = tl.where(is_pos, -x, x)
            l0, d0 = _neg_focal(z, gamma, GAMMA_MODE, FAST_MATH)
            aw = tl.where(is_pos, alpha, 1.0 - alpha) * w
            loss = l0 * aw
            dx = tl.where(is_pos, -d0, d0) * aw
        else:
            if INDEX_TARGET:
                y = is_pos.to(tl.float32)
            else:
                y = tl.load(T + offs, mask=mask, other=0).to(tl.float32)
            if ACTIVATED:
                loss, dx = _focal_prob(x, y, gamma, alpha, GAMMA_MODE)
                if CHECK:
                    badp = badp | (((x < 0.0) | (x > 1.0)) & mask).to(tl.int32)
            else:
                loss, dx = _focal_soft(x, y, gamma, alpha, GAMMA_MODE, FAST_MATH)
            loss = loss * w
            dx = dx * w
        if REDUCE:
            acc += tl.where(mask, loss, 0.0)
        store_flat(LOSS, GRAD, UP, offs, mask, loss, dx, scale, gscale, WRITE_LOSS, WRITE_GRAD,
                   UPSTREAM)
    if CHECK:
        if ACTIVATED:
            report_bad_input(FLAG, tl.max(badp, axis=0) * 2, C)
    if REDUCE:
        reduce_in_last_program(tl.sum(acc, axis=0), PARTIAL, COUNTER, OUT, AF, scale, eps,
                               HAS_AF, BLOCK_P)
