"""Poison retrieval: the stratified subsample, the mean-cosine score, and AUROC/AP on a tiny model."""

from __future__ import annotations

import pytest
import torch
from conftest import make_records

from rapidun_dist.config import InfluenceConfig, ModelConfig, RunConfig
from rapidun_dist.evaluation.retrieval import mean_cosine, poison_retrieval, stratified_train_sample


def test_stratified_sample_caps_poisoned_at_half_and_excludes_ids():
    train = make_records(40, n_poisoned=15, seed=2)
    sample = stratified_train_sample(train, {"r0", "r1", "r20"}, max_train=20, seed=3)
    ids = [r["id"] for r in sample]
    assert len(sample) == 20 and not {"r0", "r1", "r20"} & set(ids)
    assert sum(bool(r.get("is_poisoned")) for r in sample) == 10
    assert ids == [r["id"] for r in train if r["id"] in set(ids)]  # original order kept
    assert sample == stratified_train_sample(train, {"r0", "r1", "r20"}, max_train=20, seed=3)
    small = stratified_train_sample(train, set(), max_train=100, seed=0)
    assert len(small) == 40  # everything when max_train exceeds the pool
    with pytest.raises(ValueError, match="max_train"):
        stratified_train_sample(train, set(), max_train=1)


def test_mean_cosine_matches_loop():
    gen = torch.Generator().manual_seed(0)
    rows, cols = torch.randn(5, 7, generator=gen), torch.randn(3, 7, generator=gen) * 4
    cos = torch.nn.functional.cosine_similarity
    expected = torch.stack([torch.stack([cos(r, c, dim=0) for c in cols]).mean() for r in rows]).double()
    torch.testing.assert_close(mean_cosine(rows, cols), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("estimator", ["tokenwise", "rapidgrad"])
def test_poison_retrieval_on_a_tiny_model(text_model, estimator):
    model, tok = text_model
    cfg = RunConfig(
        model=ModelConfig(max_length=64),
        influence=InfluenceConfig(k_in=8, k_out=8, batch_size=8, rapidgrad_k=256, backend="torch"),
    )
    train = make_records(30, n_poisoned=10, seed=5)
    forget = train[:3]
    out = poison_retrieval(model, tok, cfg, train, forget, estimator=estimator, max_train=16, seed=1)
    assert set(out) == {"auroc", "ap", "n_train", "n_poisoned", "seconds"}
    assert out["n_train"] == 16 and out["n_poisoned"] == 7  # 10 poisoned minus the 3 forget rows
    # poisoned rows share the forget rows' trigger and target answer: even a random model ranks them first
    assert out["auroc"] > 0.8 and out["ap"] > 0.6 and out["seconds"] > 0


def test_poison_retrieval_needs_both_classes(text_model):
    model, tok = text_model
    train = make_records(6, seed=1)
    with pytest.raises(ValueError, match="0 poisoned"):
        poison_retrieval(model, tok, RunConfig(), train, train[:1], estimator="tokenwise", max_train=4)


def test_compute_features_keeps_row_order(text_model):
    from rapidun_dist.evaluation.retrieval import compute_features

    model, tok = text_model
    cfg = RunConfig(
        model=ModelConfig(max_length=64), influence=InfluenceConfig(k_in=4, k_out=4, batch_size=3)
    )
    records = make_records(7, n_poisoned=2, seed=3)
    feats = compute_features(model, tok, cfg, records, estimator="tokenwise")
    one_by_one = torch.cat([compute_features(model, tok, cfg, [r], estimator="tokenwise") for r in records])
    torch.testing.assert_close(feats, one_by_one, atol=1e-5, rtol=0)
