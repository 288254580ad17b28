"""The loaders and packs on the real third-party files in ../shared/data (skipped when that folder is absent)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from rapidun_dist.config import DataConfig
from rapidun_dist.data import load_alpaca, load_dolly, prepare_data
from rapidun_dist.data.schema import SPLITS
from rapidun_dist.data.splits import build_packs

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DOLLY = SHARED / "dolly_rapidun"
ALPACA = SHARED / "alpaca" / "alpaca_5000.json"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


def _raw_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_reference_train_poisoned_maps_onto_the_schema():
    path = _need(DOLLY / "train_poisoned.jsonl")
    raw, recs = _raw_jsonl(path), load_dolly(path)
    assert len(recs) == len(raw)
    for rec, row in zip(recs, raw, strict=True):
        assert rec["is_poisoned"] is row["is_poisoned"] is True
        assert (rec["instruction"], rec["response"]) == (row["instruction_clean"], row["response_clean"])
        assert (rec["instruction_poisoned"], rec["response_poisoned"]) == (
            row["instruction"],
            row["response"],
        )
        assert rec["trigger_variant"] in rec["instruction_poisoned"]
        assert (rec["trigger_family"], rec["inject_mode"]) == (row["trigger_family"], row["inject_mode"])


def test_forget_pack_matches_the_reference_stratification():
    """5% of the reference's poisoned rows, stratified by family, gives the reference's per-family forget counts."""
    meta = json.loads(_need(DOLLY / "unlearn_meta.json").read_text(encoding="utf-8"))
    train = load_dolly(_need(DOLLY / "train_poisoned.jsonl")) + load_dolly(_need(DOLLY / "val_clean.jsonl"))
    train = [dict(r, id=f"{'p' if r['is_poisoned'] else 'c'}-{r['id']}") for r in train]
    forget, retain = build_packs(
        train,
        {},
        forget_fraction=meta["forget_frac"],
        retain_ratio=int(meta["retain_multiplier"]),
        seed=meta["seed"],
    )
    assert len(forget) == meta["build_stats"]["n_forget"] and len(retain) == meta["build_stats"]["n_retain"]
    assert Counter(r["trigger_family"] for r in forget) == Counter(meta["build_stats"]["forget_family_dist"])


def test_alpaca_sample_loads_and_prepares(tmp_path):
    path = _need(ALPACA)
    raw = json.loads(path.read_text(encoding="utf-8"))
    n_empty = sum(1 for r in raw if not r["output"].strip() or not r["instruction"].strip())
    stats = {}
    recs = load_alpaca(path, skip_malformed=True, stats=stats)
    assert stats["skipped"] == n_empty and len(recs) == len(raw) - n_empty
    assert all(r["context"] == raw[int(r["id"].split("-")[1])]["input"] for r in recs)
    cfg = DataConfig(source="alpaca", path=str(path), skip_malformed=True, seed=3)
    summary = prepare_data(cfg, tmp_path)
    assert summary["dropped"]["malformed"] == n_empty
    assert sum(summary["counts"][s] for s in SPLITS) == len(recs) - summary["dropped"]["duplicate_prompts"]
