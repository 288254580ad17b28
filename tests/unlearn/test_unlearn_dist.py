"""Real multi-rank unlearning jobs (launch/unlearn.py under `deepspeed` and `torchrun`, 2 gloo ranks on CPU).

One launch per ZeRO stage; every assertion reads the files those launches wrote. ZeRO-3 runs with gradient
checkpointing. lora_dropout=0 throughout: with dropout each rank draws its own masks, so the result would
depend on the world size (see rapidun_dist/unlearn/engine.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from unlearn_helpers import (
    UNLEARN,
    adapter_tensors,
    finish,
    fresh_run,
    kill_when,
    read_metrics,
    run_launch,
    start,
)

pytestmark = pytest.mark.dist

LAUNCHERS = {0: "torchrun", 1: "deepspeed", 2: "torchrun", 3: "deepspeed"}


def _kill_then_resume(run, overrides, launcher) -> dict:
    """ZeRO-2 run killed (SIGKILL, launcher and ranks) right after its step-2 checkpoint, then rerun."""
    proc = start(run, overrides, launcher=launcher, env={"RAPIDUN_TEST_PAUSE_AT": "2"})
    kill_when(proc, run / "unlearn" / "paused")
    seen = {
        "latest": (run / "unlearn" / "checkpoints" / "latest").read_text().strip(),
        "adapter_after_kill": (run / "unlearn" / "adapter").exists(),
        "rows_after_kill": len(read_metrics(run / "unlearn" / "metrics.jsonl")),
    }
    finish(start(run, overrides, launcher=launcher), run)
    return seen | {"log": (run / "launch.log").read_text()}


@pytest.fixture(scope="session")
def zero_runs(prepared_run, tmp_path_factory):
    """{stage: run dir} of 4-step rapidun runs on 2 ranks, launched on first use. ZeRO-2 is the kill/resume run
    (its final state must equal the uninterrupted runs); ZeRO-3 uses gradient checkpointing and the logit probe."""
    cache: dict = {}

    def get(stage: int):
        if stage not in cache:
            run = fresh_run(prepared_run, tmp_path_factory.mktemp(f"zero{stage}") / "run")
            overrides = [*UNLEARN, f"unlearn.zero_stage={stage}"]
            if stage == 2:
                cache["resume"] = _kill_then_resume(
                    run, [*overrides, "unlearn.save_every=2"], LAUNCHERS[stage]
                )
            else:
                extra = ["model.gradient_checkpointing=true"] if stage == 3 else []
                env = {"RAPIDUN_TEST_PROBE": "1"} if stage == 3 else None
                run_launch(run, [*overrides, *extra], launcher=LAUNCHERS[stage], env=env)
            cache[stage] = run
        return cache[stage]

    get.cache = cache
    return get


def _losses(run, key="loss"):
    return [r[key] for r in read_metrics(run / "unlearn" / "metrics.jsonl")]


def _assert_adapters_close(a_dir, b_dir, atol):
    a, b = adapter_tensors(a_dir), adapter_tensors(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


def test_zero_stages_log_the_same_losses(zero_runs):
    ref = read_metrics(zero_runs(0) / "unlearn" / "metrics.jsonl")
    assert [r["step"] for r in ref] == [1, 2, 3, 4]
    assert ref[-1]["adapter_norm"] != ref[0]["adapter_norm"]
    for stage in (1, 2, 3):
        rows = read_metrics(zero_runs(stage) / "unlearn" / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3, 4], f"zero{stage}"
        for key in ("loss", "forget_ce", "retain_ce", "grad_norm", "adapter_norm", "lr"):
            got, want = [r[key] for r in rows], [r[key] for r in ref]
            for g, w in zip(got, want, strict=True):
                assert math.isclose(g, w, rel_tol=1e-3, abs_tol=1e-7), (
                    f"zero{stage} {key}: {got} vs zero0 {want}"
                )
        _assert_adapters_close(
            zero_runs(stage) / "unlearn" / "adapter", zero_runs(0) / "unlearn" / "adapter", 1e-4
        )


def test_only_rank0_writes_and_manifest_records_world_size(zero_runs):
    import json

    run = zero_runs(0)
    rec = json.loads((run / "manifest.json").read_text())["stages"]["unlearn"]
    assert rec["status"] == "done" and rec["world_size"] == 2
    assert len(read_metrics(run / "unlearn" / "metrics.jsonl")) == 4  # one row per step, not one per rank
    assert not (run / "unlearn" / "checkpoints").exists()


def test_zero3_gradient_checkpointing_adapter_moves_and_reloads(zero_runs, prepared_run):
    from peft import PeftModel
    from safetensors.torch import load_file

    from rapidun_dist.config import load_config
    from rapidun_dist.models.loading import load_saved

    run = zero_runs(3)
    tensors = adapter_tensors(run / "unlearn" / "adapter")
    lora_b = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert len(lora_b) == 2 * 7  # two layers x seven projections
    assert all(float(v.abs().max()) > 0 for v in lora_b.values()), "a lora_B did not move under ZeRO-3 + GC"
    probe = load_file(str(run / "unlearn" / "probe.safetensors"))
    base, _ = load_saved(run / "model", load_config(None).model)
    model = PeftModel.from_pretrained(base, str(run / "unlearn" / "adapter")).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-5, rtol=1e-5)
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    assert float((plain - probe["logits"]).abs().max()) > 1e-4  # the adapter does something


def test_world_size_invariance_1x2_equals_2x1(zero_runs, prepared_run, tmp_path):
    """1 rank x grad_accum 2 (plain python) == 2 ranks x grad_accum 1 (the ZeRO-0 launch)."""
    one = run_launch(
        fresh_run(prepared_run, tmp_path / "run"),
        [*UNLEARN, "unlearn.grad_accum=2"],
        launcher="python",
        nproc=1,
        worker=False,
    )
    two = zero_runs(0)
    for key in ("loss", "forget_ce", "retain_ce", "grad_norm", "adapter_norm"):
        for a, b in zip(_losses(one, key), _losses(two, key), strict=True):
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{key}: {a} vs {b}"
    _assert_adapters_close(one / "unlearn" / "adapter", two / "unlearn" / "adapter", 1e-5)


def test_kill_and_resume_matches_uninterrupted(zero_runs):
    """SIGKILL after the step-2 checkpoint (ZeRO-2: partitioned optimizer state), rerun: same as never killed."""
    run = zero_runs(2)
    seen = zero_runs.cache["resume"]
    assert seen["latest"] == "step2" and not seen["adapter_after_kill"] and seen["rows_after_kill"] == 2
    assert "resumed from" in seen["log"] and "at step 2" in seen["log"]
    rows = read_metrics(run / "unlearn" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ref = zero_runs(0)
    for key in ("loss", "lr", "grad_norm"):
        for a, b in zip([r[key] for r in rows], _losses(ref, key), strict=True):
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{key}: {a} vs {b}"
    _assert_adapters_close(run / "unlearn" / "adapter", ref / "unlearn" / "adapter", 1e-6)
