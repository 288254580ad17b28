"""The run directory: the contract between stages (docs/DESIGN.md section 3).

`manifest.json` records, per stage: status, start/end time, wall seconds, a fingerprint of the
config sections and upstream stages it depends on, output hashes, versions and world size. A stage
whose record is `done`, whose fingerprint matches and whose outputs still hash the same is skipped.
The stages themselves (their config keys, artifacts and order) are declared in `rapidun_dist.stages`, which
computes the fingerprints; this module only stores and checks them.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

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
