"""What a stage is: a declared contract (config keys, run-directory artifacts read and written, upstream stages)
and one `run(ctx) -> outputs` function (`StageContext`). The driver (`rapidun_dist.pipeline`) only orders stages; the CLI and the
launchers share `rapidun_dist.stages.check_ready`."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.run.rundir import RunDir


@dataclass(frozen=True)
class StageContext:
    """What the driver hands a stage: the config, the run directory, the stage's fingerprint (computed once, by
    the driver, from the config and the upstream stages' recorded outputs) and the ranks calling it."""

    cfg: RunConfig
    rd: RunDir
    stage: str
    fingerprint: str
    rekey: Callable[[dict], str]
    """The stage's fingerprint of another config (as a dict) in the same run directory: resume keys that leave
    out settings which do not change a trajectory."""
    world_size: int = 1
    rank: int = 0


StageFn = Callable[[StageContext], list[Path]]


@dataclass(frozen=True, kw_only=True)
class Stage:
    name: str
    doc: str
    config_keys: tuple[str, ...]
    """Dotted config keys the outputs depend on (the stage's fingerprint; upstream stages are chained in)."""
    reads: tuple[str, ...]
    """Run-directory paths the stage reads (documentation and `rapidun validate`)."""
    writes: tuple[str, ...]
    """Run-directory paths the stage writes."""
    requires: tuple[str, ...] | Callable[[RunConfig], tuple[str, ...]]
    """Upstream stages that must be done first (those absent from the run's mode are ignored); a function of
    the config when that depends on it (unlearning needs the weights only for methods that use them)."""
    run: StageFn
    collective: bool = False
    """True: every rank calls `run` together (a multi-rank launch); False: rank 0 alone."""
    modes: tuple[str, ...] = ("experiment", "clean")
    applies: Callable[[dict], bool] | None = None
    """Whether a run of the config (as a dict) has this stage at all (None: always, in its modes); e.g. find_poison
    only where there is a training set to search."""
    when: Callable[[dict], bool] | None = None
    """None: part of every run of its modes. Else (an optional stage, e.g. attribute) it joins a default run, and
    later stages' fingerprints, only when `when(cfg_dict)` is true; it can always be run by name."""

    def declares(self, rel_path: str) -> bool:
        """Whether `rel_path` (relative to the run directory) is among the paths this stage declares it writes:
        an entry ending in "/" covers everything below it, "*" and "<name>" match one path part, and a trailing
        "(...)" only says when the entry applies."""
        return any(_matches(rel_path, entry) for entry in self.writes)

    def upstream(self, cfg: RunConfig) -> tuple[str, ...]:
        return self.requires(cfg) if callable(self.requires) else self.requires


def _matches(rel_path: str, entry: str) -> bool:
    pattern = re.sub(r"<[^>]+>", "*", entry.split(" (")[0].strip().removeprefix("or "))
    return fnmatch.fnmatchcase(rel_path, pattern + "*" if pattern.endswith("/") else pattern)
