"""slurm/: the hostfile and both sbatch scripts rendered from a fake SLURM environment (fake `scontrol`,
`srun` and `deepspeed` on PATH that print their argv), plus `bash -n` syntax checks."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SLURM = REPO / "slurm"
FAKE_SCONTROL = """#!/usr/bin/env bash
# scontrol show hostnames PREFIX[A-B]: one host per line (the only form these tests use)
[[ $1 == show && $2 == hostnames ]] || exit 1
if [[ $3 =~ ^([a-z]+)\\[([0-9]+)-([0-9]+)\\]$ ]]; then
  w=${#BASH_REMATCH[2]}
  for ((i=10#${BASH_REMATCH[2]}; i<=10#${BASH_REMATCH[3]}; i++)); do printf "%s%0${w}d\\n" "${BASH_REMATCH[1]}" "$i"; done
else
  echo "$3"
fi
"""
FAKE_ECHO = """#!/usr/bin/env bash
echo "CALL $(basename "$0") $* | NCCL_DEBUG=$NCCL_DEBUG NCCL_SOCKET_IFNAME=$NCCL_SOCKET_IFNAME MASTER=$MASTER_ADDR:$MASTER_PORT"
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


@pytest.fixture
def fake_slurm(tmp_path) -> dict[str, str]:
    """A fake allocation of 2..5 nodes named node03.. on PATH; returns the environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_ECHO), ("deepspeed", FAKE_ECHO)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    n_nodes, first, job = random.randint(2, 5), random.randint(1, 90), random.randint(1, 10**6)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NCCL_", "MASTER_"))}
    return env | {
        "PATH": f"{bin_dir}:{env['PATH']}",
        "SLURM_JOB_ID": str(job),
        "SLURM_SUBMIT_DIR": str(REPO),
        "SLURM_JOB_NODELIST": f"node[{first:02d}-{first + n_nodes - 1:02d}]",
        "SLURM_GPUS_ON_NODE": "8",
        "N_NODES": str(n_nodes),
        "FIRST": str(first),
        "CWD": str(tmp_path),
    }


def sh(args: list[str], env: dict, cwd: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("script", ["make_hostfile.sh", "nccl_env.sh", "influence.sbatch", "unlearn.sbatch"])
def test_scripts_parse(script):
    assert sh(["-n", str(SLURM / script)], dict(os.environ), REPO).returncode == 0


def test_make_hostfile(fake_slurm, tmp_path):
    hosts = [f"node{int(fake_slurm['FIRST']) + i:02d}" for i in range(int(fake_slurm["N_NODES"]))]
    out = tmp_path / "hf"
    proc = sh([str(SLURM / "make_hostfile.sh"), str(out)], fake_slurm, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines() == [f"{h} slots=8" for h in hosts]
    proc = sh([str(SLURM / "make_hostfile.sh"), str(out)], fake_slurm | {"SLOTS_PER_NODE": "4"}, tmp_path)
    assert out.read_text().splitlines() == [f"{h} slots=4" for h in hosts]
    bad = sh([str(SLURM / "make_hostfile.sh"), str(out)], fake_slurm | {"SLOTS_PER_NODE": "x"}, tmp_path)
    assert bad.returncode != 0 and "positive integer" in bad.stderr
    outside = {k: v for k, v in fake_slurm.items() if k != "SLURM_JOB_NODELIST"}
    assert "SLURM_JOB_NODELIST is not set" in sh([str(SLURM / "make_hostfile.sh")], outside, tmp_path).stderr


def test_influence_sbatch_runs_launcher_under_srun(fake_slurm):
    first_host = f"node{int(fake_slurm['FIRST']):02d}"
    port = 15000 + int(fake_slurm["SLURM_JOB_ID"]) % 20000
    proc = sh(
        [str(SLURM / "influence.sbatch"), "configs/tiny_cpu.yaml", "run_dir=/shared/r1"], fake_slurm, REPO
    )
    assert proc.returncode == 0, proc.stderr
    calls = [line for line in proc.stdout.splitlines() if line.startswith("CALL")]
    assert calls == [
        f"CALL srun --kill-on-bad-exit=1 python launch/influence.py --config configs/tiny_cpu.yaml "
        f"run_dir=/shared/r1 | NCCL_DEBUG=WARN NCCL_SOCKET_IFNAME=^lo,docker MASTER={first_host}:{port}"
    ]
    proc = sh(
        [str(SLURM / "influence.sbatch"), "c.yaml"], fake_slurm | {"PREPARE": "1", "NCCL_DEBUG": "INFO"}, REPO
    )
    calls = [line for line in proc.stdout.splitlines() if line.startswith("CALL")]
    assert len(calls) == 2 and "rapidun_dist.cli run c.yaml --stages prepare,implant" in calls[0]
    assert "NCCL_DEBUG=INFO" in calls[1]
    assert sh([str(SLURM / "influence.sbatch")], fake_slurm, REPO).returncode == 2  # usage


def test_unlearn_sbatch_both_launchers(fake_slurm, tmp_path):
    args = [str(SLURM / "unlearn.sbatch"), "configs/tiny_cpu.yaml", "unlearn.zero_stage=3"]
    proc = sh(args, fake_slurm | {"EVALUATE": "1"}, REPO)
    assert proc.returncode == 0, proc.stderr
    assert (
        "CALL srun --kill-on-bad-exit=1 python launch/unlearn.py --config configs/tiny_cpu.yaml "
        "unlearn.zero_stage=3 --evaluate |" in proc.stdout
    )
    repo_copy = tmp_path / "repo"  # the deepspeed branch writes hostfile-JOB into the working dir
    shutil.copytree(SLURM, repo_copy / "slurm")
    proc = sh(args, fake_slurm | {"LAUNCHER": "deepspeed", "RAPIDUN_REPO": str(repo_copy)}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    hostfile = f"hostfile-{fake_slurm['SLURM_JOB_ID']}"
    assert f"CALL deepspeed --hostfile {hostfile} --launcher pdsh --master_addr node" in proc.stdout
    assert "launch/unlearn.py --config configs/tiny_cpu.yaml unlearn.zero_stage=3 |" in proc.stdout
    assert len((repo_copy / hostfile).read_text().splitlines()) == int(fake_slurm["N_NODES"])
    assert sh(args, fake_slurm | {"LAUNCHER": "mpirun"}, REPO).returncode == 2
