"""Triton kernels of the fused sigmoid focal loss.

The main kernel computes, over a persistent grid of programs that stride through blocks of rows
(walking each row block in column chunks), any of: the elementwise loss, a per-program partial
sum of the loss, and the gradient with respect to the logits (already multiplied by weight,
normalisation and loss weight, so that the backward pass only rescales). With class-index
targets, per-row work (label, weight, validity, and the row's one positive element) is done once
per row and the inner loop evaluates only the negative-target formula; see notes/perf.md.
A tiny second kernel adds the partial sums in a fixed order (deterministic, no float atomics)
and applies the normalisation. A third rescales the gradient in place by the
upstream gradient in the backward pass, and does nothing when that gradient is exactly 1.

All arithmetic is fp32 whatever the storage dtype; offsets are int64. The kernels use only core
`tl` operations so that they also run under the Triton interpreter (`TRITON_INTERPRET=1`) on CPU
tensors, which is how CI exercises them.

Math (p = sigmoid(x), y the target, aw = alpha*y + (1-alpha)*(1-y), pt = (1-p)*y + p*(1-y)):
    loss = BCEWithLogits(x, y) * aw * pt**gamma
For hard targets (class indices), with z = x for a negative and z = -x for a positive
(`_neg_focal`):
    BCE = softplus(z),  pt = sigmoid(z),  d loss / dz = aw * pt**gamma * (pt + gamma*BCE*(1-pt))
so neither log(0) nor pt**(gamma-1) appears, for any finite x.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)

# Compile-time modes (chosen by ops.py): GAMMA_MODE 0 (gamma == 0: the modulating factor is 1),
# 2 (gamma == 2, the default: pt * pt, no transcendental), 1 (any other: exp2(gamma*log2(pt)));
# WEIGHT_MODE 0 (none), 1 (one weight per row), 2 (one weight per element).


@triton.jit
def _log2_1_2(x, FAST: tl.constexpr):
    """log2(x) for x in [1, 2]: the MUFU instruction (absolute error ~2^-22) on the GPU,
    instead of the accurate libm expansion (~20 instructions) that `tl.log2` becomes."""
    if FAST:
        r = tl.inline_asm_elementwise('lg2.approx.ftz.f32 $0, $1;', '=r,r', [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        r = tl.log2(x)
    return r


@triton.jit
def _recip_1_2(x, FAST: tl.constexpr):
    """1 / x for x in [1, 2]: one MUFU instruction (1 ulp) on the GPU."""
    if FAST:
        r = tl.inline_asm_elementwise('rcp.approx.ftz.f32 $0, $1;', '=r,r', [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        r = tl.fdiv(tl.full(x.shape, 1.0, tl.float32), x, ieee_rounding=False)
    return r


@triton.jit
def _log1p_exp_neg(a, FAST: tl.constexpr):
    """(e, log1p(e)) with e = exp(-a), a >= 0.

    log1p(e) is a degree-5 Taylor polynomial for e < 1/32 (relative error < 1e-8) and
    log2(1 + e) * ln2 above (absolute error ~6e-8 on a value >= 0.03: relative < 2e-6): one
    transcendental instead of the two of Goldberg's trick, and accurate where the loss of a
    confidently classified element is tiny."""
    e = tl.exp2(-a * LOG2E)
    poly = e * (1.0 + e * (-0.5 + e * (0.3333333333333333 + e * (-0.25 + e * 0.2))))
    lp = tl.where(e < 0.03125, poly, _log2_1_2(1.0 + e, FAST) * LN2)
    return e, lp


@triton.jit
def _pow_gamma(base, log2_base, gamma, GAMMA_MODE: tl.constexpr):
    """base ** gamma for base in [0, 1]; log2_base is log2(base) (may be -inf)."""
    if GAMMA_MODE == 0:
        r = tl.full(base.shape, 1.0, tl.float32)
    elif GAMMA_MODE == 2:
        r = base * base
    else:
        r = tl.exp2(gamma * log2_base)
    return r


@triton.jit
def _focal_soft(x, y, gamma, alpha, GAMMA_MODE: tl.constexpr, FAST: tl.constexpr):
    """Loss and d loss / dx for dense (possibly soft) targets y in [0, 1] (fp32)."""
    ax = tl.abs(x)
    e, lp = _log1p_exp_neg(ax, FAST)
    bce = tl.maximum(x, 0.0) - x * y + lp
    r = _recip_1_2(1.0 + e, FAST)
    p = tl.where(x >= 0.0, r, e * r)
    q = tl.where(x >= 0.0, e * r, r)  # 1 - p, accurate
    pt = q * y + p * (1.0 - y)
    log2_pt = tl.log2(pt)
    mod = _pow_gamma(pt, log2_pt, gamma, GAMMA_MODE)
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
    mod = _pow_gamma(pt, log2_pt, gamma, GAMMA_MODE)
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
    e, lp = _log1p_exp_neg(tl.abs(x), FAST)
    r = _recip_1_2(1.0 + e, FAST)  # sigmoid(|x|)
    er = e * r  # sigmoid(-|x|)
    ge = x >= 0.0
    pt = tl.where(ge, r, er)  # sigmoid(x) = p: the modulating base of a negative
    q = tl.where(ge, er, r)  # 1 - p
    bce = tl.maximum(x, 0.0) + lp  # softplus(x)
    mod = _pow_gamma(pt, (x - bce) * LOG2E, gamma, GAMMA_MODE)
    loss = bce * mod
    dx = mod * (pt + gamma * bce * q)
    return loss, dx


@triton.jit
def focal_loss_kernel(
    X, stride_xr, stride_xc,  # logits (probabilities if ACTIVATED), viewed as (R, C), any strides
    T, stride_tr, stride_tc,  # targets: (R,) class indices if INDEX_TARGET else (R, C) dense
    W, stride_wr, stride_wc,  # weights: (R,) if WEIGHT_MODE == 1, (R, C) if 2, unused if 0
    UP, stride_ur, stride_uc,  # upstream gradient (R, C), read only if UPSTREAM
    LOSS,  # elementwise loss out, contiguous (R, C), written only if WRITE_LOSS
    GRAD,  # gradient out, contiguous (R, C), written only if WRITE_GRAD
    PARTIAL,  # fp32 (num_programs,) per-program loss sums, written only if WRITE_PARTIAL
    BAD,  # int32 (num_programs,) invalid-input flags (bit 0 label, bit 1 probability), if CHECK
    AF,  # pointer to the avg_factor tensor (one element), read only if HAS_AF
    R, C,  # rows and columns (classes)
    num_row_blocks,  # cdiv(R, BLOCK_R); the programs stride over them (persistent grid)
    gamma, alpha,  # focal parameters
    grad_scale,  # factor of the gradient (and of a 'none' loss): loss_weight / normaliser
    eps,  # added to avg_factor (float32 machine epsilon, as mmdet)
    INDEX_TARGET: tl.constexpr,  # targets are class indices in [0, C], C = background
    ACTIVATED: tl.constexpr,  # X holds probabilities, not logits
    WEIGHT_MODE: tl.constexpr,  # 0 none, 1 per row, 2 per element
    GAMMA_MODE: tl.constexpr,  # 0: gamma == 0, 2: gamma == 2, 1: any
    HAS_AF: tl.constexpr,  # divide the gradient by (avg_factor + eps), read from AF
    UPSTREAM: tl.constexpr,  # multiply the gradient by UP elementwise (backward of 'none')
    WRITE_LOSS: tl.constexpr,  # store the elementwise loss
    WRITE_PARTIAL: tl.constexpr,  # store this program's loss sum
    WRITE_GRAD: tl.constexpr,  # store the gradient
    CHECK: tl.constexpr,  # flag labels outside [0, C] / probabilities outside [0, 1]
    EVEN_C: tl.constexpr,  # C % BLOCK_C == 0: no column mask
    BLOCK_R: tl.constexpr,  # rows per block
    BLOCK_C: tl.constexpr,  # columns per chunk; a program walks its rows chunk by chunk
    FAST_MATH: tl.constexpr,  # MUFU lg2 / rcp through inline PTX (GPU only: not interpretable)
):
    # class-index targets with logits: negatives-only inner loop + one positive per row
    HARD: tl.constexpr = INDEX_TARGET and not ACTIVATED
    pid = tl.program_id(0).to(tl.int64)
    nprog = tl.num_programs(0)
    scale = grad_scale
    if WRITE_GRAD:
        if HAS_AF:
            scale = scale / (tl.load(AF).to(tl.float32) + eps)
    acc = tl.zeros([BLOCK_R, BLOCK_C], tl.float32)
    # invalid-input flags: a scalar for the labels (one reduction per row block: a row-vector
    # carried across the loop instead cost 27 registers at C = 1203, and half the occupancy),
    # a tensor for the probabilities (activated inputs only)
    bad_lab = tl.zeros([], tl.int32)
    bad = tl.zeros([BLOCK_R, BLOCK_C], tl.int32)
    for rb in range(pid, num_row_blocks, nprog):
        rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)  # int64
        rmask = rows < R
        x_row = X + rows * stride_xr
        out_row = rows * C
        # ---- per-row work ------------------------------------------------------------------
        w_r = tl.full([BLOCK_R], 1.0, tl.float32)
        if WEIGHT_MODE == 1:
            w_r = tl.load(W + rows * stride_wr, mask=rmask, other=0).to(tl.float32)
        if INDEX_TARGET:
            lab = tl.load(T + rows * stride_tr, mask=rmask, other=C)
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
            gpos_w = -alpha * dpos * w_p * scale
            wn_l = (1.0 - alpha) * w_r  # per-row factors of the negatives
            wn_g = wn_l * scale
        # ---- the row's columns, chunk by chunk ---------------------------------------------
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            if EVEN_C:
                mask = tl.broadcast_to(rmask[:, None], [BLOCK_R, BLOCK_C])
            else:
                mask = rmask[:, None] & (cols < C)[None, :]
            x = tl.load(x_row[:, None] + cols[None, :] * stride_xc, mask=mask,
                        other=0.5).to(tl.float32)
            if HARD:
                loss, dx = _neg_focal(x, gamma, GAMMA_MODE, FAST_MATH)
                if WEIGHT_MODE == 2:
                    w = tl.load(W + rows[:, None] * stride_wr + cols[None, :] * stride_wc,
                                mask=mask, other=0).to(tl.float32) * (1.0 - alpha)
                    loss = loss * w
                    dx = dx * (w * scale)
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
                g = dx * scale
            if WRITE_PARTIAL:
                acc += tl.where(mask, loss, 0.0)
            if WRITE_LOSS:
                tl.store(LOSS + out_row[:, None] + cols[None, :],
                         (loss * grad_scale).to(LOSS.dtype.element_ty), mask=mask)
            if WRITE_GRAD:
                if UPSTREAM:
                    up = tl.load(UP + rows[:, None] * stride_ur + cols[None, :] * stride_uc,
                                 mask=mask, other=0)
                    g = g * up.to(tl.float32)
                tl.store(GRAD + out_row[:, None] + cols[None, :], g.to(GRAD.dtype.element_ty),
                         mask=mask)
    if WRITE_PARTIAL:
        tl.store(PARTIAL + pid, tl.sum(tl.sum(acc, axis=1), axis=0))
    if CHECK:
        if ACTIVATED:
            bad_lab = bad_lab | tl.max(tl.max(bad & 2, axis=1), axis=0)
        tl.store(BAD + pid, bad_lab)


@triton.jit
def finalize_kernel(
    PARTIAL,  # fp32 (P,) partial sums from focal_loss_kernel
    BAD,  # int32 (P,) invalid-input flags, read only if CHECK
    P,  # number of partial sums
    OUT,  # the reduced loss, one element, any float dtype
    BAD_OUT,  # int32 (1,) OR of the flags, written only if CHECK
    AF,  # pointer to avg_factor (one element), read only if HAS_AF
    out_scale,  # loss_weight / normaliser (for 'mean' without avg_factor: / (R*C))
    eps,  # added to avg_factor
    HAS_AF: tl.constexpr,
    CHECK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    acc = tl.zeros([BLOCK], tl.float32)
    nbad = tl.zeros([BLOCK], tl.int32)
    for start in range(0, P, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        m = offs < P
        acc += tl.load(PARTIAL + offs, mask=m, other=0.0)
        if CHECK:
            nbad = nbad | tl.load(BAD + offs, mask=m, other=0)
    total = tl.sum(acc, axis=0) * out_scale
    if HAS_AF:
        total = total / (tl.load(AF).to(tl.float32) + eps)
    tl.store(OUT, total.to(OUT.dtype.element_ty))
    if CHECK:
        tl.store(BAD_OUT, tl.max(nbad & 1, axis=0) | tl.max(nbad & 2, axis=0))


@triton.jit
def check_kernel(
    BAD,  # int32 (P,) invalid-input flags
    P,  # number of flags
    BAD_OUT,  # int32 (1,) their OR
    BLOCK: tl.constexpr,
):
    nbad = tl.zeros([BLOCK], tl.int32)
    for start in range(0, P, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        nbad = nbad | tl.load(BAD + offs, mask=offs < P, other=0)
    tl.store(BAD_OUT, tl.max(nbad & 1, axis=0) | tl.max(nbad & 2, axis=0))


@triton.jit
def scale_kernel(
    G,  # gradient buffer, contiguous, rescaled in place
    S,  # upstream gradient of the reduced loss (one element)
    n,  # number of elements of G
    BLOCK: tl.constexpr,  # elements per program and step; the programs stride over G
):
    s = tl.load(S).to(tl.float32)
    if s != 1.0:  # the common case (grad of a plain sum of losses): a few programs, no pass
        step = tl.num_programs(0).to(tl.int64) * BLOCK
        for start in range(tl.program_id(0).to(tl.int64) * BLOCK, n, step):
            offs = start + tl.arange(0, BLOCK).to(tl.int64)
            m = offs < n
            g = tl.load(G + offs, mask=m, other=0.0).to(tl.float32)
            tl.store(G + offs, (g * s).to(G.dtype.element_ty), mask=m)
