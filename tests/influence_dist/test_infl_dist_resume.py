"""Kill one rank of a 2-rank feature extraction hard (SIGKILL), rerun: only the missing shards are recomputed
and the final weights equal an uninterrupted single-process run.

The crash is injected by tests/kill_worker.py (RAPIDUN_TEST_KILL_AFTER_SHARDS="RANK:N"): rank
RANK SIGKILLs itself right after writing its N-th feature shard;
torchrun then tears down the other rank.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infl_dist_utils import assert_weights_close, fresh_copy, read_weights, torchrun_influence  # noqa: E402

from rapidun_dist.core.io import file_sha256  # noqa: E402

pytestmark = pytest.mark.dist
N_SHARDS = 34
PLAN = re.compile(r"rank(\d)\] features: (\d+) shards, (\d+) to compute on this rank \((\d+) valid already\)")


def valid_shards(features: Path) -> dict[int, int]:
    """{shard index: mtime_ns} of shards whose sidecar exists and whose checksum matches it."""
    out = {}
    for side in features.glob("shard-*.json"):
        shard = side.with_suffix(".safetensors")
        if shard.exists() and json.loads(side.read_text())["sha256"] == file_sha256(shard):
            out[int(side.stem.split("-")[1])] = shard.stat().st_mtime_ns
    return out


def plans(stderr: str) -> dict[int, tuple[int, int]]:
    """{rank: (shards to compute, shards valid already)} from the extraction log lines."""
    return {int(m[1]): (int(m[3]), int(m[4])) for m in PLAN.finditer(stderr) if int(m[2]) == N_SHARDS}


def test_sigkilled_rank_resumes_only_missing_shards(implanted_dir, reference_weights, tmp_path):
    run = fresh_copy(implanted_dir, tmp_path / "run")
    crashed = torchrun_influence(run, env_extra={"RAPIDUN_TEST_KILL_AFTER_SHARDS": "1:3"})
    assert crashed.returncode != 0 and "killing rank 1" in crashed.stderr, crashed.stderr[-3000:]
    todo_1, valid_1 = plans(crashed.stderr)[1]  # rank 0 may not have got to its plan before being stopped
    assert valid_1 == 0 and 0 < todo_1 < N_SHARDS
    survived = valid_shards(run / "features")
    # rank 1 wrote exactly 3 shards; rank 0 anywhere between none and all of its own before torchrun stopped it
    assert 3 <= len(survived) <= N_SHARDS - todo_1 + 3 < N_SHARDS
    assert not (run / "weights" / "forget_weights.jsonl").exists()

    resumed = torchrun_influence(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    second = plans(resumed.stderr)
    assert set(second) == {0, 1}, resumed.stderr[-3000:]
    assert sum(c for c, _ in second.values()) == N_SHARDS - len(
        survived
    )  # only the missing ones were computed
    assert sum(v for _, v in second.values()) == len(survived)
    after = valid_shards(run / "features")
    assert len(after) == N_SHARDS
    assert {i: after[i] for i in survived} == survived  # kept shards were not rewritten
    assert_weights_close(read_weights(run), reference_weights, atol=1e-6)
