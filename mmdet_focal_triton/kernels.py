"""Triton kernels of the fused sigmoid focal loss.

One main kernel computes, per [BLOCK_R, BLOCK_C] tile of the (R, C) logits, any of: the
elementwise loss, a per-program partial sum of the loss, and the gradient with respect to the
logits (already multiplied by weight, normalisation and loss weight, so that the backward pass
only rescales). A tiny second kernel adds the partial sums in a fixed order (deterministic, no
float atomics) and applies the normalisation. A third rescales the gradient in place by the
upstream gradient in the backward pass, and does nothing when that gradient is exactly 1.

All arithmetic is fp32 whatever the storage dtype; offsets are int64. The kernels use only core
`tl` operations so that they also run under the Triton interpreter (`TRITON_INTERPRET=1`) on CPU
tensors, which is how CI exercises them.

Math (p = sigmoid(x), y the target, aw = alpha*y + (1-alpha)*(1-y), pt = (1-p)*y + p*(1-y)):
    loss = BCEWithLogits(x, y) * aw * pt**gamma
For hard targets (class indices), with z = x for a negative and z = -x for a positive:
    BCE = softplus(z),  pt = sigmoid(z),  d loss / dz = aw * pt**gamma * (pt + gamma*BCE*(1-pt))
so neither log(0) nor pt**(gamma-1) appears, for any finite x.
"""
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453

# GAMMA_MODE: compile-time specialisation of pt ** gamma.
GAMMA_ZERO = 0  # gamma == 0: the modulating factor is 1
GAMMA_TWO = 2  # gamma == 2 (the default): pt * pt, no transcendental
GAMMA_ANY = 1  # anything else: exp2(gamma * log2(pt))

# WEIGHT_MODE
WEIGHT_NONE = 0
WEIGHT_ROW = 1  # one weight per row, broadcast over the classes
WEIGHT_ELEM = 2  # one weight per element


@triton.jit
def _log1p_exp_neg(a):
    """log1p(exp(-a)) for a >= 0, accurate to a few ulp (Goldberg's log1p trick)."""
    e = tl.exp2(-a * LOG2E)
    u = 1.0 + e
    d = u - 1.0
    # when 1 + e rounds to 1, log1p(e) == e to fp32 precision
    lp = tl.where(d == 0.0, e, tl.log2(u) * LN2 * (e / tl.where(d == 0.0, 1.0, d)))
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
def _focal_hard(x, is_pos, gamma, alpha, GAMMA_MODE: tl.constexpr):
    """Loss and d loss / dx for 0/1 targets given as a boolean mask (fp32 logits)."""
    z = tl.where(is_pos, -x, x)
    e, lp = _log1p_exp_neg(tl.abs(z))
    bce = tl.maximum(z, 0.0) + lp  # softplus(z)
    r = 1.0 / (1.0 + e)  # sigmoid(|z|)
    pt = tl.where(z >= 0.0, r, e * r)  # sigmoid(z), accurate on both sides
    one_m_pt = tl.where(z >= 0.0, e * r, r)  # sigmoid(-z)
    log2_pt = (z - bce) * LOG2E  # log sigmoid(z) = z - softplus(z)
    mod = _pow_gamma(pt, log2_pt, gamma, GAMMA_MODE)
    aw = tl.where(is_pos, alpha, 1.0 - alpha)
    loss = aw * bce * mod
    dz = aw * mod * (pt + gamma * bce * one_m_pt)
    dx = tl.where(is_pos, -dz, dz)
    return loss, dx


@triton.jit
def _focal_soft(x, y, gamma, alpha, GAMMA_MODE: tl.constexpr):
    """Loss and d loss / dx for dense (possibly soft) targets y in [0, 1] (fp32)."""
    ax = tl.abs(x)
    e, lp = _log1p_exp_neg(ax)
    bce = tl.maximum(x, 0.0) - x * y + lp
    r = 1.0 / (1.0 + e)
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
def focal_loss_kernel(
    X, stride_xr, stride_xc,  # logits (probabilities if ACTIVATED), viewed as (R, C)
    T, stride_tr, stride_tc,  # targets: (R,) class indices if INDEX_TARGET else (R, C) dense
    W, stride_wr, stride_wc,  # weights: (R,) if WEIGHT_MODE == 1, (R, C) if 2, unused if 0
    UP, stride_ur, stride_uc,  # upstream gradient (R, C), read only if UPSTREAM
    LOSS,  # elementwise loss out, contiguous (R, C), written only if WRITE_LOSS
    GRAD,  # gradient out, contiguous (R, C), written only if WRITE_GRAD
    PARTIAL,  # fp32 (num_programs,) per-program loss sums, written only if WRITE_PARTIAL
    BAD,  # int32 (num_programs,) invalid-input flags (bit 0 label, bit 1 probability), if CHECK
    AF,  # pointer to the avg_factor tensor (one element), read only if HAS_AF
    R, C,  # rows and columns (classes)
    n_col_blocks,  # cdiv(C, BLOCK_C)
    gamma, alpha,  # focal parameters
    grad_scale,  # constant factor of the gradient (and of a 'none' loss): loss_weight / normaliser
    eps,  # added to avg_factor (float32 machine epsilon, as mmdet)
    INDEX_TARGET: tl.constexpr,  # targets are class indices in [0, C], C = background
    ACTIVATED: tl.constexpr,  # X holds probabilities, not logits
    WEIGHT_MODE: tl.constexpr,  # 0 none, 1 per row, 2 per element
    GAMMA_MODE: tl.constexpr,  # 0: gamma == 0, 2: gamma == 2, 1: any
    HAS_AF: tl.constexpr,  # divide the gradient by (avg_factor + eps), read from AF
    UPSTREAM: tl.constexpr,  # multiply the gradient by UP elementwise (backward of 'none')
    WRITE_LOSS: tl.constexpr,
    WRITE_PARTIAL: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    CHECK: tl.constexpr,  # flag labels outside [0, C] / probabilities outside [0, 1]
    BLOCK_R: tl.constexpr,  # rows per tile
    BLOCK_C: tl.constexpr,  # columns per tile
):
    pid = tl.program_id(0)
    pid_r = pid // n_col_blocks
    pid_c = pid % n_col_blocks
    rows = pid_r.to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R).to(tl.int64)
    cols = pid_c.to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    rmask = rows < R
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]

    x = tl.load(X + rows[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.5)
    x = x.to(tl.float32)
    bad = tl.zeros([BLOCK_R, BLOCK_C], tl.int32)  # bit 0: bad label, bit 1: bad probability
    if INDEX_TARGET:
        label = tl.load(T + rows * stride_tr, mask=rmask, other=C).to(tl.int64)
        is_pos = cols[None, :] == label[:, None]
        if CHECK:
            bad_row = ((label < 0) | (label > C)) & rmask
            bad = bad | bad_row[:, None].to(tl.int32)
        if ACTIVATED:
            loss, dx = _focal_prob(x, is_pos.to(tl.float32), gamma, alpha, GAMMA_MODE)
        else:
            loss, dx = _focal_hard(x, is_pos, gamma, alpha, GAMMA_MODE)
    else:
        y = tl.load(T + rows[:, None] * stride_tr + cols[None, :] * stride_tc, mask=mask, other=0)
        y = y.to(tl.float32)
        if ACTIVATED:
            loss, dx = _focal_prob(x, y, gamma, alpha, GAMMA_MODE)
        else:
            loss, dx = _focal_soft(x, y, gamma, alpha, GAMMA_MODE)
    if ACTIVATED:
        if CHECK:
            bad = bad | ((((x < 0.0) | (x > 1.0)) & mask).to(tl.int32) * 2)

    if WEIGHT_MODE == 1:
        w = tl.load(W + rows * stride_wr, mask=rmask, other=0).to(tl.float32)
        loss = loss * w[:, None]
        dx = dx * w[:, None]
    elif WEIGHT_MODE == 2:
        w = tl.load(W + rows[:, None] * stride_wr + cols[None, :] * stride_wc, mask=mask, other=0)
        w = w.to(tl.float32)
        loss = loss * w
        dx = dx * w

    out_offs = rows[:, None] * C + cols[None, :]
    if WRITE_LOSS:  # reduction 'none': the elementwise loss times loss_weight (= grad_scale)
        tl.store(LOSS + out_offs, (loss * grad_scale).to(LOSS.dtype.element_ty), mask=mask)
    if WRITE_PARTIAL:
        tl.store(PARTIAL + pid, tl.sum(tl.sum(tl.where(mask, loss, 0.0), axis=1), axis=0))
    if CHECK:
        tl.store(BAD + pid, tl.max(tl.max(bad & 1, axis=1), axis=0)
                 | tl.max(tl.max(bad & 2, axis=1), axis=0))
    if WRITE_GRAD:
        scale = grad_scale
        if HAS_AF:
            scale = scale / (tl.load(AF).to(tl.float32) + eps)
        g = dx * scale
        if UPSTREAM:
            up = tl.load(UP + rows[:, None] * stride_ur + cols[None, :] * stride_uc, mask=mask,
                         other=0)
            g = g * up.to(tl.float32)
        tl.store(GRAD + out_offs, g.to(GRAD.dtype.element_ty), mask=mask)


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
    BLOCK: tl.constexpr,
):
    s = tl.load(S).to(tl.float32)
    if s != 1.0:  # the common case (grad of a plain sum of losses) costs one launch, no pass
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
        m = offs < n
        g = tl.load(G + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(G + offs, (g * s).to(G.dtype.element_ty), mask=m)
