"""Preemption: SIGTERM / SIGUSR1 set a flag; long loops poll `requested()` at a safe point, checkpoint and stop.

Under slurm/launch.sh the batch shell gets SIGUSR1 before the time limit (`#SBATCH --signal=B:USR1@600`) or SIGTERM
on preemption, and turns either into SIGUSR1 for the tasks of the job step (`scancel --signal=USR1`); torchrun passes
SIGUSR1 and SIGTERM on to its workers (`--signals_to_handle`); see slurm/README.md. Without a handler Python dies on
the spot (the default action of both) and the work since the last checkpoint is lost; with one, the step loop
finishes its step, saves, and exits with a clear error (the job is requeued and resumes from there). Periodic
checkpoints (`implant.save_every`, `unlearn.save_every`) cover what no signal announces.

    from rapidun_dist.distributed import preempt
    preempt.install()                 # launchers, once (idempotent; the main thread only)
    ...
    if preempt.requested(): ...       # step loops: every rank must agree before acting (an all-reduce)

A handler installed before ours (a callable) still runs after the flag is set; the default action (terminate) of
SIGTERM is replaced, which is the point. A second SIGTERM while the flag is up is handled the same way (the loop is
already on its way out); SIGKILL, which SLURM sends after KillWait, cannot be caught.
"""

from __future__ import annotations

import signal
import threading

from rapidun_dist.core.logging import get_logger

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_flag = threading.Event()
_installed: dict[int, object] = {}  # signal number -> the handler that was there before ours


def _handler(signum, frame) -> None:
    first = not _flag.is_set()
    _flag.set()
    if first:
        get_logger("preempt").warning(
            f"received {signal.Signals(signum).name}: stopping at the next safe point (checkpoint, then exit)"
        )
    previous = _installed.get(signum)
    if callable(previous) and previous is not _handler:
        previous(signum, frame)


def install() -> None:
    """Install the SIGTERM / SIGUSR1 handler once per process (later calls do nothing)."""
    if _installed:
        return
    if threading.current_thread() is not threading.main_thread():
        get_logger("preempt").warning(
            "preempt.install: not on the main thread (signals unavailable); skipped"
        )
        return
    for sig in SIGNALS:
        _installed[int(sig)] = signal.getsignal(sig)
        signal.signal(sig, _handler)


def requested() -> bool:
    """True once SIGTERM or SIGUSR1 arrived in this process (after `install()`)."""
    return _flag.is_set()
