"""Real multi-rank unlearning jobs (launch/unlearn.py under `deepspeed`, `torchrun` and python; 2 gloo ranks on CPU).

Every launch runs the clean job (conftest.clean_job: the user's model, known poisoned rows without clean answers,
known triggers): self-relabel fills the clean answers (sharded over the ranks; under ZeRO-3 with synced_gpus) and
validation runs every 2 steps on val_seen (triggered val_clean prompts, judged) and val_clean, sharded. One launch per ZeRO stage; every assertion reads the files those launches wrote. ZeRO-3
runs with gradient checkpointing and loads the backbone partitioned (zero.Init). lora_dropout=0 throughout: with
dropout each rank draws its own masks, so the result would depend on the world size.
"""

from __future__ import annotations

import json
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

from rapidun_dist.core.io import read_json, read_jsonl

pytestmark = pytest.mark.dist

LAUNCHERS = {0: "torchrun", 1: "deepspeed", 2: "torchrun", 3: "deepspeed"}
FIXED = [*UNLEARN, "unlearn.budget=fixed"]  # measure validation, but always run the 4 steps being compared


def clean_like_run(clean_job, dst):
    return fresh_run(clean_job[0], dst)


def _kill_at_step2(run, overrides, launcher) -> dict:
    """Run killed (SIGKILL, launcher and ranks) right after its step-2 checkpoint is ready."""
    proc = start(run, overrides, launcher=launcher, env={"RAPIDUN_TEST_PAUSE_AT": "2"})
    kill_when(proc, run / "unlearn" / "paused")
    ckpt = run / "unlearn" / "checkpoints"
    return {
        "ready": read_json(ckpt / "ready.json"),
        "adapter_after_kill": (run / "unlearn" / "adapter").exists(),
        "rows_after_kill": len(read_metrics(run / "unlearn" / "metrics.jsonl")),
        "module_keys": list(
            torch.load(ckpt / "step2" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)[
                "module"
            ]
        ),
    }


def _resume_elsewhere(run, overrides) -> str:
    """A 1-process resume of a 2-rank checkpoint: returns the launch log (the launch must fail with rc 2)."""
    proc = start(run, overrides, launcher="python", nproc=1, worker=False)
    rc = proc.wait(timeout=240)
    text = (run / "launch.log").read_text()
    assert rc == 2, f"expected a clear error (rc 2), got rc {rc}:\n{text[-3000:]}"
    return text


@pytest.fixture(scope="session")
def zero_runs(clean_job, tmp_path_factory):
    """{stage: run dir} of 4-step rapidun runs on 2 ranks, launched on first use. ZeRO-2 is the kill/resume run
    (first a 1-rank resume, refused, then the 2-rank one: its final state must equal the uninterrupted runs);
    ZeRO-3 uses gradient checkpointing, the logit probe and the load probe."""
    cache: dict = {}

    def get(stage: int):
        if stage not in cache:
            run = clean_like_run(clean_job, tmp_path_factory.mktemp(f"zero{stage}") / "run")
            overrides = [*clean_job[1], *FIXED, f"unlearn.zero_stage={stage}"]
            if stage == 2:
                seen = _kill_at_step2(run, [*overrides, "unlearn.save_every=2"], LAUNCHERS[stage])
                seen["refused"] = _resume_elsewhere(run, [*overrides, "unlearn.save_every=2"])
                finish(start(run, [*overrides, "unlearn.save_every=2"], launcher=LAUNCHERS[stage]), run)
                cache["resume"] = seen | {"log": (run / "launch.log").read_text()}
            else:
                extra = ["model.gradient_checkpointing=true"] if stage == 3 else []
                env = {"RAPIDUN_TEST_PROBE": "1", "RAPIDUN_TEST_LOAD_PROBE": "1"} if stage == 3 else None
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


def _relabels(run):
    return read_jsonl(run / "unlearn" / "self_relabel.jsonl")


def test_zero_stages_log_the_same_losses(zero_runs):
    ref = read_metrics(zero_runs(0) / "unlearn" / "metrics.jsonl")
    assert [r["step"] for r in ref] == [1, 2, 3, 4]
    assert ref[-1]["adapter_norm"] != ref[0]["adapter_norm"]
    for stage in (1, 2, 3):
        rows = read_metrics(zero_runs(stage) / "unlearn" / "metrics.jsonl")
        assert [r["step"] for r in rows] == [1, 2, 3, 4], f"zero{stage}"
        for key in ("loss", "forget_ce", "retain_ce", "clean_ce", "grad_norm", "adapter_norm", "lr"):
            got, want = [r[key] for r in rows], [r[key] for r in ref]
            for g, w in zip(got, want, strict=True):
                assert math.isclose(g, w, rel_tol=1e-3, abs_tol=1e-7), (
                    f"zero{stage} {key}: {got} vs zero0 {want}"
                )
        _assert_adapters_close(
            zero_runs(stage) / "unlearn" / "adapter", zero_runs(0) / "unlearn" / "adapter", 1e-4
        )


def test_self_relabel_and_validation_do_not_depend_on_the_zero_stage(zero_runs):
    """Sharded self-relabel generation (ZeRO-3: partitioned model, synced_gpus) and sharded validation give the
    same answers and the same validation numbers on 2 ranks under every stage."""
    ref = _relabels(zero_runs(0))
    assert len(ref) > 0 and any(r["response"] for r in ref)
    ref_val = [
        (r["step"], r["val_asr"])
        for r in read_metrics(zero_runs(0) / "unlearn" / "metrics.jsonl")
        if "val_asr" in r
    ]
    assert [s for s, _ in ref_val] == [2, 4]
    for stage in (1, 2, 3):
        assert _relabels(zero_runs(stage)) == ref, f"zero{stage}"
        rows = read_metrics(zero_runs(stage) / "unlearn" / "metrics.jsonl")
        assert [(r["step"], r["val_asr"]) for r in rows if "val_asr" in r] == ref_val
        summary = read_json(zero_runs(stage) / "unlearn" / "summary.json")
        assert (
            summary["validation"]["signal"] == "judge"
            and summary["relabel"]["clean_answers"]["self_relabel"] > 0
        )


def test_only_rank0_writes_and_manifest_records_world_size(zero_runs):
    run = zero_runs(0)
    rec = json.loads((run / "manifest.json").read_text())["stages"]["unlearn"]
    assert rec["status"] == "done" and rec["world_size"] == 2
    assert len(read_metrics(run / "unlearn" / "metrics.jsonl")) == 4  # one row per step, not one per rank
    assert not (run / "unlearn" / "checkpoints").exists()


def test_zero3_loads_partitioned_trains_with_gradient_checkpointing_and_reloads(zero_runs, prepared_run):
    from peft import PeftModel
    from safetensors.torch import load_file

    from rapidun_dist.config import load_config
    from rapidun_dist.models.loading import load_saved

    run = zero_runs(3)
    for rank in (0, 1):  # zero.Init: each rank held about half of the backbone right after loading it
        rec = json.loads((run / "unlearn" / f"load_rank{rank}.json").read_text())
        assert rec["partitioned"] == rec["params"] and rec["local_numel"] <= 0.6 * rec["full_numel"]
    tensors = adapter_tensors(run / "unlearn" / "adapter")
    lora_b = {k: v for k, v in tensors.items() if "lora_B" in k}
    assert len(lora_b) == 2 * 7  # two layers x seven projections
    assert all(float(v.abs().max()) > 0 for v in lora_b.values()), "a lora_B did not move under ZeRO-3 + GC"
    probe = load_file(str(run / "unlearn" / "probe.safetensors"))
    base, _ = load_saved(run / "model", load_config(None).model)  # the pointer to the user's model
    model = PeftModel.from_pretrained(base, str(run / "unlearn" / "adapter")).eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    torch.testing.assert_close(logits, probe["logits"], atol=1e-5, rtol=1e-5)
    with torch.no_grad(), model.disable_adapter():
        plain = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).logits
    assert float((plain - probe["logits"]).abs().max()) > 1e-4  # the adapter does something


def test_world_size_invariance_1x2_equals_2x1(zero_runs, clean_job, tmp_path):
    """1 rank x grad_accum 2 (plain python) == 2 ranks x grad_accum 1 (the ZeRO-0 launch): losses, validation,
    self-relabels and the adapter."""
    one = run_launch(
        clean_like_run(clean_job, tmp_path / "run"),
        [*clean_job[1], *FIXED, "unlearn.zero_stage=0", "unlearn.grad_accum=2"],
        launcher="python",
        nproc=1,
        worker=False,
    )
    two = zero_runs(0)
    for key in ("loss", "forget_ce", "retain_ce", "grad_norm", "adapter_norm", "val_ppl"):
        a, b = (
            [r[key] for r in read_metrics(run / "unlearn" / "metrics.jsonl") if key in r]
            for run in (one, two)
        )
        assert len(a) == len(b) > 0, key
        for x, y in zip(a, b, strict=True):
            assert math.isclose(x, y, rel_tol=1e-5, abs_tol=1e-7), f"{key}: {x} vs {y}"
    assert _relabels(one) == _relabels(two)
    _assert_adapters_close(one / "unlearn" / "adapter", two / "unlearn" / "adapter", 1e-5)


def test_kill_and_resume_matches_uninterrupted(zero_runs):
    """SIGKILL after the step-2 checkpoint (ZeRO-2: partitioned optimizer state, frozen backbone not saved); a
    1-rank resume is refused clearly; the 2-rank rerun equals a run never killed."""
    run = zero_runs(2)
    seen = zero_runs.cache["resume"]
    assert seen["ready"]["tag"] == "step2" and seen["ready"]["world_size"] == 2
    assert not seen["adapter_after_kill"] and seen["rows_after_kill"] == 2
    assert seen["module_keys"] and all("lora_" in k for k in seen["module_keys"]), "frozen weights were saved"
    assert "written by 2 ranks under ZeRO-2, this launch has 1" in seen["refused"]
    assert "resuming from" in seen["log"] and "at step 2" in seen["log"]
    rows = read_metrics(run / "unlearn" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    ref = zero_runs(0)
    for key in ("loss", "lr", "grad_norm"):
        for a, b in zip([r[key] for r in rows], _losses(ref, key), strict=True):
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{key}: {a} vs {b}"
    _assert_adapters_close(run / "unlearn" / "adapter", ref / "unlearn" / "adapter", 1e-6)


def test_zero0_checkpoint_resumes_at_another_world_size(zero_runs, clean_job, tmp_path):
    """ZeRO-0 keeps the whole optimizer state in one file: a 2-rank run killed after step 2 resumes on 1 rank
    (grad_accum 2) and ends where the uninterrupted 2-rank run ends."""
    run = clean_like_run(clean_job, tmp_path / "run")
    overrides = [*clean_job[1], *FIXED, "unlearn.zero_stage=0", "unlearn.save_every=2"]
    _kill_at_step2(run, overrides, "torchrun")
    run_launch(run, [*overrides, "unlearn.grad_accum=2"], launcher="python", nproc=1, worker=False)
    log = (run / "launch.log").read_text()
    assert "written by 2 ranks; ZeRO-0 state is whole, resharded to 1" in log
    ref = zero_runs(0)
    for key in ("loss", "grad_norm", "adapter_norm"):
        for a, b in zip(_losses(run, key), _losses(ref, key), strict=True):
            assert math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-7), f"{key}: {a} vs {b}"
    _assert_adapters_close(run / "unlearn" / "adapter", ref / "unlearn" / "adapter", 1e-5)
