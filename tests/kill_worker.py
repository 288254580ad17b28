"""A feature launcher with a crash injected, for the resume tests (keeps test hooks out of library code).

    python tests/kill_worker.py LAUNCHER ARGS...     LAUNCHER: influence | find_poison (launch/<LAUNCHER>.py)

RAPIDUN_TEST_KILL_AFTER_SHARDS="R:N": rank R SIGKILLs itself right after writing its N-th feature shard (a shard of
the influence stage, a work unit of find_poison: both go through FeatureStore.write_shard); the other ranks sleep
RAPIDUN_TEST_SLOW_WRITES seconds (default 0) after each of theirs, so that with units claimed dynamically they
cannot take every unit left before the launcher stops them (which would leave nothing to resume).
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _install_kill_hook() -> None:
    import time

    from rapidun_dist.influence.store import FeatureStore

    rank_s, n_s = os.environ["RAPIDUN_TEST_KILL_AFTER_SHARDS"].split(":")
    rank = int(os.environ.get("RANK", "0"))
    slow = float(os.environ.get("RAPIDUN_TEST_SLOW_WRITES", "0"))
    write, written = FeatureStore.write_shard, []

    def write_then_maybe_die(self, i, rows, feats, *args, **kwargs):
        write(self, i, rows, feats, *args, **kwargs)
        written.append(i)
        if rank != int(rank_s):
            time.sleep(slow)
        elif len(written) == int(n_s):
            sys.stderr.write(f"kill_worker: killing rank {rank} after {len(written)} shards\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    FeatureStore.write_shard = write_then_maybe_die


def main() -> int:
    if os.environ.get("RAPIDUN_TEST_KILL_AFTER_SHARDS"):
        _install_kill_hook()
    name, argv = sys.argv[1], sys.argv[2:]
    spec = importlib.util.spec_from_file_location(f"launch_{name}", ROOT / "launch" / f"{name}.py")
    launch = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch)
    return launch.main(argv)


if __name__ == "__main__":
    sys.exit(main())
