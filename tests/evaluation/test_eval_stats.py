"""Intervals: Wilson bounds solve their defining equation and cover at the nominal rate; the t quantile matches
published values and inverts its CDF; the incomplete beta matches numerical integration; mean intervals."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from rapidun_dist.core.errors import DataError
from rapidun_dist.evaluation.stats import (
    betainc,
    mean_interval,
    proportion,
    t_cdf,
    t_quantile,
    t_quantile_975,
    wilson_interval,
)


def test_wilson_bounds_solve_the_score_equation(rng):
    """A Wilson bound p0 is where the score statistic |p - p0| / sqrt(p0 (1 - p0) / n) equals z."""
    for _ in range(200):
        n = rng.randint(1, 500)
        k = rng.randint(0, n)
        conf = rng.uniform(0.5, 0.99)
        z = NormalDist().inv_cdf(1 - (1 - conf) / 2)
        lo, hi = wilson_interval(k, n, confidence=conf)
        p = k / n
        assert 0.0 <= lo <= p <= hi <= 1.0
        for bound, edge in ((lo, k == 0), (hi, k == n)):
            if edge:
                assert bound in (0.0, 1.0)
                continue
            score = abs(p - bound) / math.sqrt(bound * (1 - bound) / n)
            assert score == pytest.approx(z, rel=1e-9)


def test_wilson_covers_at_the_nominal_rate(rng):
    gen = np.random.default_rng(rng.randrange(2**31))
    p, n, trials = rng.uniform(0.05, 0.5), 80, 3000
    ks = gen.binomial(n, p, size=trials)
    covered = sum(lo <= p <= hi for lo, hi in (wilson_interval(int(k), n) for k in ks))
    assert 0.92 <= covered / trials <= 0.98, (p, covered / trials)


def test_proportion_and_errors():
    assert wilson_interval(3, 10) == wilson_interval(3, 10, confidence=0.95)
    one_sigma = NormalDist().cdf(1.0) * 2 - 1
    assert wilson_interval(3, 10, 1.0) == pytest.approx(
        wilson_interval(3, 10, confidence=one_sigma), abs=1e-12
    )
    assert proportion(3, 10) == {
        "p": 0.3,
        "lo": wilson_interval(3, 10)[0],
        "hi": wilson_interval(3, 10)[1],
        "k": 3,
        "n": 10,
    }
    with pytest.raises(DataError, match="0 <= k <= n"):
        wilson_interval(5, 4)
    with pytest.raises(DataError, match="confidence"):
        wilson_interval(1, 4, confidence=1.0)


@pytest.mark.parametrize(
    "p, df, expected",  # published Student t quantiles
    [
        (0.975, 1, 12.7062047),
        (0.975, 2, 4.3026527),
        (0.975, 4, 2.7764451),
        (0.975, 10, 2.2281389),
        (0.975, 30, 2.0422725),
        (0.995, 3, 5.8409093),
        (0.95, 5, 2.0150484),
        (0.9, 2, 1.8856181),
    ],
)
def test_t_quantile_matches_tables(p, df, expected):
    assert t_quantile(p, df) == pytest.approx(expected, abs=1e-6)
    if p == 0.975:
        assert t_quantile_975(df) == t_quantile(p, df)
    assert t_quantile(1 - p, df) == pytest.approx(-expected, abs=1e-6)


def test_t_quantile_inverts_the_cdf_and_tends_to_normal(rng):
    for _ in range(50):
        p, df = rng.uniform(0.01, 0.99), rng.uniform(0.5, 200)
        assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)
    assert t_quantile(0.975, 1e6) == pytest.approx(NormalDist().inv_cdf(0.975), abs=1e-5)
    with pytest.raises(DataError):
        t_quantile(1.0, 3)


def test_betainc_matches_numerical_integration(rng):
    for _ in range(20):
        a, b, x = rng.uniform(1.0, 6.0), rng.uniform(1.0, 6.0), rng.uniform(0.01, 0.99)
        grid = np.linspace(0.0, 1.0, 200_001)
        dens = grid ** (a - 1) * (1 - grid) ** (b - 1)
        full = np.trapezoid(dens, grid)
        part = np.trapezoid(dens[grid <= x], grid[grid <= x])
        part += (x - grid[grid <= x][-1]) * dens[grid <= x][-1]
        assert betainc(a, b, x) == pytest.approx(part / full, abs=2e-5)
        assert betainc(a, b, x) == pytest.approx(1 - betainc(b, a, 1 - x), abs=1e-12)
    assert betainc(2.0, 3.0, 0.0) == 0.0 and betainc(2.0, 3.0, 1.0) == 1.0


def test_mean_interval_t_and_bootstrap(rng):
    values = [rng.gauss(5, 2) for _ in range(rng.randint(2, 8))]
    n, mean = len(values), sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    t = mean_interval(values)
    half = t_quantile(0.975, n - 1) * sd / math.sqrt(n)
    assert (t["mean"], t["sd"], t["n"]) == (pytest.approx(mean), pytest.approx(sd), n)
    assert (t["lo"], t["hi"]) == (pytest.approx(mean - half), pytest.approx(mean + half))
    boot = mean_interval(values, method="bootstrap", seed=3)
    assert boot == mean_interval(values, method="bootstrap", seed=3)
    eps = 1e-12 * max(abs(v) for v in values)  # a resample of equal values averages to within an ulp
    assert min(values) - eps <= boot["lo"] <= boot["mean"] <= boot["hi"] <= max(values) + eps
    assert mean_interval([4.2]) == {"mean": 4.2, "n": 1, "lo": 4.2, "hi": 4.2, "sd": 0.0, "method": "t"}
    with pytest.raises(DataError, match="finite"):
        mean_interval([1.0, float("nan")])
    with pytest.raises(DataError, match="method"):
        mean_interval([1.0, 2.0], method="jackknife")
