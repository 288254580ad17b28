"""Preemption requests: a SIGTERM / SIGUSR1 handler that only sets a flag, and a query for it.

SLURM sends SIGTERM (or the signal named by `sbatch --signal`) some time before it kills a job; a training loop
that polls `requested()` after each optimizer step can save a checkpoint and stop cleanly. The handler does no
work itself (a signal can arrive in the middle of a collective); the loop decides, and every rank agrees on it
through a collective (see rapidun_dist/unlearn/engine.py).

    from rapidun_dist.distributed import preempt
    preempt.install()            # once, in the entry script
    ...
    if preempt.requested(): ...  # after each step
"""

from __future__ import annotations

import signal

_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_state = {"requested": False, "installed": False}


def _handler(signum, frame) -> None:
    _state["requested"] = True


def install() -> None:
    """Route SIGTERM and SIGUSR1 to the flag (main thread only; a second call is a no-op)."""
    if _state["installed"]:
        return
    for sig in _SIGNALS:
        signal.signal(sig, _handler)
    _state["installed"] = True


def requested() -> bool:
    """True once SIGTERM or SIGUSR1 has arrived after `install()`."""
    return _state["requested"]
