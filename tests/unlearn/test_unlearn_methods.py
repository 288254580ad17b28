"""Every engine method runs on one process (DeepSpeed ZeRO-0, in-process) and moves the adapter; runaway guards."""

from __future__ import annotations

import os

import pytest
import torch
from unlearn_helpers import CONFIG, TINY, adapter_tensors, fresh_run, read_metrics

from rapidun_dist.config import load_config
from rapidun_dist.errors import ConfigError, StageError
from rapidun_dist.rundir import RunDir
from rapidun_dist.stages.common import method_dir
from rapidun_dist.stages.unlearn import run_method
from rapidun_dist.unlearn.engine import UnlearnRunner
from rapidun_dist.unlearn.methods import METHODS, method_spec

BASE = ["unlearn.max_steps=2", "unlearn.eval_every=0", "unlearn.batch_size=4", "unlearn.lr=5e-3"]


@pytest.fixture(scope="module")
def single_process():
    """DeepSpeed builds a one-rank gloo group in this process; restore the environment and drop it afterwards."""
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "DS_ACCELERATOR")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["DS_ACCELERATOR"] = "cpu"
    yield
    from rapidun_dist.distributed import env as dist_env

    dist_env.destroy()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def run(prepared_run, tmp_path_factory):
    return fresh_run(prepared_run, tmp_path_factory.mktemp("methods") / "run")


def _cfg(run, *extra):
    return load_config(CONFIG, [f"run_dir={run}", *TINY, *BASE, *extra])


@pytest.mark.parametrize("method", ["ga", "graddiff", "npo", "fisher", "loreun", "uniform", "self_only"])
def test_method_runs_two_steps_and_moves_the_adapter(single_process, run, method):
    rd = RunDir(run)
    out = method_dir(rd, method)
    summary = run_method(_cfg(run, f"methods=[{method}]"), rd, method, out)
    rows = read_metrics(out / "metrics.jsonl")
    assert summary["steps"] == 2 and [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    lora_b = {k: v for k, v in adapter_tensors(out / "adapter").items() if "lora_B" in k}
    assert lora_b and all(float(v.abs().max()) > 0 for v in lora_b.values()), (
        f"{method}: a lora_B stayed zero"
    )
    if not METHODS[method].use_retain:  # ga: forget rows only
        assert all(r["retain_ce"] == 0.0 for r in rows)


def test_fisher_under_zero3_is_a_clear_config_error(single_process, run, tmp_path):
    cfg = _cfg(run, "unlearn.zero_stage=3")
    rd = RunDir(run)
    runner = UnlearnRunner(
        cfg=cfg,
        method=method_spec("fisher"),
        model_dir=rd.model,
        data_dir=rd.data,
        weights_dir=rd.weights,
        out_dir=tmp_path / "fisher3",
    )
    with pytest.raises(ConfigError, match="fisher.*zero_stage=3.*zero_stage<=2"):
        runner.setup()


def _runner(run, out, *extra):
    rd = RunDir(run)
    return UnlearnRunner(
        cfg=_cfg(run, *extra),
        method=method_spec("uniform"),
        model_dir=rd.model,
        data_dir=rd.data,
        weights_dir=rd.weights,
        out_dir=out,
    )


def test_diverging_loss_raises_naming_the_step(single_process, run, tmp_path):
    runner = _runner(run, tmp_path / "nan", "unlearn.max_steps=3")
    runner.setup()
    try:
        calls = {"n": 0}
        forward = runner._forward_ce

        def poisoned_forward(examples):  # the second step's first micro-batch produces a NaN CE
            calls["n"] += 1
            ce = forward(examples)
            return ce * float("nan") if calls["n"] == 2 else ce

        runner._forward_ce = poisoned_forward
        with pytest.raises(StageError, match="diverged at step 2"):
            runner.train()
    finally:
        runner.cleanup()


def test_adapter_that_cannot_move_raises(single_process, run, tmp_path):
    runner = _runner(run, tmp_path / "still", "unlearn.lr=1e-30")
    runner.setup()
    try:
        with pytest.raises(StageError, match="adapter did not move.*unlearn.lr=1e-30"):
            runner.train()
    finally:
        runner.cleanup()


def test_nonfinite_influence_weight_is_refused(single_process, run, tmp_path):
    from rapidun_dist.io import read_jsonl, write_jsonl

    bad = tmp_path / "w"
    bad.mkdir()
    rows = read_jsonl(run / "weights" / "forget_weights.jsonl")
    rows[0]["weight"] = float("inf")
    write_jsonl(bad / "forget_weights.jsonl", rows)
    rd = RunDir(run)
    runner = UnlearnRunner(
        cfg=_cfg(run),
        method=method_spec("rapidun"),
        model_dir=rd.model,
        data_dir=rd.data,
        weights_dir=bad,
        out_dir=tmp_path / "o",
    )
    with pytest.raises(StageError, match="forget_weights.jsonl:1: expected a finite weight"):
        runner.setup()
