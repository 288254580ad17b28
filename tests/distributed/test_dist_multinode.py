"""The cluster launches of benchmarks/multinode_cpu.sh (two torchrun "nodes" with c10d rendezvous, an srun
emulation with SLURM variables only, deepspeed --hostfile --no_ssh), run as a check: about 2 minutes on 2 cores
once DeepSpeed's shm_comm op is built, so slow (run with -m slow)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.dist
def test_multinode_launches_match_one_process():
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "multinode_cpu.sh"), "--check"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "FAIL" not in proc.stdout and proc.stdout.count("| pass |") >= 12
