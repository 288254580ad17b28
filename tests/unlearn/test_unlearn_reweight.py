"""Dynamic reweighting (`unlearn.reweight_every`): the refreshed weights are the influence stage + weights stage
recipe applied to the model with the current adapter.

- Before the first step (lora_B = 0) the engine's pack features equal the influence stage's stored features and a
  refresh reproduces the weights stage's files.
- After training, a refresh equals an independent computation: the saved adapter loaded on the backbone, features
  through the influence stage's extractor (`extract_features`, its own encoding and store), dense scores, fusion.
- A run refreshes after every N-th step but not after the last, records each refresh, and a resumed run continues
  from the refreshed weights (the checkpoint carries them)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from unlearn_helpers import CONFIG, TINY, fresh_run, runner_for

from rapidun_dist.config import load_config
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.core.io import read_jsonl
from rapidun_dist.run.layout import method_dir
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import stage_context
from rapidun_dist.stages.unlearn import run_method
from rapidun_dist.unlearn.engine import UnlearnRunner

BASE = [
    "unlearn.eval_every=0",
    "unlearn.val_every=0",
    "unlearn.batch_size=4",
    "unlearn.lr=5e-3",
    "unlearn.lora_dropout=0",
]


@pytest.fixture(scope="module")
def run(prepared_run, tmp_path_factory):
    return fresh_run(prepared_run, tmp_path_factory.mktemp("reweight") / "run")


def _cfg(run, *extra):
    return load_config(CONFIG, [f"run_dir={run}", *TINY, *BASE, *extra])


def _runner(run, out, method, *extra) -> UnlearnRunner:
    return runner_for(_cfg(run, *extra), run, out, method)


def _weights(path):
    return torch.tensor([r["weight"] for r in read_jsonl(path)], dtype=torch.float32)


@pytest.mark.parametrize(("method", "subdir"), [("rapidun", ""), ("self_only", "self_only")])
def test_refresh_before_the_first_step_reproduces_the_influence_and_weights_stages(
    single_process, run, tmp_path, method, subdir
):
    from rapidun_dist.influence.store import load_features

    runner = _runner(run, tmp_path / "o", method, "unlearn.max_steps=2").setup()
    try:
        f, r, spec = runner.pack_features()
        stored, _ = load_features(RunDir(run).features)
        nf = f.shape[0]
        torch.testing.assert_close(f, stored[:nf].double(), atol=2e-5, rtol=0)
        torch.testing.assert_close(r, stored[nf:].double(), atol=2e-5, rtol=0)
        assert spec["dim"] == stored.shape[1] and float(f.norm(dim=1).min()) > 0.99
        runner.m.reweight(runner, 0)
        wdir = run / "weights" / subdir
        torch.testing.assert_close(
            runner.m.ascent_w, _weights(wdir / "forget_weights.jsonl"), atol=1e-4, rtol=0
        )
        torch.testing.assert_close(
            runner.m.retain_w, _weights(wdir / "retain_weights.jsonl"), atol=1e-4, rtol=0
        )
        entry = runner.m.reweights[-1]
        assert entry["step"] == 0 and entry["spearman_initial"] > 0.999
    finally:
        runner.cleanup()


def test_refresh_after_training_equals_the_stages_on_the_adapted_model(single_process, run, tmp_path):
    """Three steps at a high learning rate, then a refresh; the reference: the saved adapter merged into a freshly
    loaded backbone (a plain model), the influence stage's extraction and the weights stage's fusion, computed here
    independently."""
    from rapidun_dist.influence.extract import extract_features
    from rapidun_dist.influence.scores import dense_directional_scores
    from rapidun_dist.influence.store import load_features, plan_shards
    from rapidun_dist.models.loading import load_saved, with_adapter
    from rapidun_dist.weights.robust import fuse_and_weight

    out = tmp_path / "o"
    runner = _runner(run, out, "rapidun", "unlearn.max_steps=3", "unlearn.lr=3e-2").setup()
    try:
        runner.train()
        runner.m.reweight(runner, 3)
        eng_f, eng_r, _ = runner.pack_features()
        runner.save()
        got_f, got_r = runner.m.ascent_w.clone(), runner.m.retain_w.clone()
        moved = runner.m.reweights[-1]["spearman_initial"]
    finally:
        runner.cleanup()
    cfg = _cfg(run)
    rd = RunDir(run)
    base, tok = load_saved(rd.model, cfg.model, device="cpu")
    model = with_adapter(base, out / "adapter", device="cpu").merge_and_unload()  # a plain model, merged
    forget, retain = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
    records = forget + retain
    store = extract_features(cfg, model, tok, records, tmp_path / "feats", context={"test": "adapted"})
    store.write_index(
        [x["id"] for x in records], len(forget), plan_shards(len(records), cfg.influence.shard_size)
    )
    feats, _ = load_features(tmp_path / "feats")
    w = cfg.weights
    scores = dense_directional_scores(
        feats[: len(forget)].double(), feats[len(forget) :].double(), agg=w.agg, topk=w.topk, trim=w.trim,
        include_self=w.include_self, topk_frac=w.topk_frac,
    )  # fmt: skip
    want_f, want_r, _ = fuse_and_weight(scores, w)
    torch.testing.assert_close(eng_f, feats[: len(forget)].double(), atol=2e-6, rtol=0)
    torch.testing.assert_close(eng_r, feats[len(forget) :].double(), atol=2e-6, rtol=0)
    torch.testing.assert_close(got_f, want_f.float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(got_r, want_r.float(), atol=1e-4, rtol=0)
    initial = _weights(run / "weights" / "forget_weights.jsonl")
    assert float((got_f - initial).abs().max()) > 1e-3, "the adapter changed nothing in the weights"
    assert moved < 0.9999


def test_run_refreshes_every_n_steps_but_not_after_the_last(single_process, run):
    rd = RunDir(run)
    cfg = _cfg(run, "methods=[rapidun]", "unlearn.max_steps=5", "unlearn.reweight_every=2")
    summary = run_method(stage_context(cfg, rd, "unlearn"), "rapidun", method_dir(rd, "rapidun"))
    info = summary["method_info"]
    assert info["reweight_every"] == 2 and [e["step"] for e in info["reweights"]] == [2, 4]
    for e in info["reweights"]:
        assert e["seconds"] > 0 and -1.0 <= e["spearman_previous"] <= 1.0
        for pack in ("forget_weights", "retain_weights"):  # clipped in log space, then mean one
            stats = e[pack]
            assert 0 < stats["min"] <= 1.0 <= stats["max"]
            assert stats["max"] / stats["min"] <= cfg.weights.w_max / cfg.weights.w_min * (1 + 1e-5)
    assert info["forget_weights"] == info["reweights"][-1]["forget_weights"]  # the last refresh is in use


def test_reweighting_rules(tmp_path):
    from rapidun_dist.validate import check_rules

    for extra, match in (
        (["influence.estimator=rapidgrad"], "needs influence.estimator=tokenwise"),
        (["influence.contrast=trigger"], "influence.contrast=trigger"),
    ):
        cfg = load_config(CONFIG, [f"run_dir={tmp_path}", "unlearn.reweight_every=2", *extra])
        with pytest.raises(ConfigError, match=match):
            check_rules(cfg)
    with pytest.raises(ConfigError, match="unlearn.reweight_every"):
        load_config(CONFIG, ["unlearn.reweight_every=-1"])


@pytest.mark.dist
def test_refreshes_do_not_depend_on_the_world_size_or_zero_stage(single_process, run, tmp_path):
    """Two steps with a refresh after the first, then the pack features again, on 1 rank (here), 2 ranks (ZeRO-2)
    and 4 ranks (ZeRO-3 with gradient checkpointing: every rank runs the same number of passes, ballast included).
    influence.batch_size=2: six batches, so 4 ranks take 2 rounds and two of them a ballast batch in the second."""
    import subprocess

    from safetensors.torch import load_file
    from unlearn_helpers import ROOT, launch_cmd, launch_env

    extra = ["unlearn.max_steps=2", "unlearn.reweight_every=1", "influence.batch_size=2"]
    runner = _runner(run, tmp_path / "one", "rapidun", *extra).setup()
    try:
        runner.train()
        f, r, _ = runner.pack_features()
        want = {"forget": f, "retain": r, "forget_w": runner.m.ascent_w, "retain_w": runner.m.retain_w}
    finally:
        runner.cleanup()
    worker = Path(__file__).with_name("reweight_worker.py")
    for nproc, stage in ((2, 2), (4, 3)):
        out = tmp_path / f"ws{nproc}.safetensors"
        args = [str(out), "--config", str(CONFIG), f"run_dir={run}", *TINY, *BASE, *extra]
        args.append(f"unlearn.zero_stage={stage}")
        if stage == 3:  # as the 8B configs run it: the refresh passes run in eval mode, so nothing recomputes
            args.append("model.gradient_checkpointing=true")
        proc = subprocess.run(
            launch_cmd("torchrun", nproc, worker, args), cwd=ROOT, env=launch_env(), capture_output=True,
            text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        got = load_file(str(out))
        for key, value in want.items():
            torch.testing.assert_close(
                got[key], value, atol=1e-5, rtol=0, msg=lambda m, k=key, n=nproc: f"{n} ranks: {k} {m}"
            )
