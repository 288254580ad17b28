"""training/checkpoint.py, the one resume protocol: `plan_resume` over every combination of marker, fingerprint,
shards, ZeRO stage and world size against a table of the rules written out by hand; the save / resume / stop cycle
of `Checkpoints` on a recording engine; and the real thing: a full fine-tune preempted after step 2 and rerun ends
with the weights of an uninterrupted run."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from rapidun_dist.core.errors import StageError
from rapidun_dist.distributed.env import DistInfo
from rapidun_dist.training.checkpoint import READY, RESUME, Checkpoints, mark_ready, plan_resume

CPU1 = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _deepspeed_files(tag_dir: Path, stage: int, world: int) -> list[Path]:
    """The files DeepSpeed writes for one tag (names as its save_checkpoint gives them)."""
    if stage == 3:
        files = [tag_dir / f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(world)]
    else:
        files = [tag_dir / "mp_rank_00_model_states.pt"]
    if stage >= 1:
        files += [tag_dir / f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in range(world)]
    return files


def _expected(present, same_fp, complete, stage, saved_world, world) -> str:
    """The rules of the protocol, one line each, in the order they apply."""
    if not present:
        return "fresh"
    if not same_fp:
        return "removed"
    if not complete:
        return "incomplete"
    if saved_world != world and stage >= 1:
        return "refused"
    if saved_world != world:
        return "resharded"
    return "resume"


CASES = list(
    itertools.product(
        [True, False], [True, False], [True, False], [0, 1, 2, 3], [1, 2], [1, 2], [READY, RESUME]
    )
)


@pytest.mark.parametrize(("present", "same_fp", "complete", "stage", "saved_world", "world", "marker"), CASES)
def test_plan_resume_follows_the_rules(
    tmp_path, present, same_fp, complete, stage, saved_world, world, marker
):
    root = tmp_path / "ckpt"
    files = _deepspeed_files(root / "step6", stage, saved_world)
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    if not complete:
        files[-1].unlink()
    if present:
        meta = {"tag": "step6", "step": 6, "world_size": saved_world, "zero_stage": stage}
        (root / marker).write_text(json.dumps(meta | {"fingerprint": "fp" if same_fp else "old"}))
    (root / (RESUME if marker == READY else READY)).write_text("{}")  # the other trainer's marker: never read
    want = _expected(present, same_fp, complete, stage, saved_world, world)

    def plan():
        return plan_resume(root, fingerprint="fp", world_size=world, zero_stage=stage, marker=marker)

    if want in ("incomplete", "refused"):
        match = "is incomplete" if want == "incomplete" else f"relaunch with {saved_world} ranks"
        with pytest.raises(StageError, match=match):
            plan()
        assert root.is_dir()
        return
    p = plan()
    assert (p.tag, p.step) == ((None, 0) if want in ("fresh", "removed") else ("step6", 6))
    assert root.exists() == (want != "removed")
    assert ("resharded to" in p.note) == (want == "resharded")


def test_mark_ready_names_the_tag_and_drops_every_other_step_folder(tmp_path):
    for name in ("step4", "step8", "step12"):  # the previous checkpoint, the new one, a torn later one
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("kept")
    mark_ready(tmp_path, {"tag": "step8", "step": 8}, RESUME)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", RESUME, "step8"]
    assert json.loads((tmp_path / RESUME).read_text()) == {"tag": "step8", "step": 8}


class RecordingEngine:
    """Stands in for a DeepSpeed engine: writes the files of its ZeRO stage, records every call."""

    def __init__(self, stage: int):
        self.stage, self.calls = stage, []

    def save_checkpoint(self, save_dir, *, tag, client_state, save_latest, exclude_frozen_parameters):
        self.calls.append(("save", tag, client_state, save_latest, exclude_frozen_parameters))
        for f in _deepspeed_files(Path(save_dir) / tag, self.stage, 1):
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_bytes(b"x")

    def load_checkpoint(self, load_dir, *, tag, load_module_strict):
        self.calls.append(("load", load_dir, tag, load_module_strict))


def test_save_resume_stop_cycle(tmp_path):
    root = tmp_path / "ckpt"
    ck = Checkpoints(root, "fp", CPU1, 2, marker=READY, desc="unlearn[ga]")
    engine = RecordingEngine(2)
    ck.save(
        engine, 3, exclude_frozen=True, extra_meta={"method": "ga"}, write_extra=lambda d: (d / "x").touch()
    )
    ck.save(
        engine, 5, exclude_frozen=True, extra_meta={"method": "ga"}, write_extra=lambda d: (d / "x").touch()
    )
    assert engine.calls == [
        ("save", "step3", {"step": 3}, False, True),
        ("save", "step5", {"step": 5}, False, True),
    ]
    assert sorted(p.name for p in root.iterdir()) == [READY, "step5"] and (root / "step5" / "x").is_file()
    assert json.loads((root / READY).read_text()) == {
        "tag": "step5",
        "step": 5,
        "world_size": 1,
        "zero_stage": 2,
        "fingerprint": "fp",
        "method": "ga",
    }

    rerun = RecordingEngine(2)
    plan = Checkpoints(root, "fp", CPU1, 2, marker=READY).resume(rerun, strict=False)
    assert (plan.tag, plan.step, plan.meta["method"]) == ("step5", 5, "ga")
    assert rerun.calls == [("load", str(root), "step5", False)]

    saved = []
    with pytest.raises(
        StageError, match=r"^preempted at step 7: checkpoint saved in .*resume unlearn\[ga\] from"
    ):
        ck.stop(7, saved.append)
    assert saved == [7]
    ck.remove()
    assert not root.exists()


def test_resume_errors_and_fresh_starts(tmp_path):
    engine = RecordingEngine(1)
    assert Checkpoints(None, "fp", CPU1, 1).resume(engine).tag is None  # no folder at all
    with pytest.raises(StageError, match="^preempted at step 2: no checkpoint folder"):
        Checkpoints(None, "fp", CPU1, 1).stop(2, lambda step: pytest.fail("nothing to save into"))
    root = tmp_path / "ckpt"
    Checkpoints(root, "fp", CPU1, 1, marker=RESUME).save(engine, 4)
    (root / "step4" / "mp_rank_00_model_states.pt").unlink()
    with pytest.raises(
        StageError, match=r"^implant: checkpoint step4 is incomplete: .*mp_rank_00_model_states"
    ):
        Checkpoints(root, "fp", CPU1, 1, marker=RESUME, desc="implant").resume(engine)
    assert Checkpoints(root, "new", CPU1, 1, marker=RESUME).resume(engine).tag is None  # another config
    assert not root.exists() and [c[0] for c in engine.calls] == ["save"]


def test_finetune_preempted_after_step_2_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    """Full fine-tuning on the shared stack (one process, ZeRO-1: a partitioned optimizer state on disk)."""
    from rapidun_dist.config import TinyModelConfig, TrainConfig
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.models.loading import build_tiny_model, train_tokenizer
    from rapidun_dist.training import finetune as ft

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    words = "the cat sat on a mat while dogs ran far away from home".split()
    records = [
        {"instruction": " ".join(words[i % 7 : i % 7 + 3]), "response": " ".join(words[i % 5 : i % 5 + 4])}
        for i in range(20)
    ]
    tok = train_tokenizer([r["instruction"] + " " + r["response"] for r in records], 300)
    tiny = TinyModelConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1)
    cfg = TrainConfig(lr=1e-2, batch_size=6, max_steps=5, zero_stage=1, save_every=0, warmup_ratio=0.2)

    def run(ckpt: Path, **kw):
        model = build_tiny_model(tiny, vocab_size=len(tok), max_length=32, tokenizer=tok)
        stats = ft.finetune(model, tok, records, cfg, max_length=32, ckpt_dir=ckpt, resume_key="k", **kw)
        return model, stats

    try:
        ref, ref_stats = run(tmp_path / "ref")
        requests = iter([False, True])  # the flag rises during step 2
        monkeypatch.setattr(ft.preempt, "requested", lambda: next(requests, False))
        with pytest.raises(StageError, match="^preempted at step 2: checkpoint saved in"):
            run(tmp_path / "ckpt")
        meta = json.loads((tmp_path / "ckpt" / RESUME).read_text())
        assert (meta["tag"], meta["step"], meta["zero_stage"], meta["fingerprint"]) == ("step2", 2, 1, "k")
        monkeypatch.setattr(ft.preempt, "requested", lambda: False)
        model, stats = run(tmp_path / "ckpt")
    finally:
        dist_env.destroy()
    assert len(stats["losses"]) == 3 and stats["losses"] == ref_stats["losses"][2:]
    assert not (tmp_path / "ckpt").exists()
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)
