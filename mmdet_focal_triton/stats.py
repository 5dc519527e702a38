"""Small statistics shared by the parity verdict and the benchmarks: a mean with its 95 %
t-interval, for differences measured in pairs (paired iterations of two trainings, interleaved
benchmark rounds), and whether that interval resolves the difference (excludes 0)."""
from __future__ import annotations

import math

# two-sided 95 % quantiles of Student's t for 1..30 degrees of freedom (then an approximation)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (within 2e-3 past 30)."""
    if df < 1:
        return math.inf
    return _T975[df - 1] if df <= len(_T975) else 1.96 + 2.4 / df


def mean_interval(values) -> dict:
    """Mean of ``values`` with its 95 % t-interval (``low``, ``high``; infinite for one value),
    ``n`` and ``resolved``: whether the interval excludes 0."""
    v = [float(x) for x in values]
    n = len(v)
    if n == 0:
        return dict(mean=None, low=None, high=None, n=0, resolved=False)
    mean = sum(v) / n
    if n == 1:
        return dict(mean=mean, low=-math.inf, high=math.inf, n=1, resolved=False)
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    return dict(mean=mean, low=low, high=high, n=n, resolved=low > 0 or high < 0)


def relative(interval: dict, base: float) -> dict:
    """``interval`` (a ``mean_interval``) divided by ``base``: mean, low, high as fractions."""
    return {k: (interval[k] / base if interval.get(k) is not None and base else None)
            for k in ('mean', 'low', 'high')}


def fmt_share(interval: dict | None, rel: dict | None) -> str:
    """'+1.2 % [+0.3, +2.1]', or the same with 'not resolved' when the interval holds 0."""
    if not interval or not rel or rel.get('mean') is None:
        return 'n/a'
    if not math.isfinite(rel['low']):
        return f"{100 * rel['mean']:+.1f} % (one sample: not resolved)"
    text = f"{100 * rel['mean']:+.1f} % [{100 * rel['low']:+.1f}, {100 * rel['high']:+.1f}]"
    return text if interval['resolved'] else f'not resolved: {text}'
