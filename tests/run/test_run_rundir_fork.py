"""RunDir.fork: a new run directory from the completed stages of another, its later stages' fingerprints equal to
the source's, the source never touched, and clear refusals."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from rapidun_dist.config import load_config
from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import read_json
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import fingerprint, readiness

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ("prepare", "implant", "find_poison", "influence", "weights")
# stage -> (recorded outputs, files it writes without recording them)
FILES = {
    "prepare": (["data/train.jsonl", "data/forget.jsonl", "data/retain.jsonl"], []),
    "implant": (["model/model.safetensors", "model/config.json"], ["model/tokenizer.json"]),
    "find_poison": (["suspects/summary.json"], ["suspects/features/train/shard-00000.safetensors"]),
    "influence": (["features/index.json", "influence/scores.jsonl"], ["features/shard-00000.safetensors"]),
    "weights": (["weights/forget_weights.jsonl", "weights/retain_weights.jsonl"], []),
    "attribute": (["attribution/triggers.json", "eval/judge.json"], []),
    "unlearn": (["unlearn/summary.json"], ["unlearn/adapter/adapter_model.safetensors"]),
    "evaluate": (["eval/report.json"], ["eval/asr_vs_ppl.png"]),
}


def _cfg(run_dir: Path):
    return load_config(ROOT / "configs" / "tiny_cpu.yaml", [f"run_dir={run_dir}"])


def _run_stage(rd: RunDir, cfg, stage: str) -> None:
    """Record `stage` as the driver would: fingerprint from the manifest, outputs written, then done."""
    fp = fingerprint(stage, cfg.to_dict(), rd.manifest()["stages"])
    rec = rd.start(stage, fp)
    recorded, extra = FILES[stage]
    for rel in recorded + extra:
        p = rd.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"{stage}:{rel}\n")
    rd.finish(stage, rec, [rd.root / rel for rel in recorded])


@pytest.fixture
def source(tmp_path) -> RunDir:
    rd = RunDir(tmp_path / "src")
    cfg = _cfg(rd.root)
    (rd.root / "config.yaml").parent.mkdir(parents=True)
    (rd.root / "config.yaml").write_text("seed: 0\n")
    for stage in (*UPSTREAM, "unlearn", "evaluate"):
        _run_stage(rd, cfg, stage)
    return rd


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (digest, st.st_mtime_ns, st.st_mode)
    return out


@pytest.mark.parametrize("link", [False, True])
def test_fork_carries_the_stages_and_later_fingerprints_match(source, tmp_path, link):
    before = _snapshot(source.root)
    fork = source.fork(tmp_path / "fork", UPSTREAM, link=link)
    src_cfg, fork_cfg = _cfg(source.root), _cfg(fork.root)
    src_man, fork_man = source.manifest()["stages"], fork.manifest()["stages"]
    assert list(fork_man) == list(UPSTREAM)
    assert all(fork_man[s] == src_man[s] for s in UPSTREAM)  # records carried verbatim
    # the next stage: the fingerprint it has in the source (config and upstream output hashes are the same)
    assert fingerprint("unlearn", fork_cfg.to_dict(), fork_man) == fingerprint(
        "unlearn", src_cfg.to_dict(), src_man
    )
    for stage in UPSTREAM:  # done and consistent in the fork
        assert fork.is_done(stage, fingerprint(stage, fork_cfg.to_dict(), fork_man)), stage
    assert readiness(fork_cfg, fork, "unlearn") is None
    # whole output folders (unrecorded shards and tokenizer too), config.yaml; nothing of later stages
    for rel in ("features/shard-00000.safetensors", "model/tokenizer.json", "config.yaml",
                "suspects/features/train/shard-00000.safetensors"):  # fmt: skip
        assert (fork.root / rel).read_bytes() == (source.root / rel).read_bytes(), rel
    assert not any((fork.root / d).exists() for d in ("unlearn", "eval"))
    shared = (
        os.stat(fork.root / "model/model.safetensors").st_ino
        == os.stat(source.root / "model/model.safetensors").st_ino
    )
    assert shared == link
    assert _snapshot(source.root) == before  # the source is only read
    assert not list(tmp_path.glob(".*fork-tmp"))


def test_a_fork_runs_its_next_stage_without_touching_the_source(source, tmp_path):
    fork = source.fork(tmp_path / "fork", UPSTREAM)
    before = _snapshot(source.root)
    cfg = _cfg(fork.root)
    _run_stage(
        fork, cfg, "unlearn"
    )  # the same outputs as the source's unlearn: evaluate's fingerprint follows
    assert fork.record("unlearn")["fingerprint"] == source.record("unlearn")["fingerprint"]
    fork_fp = fingerprint("evaluate", cfg.to_dict(), fork.manifest()["stages"])
    assert fork_fp == source.record("evaluate")["fingerprint"] and readiness(cfg, fork, "evaluate") is None
    assert _snapshot(source.root) == before


def test_a_folder_shared_with_a_stage_left_behind_gives_only_the_named_stages_files(source, tmp_path):
    _run_stage(
        source, _cfg(source.root), "attribute"
    )  # eval/judge.json: attribute's; eval/report.json: evaluate's
    fork = source.fork(tmp_path / "fork", ("prepare", "implant", "attribute"))
    assert (fork.root / "eval" / "judge.json").is_file() and (
        fork.root / "attribution" / "triggers.json"
    ).is_file()
    assert not (fork.root / "eval" / "report.json").exists()  # evaluate's, not carried
    assert not (fork.root / "eval" / "asr_vs_ppl.png").exists()


def test_fork_refuses_a_stage_not_done_or_changed(source, tmp_path):
    rec = source.start("evaluate", "x")  # evaluate rerunning: not done
    with pytest.raises(StageError, match="'evaluate' is 'running'"):
        source.fork(tmp_path / "a", ("prepare", "evaluate"))
    source.fail("evaluate", rec, RuntimeError("boom"))
    with pytest.raises(StageError, match="'evaluate' is 'failed'"):
        source.fork(tmp_path / "a", ("evaluate",))
    empty = RunDir(tmp_path / "empty")
    with pytest.raises(StageError, match="'prepare' has not run"):
        empty.fork(tmp_path / "a", ("prepare",))
    (source.root / "weights" / "forget_weights.jsonl").write_text("edited\n")
    with pytest.raises(StageError, match="weights/forget_weights.jsonl is missing or changed"):
        source.fork(tmp_path / "a", UPSTREAM)
    with pytest.raises(StageError, match="at least one stage"):
        source.fork(tmp_path / "a", ())
    assert not (tmp_path / "a").exists()


def test_fork_refuses_its_own_tree_and_a_full_destination(source, tmp_path):
    for dst in (source.root, source.root / "sub", tmp_path):
        with pytest.raises(StageError, match="this run directory, inside it or holds it"):
            source.fork(dst, ("prepare",))
    dst = tmp_path / "taken"
    (dst / "old").mkdir(parents=True)
    (dst / "old" / "file.txt").write_text("keep me\n")
    with pytest.raises(StageError, match="exists and is not empty"):
        source.fork(dst, ("prepare",))
    assert (dst / "old" / "file.txt").read_text() == "keep me\n"
    fork = source.fork(dst, ("prepare",), replace=True)
    assert not (dst / "old").exists() and list(read_json(fork.manifest_path)["stages"]) == ["prepare"]
    (tmp_path / "empty_dir").mkdir()
    assert source.fork(tmp_path / "empty_dir", ("prepare",)).record("prepare") == source.record("prepare")
