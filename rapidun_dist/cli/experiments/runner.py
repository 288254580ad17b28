"""Run a spec: `rapidun run` once per cell and seed, one after another, into OUT/<cell>/s<seed>.

A cell and seed whose run directory already holds every stage of its config, done and current (the manifest's
fingerprints and output hashes, exactly what `rapidun run` checks before skipping a stage), is not launched again:
a sweep stopped half way resumes where it stopped, and a finished one costs nothing to rerun. Runs go one at a time
(side by side they would share the cores and skew each other's seconds); each one's output goes to
OUT/<cell>/s<seed>.log.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from rapidun_dist.cli.experiments.spec import Cell, Spec
from rapidun_dist.config import RunConfig, load_config
from rapidun_dist.core.errors import ConfigError, StageError
from rapidun_dist.core.logging import get_logger
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import default_stages, fingerprint

log = get_logger("experiments")
Launcher = Callable[[list[str], Path], int]
"""(arguments of `rapidun run`, log file) -> exit code."""


@dataclass(frozen=True)
class Task:
    cell: Cell
    seed: int
    run_dir: Path
    missing: tuple[str, ...]
    """The config's stages not done (or not current) in `run_dir`: empty = nothing to run."""


def run_dir_of(out: str | Path, cell: Cell, seed: int) -> Path:
    return Path(out) / cell.name / f"s{seed}"


def cell_config(spec: Spec, cell: Cell, seed: int, run_dir: str | Path) -> RunConfig:
    return load_config(spec.config, spec.overrides_of(cell, seed, run_dir))


def missing_stages(cfg: RunConfig) -> list[str]:
    """The stages `rapidun run` would run for `cfg` in its run directory (those not done for this config)."""
    rd = RunDir(cfg.run_dir)
    cfg_dict, done = cfg.to_dict(), rd.manifest()["stages"]
    return [
        s.name for s in default_stages(cfg) if not rd.is_done(s.name, fingerprint(s.name, cfg_dict, done))
    ]


def done_stages(rd: RunDir, among: Sequence[str]) -> list[str]:
    """Those of `among` recorded done in `rd` (what a fork of `rd` can carry), in `among`'s order."""
    recorded = rd.manifest()["stages"]
    return [s for s in among if (recorded.get(s) or {}).get("status") == "done"]


def plan(
    spec: Spec, out: str | Path, *, cells: Sequence[str] | None = None, seeds: Sequence[int] | None = None
) -> list[Task]:
    """Every (cell, seed) of the spec (or the subsets named) with what its run directory still lacks."""
    chosen = [spec.cell(c) for c in cells] if cells else list(spec.cells)
    unknown = [s for s in seeds or () if s not in spec.seeds]
    if unknown:
        raise ConfigError(f"{spec.path}: seeds {unknown} are not the spec's ({list(spec.seeds)})")
    tasks = []
    for cell in chosen:
        for seed in seeds or spec.seeds:
            run_dir = run_dir_of(out, cell, seed)
            tasks.append(
                Task(cell, seed, run_dir, tuple(missing_stages(cell_config(spec, cell, seed, run_dir))))
            )
    return tasks


def launch(args: list[str], log_path: Path) -> int:
    """`rapidun run ARGS` in a child process (a fresh interpreter per run), its output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w", encoding="utf-8") as fh:
        cmd = [sys.executable, "-m", "rapidun_dist.cli", "run", *args]
        return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT).returncode


def run_spec(
    spec: Spec,
    out: str | Path,
    *,
    cells: Sequence[str] | None = None,
    seeds: Sequence[int] | None = None,
    dry_run: bool = False,
    launcher: Launcher = launch,
) -> list[Task]:
    """Run every (cell, seed) whose run directory is not complete; return the plan as it stood before.
    A failed run stops the sweep (StageError naming its log); `dry_run` only says what would run."""
    tasks = plan(spec, out, cells=cells, seeds=seeds)
    todo = [t for t in tasks if t.missing]
    log.info(f"{spec.name}: {len(tasks) - len(todo)} of {len(tasks)} runs done; {len(todo)} to run")
    for i, t in enumerate(todo, 1):
        command = spec.command(t.cell, t.seed, t.run_dir)
        log.info(f"[{i}/{len(todo)}] {command}   (stages to run: {', '.join(t.missing)})")
        if dry_run:
            continue
        log_path = t.run_dir.parent / f"{t.run_dir.name}.log"
        rc = launcher([*spec.arguments(t.cell, t.seed), f"run_dir={t.run_dir}"], log_path)
        if rc != 0:
            raise StageError(f"{command} failed (exit {rc}); see {log_path}")
        left = missing_stages(cell_config(spec, t.cell, t.seed, t.run_dir))
        if left:
            raise StageError(
                f"{command} exited 0 but stages {left} are not done in {t.run_dir}; see {log_path}"
            )
    return tasks
