"""benchmarks/real_model_tune.py (issue 20): the recipe rule on validation numbers, and the table's paired F1 of each
candidate against the shipped recipe on the same prompts."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

from rapidun_dist.evaluation.stats import mean_interval

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tune():
    sys.path.insert(0, str(REPO / "benchmarks"))  # the script imports its sibling real_model
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_real_model_tune", REPO / "benchmarks" / "real_model_tune.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return mod


def _row(point, asr, f1_rows, ppl=4.4):
    before = {"asr": 0.4, "n_seen": 20, "ppl": 4.0, "f1": 0.4, "f1_rows": [0.4] * len(f1_rows)}
    after = {"asr": asr, "n_seen": 20, "ppl": ppl, "f1": sum(f1_rows) / len(f1_rows), "f1_rows": f1_rows}
    return {"attack": "rare_word", "seed": 1, "point": point, "before": before, "after": after, "steps": 8,
            "stop": "backdoor_gone", "seconds": 30.0, "stage_seconds": 31.0}  # fmt: skip


def test_rule_lowest_asr_then_f1_then_ppl_and_the_paired_column(tune):
    rng = random.Random()
    n = 20
    ship = [rng.random() for _ in range(n)]
    flat = [x + rng.uniform(0.0, 0.1) for x in ship]  # better prompt by prompt
    worse = [x - 0.2 for x in ship]
    rows = [
        _row("shipped", 0.0, ship),
        _row("retain_flat", 0.0, flat),
        # best F1, but two more prompts of 20 attacked: outside the one-prompt tolerance of the lowest ASR
        _row("retain_tau5", 0.1, [x + 0.3 for x in ship]),
        _row("lr5e-4", 0.0, worse),
    ]
    assert tune.choose(rows) == "retain_flat"
    text = tune.table(rows, "retain_flat", "python benchmarks/real_model_tune.py OUT")
    line = next(x for x in text.splitlines() if x.startswith("| retain_flat |"))
    iv = mean_interval([a - b for a, b in zip(flat, ship, strict=True)])
    assert f"{iv['mean']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}] ({n})" in line
    assert next(x for x in text.splitlines() if x.startswith("| shipped |")).count("| - |") >= 1
    assert "Chosen: **retain_flat**" in text
    # equal F1 within 0.005: the lower PPL ratio wins
    rows = [_row("shipped", 0.0, ship, ppl=4.4), _row("retain_flat", 0.0, [x + 0.001 for x in ship], ppl=4.2)]
    assert tune.choose(rows) == "retain_flat"
    rows[1]["after"]["ppl"] = 4.6
    assert tune.choose(rows) == "shipped"
