"""One rank-aware logger. On stderr rank 0 logs at INFO, other ranks at WARNING unless RAPIDUN_LOG_ALL_RANKS=1;
`attach_run_log(run_dir)` also writes every rank's INFO log into the run directory (`run.log` for rank 0,
`logs/rank<N>.log` for the others)."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

_CONFIGURED = False


def _rank() -> int:
    for key in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (so redirection and test capture see the messages)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def get_logger(name: str = "rapidun") -> logging.Logger:
    global _CONFIGURED
    if not _CONFIGURED:
        root = logging.getLogger("rapidun")
        handler = _StderrHandler()
        rank = _rank()
        handler.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank}] %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        all_ranks = os.environ.get("RAPIDUN_LOG_ALL_RANKS") == "1"
        handler.setLevel(logging.INFO if rank == 0 or all_ranks else logging.WARNING)
        root.setLevel(logging.INFO)
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("rapidun") else f"rapidun.{name}")


def attach_run_log(run_dir) -> Path:
    """Append this process's log to a file in `run_dir` (once per file), beside stderr; returns the file."""
    get_logger()
    rank = _rank()
    path = Path(run_dir) / ("run.log" if rank == 0 else f"logs/rank{rank}.log")
    root = logging.getLogger("rapidun")
    if any(
        isinstance(h, logging.FileHandler) and Path(h.baseFilename) == path.resolve() for h in root.handlers
    ):
        return path
    for h in [
        h for h in root.handlers if isinstance(h, logging.FileHandler)
    ]:  # a new run dir: stop the old file
        root.removeHandler(h)
        h.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(path, encoding="utf-8")
    fh.setFormatter(logging.Formatter(f"[%(asctime)s rank{rank} %(name)s] %(message)s", "%Y-%m-%d %H:%M:%S"))
    fh.setLevel(logging.INFO)
    root.addHandler(fh)
    return path


class Progress:
    """A light progress display for long loops: logs `done/total`, rate and ETA at most every `every_s` seconds
    (and once when `total` is reached). `approx`: the total is an estimate (e.g. a rank's share of work claimed
    from a queue shared with other ranks): shown as `~total`, and counting past it logs at the usual cadence with
    no ETA rather than on every update."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "it",
        every_s: float = 5.0,
        logger=None,
        approx: bool = False,
    ):
        self.total, self.desc, self.unit, self.every_s, self.approx = total, desc, unit, every_s, approx
        self.log = logger or get_logger()
        self.done = 0
        self.t0 = self._last = time.perf_counter()

    def update(self, n: int = 1, **extra) -> None:
        before, self.done = self.done, self.done + n
        now = time.perf_counter()
        reached = before < self.total <= self.done
        if now - self._last >= self.every_s or reached:
            self._last = now
            rate = self.done / max(now - self.t0, 1e-9)
            if self.done > self.total:
                eta = ""
            else:
                eta = f" eta {(self.total - self.done) / rate:.0f}s" if rate > 0 else " eta inf"
            tail = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
            total = f"~{self.total}" if self.approx else str(self.total)
            self.log.info(f"{self.desc}: {self.done}/{total} {rate:.1f} {self.unit}/s{eta} {tail}".rstrip())
