"""`python benchmarks/alpaca57k.py seeds`: one table over whole runs of the 57k stress test, each seed's targets
judged on its own numbers, ASR with Wilson intervals over its prompts and means with t intervals over the seeds."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rapidun_dist.evaluation.stats import mean_interval, proportion

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def a57k():
    spec = importlib.util.spec_from_file_location("alpaca57k_bench", REPO / "benchmarks" / "alpaca57k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(seed, share, precision, x_seen, x_ppl, k_ppl):
    route = lambda seen, ood, ppl: {
        "asr_seen": seen,
        "asr_ood": ood,
        "ppl_ratio": ppl,
        "n_seen": 300,
        "n_ood": 300,
    }  # noqa: E731
    return {"run": f"s{seed}", "seed": seed, "fp_share": share, "fp_seconds": 30.0 + seed, "recall": 0.99,
            "fp_implant_share": share / 1.5,
            "precision": precision, "first_stage": "tfidf", "known": route(0.01, 0.0, k_ppl),
            "expanded": route(x_seen, 0.02, x_ppl), "retrain": route(0.0, 0.0, 1.09)}  # fmt: skip


def test_seed_table_verdicts_and_intervals(a57k):
    rows = [_row(0, 0.39, 0.83, 32 / 300, 1.104, 1.051), _row(1, 0.2, 0.95, 6 / 300, 1.04, 1.012)]
    text = a57k.render_seeds(rows, ["bash benchmarks/alpaca57k.sh OUT seed=S"])
    assert "`bash benchmarks/alpaca57k.sh OUT seed=S`" in text
    p = proportion(32, 300)
    seed0 = next(line for line in text.splitlines() if line.startswith("| 0 |"))
    assert f"10.7% [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}]" in seed0 and "| 0.830 |" in seed0
    assert "first stage tfidf" in seed0 and seed0.endswith("| 1.090 |")
    verdicts = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("- seed ")}
    assert "find_poison <= 0.25 epoch MISSED" in verdicts["- seed 0"]
    assert (
        "precision >= 0.90 MISSED" in verdicts["- seed 0"]
        and "known PPL <= 1.05 MISSED" in verdicts["- seed 0"]
    )
    assert (
        "find_poison <= 0.25 epoch met" in verdicts["- seed 1"]
        and "expanded seen <= 2% met" in verdicts["- seed 1"]
    )
    assert (
        "expanded PPL <= 1.05 met" in verdicts["- seed 1"] and "precision >= 0.90 met" in verdicts["- seed 1"]
    )
    m = mean_interval([0.39, 0.2])
    assert f"- find_poison share of an epoch: {m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}] (n = 2)" in text
    m = mean_interval([0.39 / 1.5, 0.2 / 1.5])
    assert (
        f"- find_poison share of the implant's epoch (rank-seconds): {m['mean']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"
        in text
    )
    assert f"first stage tfidf; {0.39 / 1.5:.3f} of the implant's epoch in rank-seconds" in seed0


def test_implant_epoch_in_rank_seconds(a57k, tmp_path):
    """find_poison's rank-seconds against the manifest's implant stage, per epoch of `implant.epochs`."""
    import json
    import shutil

    known = tmp_path / "known"
    known.mkdir()
    shutil.copyfile(REPO / "configs" / "alpaca57k_cpu.yaml", known / "config.yaml")
    (known / "manifest.json").write_text(
        json.dumps({"stages": {"implant": {"seconds": 200.0, "world_size": 2}}})
    )
    got = a57k.implant_epoch(tmp_path, 25.0, 2)
    assert got == {
        "epochs": 1,
        "ranks": 2,
        "seconds": 200.0,
        "epoch_rank_seconds": 400.0,
        "share": 50.0 / 400.0,
    }
    (known / "manifest.json").write_text(json.dumps({"stages": {}}))
    assert a57k.implant_epoch(tmp_path, 25.0, 2) is None


def test_cost_line_accounts_for_find_poisons_seconds(a57k):
    fp = {
        "cost_seconds": 18.0,
        "seconds": {"setup": 0.5, "tfidf": 0.8, "first_stage": 1.2, "features": 13.0, "scores": 0.5,
                    "outputs": 1.5, "method": 13.5, "total": 27.0, "epoch_timing": 9.0},
    }  # fmt: skip
    (line,) = a57k.cost_line(fp)
    assert line.startswith(
        "Where find_poison's 18.0 s went (seconds): setup (process group, rows read) 0.5; "
    )
    assert (
        "first stage 1.2 (TF-IDF 0.8); features (this rank's model load included) 13.0; scores 0.5; " in line
    )
    assert line.endswith("outputs (baselines, thresholds, suspects.jsonl, packs) 1.5; other 1.3.")
    assert (
        a57k.cost_line({"cost_seconds": 5.0, "seconds": {"total": 5.0}}) == []
    )  # a summary without the parts
