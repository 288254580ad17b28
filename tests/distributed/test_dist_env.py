"""Launcher discovery from fake environments (torchrun, SLURM, MPI) and the world-size-1 wrappers."""

from __future__ import annotations

import pytest
import torch

from rapidun_dist.distributed import env as denv
from rapidun_dist.errors import ConfigError

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
    assert le.master_port == 15000 + 123456 % 20000


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
