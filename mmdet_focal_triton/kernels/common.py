"""Triton building blocks shared by the fused losses: fast fp32 math, the pieces of the kernels'
common skeleton (the gradient's factor, a column chunk's mask and load, the stores of the loss
and the gradient, the deterministic one-launch reduction, the input-check report), and the
in-place gradient rescale. Triton inlines them: a kernel compiles as if written out.

The fused kernels share a skeleton and its arguments: after the inputs a kernel reads (each
described in its own signature) come, in this order,
    LOSS      the elementwise (or per-row) loss out, contiguous; written only if WRITE_LOSS
    GRAD      d loss / d pred out, contiguous like pred; written only if WRITE_GRAD
    OUT       the reduced loss (one element); written only if REDUCE
    PARTIAL   fp32 workspace, one slot per program (REDUCE: `reduce_in_last_program`)
    COUNTER   int32 arrival counter of the reduction, 0 between launches (REDUCE)
    FLAG      int32 sticky invalid-input flag in host-mapped memory (CHECK; `report_bad_input`)
    AF        the avg_factor tensor (one element), read only if HAS_AF
then the sizes (R rows, C columns, and the number of blocks the persistent grid's programs
stride over), the loss's parameters, and
    scale     loss_weight / normaliser: the factor of the reduced loss, of a 'none' loss and of
              the gradient (which HAS_AF further divides by avg_factor + eps: `grad_scale`)
    eps       added to avg_factor (float32's machine epsilon, as mmdet)
and, after the loss's own compile-time flags, what the call computes:
    HAS_AF      normalise by (avg_factor + eps), read from AF
    UPSTREAM    multiply the gradient by UP elementwise (the backward of 'none')
    WRITE_LOSS  store the elementwise (per-row) loss
    REDUCE      reduce the loss to OUT (sum * scale [/ (avg_factor + eps)])
    WRITE_GRAD  store the gradient
    CHECK       flag invalid inputs (labels outside [0, C], probabilities outside [0, 1])
and the block shape (EVEN_C: C % BLOCK_C == 0, no column mask; BLOCK_R rows per block; BLOCK_C
columns per chunk, a program walking its rows chunk by chunk; BLOCK elements per block of the
flat layout; BLOCK_P partial sums added per step by the reducing program) and FAST_MATH (MUFU
lg2 / rcp through inline PTX: GPU only, not interpretable).

Everything here uses only core `tl` operations (the inline PTX sits behind `FAST` flags), so that
the kernels also run under the Triton interpreter (`TRITON_INTERPRET=1`) on CPU tensors.
"""
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def log2_1_2(x, FAST: tl.constexpr):
    """log2(x) for x in [1, 2]: the MUFU instruction (absolute error ~2^-22) on the GPU,
    instead of the accurate libm expansion (~20 instructions) that `tl.log2` becomes."""
    if FAST:
        r = tl.inline_asm_elementwise('lg2.approx.ftz.f32 $0, $1;', '=r,r', [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        r = tl.log2(x)
    return r


@triton.jit
def recip_1_2(x, FAST: tl.constexpr):
    """1 / x for x in [1, 2]: one MUFU instruction (1 ulp) on the GPU."""
    if FAST:
        r = tl.inline_asm_elementwise('rcp.approx.ftz.f32 $0, $1;', '=r,r', [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        r = tl.fdiv(tl.full(x.shape, 1.0, tl.float32), x, ieee_rounding=False)
    return r


@triton.jit
def log1p_exp_neg(a, FAST: tl.constexpr):
    """(e, log1p(e)) with e = exp(-a), a >= 0.

    log1p(e) is a degree-5 Taylor polynomial for e < 1/32 (relative error < 1e-8) and
    log2(1 + e) * ln2 above (absolute error ~6e-8 on a value >= 0.03: relative < 2e-6): one
    transcendental instead of the two of Goldberg's trick, and accurate where the loss of a
    confidently classified element is tiny."""
    e = tl.exp2(-a * LOG2E)
    poly = e * (1.0 + e * (-0.5 + e * (0.3333333333333333 + e * (-0.25 + e * 0.2))))
    lp = tl.where(e < 0.03125, poly, log2_1_2(1.0 + e, FAST) * LN2)
    return e, lp


@triton.jit
def pow_gamma(base, log2_base, gamma, GAMMA_MODE: tl.constexpr):
    """base ** gamma for base in [0, 1]; log2_base is log2(base) (may be -inf).
    GAMMA_MODE 0: gamma == 0 (1); 2: gamma == 2 (base * base); 1: any (exp2(gamma * log2))."""
    if GAMMA_MODE == 0:
        r = tl.full(base.shape, 1.0, tl.float32)
    elif GAMMA_MODE == 2:
        r = base * base
    else:
        r = tl.exp2(gamma * log2_base)
    return r


@triton.jit
def grad_scale(scale, AF, eps, HAS_AF: tl.constexpr, WRITE_GRAD: tl.constexpr):
    """The gradient's factor: `scale`, divided by (avg_factor + eps) read from AF when HAS_AF
    (read only when the gradient is written)."""
    gscale = scale
    if WRITE_GRAD:
        if HAS_AF:
            gscale = scale / (tl.load(AF).to(tl.float32) + eps)
    return gscale


@triton.jit
def program_start(scale, AF, eps, HAS_AF: tl.constexpr, WRITE_GRAD: tl.constexpr):
    """What every program of a persistent grid starts with: its index (int64: offsets computed
    from it do not overflow), the number of programs, and the gradient's factor (`grad_scale`)."""
    return (tl.program_id(0).to(tl.int64), tl.num_programs(0),
            grad_scale(scale, AF, eps, HAS_AF, WRITE_GRAD))


@triton.jit
def row_block(X, rb, R, C, stride_xr, BLOCK_R: tl.constexpr):
    """(rows, rmask, x_row, out_row) of row block `rb` (int64): its rows, which of them exist,
    the pointers to their logits, their offsets (rows * C) in the contiguous outputs."""
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    return rows, rows < R, X + rows * stride_xr, rows * C


@triton.jit
def load_chunk(x_row, rmask, c0, C, stride_xc, other, EVEN_C: tl.constexpr,
               BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(cols, mask, x) of the column chunk at c0 of a row block: x in fp32 (`other` where
    masked); no column mask when EVEN_C (C % BLOCK_C == 0)."""
    cols = c0 + tl.arange(0, BLOCK_C)
    if EVEN_C:
        mask = tl.broadcast_to(rmask[:, None], [BLOCK_R, BLOCK_C])
    else:
        mask = rmask[:, None] & (cols < C)[None, :]
    x = tl.load(x_row[:, None] + cols[None, :] * stride_xc, mask=mask, other=other)
    return cols, mask, x.to(tl.float32)


@triton.jit
def store_tile(LOSS, GRAD, UP, out_row, rows, cols, stride_ur, stride_uc, mask, loss, g, scale,
               WRITE_LOSS: tl.constexpr, WRITE_GRAD: tl.constexpr, UPSTREAM: tl.constexpr):
    """Store a chunk's elementwise loss (times scale) and gradient `g` (times the upstream
    gradient, read with its strides, for the backward of 'none') into contiguous (R, C)
    outputs at rows' offsets `out_row` (rows * C)."""
    if WRITE_LOSS:
        tl.store(LOSS + out_row[:, None] + cols[None, :],
                 (loss * scale).to(LOSS.dtype.element_ty), mask=mask)
    if WRITE_GRAD:
        if UPSTREAM:
            up = tl.load(UP + rows[:, None] * stride_ur + cols[None, :] * stride_uc,
                         mask=mask, other=0)
            g = g * up.to(tl.float32)
        tl.store(GRAD + out_row[:, None] + cols[None, :], g.to(GRAD.dtype.element_ty),
                 mask=mask)


@triton.jit
def store_flat(LOSS, GRAD, UP, offs, mask, loss, dx, scale, gscale, WRITE_LOSS: tl.constexpr,
               WRITE_GRAD: tl.constexpr, UPSTREAM: tl.constexpr):
    """The flat layout's `store_tile`: loss * scale and dx * gscale (* UP) at offsets `offs`."""
    if WRITE_LOSS:
        tl.store(LOSS + offs, (loss * scale).to(LOSS.dtype.element_ty), mask=mask)
    if WRITE_GRAD:
        g = dx * gscale
        if UPSTREAM:
            g = g * tl.load(UP + offs, mask=mask, other=0).to(tl.float32)
        tl.store(GRAD + offs, g.to(GRAD.dtype.element_ty), mask=mask)


@triton.jit
def reduce_in_last_program(
    partial_sum,  # this program's fp32 loss sum
    PARTIAL,  # fp32 workspace, one slot per program
    COUNTER,  # int32 arrival counter: 0 before the launch, put back to 0 by the last program
    OUT,  # the reduced loss (one element, any float dtype)
    AF,  # avg_factor (one element), read only if HAS_AF
    out_scale,  # loss_weight / normaliser
    eps,  # added to avg_factor
    HAS_AF: tl.constexpr,
    BLOCK_P: tl.constexpr,  # partial sums added per step by the last program
):
    """Deterministic sum of the per-program partial sums without a second launch: every program
    stores its sum and counts itself in; the one that arrives last adds all the sums in slot
    order (a fixed order: the same bits every run, no float atomics), writes the result and
    re-arms the counter for the next launch on this stream."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    tl.store(PARTIAL + pid, partial_sum)
    tl.debug_barrier()  # every thread's store is ordered before the release below
    arrived = tl.atomic_add(COUNTER, 1, sem='acq_rel', scope='gpu')
    if arrived == nprog - 1:
        acc = tl.zeros([BLOCK_P], tl.float32)
        for start in range(0, nprog, BLOCK_P):
            offs = start + tl.arange(0, BLOCK_P)
            # .cg: read from L2, where the other programs' released stores are
            acc += tl.load(PARTIAL + offs, mask=offs < nprog, other=0.0, cache_modifier='.cg')
        total = tl.sum(acc, axis=0) * out_scale
        if HAS_AF:
            total = total / (tl.load(AF).to(tl.float32) + eps)
        tl.store(OUT, total.to(OUT.dtype.element_ty))
        tl.atomic_xchg(COUNTER, 0, sem='relaxed', scope='gpu')


@triton.jit
def report_bad_input(
    FLAG,  # int32 sticky flag in host-mapped (pinned) memory; never cleared by a kernel
    bad,  # int32 scalar: bit 0 = a label outside [0, C], bit 1 = a probability outside [0, 1]
    C,  # number of classes, kept for the error message
):
    """Raise the flag (bits | C << 2) only when something was found: no traffic otherwise."""
    tl.store(FLAG, bad | (C << 2), mask=bad != 0)


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
