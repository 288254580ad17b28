"""One rank-aware logger. Rank 0 logs at INFO, other ranks at WARNING unless RAPIDUN_LOG_ALL_RANKS=1."""

from __future__ import annotations

import logging
import os
import sys
import time

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
        root.setLevel(logging.INFO if rank == 0 or all_ranks else logging.WARNING)
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("rapidun") else f"rapidun.{name}")


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
