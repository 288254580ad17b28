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
    """A light progress display for long loops: logs `done/total`, rate and ETA at most every `every_s` seconds."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", every_s: float = 5.0, logger=None):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.log = logger or get_logger()
        self.done = 0
        self.t0 = self._last = time.perf_counter()

    def update(self, n: int = 1, **extra) -> None:
        self.done += n
        now = time.perf_counter()
        if now - self._last >= self.every_s or self.done >= self.total:
            self._last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            tail = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in extra.items())
            self.log.info(
                f"{self.desc}: {self.done}/{self.total} {rate:.1f} {self.unit}/s eta {eta:.0f}s {tail}".rstrip()
            )
