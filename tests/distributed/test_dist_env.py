"""Launcher discovery from fake environments (torchrun, SLURM, MPI), the layout exported for what runs downstream,
devices, the two timeouts (real processes), and the world-size-1 wrappers."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.distributed import env as denv

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.dist


def test_torchrun_env_wins_over_slurm():
    le = denv.discover_launch_env(
        {
            "RANK": "3",
            "WORLD_SIZE": "8",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "10.0.0.2",
            "MASTER_PORT": "29511",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "2",
        }
    )
    assert (le.rank, le.world_size, le.local_rank, le.master_addr, le.master_port, le.source) == (
        3,
        8,
        1,
        "10.0.0.2",
        29511,
        "torchrun",
    )


def test_slurm_env_parses_nodelist_and_port(monkeypatch):
    monkeypatch.setattr(denv.shutil, "which", lambda name: None)  # no scontrol here: the local parser
    le = denv.discover_launch_env(
        {
            "SLURM_PROCID": "5",
            "SLURM_NTASKS": "8",
            "SLURM_STEP_NUM_TASKS": "6",
            "SLURM_LOCALID": "1",
            "SLURM_NODELIST": "gpu[07-09,12],cpu01",
            "SLURM_JOB_ID": "123456",
        }
    )
    assert (le.rank, le.world_size, le.local_rank, le.master_addr, le.source) == (5, 6, 1, "gpu07", "slurm")
    assert le.master_port == 15000 + 123456 % 15000


def test_slurm_uses_scontrol_when_available(monkeypatch):
    monkeypatch.setattr(denv.shutil, "which", lambda name: "/usr/bin/scontrol")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return type("R", (), {"returncode": 0, "stdout": "nodeA\nnodeB\n"})()

    monkeypatch.setattr(denv.subprocess, "run", fake_run)
    le = denv.discover_launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "weird-list"})
    assert le.master_addr == "nodeA" and calls == [["scontrol", "show", "hostnames", "weird-list"]]


class FakeComm:
    """Stands in for mpi4py's COMM_WORLD on one rank of a pretend job."""

    def __init__(self, rank, size, hosts, root_value=None):
        self.rank, self.size, self.hosts, self.root_value = rank, size, hosts, root_value

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def allgather(self, obj):
        return self.hosts

    def bcast(self, obj, root=0):
        return obj if self.rank == root else self.root_value


def test_mpi_rank0_picks_loopback_and_free_port(monkeypatch):
    monkeypatch.setattr(denv.socket, "gethostname", lambda: "h0")
    le = denv.discover_launch_env({"PMI_SIZE": "2"}, mpi_comm=FakeComm(0, 2, ["h0", "h0"]))
    assert (le.rank, le.world_size, le.local_rank, le.master_addr, le.source) == (0, 2, 0, "127.0.0.1", "mpi")
    assert 0 < le.master_port < 65536


def test_mpi_multi_host_uses_rank0_host_and_broadcast(monkeypatch):
    hosts = ["h0", "h0", "h1", "h1"]
    root = denv._from_mpi({"OMPI_COMM_WORLD_SIZE": "4"}, FakeComm(0, 4, hosts))
    assert root.master_addr == "h0"
    other = denv.discover_launch_env(
        {"OMPI_COMM_WORLD_SIZE": "4"},
        mpi_comm=FakeComm(3, 4, hosts, root_value=(root.master_addr, root.master_port)),
    )
    assert (other.rank, other.local_rank, other.master_addr, other.master_port) == (
        3,
        1,
        "h0",
        root.master_port,
    )


def test_single_process_and_bad_values():
    assert denv.discover_launch_env({}).source == "single"
    with pytest.raises(ConfigError, match="RANK"):
        denv.discover_launch_env({"RANK": "x", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="inconsistent"):
        denv._check_layout(
            denv.LaunchEnv(
                rank=2, world_size=2, local_rank=0, master_addr="a", master_port=1, source="torchrun"
            )
        )


def test_wrappers_without_process_group():
    assert denv.world_size() == 1 and denv.is_main()
    assert denv.all_gather_object({"a": 1}) == [{"a": 1}]
    assert denv.broadcast_object(7) == 7
    t = torch.arange(3)
    assert denv.all_gather_tensor(t, expected_shape=(3,))[0] is t
    with pytest.raises(RuntimeError, match="expected local shape"):
        denv.all_gather_tensor(t, expected_shape=(4,))
    with pytest.raises(ValueError, match="src"):
        denv.broadcast_object(1, src=1)


# layout export, tasks per node, ports, devices ------------------------------------------------------------------


def test_slurm_tasks_per_node_and_local_world_size():
    assert denv.slurm_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert denv.slurm_tasks_per_node("8") == [8]
    with pytest.raises(ConfigError, match="tasks per node"):
        denv.slurm_tasks_per_node("2(x)")
    base = {"SLURM_PROCID": "6", "SLURM_NTASKS": "7", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "7"}
    le = denv.discover_launch_env(base | {"SLURM_STEP_TASKS_PER_NODE": "2(x3),1", "SLURM_NODEID": "3"})
    assert (le.local_world_size, le.master_port) == (1, denv.slurm_port(7))
    le = denv.discover_launch_env(base | {"SLURM_TASKS_PER_NODE": "3,4", "SLURM_NODEID": "1"})
    assert le.local_world_size == 4
    le = denv.discover_launch_env({**base, "SLURM_NTASKS": "8", "SLURM_NNODES": "2"})  # no per-node list
    assert le.local_world_size == 4


def test_slurm_port_stays_below_the_ephemeral_range():
    ports = {denv.slurm_port(j) for j in range(0, 10**6, 997)}
    assert min(ports) >= 15000 and max(ports) < 30000 < 32768  # Linux ip_local_port_range starts at 32768


def test_torchrun_and_deepspeed_local_world_size():
    env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_PORT": "1234"}
    assert denv.discover_launch_env(env | {"LOCAL_WORLD_SIZE": "2"}).local_world_size == 2
    assert denv.discover_launch_env(env | {"LOCAL_SIZE": "2"}).local_world_size == 2  # deepspeed's launcher
    assert denv.discover_launch_env(env).local_world_size == 4  # unknown: one host assumed


def test_export_launch_env_overwrites_with_the_discovered_layout(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        # set first, so monkeypatch records the key and teardown removes what export_launch_env writes
        monkeypatch.setenv(key, "stale")
        monkeypatch.delenv(key)
    monkeypatch.setenv("LOCAL_RANK", "5")  # stale: the discovered layout wins
    le = denv.LaunchEnv(
        rank=3,
        world_size=4,
        local_rank=1,
        master_addr="n0",
        master_port=15007,
        source="slurm",
        local_world_size=2,
    )
    denv.export_launch_env(le, torch.device("cpu"))
    got = {k: denv.os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")}
    assert got == {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert (denv.os.environ["MASTER_ADDR"], denv.os.environ["MASTER_PORT"]) == ("n0", "15007")


def test_resolve_device_and_config_checks():
    from rapidun_dist.config import DistributedConfig, load_config

    assert denv.resolve_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert denv.resolve_device("auto", 3) == torch.device("cpu")
        with pytest.raises(ConfigError, match="distributed.device=cuda:1: CUDA is not available"):
            denv.resolve_device("cuda:1", 0)
    with pytest.raises(ConfigError, match="distributed.device"):
        DistributedConfig(device="gpu")
    with pytest.raises(ConfigError, match="distributed.collective_timeout_s"):
        load_config(None, ["distributed.collective_timeout_s=0"])
    with pytest.raises(ConfigError, match="distributed.backend"):
        load_config(None, ["distributed.backend=mpi"])
    assert load_config(None, ["distributed.device=cuda:3"]).distributed.device == "cuda:3"


# real processes --------------------------------------------------------------------------------------------------

PROBE = """
import json, os, sys, time
from rapidun_dist.config import DistributedConfig
from rapidun_dist.distributed import env as denv
cfg = DistributedConfig(device="cpu", init_timeout_s=float(sys.argv[1]), collective_timeout_s=float(sys.argv[2]))
late_init, late_barrier = float(sys.argv[3]), float(sys.argv[4])
rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")))
if rank == 1:
    time.sleep(late_init)
t0, t0_wall = time.monotonic(), time.time()
info = denv.init_distributed(config=cfg)
out = {"init_s": time.monotonic() - t0, "init_start": t0_wall, "init_end": time.time(), "world": denv.world_size(),
       "env": {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT")}}
if late_barrier:
    if rank == 1:
        time.sleep(late_barrier)
    t0 = time.monotonic()
    try:
        denv.barrier()
        out["barrier"] = "ok"
    except Exception as e:
        out["barrier"] = f"{type(e).__name__}: {str(e)[:200]}"
    out["barrier_s"] = time.monotonic() - t0
print("PROBE " + json.dumps(out), flush=True)
os._exit(0)
"""


def _probe(envs: list[dict], *args: float) -> list[dict]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE, *map(str, args)],
            env=e,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for e in envs
    ]
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        line = [x for x in stdout.splitlines() if x.startswith("PROBE ")]
        assert line, stderr[-3000:]
        outs.append(json.loads(line[0][len("PROBE ") :]))
    return outs


def _clean_env() -> dict:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SLURM_")}
    return env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _slurm_port_free() -> int:
    """A SLURM job id whose derived port is free here."""
    for _ in range(50):
        job = random.randint(1, 10**6)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", denv.slurm_port(job)))
                return job
            except OSError:
                continue
    raise RuntimeError("no free port in the SLURM range")


def test_srun_variables_only_give_an_exported_layout():
    """Two tasks of a fake `srun -N2 --ntasks-per-node=1` (SLURM variables only): rank, world, LOCAL_RANK and
    LOCAL_WORLD_SIZE exported, the rendezvous on the job's port."""
    job = _slurm_port_free()
    base = _clean_env() | {
        "SLURM_NTASKS": "2", "SLURM_NNODES": "2", "SLURM_JOB_ID": str(job), "SLURM_STEP_NODELIST": "127.0.0.1",
    }  # fmt: skip
    envs = [base | {"SLURM_PROCID": str(r), "SLURM_LOCALID": "0", "SLURM_NODEID": str(r)} for r in (0, 1)]
    outs = _probe(envs, 60, 60, 0, 0)
    for r, out in enumerate(outs):
        assert out["world"] == 2
        assert out["env"] == {
            "RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
            "MASTER_PORT": str(denv.slurm_port(job)),
        }  # fmt: skip


def test_init_waits_long_then_collectives_time_out_short():
    """init timeout 60 s: a rank 4 s late still joins. collective timeout 3 s: a rank 12 s late in a barrier makes
    the other fail after about 3 s instead of waiting."""
    port = str(free_port())
    envs = [
        _clean_env() | {"RANK": str(r), "WORLD_SIZE": "2", "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": port}
        for r in (0, 1)
    ]  # fmt: skip
    rank0, rank1 = _probe(envs, 60, 3, 6, 12)
    # Rank 1 called init 6 s after its imports; rank 0's own imports may run late on a loaded machine, so the check
    # is on the wall clock: rank 0 was in init well before rank 1 came, and left it only after rank 1 arrived.
    assert rank1["init_start"] - rank0["init_start"] >= 2.0, (rank0, rank1)
    assert rank0["init_end"] >= rank1["init_start"] - 0.05  # waited for the late rank under the long timeout
    assert rank0["barrier"] != "ok" and rank0["barrier_s"] < 10, rank0
