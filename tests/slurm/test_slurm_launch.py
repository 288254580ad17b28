"""slurm/launch.sh settings, sourced in a fake batch shell: CPU counts for both launchers and both ways of cutting a
node into tasks, the node-local Triton cache, the rendezvous address and which node hosts the c10d store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from slurm_fakes import REPO

SHOW = (
    'echo "$CPUS_PER_NODE $CPUS_PER_RANK $OMP_NUM_THREADS|$TRITON_CACHE_DIR|$MASTER_ADDR|$RAPIDUN_RDZV_NODE"'
)


def _source(env: dict, after: str = SHOW) -> str:
    proc = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; source slurm/launch.sh; {after}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("header", "expected"),
    [  # SLURM's variables in the batch shell of a node with 64 CPUs and 8 GPUs -> per node, per rank, OMP threads
        ({"SLURM_CPUS_ON_NODE": "64", "SLURM_CPUS_PER_TASK": "64"}, "64 8 8"),  # --ntasks-per-node=1 -c 64
        (
            {"SLURM_CPUS_ON_NODE": "64", "SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS_PER_NODE": "8"},
            "64 8 8",
        ),  # -c 8
        ({"SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS_PER_NODE": "8"}, "64 8 8"),  # no SLURM_CPUS_ON_NODE
        ({"SLURM_CPUS_PER_TASK": "64"}, "64 8 8"),
        ({"SLURM_CPUS_ON_NODE": "4"}, "4 1 1"),  # fewer CPUs than GPUs: one thread each
    ],
)
def test_cpus_per_rank_whether_the_header_asks_per_node_or_per_gpu(fake_slurm, header, expected):
    env = fake_slurm | {"SLURM_GPUS_ON_NODE": "8"}
    env = {k: v for k, v in env.items() if k != "SLURM_CPUS_ON_NODE"} | header
    assert _source(env).split("|")[0] == expected


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_srun_gets_the_cpus_of_its_task(fake_slurm, launcher):
    """torchrun: one task per node with the node's CPUs; srun: one task per GPU with CPUS_PER_RANK."""
    env = fake_slurm | {"LAUNCHER": launcher, "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_ON_NODE": "64"}
    env |= {"SLURM_CPUS_PER_TASK": "8", "SLURM_NTASKS_PER_NODE": "8", "MASTER_PORT": "1"}
    shown = _source(env, 'srun() { echo "$SRUN_CPUS_PER_TASK $OMP_NUM_THREADS"; }; rapidun_launch x.py')
    assert shown == ("64 8" if launcher == "torchrun" else "8 8")


def test_triton_cache_is_node_local_unless_set(fake_slurm, tmp_path):
    assert _source(fake_slurm).split("|")[1] == "/tmp/triton-4242"
    assert _source(fake_slurm | {"SLURM_TMPDIR": "/local/job"}).split("|")[1] == "/local/job/triton-4242"
    assert _source(fake_slurm | {"TRITON_CACHE_DIR": "/mine"}).split("|")[1] == "/mine"


def test_rendezvous_address_is_the_first_nodes_ip(fake_slurm):
    """MASTER_ADDR: the first node's address (getent), not a name each node must match against its own."""
    master, node = _source(fake_slurm).split("|")[2:]
    assert (master, node) == ("127.0.0.1", "localhost")
    unresolvable = fake_slurm | {"FAKE_NODE": "no-such-node.invalid"}
    assert _source(unresolvable).split("|")[2:] == ["no-such-node.invalid"] * 2
    assert _source(fake_slurm | {"MASTER_ADDR": "10.1.2.3"}).split("|")[2] == "10.1.2.3"


def _torchrun_args(tmp_path: Path, env: dict) -> list[str]:
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    fake_python.chmod(0o755)
    proc = subprocess.run(
        ["bash", "slurm/torchrun_node.sh", str(fake_python), "--nnodes", "2", "train.py"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_torchrun_node_hosts_the_store_on_the_rendezvous_node_only(fake_slurm, tmp_path):
    host = _torchrun_args(
        tmp_path, fake_slurm | {"SLURMD_NODENAME": "localhost", "RAPIDUN_RDZV_NODE": "localhost"}
    )
    assert host == [
        "-m", "torch.distributed.run", "--rdzv_conf", "is_host=1", "--local_addr", "127.0.0.1", "--nnodes", "2",
        "train.py",
    ]  # fmt: skip
    other = _torchrun_args(
        tmp_path, fake_slurm | {"SLURMD_NODENAME": "localhost", "RAPIDUN_RDZV_NODE": "node01"}
    )
    assert other[2:4] == ["--rdzv_conf", "is_host=0"]
    missing = subprocess.run(
        ["bash", "slurm/torchrun_node.sh", "python", "x.py"],
        cwd=REPO,
        env=fake_slurm,
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "RAPIDUN_RDZV_NODE is not set" in missing.stderr


def test_deepspeed_env_holds_no_secret_and_only_its_owner_reads_it(fake_slurm, tmp_path):
    env_file = tmp_path / "ds_env"
    env_file.write_text("HF_TOKEN=left from an older job\n")
    env_file.chmod(0o644)
    secrets = {"HF_TOKEN": "hf_x", "HUGGING_FACE_HUB_TOKEN": "hf_y", "HF_API_KEY": "k", "NCCL_SECRET": "s"}
    kept = {"HF_TOKEN_PATH": "/home/u/.hf/token", "HF_HOME": "/shared/hf", "NCCL_DEBUG": "INFO"}
    _source(fake_slurm | secrets | kept, f"write_deepspeed_env {env_file}; echo done")
    lines = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    assert not set(secrets) & set(lines)
    assert {k: lines[k] for k in kept} == kept
    assert env_file.stat().st_mode & 0o777 == 0o600
