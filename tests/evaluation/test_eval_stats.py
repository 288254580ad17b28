"""Intervals: Wilson against a brute-force coverage definition, t intervals against scipy-free closed forms."""

import math
import random

import pytest

from rapidun_dist.errors import DataError
from rapidun_dist.evaluation.stats import mean_interval, proportion, wilson_interval


def _score_test_accepts(p0: float, k: int, n: int, z: float = 1.959963984540054) -> bool:
    """Wilson's interval is the set of p0 the score test does not reject: |p - p0| <= z sqrt(p0 (1 - p0) / n)."""
    return abs(k / n - p0) <= z * math.sqrt(p0 * (1 - p0) / n) + 1e-12


@pytest.mark.parametrize("k,n", [(0, 10), (3, 10), (10, 10), (1, 300), (150, 300), (299, 300)])
def test_wilson_matches_score_test_inversion(k, n):
    lo, hi = wilson_interval(k, n)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    grid = [i / 20000 for i in range(1, 20000)]
    accepted = [p for p in grid if _score_test_accepts(p, k, n)]
    assert abs(min(accepted) - lo) < 1e-3 and abs(max(accepted) - hi) < 1e-3


def test_wilson_coverage_near_nominal():
    rng = random.Random(0)
    p, n, hits, trials = 0.05, 300, 0, 2000
    for _ in range(trials):
        k = sum(rng.random() < p for _ in range(n))
        lo, hi = wilson_interval(k, n)
        hits += lo <= p <= hi
    assert 0.92 <= hits / trials <= 0.98


def test_proportion_and_bad_input():
    d = proportion(3, 300)
    assert d["k"] == 3 and d["n"] == 300 and d["lo"] < 0.01 < d["hi"]
    with pytest.raises(DataError):
        wilson_interval(4, 3)
    with pytest.raises(DataError):
        wilson_interval(0, 0)


def test_mean_interval():
    rng = random.Random(1)
    vals = [rng.gauss(2.0, 0.5) for _ in range(3)]
    m = mean_interval(vals)
    sd = math.sqrt(sum((v - m["mean"]) ** 2 for v in vals) / 2)
    assert m["n"] == 3 and math.isclose(m["sd"], sd)
    assert math.isclose(m["hi"] - m["mean"], 4.303 * sd / math.sqrt(3), rel_tol=1e-9)
    one = mean_interval([1.5])
    assert one["lo"] == one["hi"] == 1.5
    with pytest.raises(DataError):
        mean_interval([])
    with pytest.raises(DataError):
        mean_interval([1.0, float("nan")])
