"""Resume decisions (rank 0's plan: which checkpoint, complete shards, another config, another world size) and
preemption: a requested stop checkpoints, raises a clear StageError, and the rerun continues exactly."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from unlearn_helpers import CONFIG, TINY, adapter_tensors, fresh_run, read_metrics

from rapidun_dist.config import load_config
from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import read_json, write_json
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import stage_context
from rapidun_dist.stages.unlearn import resume_key, run_method
from rapidun_dist.training.checkpoint import READY, plan_resume

META = {"tag": "step4", "step": 4, "world_size": 2, "zero_stage": 2, "fingerprint": "fp", "method": "rapidun"}


def _fake_ckpt(root, meta, *, ranks=2, model_file="mp_rank_00_model_states.pt"):
    tag = root / meta["tag"]
    tag.mkdir(parents=True)
    (tag / model_file).write_bytes(b"x")
    for r in range(ranks):
        (tag / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt").write_bytes(b"x")
    write_json(root / READY, meta)
    return root


def test_plan_fresh_resume_and_config_change(tmp_path):
    assert plan_resume(tmp_path / "none", fingerprint="fp", world_size=2, zero_stage=2).tag is None
    root = _fake_ckpt(tmp_path / "c", META)
    plan = plan_resume(root, fingerprint="fp", world_size=2, zero_stage=2)
    assert plan.tag == "step4" and plan.step == 4 and "resuming" in plan.note
    other = plan_resume(root, fingerprint="another", world_size=2, zero_stage=2)
    assert other.tag is None and "another config" in other.note and not root.exists()


def test_plan_refuses_missing_shards_and_another_world_size_under_zero_1_3(tmp_path):
    root = _fake_ckpt(tmp_path / "a", META, ranks=1)
    with pytest.raises(StageError, match="1 optimizer-state shards, expected 2"):
        plan_resume(root, fingerprint="fp", world_size=2, zero_stage=2)
    root = _fake_ckpt(tmp_path / "b", META)
    with pytest.raises(
        StageError, match="written by 2 ranks under ZeRO-2, this launch has 1.*relaunch with 2"
    ):
        plan_resume(root, fingerprint="fp", world_size=1, zero_stage=2)
    z3 = META | {"zero_stage": 3}
    root = _fake_ckpt(tmp_path / "d", z3, ranks=2, model_file="zero_pp_rank_0_mp_rank_00_model_states.pt")
    with pytest.raises(StageError, match="1 ZeRO-3 model-state shards, expected 2"):
        plan_resume(root, fingerprint="fp", world_size=2, zero_stage=3)


def test_plan_reshards_zero0_to_another_world_size(tmp_path):
    root = _fake_ckpt(tmp_path / "z0", META | {"zero_stage": 0}, ranks=0)
    plan = plan_resume(root, fingerprint="fp", world_size=1, zero_stage=0)
    assert plan.tag == "step4" and "resharded to 1" in plan.note


def test_preempt_signal_sets_the_flag():
    code = (
        "import os, signal\n"
        "from rapidun_dist.distributed import preempt\n"
        "assert not preempt.requested()\n"
        "preempt.install()\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\n"
        "assert preempt.requested()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


STEPS = [
    "unlearn.max_steps=4",
    "unlearn.eval_every=0",
    "unlearn.val_every=1",
    "unlearn.batch_size=4",
    "unlearn.lr=5e-3",
    "unlearn.lora_dropout=0",
    "unlearn.saliency_warmup=1",
    "unlearn.loreun_refresh=2",
    "unlearn.budget=fixed",
]


@pytest.mark.parametrize(
    ("method", "stage", "extra"),
    [("fisher", 2, []), ("loreun", 3, []), ("rapidun", 2, ["unlearn.reweight_every=1"])],
)
def test_preemption_checkpoints_stops_clearly_and_resumes_exactly(
    single_process, prepared_run, tmp_path, monkeypatch, method, stage, extra
):
    """A method with state (fisher's saliency mask under ZeRO-2, loreun's weights under ZeRO-3, rapidun's refreshed
    weights) and validation every step (the stop rule's state, the best adapter): preempted after step 2, rerun,
    equal to an uninterrupted run."""
    import rapidun_dist.unlearn.engine as engine

    ref_run = fresh_run(prepared_run, tmp_path / "ref")
    rd = RunDir(ref_run)
    steps = [*STEPS, f"unlearn.zero_stage={stage}", *extra]
    cfg = load_config(CONFIG, [f"run_dir={ref_run}", *TINY, *steps])
    ref = run_method(stage_context(cfg, rd, "unlearn"), method, tmp_path / "ref_out")
    run = fresh_run(prepared_run, tmp_path / "run")
    rd2 = RunDir(run)
    cfg2 = load_config(CONFIG, [f"run_dir={run}", *TINY, *steps])
    out = tmp_path / "out"
    calls = {"n": 0}

    def requested():
        calls["n"] += 1
        return calls["n"] == 2

    monkeypatch.setattr(engine, "_preempt_requested", requested)
    with pytest.raises(StageError, match="preempted at step 2: checkpoint saved.*rerun the same command"):
        run_method(stage_context(cfg2, rd2, "unlearn"), method, out)
    ready = read_json(out / "checkpoints" / READY)
    assert ready["step"] == 2 and ready["fingerprint"] == resume_key(stage_context(cfg2, rd2, "unlearn"))
    assert (out / "checkpoints" / "step2" / "method_state.safetensors").is_file()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]
    assert not (out / "adapter").exists()
    monkeypatch.setattr(engine, "_preempt_requested", lambda: False)
    again = run_method(stage_context(cfg2, rd2, "unlearn"), method, out)
    rows, ref_rows = read_metrics(out / "metrics.jsonl"), read_metrics(tmp_path / "ref_out" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "grad_norm", "adapter_norm", "val_ppl"):
        assert [r[key] for r in rows] == pytest.approx([r[key] for r in ref_rows], rel=1e-5), key
    refreshes = [e["step"] for e in again["method_info"].pop("reweights", [])]  # the resumed process's own
    assert refreshes == ([3] if extra else []) and [
        e["step"] for e in ref["method_info"].pop("reweights", [])
    ] == ([1, 2, 3] if extra else [])
    assert again["method_info"] == ref["method_info"] and again["forget_visits"] == ref["forget_visits"]
    a, b = adapter_tensors(out / "adapter"), adapter_tensors(tmp_path / "ref_out" / "adapter")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    assert not (out / "checkpoints").exists()
