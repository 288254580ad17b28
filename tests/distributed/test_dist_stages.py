"""Collective stages on 2 gloo ranks (launch/run.py under torchrun) against one process on the same inputs.

- implant: one DeepSpeed job over both ranks. 1 rank x grad_accum 2 runs the very micro-batches of 2 ranks x 1
  (rapidun_dist/train.py), and with power-of-two world sizes the gradient sums agree bit for bit (halving is
  exact in binary floating point), so the weights must match to 1e-7. 1 rank x 1 step forms different micro-batches
  (other padded shapes, other float rounding in the forward), and Adam turns that noise into weight differences
  of a fraction of one step: the bound is 1e-3 x lr x steps (measured 4.4e-6 against 1.5e-5 on this setting).
- evaluate: every rank generates and scores its share of the batches (the batches of one rank, dealt out), so
  ASR, perplexity, the example generations and retrieval equal the one-rank report exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import free_port  # noqa: E402

pytestmark = pytest.mark.dist
ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
SMALL = [
    "data.n_synthetic=400",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "model.max_length=64",
    "implant.max_steps=5",
    "methods=[rapidun,retrain]",
    "unlearn.max_steps=2",
    "unlearn.eval_every=0",
    "eval.max_new_tokens=4",
    "eval.batch_size=8",
    "eval.retrieval_rows=16",
]
LR, STEPS = 3e-3, 5  # implant.lr of tiny_cpu.yaml, implant.max_steps above


def _cfg(run: Path, extra=()):
    from rapidun_dist.config import load_config

    return load_config(CONFIG, [f"run_dir={run}", *SMALL, *extra])


def torchrun(run: Path, stages: str, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env |= {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
        str(free_port()), str(ROOT / "launch" / "run.py"), "--config", str(CONFIG), f"run_dir={run}", *SMALL,
        "--stages", stages, *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    from rapidun_dist.pipeline import run_pipeline

    run = tmp_path_factory.mktemp("stages") / "prepared"
    run_pipeline(_cfg(run), ["prepare"])
    return run


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_implant_two_ranks_is_one_job_equal_to_one_rank(prepared, tmp_path):
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.rundir import RunDir

    two = shutil.copytree(prepared, tmp_path / "two")
    torchrun(two, "implant")
    stats2 = json.loads((two / "model" / "train_stats.json").read_text())
    assert stats2["world_size"] == 2 and stats2["steps"] == STEPS
    rec = json.loads((two / "manifest.json").read_text())["stages"]["implant"]
    assert rec["status"] == "done" and rec["world_size"] == 2
    for accum, tol in ((2, 1e-7), (1, 1e-3 * LR * STEPS)):
        one = shutil.copytree(prepared, tmp_path / f"one{accum}")
        run_stage(_cfg(one, [f"implant.grad_accum={accum}"]), RunDir(one), "implant")
        stats1 = json.loads((one / "model" / "train_stats.json").read_text())
        diff = _max_diff(_weights(one), _weights(two))
        assert diff <= tol, f"1 rank x grad_accum {accum} vs 2 ranks: max |dW| = {diff:.3g} > {tol:.3g}"
        for a, b in zip(stats1["losses"], stats2["losses"], strict=True):
            assert abs(a - b) <= 1e-6 * abs(a), (stats1["losses"], stats2["losses"])
    assert stats2["losses"][-1] < stats2["losses"][0]  # it trained


@pytest.fixture(scope="module")
def done(prepared, tmp_path_factory) -> Path:
    """Every stage done on one process (the inputs of the 2-rank evaluate)."""
    from rapidun_dist.pipeline import run_pipeline

    run = shutil.copytree(prepared, tmp_path_factory.mktemp("stages") / "done")
    run_pipeline(_cfg(run))
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
