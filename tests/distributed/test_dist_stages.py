"""Collective stages on 2 gloo ranks (launch/run.py under torchrun) against one process on the same inputs.

- implant: one DeepSpeed job over both ranks. 1 rank x grad_accum 2 runs the very micro-batches of 2 ranks x 1
  (rapidun_dist/training/finetune.py), and with power-of-two world sizes the gradient sums agree bit for bit (halving is
  exact in binary floating point), so the weights must match to 1e-7. 1 rank x 1 step forms different micro-batches
  (other padded shapes, other float rounding in the forward), and Adam turns that noise into weight differences
  of a fraction of one step: the bound is 1e-3 x lr x steps (measured 4.4e-6 against 1.5e-5 on this setting).
- evaluate: every rank generates and scores its share of the batches (the batches of one rank, dealt out), so
  ASR, perplexity, the example generations and retrieval equal the one-rank report exactly.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stage_helpers import LR, STEPS, cfg_for, max_diff, torchrun, weights  # noqa: E402

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from rapidun_dist.pipeline import run_pipeline

    run = tmp_path_factory.mktemp("stages") / "prepared"
    run_pipeline(cfg_for(run), ["prepare"])
    return run


def test_implant_two_ranks_is_one_job_equal_to_one_rank(prepared, tmp_path):
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.rundir import RunDir

    two = shutil.copytree(prepared, tmp_path / "two")
    torchrun(two, "implant")
    stats2 = json.loads((two / "model" / "train_stats.json").read_text())
    assert stats2["world_size"] == 2 and stats2["steps"] == STEPS
    rec = json.loads((two / "manifest.json").read_text())["stages"]["implant"]
    assert rec["status"] == "done" and rec["world_size"] == 2
    for accum, tol in ((2, 1e-7), (1, 1e-3 * LR * STEPS)):
        one = shutil.copytree(prepared, tmp_path / f"one{accum}")
        run_stage(cfg_for(one, [f"implant.grad_accum={accum}"]), RunDir(one), "implant")
        stats1 = json.loads((one / "model" / "train_stats.json").read_text())
        diff = max_diff(weights(one), weights(two))
        assert diff <= tol, f"1 rank x grad_accum {accum} vs 2 ranks: max |dW| = {diff:.3g} > {tol:.3g}"
        for a, b in zip(stats1["losses"], stats2["losses"], strict=True):
            assert abs(a - b) <= 1e-6 * abs(a), (stats1["losses"], stats2["losses"])
    assert stats2["losses"][-1] < stats2["losses"][0]  # it trained


@pytest.fixture(scope="module")
def done(prepared, tmp_path_factory) -> Path:
    """Every stage done on one process (the inputs of the 2-rank evaluate)."""
    from rapidun_dist.pipeline import run_pipeline

    run = shutil.copytree(prepared, tmp_path_factory.mktemp("stages") / "done")
    run_pipeline(cfg_for(run))
    return run


def test_evaluate_sharded_over_two_ranks_equals_one_rank(done, tmp_path):
    two = shutil.copytree(done, tmp_path / "two", ignore=shutil.ignore_patterns("eval"))
    proc = torchrun(two, "evaluate")
    want = json.loads((done / "eval" / "report.json").read_text())
    got = json.loads((two / "eval" / "report.json").read_text())
    assert json.loads((two / "manifest.json").read_text())["stages"]["evaluate"]["world_size"] == 2
    for block in ("before", "retrain"):
        for key in ("asr_seen", "asr_ood", "clean_ppl", "judge_fpr", "n_seen", "n_clean", "examples"):
            assert got[block][key] == want[block][key], (block, key)
    for key in ("asr_seen", "asr_ood", "clean_ppl", "examples", "asr_by_family"):
        assert got["methods"]["rapidun"][key] == want["methods"]["rapidun"][key], key
    for est in ("tokenwise", "rapidgrad"):
        assert (got["retrieval"][est]["auroc"], got["retrieval"][est]["ap"]) == (
            want["retrieval"][est]["auroc"],
            want["retrieval"][est]["ap"],
        )
    assert "generate" in proc.stderr or "eval:" in proc.stderr
