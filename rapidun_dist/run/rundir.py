"""The run directory: the contract between stages (docs/DESIGN.md section 3).

`manifest.json` records, per stage: status, start/end time, wall seconds, a fingerprint of the
config sections and upstream stages it depends on, output hashes, versions and world size. A stage
whose record is `done`, whose fingerprint matches and whose outputs still hash the same is skipped.
`RunDir.fork` starts a new run directory from this one's completed stages (experiments that share them).
The stages themselves (their config keys, artifacts and order) are declared in `rapidun_dist.stages`, which
computes the fingerprints; this module only stores and checks them.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import file_sha256, read_json, write_json


def _versions() -> dict:
    """Installed versions, read from package metadata (importing deepspeed here would cost seconds per stage)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "peft", "deepspeed", "triton"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class RunDir:
    root: Path

    def __init__(self, root):
        self.root = Path(root)

    # paths ----------------------------------------------------------------------------------------
    def sub(self, name: str) -> Path:
        return self.root / name

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def influence(self) -> Path:
        return self.root / "influence"

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    @property
    def unlearn(self) -> Path:
        return self.root / "unlearn"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    # manifest -------------------------------------------------------------------------------------
    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return read_json(self.manifest_path)

    def record(self, stage: str) -> dict | None:
        return self.manifest()["stages"].get(stage)

    def is_done(self, stage: str, fingerprint: str) -> bool:
        rec = self.record(stage)
        if not rec or rec.get("status") != "done" or rec.get("fingerprint") != fingerprint:
            return False
        for rel, digest in rec.get("outputs", {}).items():
            p = self.root / rel
            if not p.exists() or file_sha256(p) != digest:
                return False
        return True

    def _update(self, stage: str, rec: dict) -> None:
        man = self.manifest()
        man["stages"][stage] = rec
        write_json(self.manifest_path, man)

    def start(self, stage: str, fingerprint: str, world_size: int = 1) -> dict:
        rec = {
            "status": "running",
            "fingerprint": fingerprint,
            "start": time.time(),
            "world_size": world_size,
            "versions": _versions(),
        }
        self._update(stage, rec)
        rec["_t0"] = time.perf_counter()
        return rec

    def finish(self, stage: str, rec: dict, outputs: list[Path], extra: dict | None = None) -> dict:
        rec = dict(rec)
        t0 = rec.pop("_t0")
        rec.update(status="done", end=time.time(), seconds=time.perf_counter() - t0)
        rec["outputs"] = {str(p.relative_to(self.root)): file_sha256(p) for p in outputs if p.is_file()}
        if extra:
            rec.update(extra)
        self._update(stage, rec)
        return rec

    def fail(self, stage: str, rec: dict, error: BaseException) -> None:
        rec = dict(rec)
        t0 = rec.pop("_t0", None)
        rec.update(status="failed", end=time.time(), error=f"{type(error).__name__}: {error}")
        if t0 is not None:
            rec["seconds"] = time.perf_counter() - t0
        self._update(stage, rec)

    def stage_seconds(self, stage: str) -> float | None:
        rec = self.record(stage)
        return None if rec is None else rec.get("seconds")

    def stage_cost_seconds(self, stage: str) -> float | None:
        """The stage's seconds less its recorded overhead (imports, plots: rapidun_dist.core.timing)."""
        from rapidun_dist.core.timing import cost_seconds

        return cost_seconds(self.record(stage))

    # fork -----------------------------------------------------------------------------------------
    def fork(self, dst, stages: Sequence[str], *, link: bool = False, replace: bool = False) -> RunDir:
        """A new run directory at `dst` that starts where this one's completed `stages` left off.

        Each named stage's outputs are copied (hard-linked with `link`) and its manifest record carried verbatim,
        so in the fork those stages are done and consistent, and every later stage's fingerprint is the one it
        would have here for the same config (a fingerprint hashes the config and the upstream records' output
        hashes, both the same). A stage's outputs are the top-level folders its recorded files lie in (`data/`,
        `model/`, `features/` + `influence/`, ...), whole, since a stage writes more than it hashes (feature
        shards, adapters); a folder that also holds files recorded by a stage not named (e.g. `eval/judge.json`
        of `attribute`) contributes only the named stages' recorded files. `config.yaml` comes along when present.

        Name every upstream stage the named ones chained into their fingerprints (e.g. find_poison before
        influence when this run had it): a record carried without them reads as "done for another config".
        `link=True` shares the files instead of copying them: only for forks that never rerun a forked stage
        (a writer that rewrote a shared file in place would change this run too). This directory is only read.

        Refuses (StageError) when a named stage is not done here or its outputs no longer hash as recorded, and
        when `dst` is this directory, lies inside it or holds it; `dst` must be absent or empty unless `replace`,
        which removes it first. The fork is built beside `dst` and renamed into place: no half-made fork."""
        dst = Path(dst)
        self._check_fork_target(dst, replace)
        records = {name: self._forkable_record(name) for name in dict.fromkeys(stages)}
        if not records:
            raise StageError(f"fork of {self.root}: name at least one stage to carry")
        tmp = dst.parent / f".{dst.name}.fork-tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            for rel in self._fork_paths(records):
                _copy_entry(self.root / rel, tmp / rel, link=link)
            if (self.root / "config.yaml").is_file():
                _copy_entry(self.root / "config.yaml", tmp / "config.yaml", link=False)
            write_json(tmp / "manifest.json", {"stages": records})
            if dst.exists():
                shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
            tmp.rename(dst)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return RunDir(dst)

    def _check_fork_target(self, dst: Path, replace: bool) -> None:
        src, target = self.root.resolve(), dst.resolve()
        if target == src or target.is_relative_to(src) or src.is_relative_to(target):
            raise StageError(
                f"fork of {self.root}: the destination {dst} is this run directory, inside it or holds it"
            )
        if dst.exists() and not replace and (not dst.is_dir() or any(dst.iterdir())):
            raise StageError(
                f"fork of {self.root}: {dst} exists and is not empty (replace=True removes it first)"
            )

    def _forkable_record(self, stage: str) -> dict:
        rec = self.record(stage)
        if rec is None or rec.get("status") != "done":
            state = "has not run" if rec is None else f"is {rec.get('status')!r}"
            raise StageError(
                f"fork of {self.root}: stage {stage!r} {state}; only completed stages can be carried"
            )
        for rel, digest in rec.get("outputs", {}).items():
            p = self.root / rel
            if not p.is_file() or file_sha256(p) != digest:
                raise StageError(
                    f"fork of {self.root}: stage {stage!r}'s output {rel} is missing or changed since the stage "
                    "finished; rerun the stage before forking"
                )
        return rec

    def _fork_paths(self, records: dict[str, dict]) -> list[str]:
        """The run-directory paths that carry `records`' outputs: whole top-level folders the named stages own
        alone, else the named stages' recorded files (see `fork`)."""
        owners: dict[str, set[str]] = {}
        for name, rec in self.manifest()["stages"].items():
            for rel in rec.get("outputs", {}):
                owners.setdefault(Path(rel).parts[0], set()).add(name)
        paths: list[str] = []
        for rec in records.values():
            for rel in rec.get("outputs", {}):
                top = Path(rel).parts[0]
                whole = len(Path(rel).parts) > 1 and owners[top] <= set(records)
                paths.append(top if whole else rel)
        return list(dict.fromkeys(paths))


def _copy_entry(src: Path, dst: Path, *, link: bool) -> None:
    """Copy (or hard-link, falling back to a copy across file systems) the file or folder `src` to `dst`."""

    def one(s, d):
        if link:
            try:
                os.link(s, d)
                return d
            except OSError:
                pass
        return shutil.copy2(s, d)

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=one)
    else:
        one(src, dst)
