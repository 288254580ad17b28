"""launch/run.py with a SIGTERM injected, for the preemption test (keeps test hooks out of library code).

RAPIDUN_TEST_SIGTERM_AT="R:S": rank R sends SIGTERM to itself right after its S-th optimizer step of a fine-tune
(the progress update of that step), as SLURM's preemption would.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _install_sigterm() -> None:
    import rapidun_dist.training.finetune as train

    rank_s, step_s = os.environ["RAPIDUN_TEST_SIGTERM_AT"].split(":")
    base = train.Progress

    class SignallingProgress(base):
        def update(self, n: int = 1, **extra) -> None:
            super().update(n, **extra)
            if int(os.environ.get("RANK", "0")) == int(rank_s) and self.done == int(step_s):
                os.kill(os.getpid(), signal.SIGTERM)

    train.Progress = SignallingProgress


def main() -> int:
    if os.environ.get("RAPIDUN_TEST_SIGTERM_AT"):
        _install_sigterm()
    spec = importlib.util.spec_from_file_location("launch_run", ROOT / "launch" / "run.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    return launch.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
