"""Helpers for the find_poison tests: a small tiny-model run, run-dir copies, the launcher on P gloo ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for dist_utils (tests/ has no __init__)
from dist_utils import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tiny_cpu.yaml"
# 400 generated rows: about 280 training rows (a tenth poisoned; the held-out splits, val_seen included, take the
# rest), 20% of the poisoned ones known; units of 8 rows give about 35 training units to claim (`train_units`). A 40-step implant is enough for the features to tell the poison apart.
UNIT_SIZE = 8
OVERRIDES = [
    "data.n_synthetic=400",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "data.forget_fraction=0.2",
    "model.max_length=64",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "implant.max_steps=40",
    "implant.batch_size=16",
    "influence.k_in=4",
    "influence.k_out=4",
    f"find_poison.unit_size={UNIT_SIZE}",
]


def train_units(run_dir: Path) -> int:
    """Work units find_poison claims for the training set of `run_dir` (ceil(rows / find_poison.unit_size))."""
    n = len((run_dir / "data" / "train.jsonl").read_text().splitlines())
    return -(-n // UNIT_SIZE)


def load_cfg(run_dir: Path, *extra: str):
    from rapidun_dist.config import load_config

    return load_config(CONFIG, [f"run_dir={run_dir}", *OVERRIDES, *extra])


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def torchrun_find_poison(
    run: Path, *, nproc: int, extra: tuple[str, ...] = (), env_extra: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """launch/find_poison.py on `nproc` gloo ranks; through tests/kill_worker.py when env_extra sets
    RAPIDUN_TEST_KILL_AFTER_SHARDS ("RANK:N": that rank SIGKILLs itself after its N-th unit)."""
    kill = "RAPIDUN_TEST_KILL_AFTER_SHARDS" in (env_extra or {})
    script = (
        [str(REPO / "tests" / "kill_worker.py"), "find_poison"]
        if kill
        else [str(REPO / "launch" / "find_poison.py")]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPIDUN_LOG_ALL_RANKS": "1", **(env_extra or {})}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
        str(free_port()), "--monitor_interval", "0.2", *script, "--config", str(CONFIG), f"run_dir={run}",
        *OVERRIDES, *extra,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
