"""The weight variants of issue 11 section 4: split-half shrinkage, retain weights for rows at risk, a top-k
that scales with the pack, and separate weights for the relabel term (the rapidun method's hooks)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rapidun_dist.config import ConfigError, UnlearnConfig, WeightsConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.influence.scores import block_scores, block_topk
from rapidun_dist.weights import dense_directional_scores, fuse_and_weight, weights_from_scores
from rapidun_dist.weights.robust import shrink_factor


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
    from rapidun_dist.core.io import write_jsonl
    from rapidun_dist.training.losses import ga_term, unlearning_objective
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


# the stages' side: split halves, scores.jsonl round trip, relabel weight files -----------------------------------


def test_half_columns_split_layer_blocks():
    from rapidun_dist.core.errors import DataError as DE
    from rapidun_dist.weights.recipe import half_columns

    a, b = half_columns({"estimator": "tokenwise", "dim": 12, "layers": ["l0", "l1", "l2"]})
    assert a.tolist() == [0, 1, 2, 3, 8, 9, 10, 11] and b.tolist() == [4, 5, 6, 7]
    a, b = half_columns({"estimator": "rapidgrad", "dim": 6, "layers": ["l0"]})
    assert a.tolist() == [0, 2, 4] and b.tolist() == [1, 3, 5]
    with pytest.raises(DE, match="two tracked layers"):
        half_columns({"estimator": "tokenwise", "dim": 4, "layers": ["l0"]})


def test_mean_scores_of_halves_average_to_the_full_score():
    """The identity the shrinkage rests on: for `mean`, S = (S_A + S_B) / 2 when every layer block has one norm."""
    from rapidun_dist.weights.recipe import half_columns

    gen = _gen()
    n_layers, width = 4, 5
    raw = torch.randn(20, n_layers, width, generator=gen, dtype=torch.float64)
    feats = (torch.nn.functional.normalize(raw, dim=2) / n_layers**0.5).flatten(1)
    cols = half_columns({"estimator": "tokenwise", "dim": n_layers * width, "layers": list("abcd")})
    full = dense_directional_scores(feats[:7], feats[7:])
    halves = [dense_directional_scores(feats[:7, c], feats[7:, c]) for c in cols]
    for k in ("ff", "fr", "rr", "rf"):
        torch.testing.assert_close(full[k], (halves[0][k] + halves[1][k]) / 2, rtol=0, atol=1e-12)


def _run_weights_stage(tmp_path, wcfg: WeightsConfig, with_halves: bool):
    from rapidun_dist.config import RunConfig
    from rapidun_dist.core.io import write_jsonl
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import stage_context
    from rapidun_dist.stages import weights as stage
    from rapidun_dist.stages.influence import score_rows

    gen = _gen()
    forget = [{"id": f"f{i}"} for i in range(8)]
    retain = [{"id": f"r{i}"} for i in range(20)]
    full = _scores(8, 20, gen)
    halves = (_scores(8, 20, gen), _scores(8, 20, gen)) if with_halves else None
    rd = RunDir(tmp_path)
    rd.influence.mkdir(parents=True, exist_ok=True)
    write_jsonl(rd.influence / "scores.jsonl", score_rows(forget, retain, full, halves))
    stage.run(stage_context(RunConfig(weights=wcfg), rd, "weights"))
    return rd, full, halves


def test_weights_stage_shrinks_with_stored_halves_and_writes_relabel_weights(tmp_path):
    from rapidun_dist.weights.rapidin import RELABEL_WEIGHTS
    from rapidun_dist.weights.recipe import read_scores

    cfg = WeightsConfig(shrink=True, relabel_weights="self")
    rd, full, halves = _run_weights_stage(tmp_path, cfg, with_halves=True)
    scores, f_ids, r_ids, got_halves = read_scores(rd.influence / "scores.jsonl")
    assert f_ids[0] == "f0" and len(r_ids) == 20
    for k in ("ff", "fr", "rr", "rf"):
        torch.testing.assert_close(scores[k], full[k]) and torch.testing.assert_close(
            got_halves[1][k], halves[1][k]
        )
    fw, _, _ = fuse_and_weight(full, cfg, halves)
    stored = torch.tensor(
        [r["weight"] for r in read_jsonl_rows(rd.weights / "forget_weights.jsonl")], dtype=torch.float64
    )
    torch.testing.assert_close(stored, fw)
    from dataclasses import replace

    relabel = torch.tensor(
        [r["weight"] for r in read_jsonl_rows(rd.weights / RELABEL_WEIGHTS)], dtype=torch.float64
    )
    torch.testing.assert_close(relabel, fuse_and_weight(full, replace(cfg, beta=0.0), halves)[0])
    _run_weights_stage(
        tmp_path, WeightsConfig(), with_halves=False
    )  # "same": a stale relabel file is removed
    assert not (rd.weights / RELABEL_WEIGHTS).exists()


def test_weights_stage_shrink_without_halves_is_an_error(tmp_path):
    with pytest.raises(DataError, match="split-half"):
        _run_weights_stage(tmp_path, WeightsConfig(shrink=True), with_halves=False)


def read_jsonl_rows(path):
    from rapidun_dist.core.io import read_jsonl

    return read_jsonl(path)
