"""Which unlearning checkpoint a run resumes from: decided by rank 0, broadcast to every rank.

Layout (out_dir/checkpoints/):

    step<N>/            DeepSpeed's files for step N (frozen backbone excluded: `exclude_frozen_parameters`),
                        plus method_state.safetensors (a method's own tensors: LoReUn weights, a saliency mask)
                        and best_adapter.safetensors (the adapter a clean-PPL damage stop would restore)
    ready.json          written last, atomically, by rank 0 after every rank has written its shards:
                        {"tag", "step", "world_size", "zero_stage", "fingerprint", "method", "rule", ...}

A checkpoint counts only once `ready.json` names it, so a job killed while saving resumes from the previous
one. `plan_resume` (rank 0) checks that it was written for this config (the unlearn stage's fingerprint) and
that every shard it needs is on disk; a checkpoint of another config is ignored (and removed), missing shards
are an error. At another world size: ZeRO-0 keeps the whole optimizer state in one file, and the batch schedule
does not depend on the world size, so it resumes correctly (resharded by construction); ZeRO 1-3 partition the
optimizer state by rank and DeepSpeed cannot repartition it, so that is a clear error.
"""

from __future__ import annotations

import glob
import shutil
from dataclasses import dataclass
from pathlib import Path

from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import read_json, write_json

READY = "ready.json"


@dataclass(frozen=True)
class ResumePlan:
    tag: str | None  # None: start at step 0
    step: int
    meta: dict
    note: str  # what was decided and why (logged)


def shard_problem(tag_dir: Path, meta: dict) -> str | None:
    """Why the DeepSpeed files of a checkpoint are incomplete (None when complete)."""
    if not tag_dir.is_dir():
        return f"{tag_dir} is missing"
    world, stage = int(meta["world_size"]), int(meta["zero_stage"])
    if stage == 3:
        models = glob.glob(str(tag_dir / "*zero_pp_rank_*_mp_rank_00_model_states.pt"))
        if len(models) != world:
            return f"{tag_dir}: {len(models)} ZeRO-3 model-state shards, expected {world}"
    elif not (tag_dir / "mp_rank_00_model_states.pt").is_file():
        return f"{tag_dir}/mp_rank_00_model_states.pt is missing"
    if stage >= 1:
        optim = glob.glob(str(tag_dir / "*zero_pp_rank_*_mp_rank_00_optim_states.pt"))
        if len(optim) != world:
            return f"{tag_dir}: {len(optim)} optimizer-state shards, expected {world} (one per rank)"
    return None


def plan_resume(ckpt_dir: Path, *, fingerprint: str, world_size: int, zero_stage: int) -> ResumePlan:
    """Rank 0's decision: resume from the ready checkpoint, start fresh, or stop with a clear error."""
    ready = Path(ckpt_dir) / READY
    if not ready.is_file():
        return ResumePlan(None, 0, {}, "no ready checkpoint: starting at step 0")
    meta = read_json(ready)
    if fingerprint and meta.get("fingerprint") != fingerprint:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return ResumePlan(
            None, 0, {}, f"{ckpt_dir}: checkpoint of another config removed; starting at step 0"
        )
    problem = shard_problem(Path(ckpt_dir) / meta["tag"], meta)
    if problem:
        raise StageError(
            f"unlearning checkpoint {meta['tag']} is incomplete: {problem}; restore the files or remove "
            f"{ckpt_dir} to start this method over"
        )
    if int(meta["world_size"]) != world_size and int(meta["zero_stage"]) >= 1:
        raise StageError(
            f"{ckpt_dir}/{meta['tag']}: written by {meta['world_size']} ranks under ZeRO-{meta['zero_stage']}, "
            f"this launch has {world_size}; ZeRO 1-3 partition the optimizer state by rank and cannot be "
            f"resharded: relaunch with {meta['world_size']} ranks, or remove {ckpt_dir} to start this method over"
        )
    note = f"resuming from {ckpt_dir}/{meta['tag']} at step {meta['step']}"
    if int(meta["world_size"]) != world_size:
        note += f" (written by {meta['world_size']} ranks; ZeRO-0 state is whole, resharded to {world_size})"
    return ResumePlan(meta["tag"], int(meta["step"]), meta, note)


def mark_ready(ckpt_dir: Path, meta: dict) -> None:
    """Rank 0, after every rank's shards are written: point ready.json at the new tag, drop older tags."""
    write_json(Path(ckpt_dir) / READY, meta)
    for old in Path(ckpt_dir).glob("step*"):
        if old.is_dir() and old.name != meta["tag"]:
            shutil.rmtree(old, ignore_errors=True)
