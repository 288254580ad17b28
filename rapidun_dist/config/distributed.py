"""The `distributed` section: where each rank runs and how long it waits for the others (docs/DESIGN.md section
9)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rapidun_dist.config.checks import check, check_literal

DEVICE_SPEC = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass(kw_only=True)
class DistributedConfig:
    """Where each rank runs and how long it waits for the others (docs/DESIGN.md section 9)."""

    device: str = "auto"
    """The rank's device: auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda (cuda:LOCAL_RANK), or
    cuda:N (one process per GPU chosen by hand)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Process-group backend: auto = nccl on CUDA devices, gloo on CPU."""
    init_timeout_s: float = 1800.0
    """Rendezvous and the first collective: every rank must have started (nodes booting, imports, model loads)."""
    collective_timeout_s: float = 600.0
    """Every later collective: a rank silent this long is stuck, and the job fails instead of hanging."""

    def __post_init__(self):
        check_literal(self, "distributed")
        check(
            DEVICE_SPEC.fullmatch(str(self.device)) is not None,
            "distributed.device",
            f"expected auto, cpu, cuda or cuda:N, found {self.device!r}",
        )
        for name in ("init_timeout_s", "collective_timeout_s"):
            check(
                getattr(self, name) > 0, f"distributed.{name}", f"expected > 0, found {getattr(self, name)}"
            )
