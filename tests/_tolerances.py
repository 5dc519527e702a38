"""How close a result must be to its float64 reference, by what the path computes.

- float64 on the PyTorch (CPU) path: the arithmetic is float64, so 1e-12 (measured: ~1e-15).
- fp32, and float64 through the Triton kernels (whose arithmetic is fp32 whatever the input
  dtype, the interpreter included): 1e-5, SPEC §3.
- fp16 / bf16: the reference is the float64 evaluation of the *rounded* inputs (the fp16 / bf16
  logits themselves, and the upstream gradient as the loss received it). The arithmetic is fp32,
  then the result is rounded once to its dtype; that rounding (half a unit in the last place of
  the dtype, up to ~4.9e-4 relative for fp16, ~3.9e-3 for bf16) is not an error of the loss,
  what lies beyond it is. So the error is measured beyond the rounding (`error_beyond_rounding`)
  and held to the fp32 tolerance, 1e-5: an error of 1e-3 anywhere in the computation fails it
  (tests/test_tolerances.py shows it for both dtypes and both rounding modes).
  The Triton interpreter converts fp32 to bf16 by truncation (round toward zero; a GPU, and
  PyTorch, round to nearest): its bf16 results are held to the interval truncation allows.
- The reference evaluates the inputs the path computes with (`as_computed`): the fp16 / bf16
  tensors themselves; float64 inputs rounded to fp32 on the Triton paths, whose arithmetic is
  fp32 (it matters for probabilities near 0 or 1, `activated=True`).

Errors are relative norms, ||out - ref|| / ||ref|| (SPEC §3), computed in float64.
"""
import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)


def tolerance(impl, dtype):
    """The tolerance of a result of `dtype` computed on backend `impl` ('cpu': the PyTorch path;
    anything else: the Triton kernels, interpreted or on CUDA)."""
    if dtype == torch.float64 and impl == 'cpu':
        return 1e-12
    return 1e-5


def _without_nans(out, ref):
    """out and ref in float64 on the CPU, flat, without the places where ref is NaN; out must
    have ref's shape and its NaNs at the same places."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    nan = ref.isnan()
    assert torch.equal(out.isnan(), nan), 'NaN where the reference has none, or the reverse'
    return out[~nan], ref[~nan]


def rel_err(out, ref):
    """||out - ref|| / ||ref|| in float64 (the norm of the difference when ref is zero); NaNs
    must sit at the same places in both (they are then left out)."""
    out, ref = _without_nans(out, ref)
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num


def half_ulp(ref, dtype):
    """Half the spacing of `dtype`'s values around each element of `ref` (float64): the most
    that rounding `ref` to `dtype` can move it. Subnormals included."""
    fi = torch.finfo(dtype)
    mag = ref.abs().clamp_min(fi.tiny)  # below tiny: the subnormal spacing, tiny * eps
    _, exp = torch.frexp(mag)  # mag = m * 2**exp with m in [0.5, 1)
    return torch.ldexp(torch.full_like(mag, fi.eps / 4), exp)  # 2**(exp-1) * eps / 2


def error_beyond_rounding(out, ref, toward_zero=False):
    """The relative-norm error of `out` (fp16 / bf16) against the float64 `ref`, counting of each
    element only its distance from the values that rounding `ref` to out's dtype may give:
    within half a unit in the last place (to nearest), or between ref and one unit towards zero
    (`toward_zero`)."""
    o, r = _without_nans(out, ref)
    h = half_ulp(r, out.dtype)
    if toward_zero:  # |out| in (|ref| - ulp, |ref|], with ref's sign
        lo = torch.where(r >= 0, r - 2 * h, r)
        hi = torch.where(r >= 0, r, r + 2 * h)
    else:
        lo, hi = r - h, r + h
    excess = (lo - o).clamp_min(0) + (o - hi).clamp_min(0)
    den = r.norm().item()
    return excess.norm().item() / den if den > 0 else excess.norm().item()


def error(out, ref, impl='cpu'):
    """The error that counts for a result of out's dtype on backend `impl` (module docstring)."""
    if out.dtype in LOW_PRECISION:
        toward_zero = out.dtype == torch.bfloat16 and impl.startswith('interp')
        return error_beyond_rounding(out, ref, toward_zero)
    return rel_err(out, ref)


def check(out, ref, impl, what='loss'):
    """Assert `out` is within the tolerance of its dtype and path of the float64 `ref`."""
    err, tol = error(out, ref, impl), tolerance(impl, out.dtype)
    assert err <= tol, f'{what}: error {err:.3g} > {tol:g} ({out.dtype}, {impl})'
    return err


def as_computed(t, impl):
    """The float64 copy (on the CPU) of input `t` as backend `impl` computes with it: float64
    inputs are rounded to fp32 by the Triton kernels."""
    t = t.detach()
    if t.dtype == torch.float64 and impl != 'cpu':
        t = t.float()
    return t.double().cpu()
