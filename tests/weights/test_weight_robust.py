"""RobustScale, temperature/clip weights and fusion against numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rapidun_dist.config import WeightsConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.weights import fuse_and_weight, robust_scale, weights_from_scores


def _np_weights(s, tau, w_min, w_max):
    med = np.median(s)
    z = (s - med) / max(1.4826 * np.median(np.abs(s - med)), 1e-3)
    w = np.exp(np.clip(z / tau, math.log(w_min), math.log(w_max)))
    return z, w / w.mean()


@pytest.mark.parametrize("n", [1, 2, 7, 40])
def test_robust_scale_and_weights_match_numpy(n):
    s = np.random.default_rng(n).standard_t(3, size=n)
    z, w = _np_weights(s, 0.7, 0.2, 3.0)
    if n == 1:
        z = np.zeros(1)  # constant
    np.testing.assert_allclose(robust_scale(torch.tensor(s)).numpy(), z, rtol=0, atol=1e-12)
    got = weights_from_scores(torch.tensor(s), 0.7, 0.2, 3.0)
    np.testing.assert_allclose(got.numpy(), w if n > 1 else np.ones(1), rtol=0, atol=1e-12)
    assert abs(float(got.mean()) - 1.0) < 1e-12


def test_constant_scores_give_zero_z_and_unit_weights():
    s = torch.full((6,), 0.37, dtype=torch.float64)
    assert torch.equal(robust_scale(s), torch.zeros(6, dtype=torch.float64))
    assert torch.equal(weights_from_scores(s, 0.5, 0.2, 3.0), torch.ones(6, dtype=torch.float64))


def test_mad_floor_applies_when_mad_is_zero():
    s = torch.tensor([0.0, 0.0, 0.0, 0.0, 2e-4], dtype=torch.float64)  # MAD 0, not constant
    np.testing.assert_allclose(robust_scale(s).numpy(), [0, 0, 0, 0, 0.2], atol=1e-12)


def test_clip_bounds_hold_before_normalisation():
    s = torch.tensor(np.random.default_rng(0).normal(size=50) * 10)
    w = weights_from_scores(s, 0.1, 0.25, 2.0)
    ratio = float(w.max() / w.min())
    assert ratio == pytest.approx(8.0)  # both clip ends reached at tau = 0.1


def test_fuse_and_weight_uses_alpha_beta_gamma_delta():
    rng = np.random.default_rng(1)
    sc = {k: torch.tensor(rng.normal(size=n)) for k, n in (("ff", 9), ("fr", 9), ("rr", 20), ("rf", 20))}
    cfg = WeightsConfig(alpha=2.0, beta=0.5, gamma=1.5, delta=0.0, tau_f=0.9, tau_r=1.1, w_min=0.3, w_max=2.5)
    wf, wr, fused = fuse_and_weight(sc, cfg)
    s_f = 2.0 * sc["ff"].numpy() - 0.5 * sc["fr"].numpy()
    s_r = 1.5 * sc["rr"].numpy()
    np.testing.assert_allclose(fused["s_f"].numpy(), s_f, atol=1e-12)
    np.testing.assert_allclose(wf.numpy(), _np_weights(s_f, 0.9, 0.3, 2.5)[1], atol=1e-12)
    np.testing.assert_allclose(wr.numpy(), _np_weights(s_r, 1.1, 0.3, 2.5)[1], atol=1e-12)
    np.testing.assert_allclose(fused["z_r"].numpy(), _np_weights(s_r, 1.1, 0.3, 2.5)[0], atol=1e-12)


def test_bad_inputs_raise():
    with pytest.raises(DataError, match="missing"):
        fuse_and_weight({"ff": torch.ones(2)}, WeightsConfig())
    with pytest.raises(DataError, match="match"):
        fuse_and_weight(
            {"ff": torch.ones(2), "fr": torch.ones(3), "rr": torch.ones(2), "rf": torch.ones(2)},
            WeightsConfig(),
        )
    with pytest.raises(DataError, match="NaN"):
        robust_scale(torch.tensor([1.0, float("nan")]))
    with pytest.raises(DataError, match="non-empty"):
        robust_scale(torch.zeros(0))
    with pytest.raises(ValueError, match="tau"):
        weights_from_scores(torch.ones(3), 0.0, 0.2, 3.0)


def test_spearman_equals_pearson_of_average_ranks(rng):
    """Against the definition, with ties (values drawn from 6 levels) and without."""
    from rapidun_dist.weights.robust import spearman

    def avg_ranks(x):  # brute force: 1 + (number below) + (number equal - 1) / 2
        return [1 + sum(y < v for y in x) + (sum(y == v for y in x) - 1) / 2 for v in x]

    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    for ties in (True, False):
        a = (
            torch.randint(0, 6, (40,), generator=gen).double()
            if ties
            else torch.randn(40, generator=gen).double()
        )
        b = a + torch.randn(40, generator=gen, dtype=torch.float64)
        ra, rb = (torch.tensor(avg_ranks(x.tolist()), dtype=torch.float64) for x in (a, b))
        want = float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])
        assert spearman(a, b) == pytest.approx(want, abs=1e-12)
    assert spearman(torch.arange(5.0), -torch.arange(5.0)) == pytest.approx(-1.0)
    assert math.isnan(spearman(torch.ones(4), torch.arange(4.0)))
