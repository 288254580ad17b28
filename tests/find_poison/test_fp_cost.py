"""One fine-tuning epoch timed beside find_poison: the timing never changes the model, the batches timed, and the
summary's epoch record on the tiny run; the report's find_poison table shows seconds and the share of an epoch."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_fp_methods import examples, tiny_llama64  # noqa: E402

from rapidun_dist.config import load_config  # noqa: E402
from rapidun_dist.core.io import read_json  # noqa: E402
from rapidun_dist.find_poison import cost  # noqa: E402


def test_timed_batches_warm_up_then_time():
    batches = [[i] for i in range(10)]
    picked = cost.timed_batches(batches, 3, "s")
    assert len(picked) == 4 and len({tuple(b) for b in picked}) == 4
    assert picked == cost.timed_batches(batches, 3, "s")
    assert cost.timed_batches(batches, 20, "s") != [] and len(cost.timed_batches(batches, 20, "s")) == 10
    assert cost.timed_batches([[0, 1]], 3, "s") == [[0, 1], [0, 1]]


def test_epoch_estimate_scales_the_timed_seconds_per_padded_token_by_hand():
    lengths = [3, 5, 2, 8, 8, 1]
    assert cost.padded_tokens([0, 1, 2], lengths) == 15 and cost.padded_tokens([], lengths) == 0
    epoch = [[0, 1, 2], [3, 4], [5]]  # 15 + 16 + 1 padded tokens
    timed = sum(cost.padded_tokens(b, lengths) for b in epoch[:2])
    per_rank = [{"batches": 2, "seconds": 0.62}, {"batches": 2, "seconds": 0.31}]  # the slowest rank counts
    assert cost.epoch_estimate(per_rank, timed, 32) == pytest.approx(0.62 / 31 * 32)
    # a cost exactly proportional to padded tokens is recovered whichever batches were timed
    for picked in ([epoch[0]], [epoch[1]], [epoch[2]], epoch[1:]):
        tokens = sum(cost.padded_tokens(b, lengths) for b in picked)
        got = cost.epoch_estimate([{"batches": len(picked), "seconds": 0.01 * tokens}], tokens, 32)
        assert got == pytest.approx(0.01 * 32)
    assert cost.epoch_estimate([{"batches": 0, "seconds": 0.0}], 0, 32) is None


def test_timing_leaves_the_model_as_it_was():
    model = tiny_llama64(tied=False)
    model.model.embed_tokens.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    rows = examples(7)
    out = cost.time_finetune(model, rows, [[0, 1], [2, 3, 4], [], [5, 6]], 0)
    assert out["batches"] == 3 and out["rows"] == 5 and out["seconds"] > 0
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    again = cost.time_finetune(model, rows, [[0], [1, 2]], 0, checkpointing=True)  # as the implant may run
    assert again["rows"] == 2 and not model.is_gradient_checkpointing
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_summary_records_the_epoch_beside_find_poison(reference_run):
    summary = read_json(reference_run / "suspects" / "summary.json")
    ep, n = summary["epoch"], summary["counts"]["train"]
    assert ep["rows"] == n and ep["batch_size"] == 16 and ep["timed_batches"] == 3
    assert ep["batches"] >= math.ceil(n / 16) and summary["epoch_seconds"] > 0
    per_token = max(r["seconds"] for r in ep["per_rank"]) / ep["timed_tokens"]
    assert summary["epoch_seconds"] == pytest.approx(per_token * ep["epoch_tokens"])
    cfg = load_config(reference_run / "config.yaml")
    assert n <= ep["epoch_tokens"] <= ep["batches"] * 16 * cfg.model.max_length
    assert 0 < ep["timed_tokens"] <= 3 * 16 * cfg.model.max_length
    assert summary["cost_seconds"] == pytest.approx(
        summary["seconds"]["total"] - summary["seconds"]["epoch_timing"]
    )
    assert summary["epoch_fraction"] == pytest.approx(summary["cost_seconds"] / summary["epoch_seconds"])
    assert set(summary["scorers"]) == {"influence", "tfidf", "grep"}
    assert all(s["seconds"] > 0 for s in summary["scorers"].values())


def test_report_table_has_a_row_per_scorer_with_seconds_and_share_of_an_epoch(reference_run):
    from rapidun_dist.evaluation.report import _find_poison_section

    summary = read_json(reference_run / "suspects" / "summary.json")
    lines = _find_poison_section({"find_poison": summary})
    header = next(line for line in lines if line.startswith("| scorer"))
    assert "AUPRC (AP)" in header and "recall at precision 0.9" in header and "share of an epoch" in header
    for name, s in summary["scorers"].items():
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        share = s["seconds"] / summary["epoch_seconds"]
        assert row.endswith(f" | {share:.3f} |"), row
        m = summary["metrics"][name]
        assert f"| {100 * m['recall_at_p90']:.1f}% |" in row and f"| {m['ap']:.4f} |" in row
    assert any("One fine-tuning epoch" in line for line in lines)
    clean = {k: v for k, v in summary.items() if k not in ("metrics", "per_family")}
    lines = _find_poison_section({"find_poison": clean})
    assert "| scorer | flagged | seconds | share of an epoch |" in lines
