"""Triton element math of the fused Gaussian focal loss (mmdet's `GaussianFocalLoss`: CenterNet,
CenterNet-update, CornerNet, CentripetalNet), and the kernel of its pos_inds form's positives.

The loss has no class structure: its element function (`gaussian_focal_element`) runs in the
family's elementwise skeleton (`flat.flat_loss_kernel`: persistent grid over the flattened
heatmap, weight, gradient written in the forward, one-launch reduction, probability check).

Math (mmdet 3.3.0 without its eps = 1e-12 inside the logs), p the probability, t the target:
    t == 1:  loss = pos_weight * -log(p) * (1 - p) ** alpha
    t != 1:  loss = neg_weight * -log(1 - p) * p ** alpha * (1 - t) ** gamma
(mmdet adds both terms at every element; (1 - t) ** gamma is 0 at t == 1 unless gamma == 0.)
Both are a factor times f(s) = s ** alpha * -log(1 - s): s = p for a negative, s = 1 - p for a
positive (whose d loss / dp is then -f'(s)). With c = 1 - s taken from p without cancellation
(c = p at a positive, 1 - p at a negative) and L = -log(c) / s:
    f(s) = s ** alpha * s * L,    f'(s) = s ** alpha * (1 / c + alpha * L)
L is evaluated as log(c) / (c - 1) (Goldberg's log1p: accurate to a few ulps as s -> 0, where
L -> 1, and at the c of a rounded 1 - p). The loss is +inf where mathematics says it is (p = 0
at a positive, p = 1 at a negative; mmdet's eps gives 27.6 there); a term whose factor is 0
((1 - t) ** gamma at t = 1 in the pos_inds form) is 0, never 0 * inf.
"""
import triton
import triton.language as tl

from .common import report_bad_input


@triton.jit
def _pow(base, e, MODE: tl.constexpr):
    """base ** e for base >= 0. MODE 0: e == 0; 2: e == 2; 4: e == 4; 1: any e > 0."""
    if MODE == 0:
        r = tl.full(base.shape, 1.0, tl.float32)
    elif MODE == 2:
        r = base * base
    elif MODE == 4:
        b2 = base * base
        r = b2 * b2
    else:
        live = base > 0.0  # 0 ** e = 0; log2 is taken of 1 there
        r = tl.where(live, tl.exp2(e * tl.log2(tl.where(live, base, 1.0))), 0.0)
    return r


@triton.jit
def _f(s, c, alpha, ALPHA_MODE: tl.constexpr):
    """(f(s), f'(s)) of f(s) = s ** alpha * -log(1 - s), given c = 1 - s (module docstring)."""
    one = c == 1.0
    L = tl.where(one, -1.0, tl.log(c)) / tl.where(one, -1.0, c - 1.0)  # -log(c) / s
    sa = _pow(s, alpha, ALPHA_MODE)
    return sa * s * L, sa * (1.0 / c + alpha * L)


@triton.jit
def gaussian_focal_element(p, t, alpha, gamma, pos_weight, neg_weight,
                           ALPHA_MODE: tl.constexpr, GAMMA_MODE: tl.constexpr,
                           NEG_ONLY: tl.constexpr):
    """`flat.flat_loss_kernel`'s ELEMENT: (loss, d loss / dp) of probabilities p with Gaussian
    targets t (fp32). ALPHA_MODE / GAMMA_MODE: `_pow`'s MODE of alpha and gamma; NEG_ONLY: the
    negative term everywhere (the pos_inds form, whose positives are listed apart)."""
    pos = (t == 1.0) & (not NEG_ONLY)
    f, df = _f(tl.where(pos, 1.0 - p, p), tl.where(pos, p, 1.0 - p), alpha, ALPHA_MODE)
    factor = tl.where(pos, pos_weight, neg_weight * _pow(1.0 - t, gamma, GAMMA_MODE))
    live = factor != 0.0
    loss = tl.where(live, factor * f, 0.0)
    d = tl.where(live, factor * df, 0.0)
    d = tl.where(pos, -d, d)
    if GAMMA_MODE == 0:
        if not NEG_ONLY:  # (1 - t) ** 0 = 1: at t == 1 mmdet's negative term is there too
            fn, dfn = _f(p, 1.0 - p, alpha, ALPHA_MODE)
            keep = pos & (neg_weight != 0.0)
            loss += tl.where(keep, neg_weight * fn, 0.0)
            d += tl.where(keep, neg_weight * dfn, 0.0)
    return loss, d


@triton.jit
def gaussian_positives_kernel(
    P,  # predicted probabilities, contiguous (N, C)
    ROWS,  # pos_inds (npos,): the rows of the positives, any integer dtype
    LABELS,  # pos_labels (npos,): their classes
    IDX,  # int64 out (npos,): each positive's flat index into P (0 where invalid)
    PG,  # out (npos,): d loss / dp of each positive, in GRAD's dtype (0 where invalid)
    OUT,  # the reduced loss (one element): the positives' loss is added to it
    FLAG,  # int32 sticky invalid-input flag (CHECK)
    AF,  # avg_factor (one element), read only if HAS_AF
    npos, N, C,  # number of positives; rows and columns of P
    alpha,  # exponent of the modulating factor (1 - p)
    factor, eps,  # pos_weight * scale: the positives' factor (before / (avg_factor + eps))
    ALPHA_MODE: tl.constexpr,  # `_pow`'s MODE of alpha
    HAS_AF: tl.constexpr, WRITE_GRAD: tl.constexpr,  # normalise by (avg_factor + eps); store
    CHECK: tl.constexpr,  # IDX and PG; flag positives outside the (N, C) heatmap
    BLOCK: tl.constexpr,  # positives per step
):
    """The positives of the pos_inds form (CenterNet-update), one program, after the main
    kernel on the same stream: gathers each positive's probability, adds
    factor * sum(-log(p) * (1 - p) ** alpha) [/ (avg_factor + eps)] to OUT in a fixed order, and
    writes each positive's gradient for the host's accumulating scatter (duplicated positives
    add up, as in mmdet's autograd). Positives outside the heatmap are reported (label bit),
    never read."""
    norm = factor
    if HAS_AF:
        norm = factor / (tl.load(AF).to(tl.float32) + eps)
    acc = tl.zeros([BLOCK], tl.float32)
    bad = tl.zeros([BLOCK], tl.int32)
    for k0 in range(0, npos, BLOCK):
        k = k0 + tl.arange(0, BLOCK)
        m = k < npos
        i = tl.load(ROWS + k, mask=m, other=0).to(tl.int64)
        lab = tl.load(LABELS + k, mask=m, other=0).to(tl.int64)
        ok = m & (i >= 0) & (i < N) & (lab >= 0) & (lab < C)
        if CHECK:
            bad = bad | (m & ~ok).to(tl.int32)
        idx = tl.where(ok, i * C + lab, 0)
        p = tl.load(P + idx, mask=ok, other=0.5).to(tl.float32)
        f, df = _f(1.0 - p, p, alpha, ALPHA_MODE)  # the positive term, factor 1
        acc += tl.where(ok, f, 0.0)
        if WRITE_GRAD:
            tl.store(IDX + k, idx, mask=m)
            tl.store(PG + k, tl.where(ok, -df * norm, 0.0).to(PG.dtype.element_ty), mask=m)
    if CHECK:
        report_bad_input(FLAG, tl.max(bad, axis=0), 0)  # C = 0: the positives' message
    total = tl.load(OUT).to(tl.float32) + tl.sum(acc, axis=0) * norm
    tl.store(OUT, total.to(OUT.dtype.element_ty))
