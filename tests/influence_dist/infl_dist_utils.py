"""Helpers for the multi-rank influence tests: the tiny config + overrides, run-dir copies, weight
comparison, and launch/influence.py under `python -m torch.distributed.run` in a subprocess."""

from __future__ import annotations

import importlib.util
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
# Small enough for seconds on 2 cores; forget_fraction 0.5 gives 17 forget + 51 retain rows, shard_size 2
# gives 34 shards (17 per rank) and tile_size 16 gives several tile rounds on 2 ranks.
OVERRIDES = [
    "data.n_synthetic=400",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "data.forget_fraction=0.5",
    "implant.max_steps=5",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "influence.shard_size=2",
    "influence.tile_size=16",
]
WEIGHT_FILES = (
    "forget_weights.jsonl",
    "retain_weights.jsonl",
    "self_only/forget_weights.jsonl",
    "self_only/retain_weights.jsonl",
)


def load_cfg(run_dir: Path):
    from rapidun_dist.config import load_config

    return load_config(CONFIG, [f"run_dir={run_dir}", *OVERRIDES])


def fresh_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_weights(run: Path) -> dict[str, list[dict]]:
    return {
        name: [json.loads(line) for line in (run / "weights" / name).read_text().splitlines()]
        for name in WEIGHT_FILES
    }


def assert_weights_close(got: dict, want: dict, atol: float) -> None:
    for name in WEIGHT_FILES:
        assert [r["id"] for r in got[name]] == [r["id"] for r in want[name]], name
        diff = max(abs(a["weight"] - b["weight"]) for a, b in zip(got[name], want[name], strict=True))
        assert diff <= atol, f"{name}: max |w_2rank - w_1rank| = {diff:.3g} > {atol}"


def torchrun_influence(
    run: Path, *, nproc: int = 2, env_extra: dict | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """launch/influence.py on `nproc` gloo ranks (python -m torch.distributed.run of this venv); through
    tests/kill_worker.py (the same launch with a crash hook) when env_extra sets RAPIDUN_TEST_KILL_AFTER_SHARDS."""
    kill = "RAPIDUN_TEST_KILL_AFTER_SHARDS" in (env_extra or {})
    script = (
        [str(REPO / "tests" / "kill_worker.py"), "influence"]
        if kill
        else [str(REPO / "launch" / "influence.py")]
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAPIDUN_LOG_ALL_RANKS": "1", **(env_extra or {})}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--master_port",
        str(free_port()),
        "--monitor_interval",
        "0.2",
        *script,
        "--config",
        str(CONFIG),
        f"run_dir={run}",
        *OVERRIDES,
    ]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def load_launch_module():
    """launch/influence.py as a module (launch/ is not a package)."""
    spec = importlib.util.spec_from_file_location("launch_influence", REPO / "launch" / "influence.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
