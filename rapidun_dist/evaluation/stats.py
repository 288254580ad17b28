"""Intervals for the report: Wilson intervals for proportions (ASR, FPR), t or bootstrap intervals for means over
seeds. Standard library and numpy only (no scipy).

Wilson (score) interval for k successes in n trials at normal quantile z = Phi^-1(1 - (1 - confidence) / 2):

    centre = (p + z^2 / (2n)) / (1 + z^2 / n),  half = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

with p = k / n; unlike p +- z sqrt(p (1 - p) / n) it stays inside [0, 1] and is not empty at k = 0 or k = n.

Mean over seeds x_1..x_n: mean +- t_{1 - a/2, n-1} * s / sqrt(n) (s the sample standard deviation), with the
Student t quantile computed from its CDF, F(t) = 1 - I_{v / (v + t^2)}(v / 2, 1 / 2) / 2 for t >= 0 (I the
regularized incomplete beta function, evaluated by its continued fraction), inverted by bisection. Or the
percentile bootstrap: the a/2 and 1 - a/2 quantiles of the means of `n_boot` resamples (seeded). With one
value there is no spread to estimate: lo = hi = the value, sd = 0.

Paired differences (`paired_differences`): for two methods measured on the same seeds, d_s = a_s - b_s over the
seeds both have, then the t interval above on d_1..d_n (the seed-to-seed variation both share cancels). Seeds only
one side has are listed, not used.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np

from rapidun_dist.core.errors import DataError

Z95 = NormalDist().inv_cdf(0.975)  # 1.959963984540054...
_CF_EPS, _CF_TINY, _CF_MAX_ITER = 1e-15, 1e-300, 500


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise DataError(f"intervals: confidence must be in (0, 1), found {confidence}")


def wilson_interval(
    k: int, n: int, z: float = Z95, *, confidence: float | None = None
) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) for `k` successes out of `n` (module doc): 95% by default, or at
    normal quantile `z`, or at `confidence` when given."""
    if confidence is not None:
        _check_confidence(confidence)
        z = NormalDist().inv_cdf(1.0 - (1.0 - confidence) / 2.0)
    if n < 1 or not 0 <= k <= n:
        raise DataError(f"wilson_interval: expected 0 <= k <= n and n >= 1, found k={k}, n={n}")
    p, z2 = k / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the edges (no rounding residue)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def proportion(k: int, n: int, *, confidence: float = 0.95) -> dict:
    """{"p", "k", "n", "lo", "hi"}: a proportion with its sample size and Wilson interval."""
    lo, hi = wilson_interval(k, n, confidence=confidence)
    return {"p": k / n, "k": k, "n": n, "lo": lo, "hi": hi}


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz), converging for x < (a+1)/(a+b+2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
    h = d
    for m in range(1, _CF_MAX_ITER + 1):
        for num in (
            m * (b - m) * x / ((qam + 2 * m) * (a + 2 * m)),
            -(a + m) * (qab + m) * x / ((a + 2 * m) * (qap + 2 * m)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
            c = 1.0 + num / c
            c = c if abs(c) > _CF_TINY else _CF_TINY
            h *= d * c
        if abs(d * c - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta: continued fraction did not converge (a={a}, b={b}, x={x})")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0 and 0.0 <= x <= 1.0):
        raise DataError(f"betainc: expected a, b > 0 and 0 <= x <= 1, found {a}, {b}, {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    if df <= 0:
        raise DataError(f"t_cdf: degrees of freedom must be > 0, found {df}")
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`, to ~1e-12)."""
    if not 0.0 < p < 1.0:
        raise DataError(f"t_quantile: p must be in (0, 1), found {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t (the half-width factor of a 95% interval)."""
    if dof < 1:
        raise DataError(f"t_quantile_975: expected >= 1 degree of freedom, found {dof}")
    return t_quantile(0.975, dof)


def _values(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([float(v) for v in values], dtype=np.float64)
    if x.size == 0 or not np.isfinite(x).all():
        raise DataError(f"mean_interval: expected at least one finite value, found {list(values)!r:.80}")
    return x


def mean_interval(
    values: Sequence[float],
    *,
    confidence: float = 0.95,
    method: str = "t",
    n_boot: int = 10000,
    seed: int = 0,
) -> dict:
    """{"mean", "n", "lo", "hi", "sd", "method"} for values over seeds: a t interval (`method="t"`) or a
    percentile bootstrap (`method="bootstrap"`, `n_boot` resamples from `seed`). One value: lo = hi = mean."""
    _check_confidence(confidence)
    if method not in ("t", "bootstrap"):
        raise DataError(f"mean_interval: method must be 't' or 'bootstrap', found {method!r}")
    x = _values(values)
    mean = float(x.mean())
    out = {"mean": mean, "n": int(x.size), "lo": mean, "hi": mean, "sd": 0.0, "method": method}
    if x.size < 2:
        return out
    out["sd"] = float(x.std(ddof=1))
    alpha = 1.0 - confidence
    if method == "t":
        half = t_quantile(1.0 - alpha / 2.0, x.size - 1) * out["sd"] / math.sqrt(x.size)
        out["lo"], out["hi"] = out["mean"] - half, out["mean"] + half
    else:
        means = np.random.default_rng(seed).choice(x, size=(n_boot, x.size), replace=True).mean(axis=1)
        out["lo"], out["hi"] = (float(q) for q in np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0]))
    return out


def paired_differences(a: Mapping[str, float], b: Mapping[str, float], *, confidence: float = 0.95) -> dict:
    """a[s] - b[s] over the seeds s both have (in a's order): `mean_interval` of the differences (t) plus "seeds",
    "values", and "only_a" / "only_b", the seeds one side lacks. No common seed: n = 0 and mean, lo, hi, sd None."""
    seeds = [s for s in a if s in b]
    out = {
        "seeds": seeds,
        "values": [float(a[s]) - float(b[s]) for s in seeds],
        "only_a": [s for s in a if s not in b],
        "only_b": [s for s in b if s not in a],
    }
    if not seeds:
        return {"mean": None, "n": 0, "lo": None, "hi": None, "sd": None, "method": "t"} | out
    return mean_interval(out["values"], confidence=confidence) | out
