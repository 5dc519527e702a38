"""The family's elementwise skeleton: one Triton kernel for every loss whose element is a function
of (pred, target) alone, given the loss's element math as a compile-time argument.

A loss of this form (GaussianFocalLoss) supplies only its element function,
    ELEMENT(p, t, P0, P1, P2, P3, MODE0, MODE1, MODE2) -> (loss, d loss / dp)   (fp32 blocks),
with up to four float parameters and three compile-time modes (the kernel's slots, handed on in
order; a loss ignores those it does not use). Separate scalars rather than tuples: Triton takes
tuple arguments from 3.3 on, and this package supports triton 3.2 (torch 2.6). The kernel does
the rest, as the other kernels of the family: a persistent grid of programs striding through
the flattened tensors in blocks of BLOCK elements (full-width vector accesses whatever the
shape), the optional elementwise weight, the gradient written in the forward (already
multiplied by weight, normalisation and loss weight), the reduction finished in the same launch
by the last program (`common.reduce_in_last_program`: fixed order, no float atomics), the
probability check (`ops/checks.py`), fp32 arithmetic and int64 offsets. Triton inlines ELEMENT:
each loss compiles to the kernel it would be if written out.
"""
import triton
import triton.language as tl

from .common import program_start, reduce_in_last_program, report_bad_input, store_flat


@triton.jit
def flat_loss_kernel(
    P,  # pred, contiguous, n elements
    T,  # targets, contiguous, n elements, any real dtype
    W,  # weights, contiguous, n elements, read only if WEIGHTED
    UP,  # upstream gradient, contiguous, n elements, read only if UPSTREAM
    LOSS, GRAD, OUT, PARTIAL, COUNTER, FLAG, AF,  # outputs, workspace, avg_factor (common.py)
    n,  # elements
    num_blocks,  # cdiv(n, BLOCK); the programs stride over them (persistent grid)
    P0, P1, P2, P3,  # the loss's float parameters, handed to ELEMENT
    scale, eps,  # the loss's factor, avg_factor's epsilon (common.py)
    ELEMENT: tl.constexpr,  # the loss's element function (module docstring)
    MODE0: tl.constexpr, MODE1: tl.constexpr, MODE2: tl.constexpr,  # its modes, handed on
    WEIGHTED: tl.constexpr,  # multiply the loss by W elementwise
    HAS_AF: tl.constexpr, UPSTREAM: tl.constexpr, WRITE_LOSS: tl.constexpr,  # what the call
    REDUCE: tl.constexpr, WRITE_GRAD: tl.constexpr,  # computes (common.py); CHECK: report
    CHECK: tl.constexpr,  # pred outside [0, 1] (the flat losses take probabilities)
    BLOCK: tl.constexpr, BLOCK_P: tl.constexpr,  # the block shape (common.py)
):
    pid, nprog, gscale = program_start(scale, AF, eps, HAS_AF, WRITE_GRAD)
    acc = tl.zeros([BLOCK], tl.float32)
    bad = tl.zeros([BLOCK], tl.int32)
    for b in range(pid, num_blocks, nprog):
        offs = b * BLOCK + tl.arange(0, BLOCK)  # int64
        mask = offs < n
        p = tl.load(P + offs, mask=mask, other=0.5).to(tl.float32)
        t = tl.load(T + offs, mask=mask, other=0).to(tl.float32)
        loss, dp = ELEMENT(p, t, P0, P1, P2, P3, MODE0, MODE1, MODE2)
        if CHECK:
            bad = bad | (((p < 0.0) | (p > 1.0)) & mask).to(tl.int32)
        if WEIGHTED:
            w = tl.load(W + offs, mask=mask, other=0).to(tl.float32)
            loss = loss * w
            dp = dp * w
        if REDUCE:
            acc += tl.where(mask, loss, 0.0)
        store_flat(LOSS, GRAD, UP, offs, mask, loss, dp, scale, gscale, WRITE_LOSS, WRITE_GRAD,
                   UPSTREAM)
    if CHECK:
        report_bad_input(FLAG, tl.max(bad, axis=0) * 2, 0)
    if REDUCE:
        reduce_in_last_program(tl.sum(acc, axis=0), PARTIAL, COUNTER, OUT, AF, scale, eps,
                               HAS_AF, BLOCK_P)
