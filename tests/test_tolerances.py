"""The tolerances of tests/_tolerances.py catch what they must: an error of 1e-3 in the
computation of an fp16 / bf16 result fails them (rounded to nearest, and truncated as the
Triton interpreter stores bf16), while the rounding of a correct fp32 result does not; the fp32
and float64 tolerances fail a 1e-3 (fp32) and a 1e-9 (float64) error."""
import pytest
import torch
from _tolerances import error, half_ulp, rel_err, tolerance


def _values(g, n=37 * 80):
    """Magnitudes like a loss or a gradient's: spread over many binades, both signs, some
    subnormal in fp16."""
    mag = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-20, 3, generator=g))
    return mag * torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)


def _truncate_to_bf16(x):
    """fp32 -> bf16 rounding toward zero (what the Triton interpreter does)."""
    bits = x.float().view(torch.int32) & ~0xFFFF
    return bits.view(torch.float32).to(torch.bfloat16)


def _store(x, dtype, impl):
    """x (float64), computed in fp32 and stored as the backend does."""
    if dtype == torch.bfloat16 and impl == 'interp':
        return _truncate_to_bf16(x)
    return x.float().to(dtype)


CASES = [(torch.float16, 'cpu'), (torch.bfloat16, 'cpu'), (torch.float16, 'interp'),
         (torch.bfloat16, 'interp')]


@pytest.mark.parametrize('dtype,impl', CASES, ids=lambda v: str(v).replace('torch.', ''))
def test_low_precision_rounding_passes_a_1e_3_error_fails(dtype, impl):
    g = torch.Generator().manual_seed(1)
    ref = _values(g)
    fp32_noise = 1 + torch.randn(ref.shape, generator=g, dtype=torch.float64) * 1e-7
    assert error(_store(ref * fp32_noise, dtype, impl), ref, impl) <= tolerance(impl, dtype)
    for bad in (1 + 1e-3, 1 - 1e-3):
        assert error(_store(ref * bad, dtype, impl), ref, impl) > 10 * tolerance(impl, dtype)
    # a single element off by 1e-3 of the norm fails too
    wrong = ref.clone()
    wrong[7] += 1e-3 * ref.norm()
    assert error(_store(wrong, dtype, impl), ref, impl) > tolerance(impl, dtype)


@pytest.mark.parametrize('dtype,impl,bad', [(torch.float32, 'cpu', 1e-3),
                                            (torch.float32, 'interp', 1e-3),
                                            (torch.float64, 'cpu', 1e-9),
                                            (torch.float64, 'interp', 1e-3)])
def test_fp32_and_float64_tolerances(dtype, impl, bad):
    g = torch.Generator().manual_seed(2)
    ref = _values(g)
    assert error(ref.to(dtype), ref, impl) <= tolerance(impl, dtype)
    assert error((ref * (1 + bad)).to(dtype), ref, impl) > tolerance(impl, dtype)


def test_half_ulp():
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        fi = torch.finfo(dtype)
        for v in (1.0, 1.5, 3.0, fi.tiny, fi.tiny * 3.5, fi.max / 2):
            x = torch.tensor([v, -v], dtype=torch.float64)
            away = torch.nextafter(x.to(dtype), (x.sign() * float('inf')).to(dtype))
            spacing = (away.double() - x.to(dtype).double()).abs()  # the spacing above |x|
            torch.testing.assert_close(half_ulp(x, dtype), spacing / 2, rtol=0, atol=0)
        # subnormals: the spacing of the smallest normal binade
        x = torch.tensor([fi.tiny / 4], dtype=torch.float64)
        assert half_ulp(x, dtype).item() == fi.tiny * fi.eps / 2


def test_nan_only_where_the_reference_has_it():
    ref = torch.tensor([1.0, float('nan')], dtype=torch.float64)
    assert rel_err(torch.tensor([1.0, float('nan')]), ref) == 0.0
    with pytest.raises(AssertionError, match='NaN'):
        rel_err(torch.tensor([float('nan'), 1.0]), ref)
    with pytest.raises(AssertionError, match='NaN'):
        error(torch.tensor([1.0, 2.0], dtype=torch.float16), ref)
