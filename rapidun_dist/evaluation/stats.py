"""Intervals for the numbers in a report: every reported proportion carries its sample size and a 95% interval.

- Proportions (ASR, FPR, recall): the Wilson score interval for k successes in n trials,

      centre = (p + z^2 / 2n) / (1 + z^2 / n),  half = z sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)

  which stays inside [0, 1] and is sensible at p = 0 or 1 (where the normal interval collapses to a point).
- Means over seeds (or any small sample): mean +- t_{0.975, n-1} s / sqrt(n) (Student t; no interval for n = 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rapidun_dist.errors import DataError

Z95 = 1.959963984540054
# two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (beyond 30 the normal quantile is used)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for k successes out of n (95% by default)."""
    if n < 1 or not 0 <= k <= n:
        raise DataError(f"wilson_interval: expected 0 <= k <= n and n >= 1, found k={k}, n={n}")
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the edges (no rounding past p)


def proportion(k: int, n: int) -> dict:
    """{"p", "k", "n", "lo", "hi"}: a proportion with its sample size and 95% Wilson interval."""
    lo, hi = wilson_interval(k, n)
    return {"p": k / n, "k": k, "n": n, "lo": lo, "hi": hi}


def t_quantile_975(dof: int) -> float:
    if dof < 1:
        raise DataError(f"t_quantile_975: expected >= 1 degree of freedom, found {dof}")
    return _T975[dof - 1] if dof <= len(_T975) else Z95


def mean_interval(values: Sequence[float]) -> dict:
    """{"mean", "n", "lo", "hi", "sd"}: the mean of `values` with a 95% t interval (lo = hi = mean for n = 1)."""
    vals = [float(v) for v in values]
    if not vals or not all(math.isfinite(v) for v in vals):
        raise DataError(f"mean_interval: expected finite values, found {vals}")
    n, mean = len(vals), sum(vals) / len(vals)
    if n == 1:
        return {"mean": mean, "n": 1, "lo": mean, "hi": mean, "sd": 0.0}
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return {"mean": mean, "n": n, "lo": mean - half, "hi": mean + half, "sd": sd}
