"""The one resume protocol of every DeepSpeed run (full fine-tuning and unlearning): where checkpoints go, which
one a rerun loads, and checkpoint-then-stop on preemption.

Layout of a checkpoint folder:

    step<N>/     DeepSpeed's files of step N, every rank's shards (DeepSpeed's own `latest` is not written); a
                 trainer may add files of its own (unlearning: method_state.safetensors, best_adapter.safetensors)
    <marker>     written last, atomically, by rank 0 once every rank's shards are on disk:
                 {"tag", "step", "world_size", "zero_stage", "fingerprint", ...what the trainer adds}
                 The marker's name is the trainer's: resume.json (full fine-tuning), ready.json (unlearning).

A checkpoint counts only once the marker names it; then every other step* folder is removed. A kill at any moment
leaves either the previous checkpoint or the new one (a half-written step folder is never named, and the next save
removes it).

Which one a rerun loads (`plan_resume`, rank 0, broadcast to every rank):
- no marker: start at step 0;
- a marker of another fingerprint (another config or data): the folder is removed, start at step 0;
- shards missing from the named step folder: a clear error (restore them, or remove the folder);
- another world size: ZeRO-0 keeps the whole optimizer state in one file and the batches do not depend on the world
  size, so it resumes (resharded by construction); ZeRO 1-3 partition the optimizer state by rank, which DeepSpeed
  cannot repartition: a clear error.

Preemption (`Checkpoints.stop`): every rank saves the checkpoint of the step just done, then a StageError says how
to resume.
"""

from __future__ import annotations

import glob
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import read_json, write_json
from rapidun_dist.core.logging import get_logger
from rapidun_dist.distributed import env as dist_env

READY = "ready.json"  # the unlearning engine's marker
RESUME = "resume.json"  # full fine-tuning's marker
log = get_logger("checkpoint")


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


def plan_resume(
    ckpt_dir: Path, *, fingerprint: str, world_size: int, zero_stage: int, marker: str = READY
) -> ResumePlan:
    """Rank 0's decision: resume from the checkpoint the marker names, start fresh, or stop with a clear error.
    `zero_stage` is this launch's; the rules use the stage the checkpoint was written under (its marker)."""
    ready = Path(ckpt_dir) / marker
    if not ready.is_file():
        return ResumePlan(None, 0, {}, "no ready checkpoint: starting at step 0")
    meta = read_json(ready)
    if meta.get("fingerprint") != fingerprint:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return ResumePlan(
            None, 0, {}, f"{ckpt_dir}: checkpoint of another config removed; starting at step 0"
        )
    problem = shard_problem(Path(ckpt_dir) / meta["tag"], meta)
    if problem:
        raise StageError(
            f"checkpoint {meta['tag']} is incomplete: {problem}; restore the files or remove {ckpt_dir} to start "
            "over"
        )
    if int(meta["world_size"]) != world_size and int(meta["zero_stage"]) >= 1:
        raise StageError(
            f"{ckpt_dir}/{meta['tag']}: written by {meta['world_size']} ranks under ZeRO-{meta['zero_stage']}, "
            f"this launch has {world_size}; ZeRO 1-3 partition the optimizer state by rank and cannot be "
            f"resharded: relaunch with {meta['world_size']} ranks, or remove {ckpt_dir} to start over"
        )
    note = f"resuming from {ckpt_dir}/{meta['tag']} at step {meta['step']}"
    if int(meta["world_size"]) != world_size:
        note += f" (written by {meta['world_size']} ranks; ZeRO-0 state is whole, resharded to {world_size})"
    return ResumePlan(meta["tag"], int(meta["step"]), meta, note)


def mark_ready(ckpt_dir: Path, meta: dict, marker: str = READY) -> None:
    """Rank 0, after every rank's shards are written: point the marker at the new tag (atomic replace), then remove
    every other step folder (the previous checkpoint, or one a kill left half-written)."""
    write_json(Path(ckpt_dir) / marker, meta)
    for old in Path(ckpt_dir).glob("step*"):
        if old.is_dir() and old.name != meta["tag"]:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class Checkpoints:
    """One run's checkpoint folder under the protocol above. `root` None: no checkpoints (a rerun starts at 0).
    `desc` names the run in log lines and errors (implant, retrain, unlearn[rapidun])."""

    root: Path | None
    fingerprint: str
    info: dist_env.DistInfo
    zero_stage: int
    marker: str = READY
    desc: str = "train"

    def resume(self, engine, *, strict: bool = True) -> ResumePlan:
        """Rank 0 plans (`plan_resume`) and broadcasts the plan, or its error, so every rank loads the same tag into
        `engine` or stops with the same message. `strict=False`: the checkpoint holds only the trainable tensors."""
        plan: ResumePlan | str | None = None
        if self.info.rank == 0:
            try:
                plan = (
                    plan_resume(
                        self.root,
                        fingerprint=self.fingerprint,
                        world_size=self.info.world_size,
                        zero_stage=self.zero_stage,
                        marker=self.marker,
                    )
                    if self.root is not None
                    else ResumePlan(None, 0, {}, "no checkpoint folder: starting at step 0")
                )
            except StageError as e:
                plan = str(e)
        plan = dist_env.broadcast_object(plan)
        if isinstance(plan, str):
            raise StageError(f"{self.desc}: {plan}")
        log.info(f"{self.desc}: {plan.note}")
        if plan.tag is not None:
            engine.load_checkpoint(str(self.root), tag=plan.tag, load_module_strict=strict)
            log.info(f"{self.desc}: resumed from {self.root} at step {plan.step}")
        return plan

    def save(
        self,
        engine,
        step: int,
        *,
        exclude_frozen: bool = False,
        extra_meta: dict | None = None,
        write_extra: Callable[[Path], None] | None = None,
    ) -> None:
        """Every rank writes its shards of `step<step>` (without frozen parameters when `exclude_frozen`); rank 0
        adds `write_extra(tag_dir)`; after a barrier rank 0 names it in the marker (with `extra_meta`)."""
        tag = f"step{step}"
        engine.save_checkpoint(
            str(self.root),
            tag=tag,
            client_state={"step": step},
            save_latest=False,
            exclude_frozen_parameters=exclude_frozen,
        )
        if self.info.rank == 0 and write_extra is not None:
            write_extra(self.root / tag)
        dist_env.barrier()  # every rank's shards are on disk before the checkpoint counts
        if self.info.rank == 0:
            meta = {
                "tag": tag,
                "step": step,
                "world_size": self.info.world_size,
                "zero_stage": self.zero_stage,
                "fingerprint": self.fingerprint,
            }
            mark_ready(self.root, meta | (extra_meta or {}), self.marker)
        dist_env.barrier()
        log.info(f"{self.desc}: checkpoint of step {step} saved in {self.root}")

    def stop(self, step: int, save: Callable[[int], None]) -> NoReturn:
        """Preempted after step `step`: `save(step)` on every rank, then a StageError that says how to resume."""
        if self.root is None:
            raise StageError(
                f"preempted at step {step}: no checkpoint folder was given, so a rerun starts from 0"
            )
        save(step)
        raise StageError(
            f"preempted at step {step}: checkpoint saved in {self.root}; rerun the same command to resume "
            f"{self.desc} from it"
        )

    def remove(self) -> None:
        """Rank 0, once the run is done: the checkpoints are no longer needed."""
        if self.root is not None and self.info.rank == 0:
            shutil.rmtree(self.root, ignore_errors=True)
