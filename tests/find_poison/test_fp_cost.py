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

from rapidun_dist.core.io import read_json  # noqa: E402
from rapidun_dist.find_poison import cost  # noqa: E402


def test_timed_batches_warm_up_then_time():
    batches = [[i] for i in range(10)]
    picked = cost.timed_batches(batches, 3, "s")
    assert len(picked) == 4 and len({tuple(b) for b in picked}) == 4
    assert picked == cost.timed_batches(batches, 3, "s")
    assert cost.timed_batches(batches, 20, "s") != [] and len(cost.timed_batches(batches, 20, "s")) == 10
    assert cost.timed_batches([[0, 1]], 3, "s") == [[0, 1], [0, 1]]


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
    per_batch = max(r["seconds"] / r["batches"] for r in ep["per_rank"])
    assert summary["epoch_seconds"] == pytest.approx(per_batch * ep["batches"])
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
