"""Shared by the collective-stage tests: the small config, a torchrun launch of launch/run.py, weight files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny_cpu.yaml"
SMALL = [
    "data.n_synthetic=400",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "model.max_length=64",
    "implant.max_steps=5",
    "methods=[rapidun,retrain]",
    "unlearn.max_steps=2",
    "unlearn.eval_every=0",
    "eval.max_new_tokens=4",
    "eval.batch_size=8",
    "eval.retrieval_rows=16",
]
LR, STEPS = 3e-3, 5  # implant.lr of tiny_cpu.yaml, implant.max_steps above


def cfg_for(run: Path, extra=()):
    from rapidun_dist.config import load_config

    return load_config(CONFIG, [f"run_dir={run}", *SMALL, *extra])


def torchrun(run: Path, stages: str, *extra: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env |= {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
        str(free_port()), str(ROOT / "launch" / "run.py"), "--config", str(CONFIG), f"run_dir={run}", *SMALL,
        "--stages", stages, *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "model" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)
