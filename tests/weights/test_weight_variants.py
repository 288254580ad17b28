"""The weight variants of issue 11 section 4: split-half shrinkage, retain weights for rows at risk, a top-k
that scales with the pack, and separate weights for the relabel term (the rapidun method's hooks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rapidun_dist.config import ConfigError, UnlearnConfig, WeightsConfig
from rapidun_dist.errors import DataError
from rapidun_dist.weights import dense_directional_scores, fuse_and_weight, weights_from_scores
from rapidun_dist.weights.robust import shrink_factor
from rapidun_dist.weights.scores import block_scores, block_topk


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(int(torch.randint(0, 1_000_000, (1,))))


def _np_var(x: np.ndarray) -> float:
    return (1.4826 * np.median(np.abs(x - np.median(x)))) ** 2


def _scores(n_f: int, n_r: int, gen) -> dict:
    r = lambda n: torch.randn(n, generator=gen, dtype=torch.float64)
    return {"ff": r(n_f), "fr": r(n_f), "rr": r(n_r), "rf": r(n_r)}


def test_shrink_factor_matches_numpy_and_tracks_the_noise():
    gen = _gen()
    signal = 3.0 * torch.randn(4000, generator=gen, dtype=torch.float64)
    for noise, lo, hi in ((0.05, 0.99, 1.0), (30.0, 0.0, 0.2)):  # expected lambda 1.0 and 0.02
        a = signal + noise * torch.randn(4000, generator=gen, dtype=torch.float64)
        b = signal + noise * torch.randn(4000, generator=gen, dtype=torch.float64)
        s = (a + b) / 2
        lam = shrink_factor(s, a, b)
        want = min(max(1 - _np_var((a - b).numpy()) / (4 * _np_var(s.numpy())), 0.0), 1.0)
        assert math.isclose(lam, want, rel_tol=1e-12, abs_tol=1e-12)
        assert lo <= lam <= hi, (noise, lam)
    c = torch.full((5,), 0.3, dtype=torch.float64)
    assert shrink_factor(c, c, c) == 0.0
    with pytest.raises(DataError, match="must match"):
        shrink_factor(s, a[:3], b)


def test_shrink_scales_z_and_pure_noise_gives_weights_one():
    gen = _gen()
    full = _scores(30, 60, gen)
    cfg = WeightsConfig(shrink=True)
    same = (full, full)  # halves that agree: lambda = 1, the unshrunk weights
    fw, rw, fused = fuse_and_weight(full, cfg, same)
    fw0, rw0, _ = fuse_and_weight(full, WeightsConfig())
    assert fused["shrink_f"] == 1.0 and fused["shrink_r"] == 1.0
    torch.testing.assert_close(fw, fw0) and torch.testing.assert_close(rw, rw0)
    neg = {k: -v for k, v in full.items()}  # halves that disagree completely: S_A - S_B = 2 S, lambda = 0
    zeros = {k: torch.zeros_like(v) for k, v in full.items()}
    fw, rw, fused = fuse_and_weight(zeros | full, cfg, (full, neg))
    assert fused["shrink_f"] == 0.0
    torch.testing.assert_close(fw, torch.ones_like(fw)) and torch.testing.assert_close(
        rw, torch.ones_like(rw)
    )
    with pytest.raises(DataError, match="split-half"):
        fuse_and_weight(full, cfg)


def test_at_risk_retain_weights_grow_with_rf():
    gen = _gen()
    s = _scores(10, 50, gen)
    cfg = WeightsConfig(retain_score="at_risk", delta=0.7)
    _, rw, fused = fuse_and_weight(s, cfg)
    torch.testing.assert_close(rw, weights_from_scores(0.7 * s["rf"], cfg.tau_r, cfg.w_min, cfg.w_max))
    by_rf = rw[s["rf"].argsort()]
    assert bool((by_rf.diff() >= -1e-12).all()) and float(by_rf[-1]) > float(by_rf[0])  # non-decreasing in RF
    assert fused["s_r"].shape == s["rf"].shape


def test_block_topk_and_pack_scaled_median_topk():
    assert block_topk(40, None, 7) == 40
    assert block_topk(40, 0.25, 19) == 5 and block_topk(40, 0.01, 19) == 1 and block_topk(3, 1.0, 57) == 57
    with pytest.raises(ValueError, match="topk_frac"):
        block_topk(4, 0.0, 10)
    gen = _gen()
    f, r = (
        torch.randn(9, 6, generator=gen, dtype=torch.float64),
        torch.randn(23, 6, generator=gen, dtype=torch.float64),
    )
    got = dense_directional_scores(f, r, agg="median_topk", topk=40, topk_frac=0.8)
    k_f, k_r = math.ceil(0.8 * 9), math.ceil(0.8 * 23)
    for name, k in (("ff", k_f), ("fr", k_f), ("rr", k_r), ("rf", k_r)):
        fixed = dense_directional_scores(f, r, agg="median_topk", topk=k)
        torch.testing.assert_close(got[name], fixed[name], rtol=0, atol=1e-12)
    assert not torch.allclose(got["rr"], dense_directional_scores(f, r, agg="median_topk", topk=k_f)["rr"])
    assert block_scores  # the dense path above runs through block_scores with the per-block k


def test_weights_config_validates_the_new_fields():
    with pytest.raises(ConfigError, match="weights.topk_frac"):
        WeightsConfig(topk_frac=0.0)
    with pytest.raises(ConfigError, match="weights.retain_score"):
        WeightsConfig(retain_score="risky")
    with pytest.raises(ConfigError, match="weights.relabel_weights"):
        WeightsConfig(relabel_weights="ascent")


# separate relabel weights ---------------------------------------------------------------------------------


class _Ctx:
    def __init__(self, weights_dir):
        self.weights_dir, self.cfg, self.device = weights_dir, None, torch.device("cpu")


def test_rapidun_relabel_weights_apart_from_the_ascent(tmp_path):
    from rapidun_dist.io import write_jsonl
    from rapidun_dist.losses import ga_term, unlearning_objective
    from rapidun_dist.unlearn.methods import BatchShape, ForgetTerms, build_method

    gen = _gen()
    nf, nr = 6, 10
    a = 0.2 + 2 * torch.rand(nf, generator=gen, dtype=torch.float64)
    r = 0.2 + 2 * torch.rand(nf, generator=gen, dtype=torch.float64)
    rows = lambda w: [{"index": i, "id": str(i), "weight": float(x)} for i, x in enumerate(w)]
    write_jsonl(tmp_path / "forget_weights.jsonl", rows(a))
    write_jsonl(tmp_path / "retain_weights.jsonl", rows(torch.ones(nr)))
    u = UnlearnConfig(ascent_cap=50.0)
    m = build_method("rapidun", u, BatchShape(8, 2, 6), nf, nr)
    m.setup(_Ctx(tmp_path))
    assert m.ascent_ratio is None and torch.allclose(m.forget_w.double(), a, atol=1e-6)
    write_jsonl(tmp_path / "forget_relabel_weights.jsonl", rows(r))
    m.setup(_Ctx(tmp_path))
    idx = torch.tensor([4, 1, 2])
    ce = 1 + torch.rand(3, generator=gen, dtype=torch.float64)
    clean = torch.rand(3, generator=gen, dtype=torch.float64)
    terms = ForgetTerms(index=idx, nll=ce * 5, n_tokens=torch.full((3,), 5.0), ce=ce)
    ascent, rest = unlearning_objective(
        forget_loss=m.forget_loss(terms), forget_w=m.forget_w[idx].double(), retain_loss=ce[:0],
        retain_w=ce[:0], relabel_ce=clean, beta_d=u.beta_d, denom=8,
    )  # fmt: skip
    want_ascent = (a[idx] * u.alpha_a * ga_term(ce, u.ascent_cap)).sum() / 8
    want_rest = u.beta_d * (r[idx] * clean).sum() / 8
    torch.testing.assert_close(ascent, want_ascent, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(rest, want_rest, rtol=1e-6, atol=1e-9)
    assert "relabel_weights" in m.describe()
