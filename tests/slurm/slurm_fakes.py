"""Stand-ins for srun, scancel and scontrol (the `fake_slurm` fixture, via conftest.py), written into a temp bin/ that goes first on PATH, and a batch-shell
runner: the signal path of slurm/launch.sh runs for real (bash, Python tasks, torchrun), only SLURM is played.

- srun: starts its command as --ntasks child processes (SLURM_PROCID / SLURM_LOCALID / SLURM_NTASKS / SLURM_NODEID /
  SLURMD_NODENAME set per task), records its argv and CPU settings, writes the tasks' pids; like the real srun it
  answers SIGTERM / SIGINT by SIGKILLing its tasks and forwards SIGUSR1 / SIGUSR2; exits with the tasks' status.
- scancel: records its arguments and delivers the signal (--signal=NAME / -s NAME) to the running step's tasks - to the
  task processes only, not their children (what slurmstepd guarantees whatever the proctrack plugin).
- scontrol: `show hostnames` prints $FAKE_NODE; `requeue JOB` is recorded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FAKE_SRUN = """
import json, os, signal, subprocess, sys
state = os.environ["FAKE_SLURM_DIR"]
args, i, ntasks = sys.argv[1:], 0, 1
while i < len(args) and args[i].startswith("-"):
    if args[i].startswith("--ntasks="):
        ntasks = int(args[i].split("=", 1)[1])
    i += 1
with open(os.path.join(state, "srun.jsonl"), "a") as f:
    keep = ("SRUN_CPUS_PER_TASK", "OMP_NUM_THREADS", "TRITON_CACHE_DIR", "MASTER_ADDR", "RAPIDUN_RDZV_NODE")
    f.write(json.dumps({"argv": args, **{k: os.environ.get(k) for k in keep}}) + "\\n")
with open(os.path.join(state, "srun.pid"), "w") as f:
    f.write(str(os.getpid()))
procs = []
for rank in range(ntasks):
    env = os.environ | {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": str(ntasks),
                        "SLURM_NODEID": "0", "SLURMD_NODENAME": os.environ.get("FAKE_NODE", "localhost")}
    procs.append(subprocess.Popen(args[i:], env=env))
pids = os.path.join(state, "tasks.pids")
with open(pids + ".tmp", "w") as f:
    f.write(" ".join(str(p.pid) for p in procs))
os.replace(pids + ".tmp", pids)

def kill_tasks(signum, frame):  # srun's answer to SIGTERM: SIGKILL to every task
    with open(os.path.join(state, "srun.signals"), "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
    for p in procs:
        p.kill()

def forward(signum, frame):
    for p in procs:
        p.send_signal(signum)

for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, kill_tasks)
for s in (signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(s, forward)
codes = [p.wait() for p in procs]
os.unlink(pids)
bad = [c for c in codes if c != 0]
sys.exit(0 if not bad else (128 - bad[0] if bad[0] < 0 else bad[0]))
"""

FAKE_SCANCEL = """
import json, os, signal, sys
state = os.environ["FAKE_SLURM_DIR"]
args = sys.argv[1:]
with open(os.path.join(state, "scancel.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\\n")
name = "KILL"
for i, a in enumerate(args):
    if a.startswith("--signal="):
        name = a.split("=", 1)[1]
    elif a == "-s":
        name = args[i + 1]
signum = getattr(signal, name if name.startswith("SIG") else "SIG" + name)
try:
    pids = open(os.path.join(state, "tasks.pids")).read().split()
except FileNotFoundError:
    pids = []
for pid in pids:
    try:
        os.kill(int(pid), signum)
    except ProcessLookupError:
        pass
"""

FAKE_SCONTROL = """
import os, sys
state = os.environ["FAKE_SLURM_DIR"]
if sys.argv[1:3] == ["show", "hostnames"]:
    print(os.environ.get("FAKE_NODE", "localhost"))
elif sys.argv[1:2] == ["requeue"]:
    with open(os.path.join(state, "requeue.log"), "a") as f:
        f.write(" ".join(sys.argv[2:]) + "\\n")
else:
    sys.exit(f"fake scontrol: unexpected arguments {sys.argv[1:]}")
"""


@pytest.fixture
def fake_slurm(tmp_path) -> dict:
    """bin/ with the three stand-ins, a state folder, and the environment of a one-node batch shell."""
    bin_dir, state = tmp_path / "bin", tmp_path / "slurm_state"
    bin_dir.mkdir()
    state.mkdir()
    for name, body in (("srun", FAKE_SRUN), ("scancel", FAKE_SCANCEL), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{body}")
        (bin_dir / name).chmod(0o755)
    # A batch shell has no rank variables: earlier in-process tests export RANK, WORLD_SIZE, ... (init_distributed
    # does, for what runs downstream), and a task inheriting RANK=0 would take it over SLURM_PROCID.
    rank_vars = {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "ROLE_RANK",
        "NODE_RANK",
    }
    drop = ("SLURM_", "MASTER_", "OMP_", "SRUN_", "TORCHELASTIC_", "PMI_", "OMPI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in rank_vars}
    env.pop("TRITON_CACHE_DIR", None)
    return env | {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{env['PATH']}",
        "FAKE_SLURM_DIR": str(state),
        "FAKE_NODE": "localhost",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "localhost",
        "SLURM_JOB_NUM_NODES": "1",
        "SLURM_GPUS_ON_NODE": "2",
        "SLURM_CPUS_ON_NODE": "2",
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "DS_ACCELERATOR": "cpu",
    }


def state_of(env: dict) -> dict:
    """What the stand-ins recorded: srun calls, scancel argument lists, requeued jobs, signals srun itself got."""
    d = Path(env["FAKE_SLURM_DIR"])

    def lines(name: str) -> list[str]:
        p = d / name
        return p.read_text().splitlines() if p.exists() else []

    return {
        "srun": [json.loads(x) for x in lines("srun.jsonl")],
        "scancel": [json.loads(x) for x in lines("scancel.jsonl")],
        "requeue": lines("requeue.log"),
        "srun_signals": lines("srun.signals"),
    }


def start_batch(script: str, env: dict, log: Path) -> subprocess.Popen:
    """`bash -c SCRIPT` in the repository, as the batch shell of a job (its own process group, output to `log`)."""
    out = open(log, "w")  # noqa: SIM115 - closed by the caller through proc.stdout
    return subprocess.Popen(
        ["bash", "-c", script],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 300) -> None:
    """Poll `predicate` until true; fail (with the log) if the batch shell exits first or nothing happens."""
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(
                f"the batch shell exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() - t0 > timeout_s:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {what} within {timeout_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
