"""Feature shards: atomic writes, corrupt or unsidecarred shards recomputed, subset loading."""

from __future__ import annotations

import pytest
import torch
from conftest import make_records

from rapidun_dist.config import InfluenceConfig, ModelConfig, RunConfig
from rapidun_dist.core.errors import StageError
from rapidun_dist.influence import extract as stage
from rapidun_dist.influence.store import FeatureStore, load_features, plan_shards


def run_cfg() -> RunConfig:
    return RunConfig(
        model=ModelConfig(max_length=48),
        influence=InfluenceConfig(k_in=4, k_out=4, batch_size=3, shard_size=4, backend="torch"),
    )


@pytest.fixture
def counted(monkeypatch):
    """Counts the rows the extractor computes."""
    calls = {"rows": 0}
    real = stage.make_extractor

    def make(*a, **kw):
        ext = real(*a, **kw)

        def call(batch):
            calls["rows"] += len(batch)
            return ext(batch)

        call.spec, call.dim = ext.spec, ext.dim
        return call

    monkeypatch.setattr(stage, "make_extractor", make)
    return calls


def test_shards_atomic_and_corrupt_or_unsidecarred_shards_recomputed(tmp_path, text_model, counted):
    model, tok = text_model
    records, cfg = make_records(10, seed=1), run_cfg()
    store = stage.extract_features(cfg, model, tok, records, tmp_path, context={"model": "m"})
    shards = plan_shards(10, 4)
    assert counted["rows"] == 10 and len(shards) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"shard-0000{i}.{e}" for i in range(3) for e in ("json", "safetensors")
    ]
    assert all(store.is_valid(i, s) for i, s in enumerate(shards))
    store.write_index([r["id"] for r in records], 3, shards)
    before, _ = load_features(tmp_path)
    mtime0 = store.shard_file(0).stat().st_mtime_ns
    data = bytearray(store.shard_file(1).read_bytes())
    data[-5] ^= 0xFF  # flip a byte inside the tensor data
    store.shard_file(1).write_bytes(bytes(data))
    store.sidecar(2).unlink()
    assert (
        not store.is_valid(1, shards[1]) and not store.is_valid(2, shards[2]) and store.is_valid(0, shards[0])
    )
    with pytest.raises(StageError, match="checksum"):
        load_features(tmp_path)
    counted["rows"] = 0
    stage.extract_features(cfg, model, tok, records, tmp_path, context={"model": "m"})
    assert counted["rows"] == 6  # rows 4..9: exactly shards 1 and 2
    assert store.shard_file(0).stat().st_mtime_ns == mtime0
    store.write_index([r["id"] for r in records], 3, shards)
    after, _ = load_features(tmp_path)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=0)


def test_spec_change_invalidates_every_shard(tmp_path):
    store = FeatureStore(tmp_path, {"estimator": "tokenwise", "k_in": 4, "dim": 8})
    store.write_shard(0, (0, 2), torch.randn(2, 8))
    assert store.is_valid(0, (0, 2))
    assert not store.is_valid(0, (0, 3))
    assert not FeatureStore(tmp_path, {"estimator": "tokenwise", "k_in": 8, "dim": 8}).is_valid(0, (0, 2))


def test_failed_write_leaves_no_valid_shard_and_no_temp_file(tmp_path, monkeypatch):
    import safetensors.torch

    store = FeatureStore(tmp_path, {"dim": 4})
    store.write_shard(0, (0, 2), torch.randn(2, 4))

    def broken(tensors, path, metadata=None):
        with open(path, "wb") as fh:
            fh.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        store.write_shard(0, (0, 2), torch.randn(2, 4))
    assert not store.sidecar(0).exists() and not store.is_valid(0, (0, 2))
    assert not list(tmp_path.glob("*.tmp")) and store.shard_file(0).read_bytes() != b"partial"


def test_write_shard_rejects_wrong_row_count(tmp_path):
    with pytest.raises(StageError, match="expected 3 feature rows, found 2"):
        FeatureStore(tmp_path, {"dim": 4}).write_shard(0, (0, 3), torch.randn(2, 4))


def test_load_features_subset_of_rows(tmp_path):
    feats = torch.randn(11, 6)
    shards = plan_shards(11, 4)
    store = FeatureStore(tmp_path, {"dim": 6})
    for i, (s, e) in enumerate(shards):
        store.write_shard(i, (s, e), feats[s:e])
    store.write_index([f"id{i}" for i in range(11)], 5, shards)
    full, index = load_features(tmp_path)
    assert torch.equal(full, feats) and index["n_forget"] == 5 and index["ids"][3] == "id3"
    rows = [9, 0, 5, 10, 1]
    sub, _ = load_features(tmp_path, rows)
    assert torch.equal(sub, feats[rows])
    store.shard_file(0).write_bytes(b"garbage")  # a shard the subset does not need is not read
    sub2, _ = load_features(tmp_path, [8, 9])
    assert torch.equal(sub2, feats[[8, 9]])


def test_shards_follow_rows_and_feature_context(tmp_path, text_model, counted):
    """A shard is valid only for the rows it was computed on and the model / tokenizer / prompt / length it came
    from: same shard layout with other row ids, or another context, recomputes every shard."""
    model, tok = text_model
    cfg = run_cfg()
    records = make_records(8, seed=2)
    stage.extract_features(cfg, model, tok, records, tmp_path, context={"model": "a"})
    assert counted["rows"] == 8
    counted["rows"] = 0
    stage.extract_features(cfg, model, tok, records, tmp_path, context={"model": "a"})
    assert counted["rows"] == 0  # everything valid: nothing recomputed
    other = [dict(r, id=f"other-{i}") for i, r in enumerate(records)]
    stage.extract_features(cfg, model, tok, other, tmp_path, context={"model": "a"})
    assert counted["rows"] == 8
    counted["rows"] = 0
    stage.extract_features(cfg, model, tok, other, tmp_path, context={"model": "b"})
    assert counted["rows"] == 8


def test_feature_context_changes_with_tokenizer_prompt_and_length(text_model):
    from rapidun_dist.influence.extract import feature_context

    model, tok = text_model
    base = feature_context("m", tok, run_cfg())
    assert feature_context("m2", tok, run_cfg())["model"] != base["model"]
    longer = run_cfg()
    longer.model.max_length = 96
    assert feature_context("m", tok, longer) != base
    saved = tok.chat_template
    try:
        tok.chat_template = "{{ messages[0]['content'] }}"
        assert feature_context("m", tok, run_cfg())["prompt_format"] != base["prompt_format"]
    finally:
        tok.chat_template = saved
