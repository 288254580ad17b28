"""The signal path of slurm/launch.sh with stand-ins for srun, scancel and scontrol (tests/slurm/conftest.py): the
batch shell gets SIGUSR1 (`--signal=B:USR1@600`) or SIGTERM (preemption) as SLURM would send it; the tasks - plain
Python ranks under LAUNCHER=srun, a real torchrun and its workers under LAUNCHER=torchrun, the real implant stage -
must receive SIGUSR1 (never SIGKILL), write their checkpoint, and the job must be requeued once the step has exited.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import free_port  # noqa: E402
from slurm_fakes import REPO, start_batch, state_of, wait_for  # noqa: E402

TASK = """
import json, os, signal, sys, time
from pathlib import Path
from rapidun_dist.distributed import preempt
seen = []
for s in (signal.SIGUSR1, signal.SIGTERM):
    signal.signal(s, lambda n, f: seen.append(signal.Signals(n).name))  # recorded, then chained by preempt
preempt.install()
out = Path(sys.argv[1])
rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID"))
(out / f"ready.{rank}").write_text(str(os.getpid()))
steps = 0
while not preempt.requested():  # a training loop: one "step" per 10 ms until asked to stop
    steps += 1
    time.sleep(0.01)
tmp = out / f".ckpt.{rank}.tmp"
tmp.write_text(json.dumps({"steps": steps, "signals": seen, "pid": os.getpid()}))
os.replace(tmp, out / f"ckpt.{rank}.json")
sys.exit(2)  # what a preempted stage exits with
"""


def _task(tmp_path: Path) -> tuple[Path, Path]:
    task, out = tmp_path / "task.py", tmp_path / "out"
    task.write_text(TASK)
    out.mkdir()
    return task, out


def _run_until_ready(script: str, env: dict, out: Path, ranks: int, log: Path):
    proc = start_batch(script, env, log)
    wait_for(
        lambda: all((out / f"ready.{r}").exists() for r in range(ranks)), proc, log, "every task is ready"
    )
    return proc


def _checkpoints(out: Path, ranks: int) -> list[dict]:
    return [json.loads((out / f"ckpt.{r}.json").read_text()) for r in range(ranks)]


@pytest.mark.parametrize("batch_signal", [signal.SIGUSR1, signal.SIGTERM], ids=["time-limit", "preemption"])
def test_srun_tasks_get_sigusr1_checkpoint_and_the_job_is_requeued(fake_slurm, tmp_path, batch_signal):
    task, out = _task(tmp_path)
    env, log = fake_slurm | {"LAUNCHER": "srun"}, tmp_path / "batch.log"
    proc = _run_until_ready(f"source slurm/launch.sh && rapidun_launch {task} {out}", env, out, 2, log)
    os.kill(proc.pid, batch_signal)  # --signal=B:USR1 / a preemption: the batch shell only
    assert proc.wait(timeout=120) == 2, log.read_text()  # the step's status: the ranks' "preempted"
    for ckpt in _checkpoints(out, 2):
        assert ckpt["signals"] == ["SIGUSR1"] and ckpt["steps"] > 0
    st = state_of(fake_slurm)
    assert st["scancel"] == [["--signal=USR1", "4242"]]  # the steps' tasks, not the batch shell (no --full)
    assert st["requeue"] == ["4242"] and st["srun_signals"] == []  # srun itself was never signalled
    (call,) = st["srun"]
    assert call["argv"][:4] == ["--kill-on-bad-exit=1", "--nodes=1", "--ntasks=2", "--ntasks-per-node=2"]
    assert (call["SRUN_CPUS_PER_TASK"], call["OMP_NUM_THREADS"]) == ("1", "1")  # 2 CPUs on the node, 2 ranks
    assert "requeueing job 4242" in log.read_text()


def test_the_fake_srun_sigkills_its_tasks_on_sigterm_as_srun_does(fake_slurm, tmp_path):
    """Why the trap must not signal srun: the old path (SIGTERM to srun) loses the checkpoint."""
    task, out = _task(tmp_path)
    log = tmp_path / "batch.log"
    proc = _run_until_ready(f"srun --ntasks=1 {sys.executable} {task} {out}", fake_slurm, out, 1, log)
    srun_pid = int((Path(fake_slurm["FAKE_SLURM_DIR"]) / "srun.pid").read_text())
    os.kill(srun_pid, signal.SIGTERM)
    assert proc.wait(timeout=60) == 137, log.read_text()  # the task died of SIGKILL
    assert not (out / "ckpt.0.json").exists()
    assert state_of(fake_slurm)["srun_signals"] == ["SIGTERM"]


def test_torchrun_forwards_sigusr1_to_its_workers(fake_slurm, tmp_path):
    """LAUNCHER=torchrun: scancel signals the task (torchrun, via slurm/torchrun_node.sh); torchrun's
    --signals_to_handle makes it pass SIGUSR1 on to both workers, which checkpoint; then the requeue."""
    task, out = _task(tmp_path)
    env = fake_slurm | {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    log = tmp_path / "batch.log"
    proc = _run_until_ready(f"source slurm/launch.sh && rapidun_launch {task} {out}", env, out, 2, log)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=120) != 0, log.read_text()  # torchrun reports its workers' exit 2
    ckpts = _checkpoints(out, 2)
    assert all(c["signals"] == ["SIGUSR1"] for c in ckpts), ckpts  # once each: from torchrun, not SIGKILL
    st = state_of(fake_slurm)
    assert st["scancel"] == [["--signal=USR1", "4242"]] and st["requeue"] == ["4242"]
    (call,) = st["srun"]
    assert call["argv"][3:6] == ["--ntasks-per-node=1", "bash", "slurm/torchrun_node.sh"]
    assert "--signals_to_handle" in call["argv"] and "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1" in call["argv"]
    assert (call["SRUN_CPUS_PER_TASK"], call["OMP_NUM_THREADS"]) == ("2", "1")  # the node's CPUs, 1 per rank
    assert "forcefully exiting via" not in log.read_text()  # torchrun did not have to SIGKILL a worker


@pytest.mark.dist
def test_implant_under_torchrun_checkpoints_on_the_time_limit_signal(fake_slurm, tmp_path):
    """The real implant stage (2 ranks under torchrun, the small config) gets the time-limit signal after its first
    periodic checkpoint: both ranks stop at the same later step with a checkpoint, and the job is requeued (the
    resume itself: tests/distributed/test_dist_implant_resume.py and test_dist_preempt.py)."""
    sys.path.insert(0, str(REPO / "tests" / "distributed"))
    from stage_helpers import CONFIG, SMALL

    run = tmp_path / "run"
    args = [str(CONFIG), f"run_dir={run}", *SMALL, "implant.max_steps=100000", "implant.save_every=2"]
    env = fake_slurm | {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "STAGES": "prepare,implant",
    }
    env["RAPIDUN_LOG_ALL_RANKS"] = "1"
    log = tmp_path / "batch.log"
    proc = start_batch(f"bash slurm/run.sbatch {' '.join(args)}", env, log)
    resume = run / "checkpoints" / "implant" / "resume.json"
    wait_for(resume.exists, proc, log, "the first periodic checkpoint", timeout_s=600)
    os.kill(proc.pid, signal.SIGUSR1)
    assert proc.wait(timeout=300) != 0, log.read_text()
    text = log.read_text()
    meta = json.loads(resume.read_text())
    assert meta["world_size"] == 2 and meta["step"] >= 2
    for rank in (0, 1):
        assert f"rank{rank}] error: preempted at step {meta['step']}: checkpoint saved" in text, text[-3000:]
    assert state_of(fake_slurm)["requeue"] == ["4242"]
    assert json.loads((run / "manifest.json").read_text())["stages"]["implant"]["status"] == "failed"
