"""The work queue: on 1 and 4 gloo ranks (the stage tests add 2) every unit is claimed exactly once, rank 0's list is the one handed
out, a slow rank takes fewer units, and a second queue starts from zero."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import run_distributed  # noqa: E402

from rapidun_dist.distributed.workqueue import WorkQueue  # noqa: E402


def _claim_all(rank: int, world_size: int, units: list[int], slow_rank: int) -> dict:
    mine = units if rank == 0 else [-1]  # other ranks' lists are ignored
    first = WorkQueue("test", mine)
    for _ in first:
        time.sleep(0.05 if rank == slow_rank else 0.002)
    second = WorkQueue("test", mine)  # same name: a fresh counter, every unit again
    return {"first": first.claimed, "second": list(second), "n": len(first)}


@pytest.mark.dist
@pytest.mark.parametrize("world_size", [4])
def test_every_unit_claimed_once_across_ranks(world_size):
    units = list(range(100, 160))
    out = run_distributed(_claim_all, world_size, units, 1)
    for key in ("first", "second"):
        claimed = [u for r in out for u in r[key]]
        assert sorted(claimed) == units, key  # each unit exactly once, none invented
    assert all(r["n"] == len(units) for r in out)
    fast = [len(r["first"]) for i, r in enumerate(out) if i != 1]
    assert len(out[1]["first"]) < min(fast)  # the slow rank took fewer units: the others kept busy


def test_single_process_hands_out_units_in_order():
    q = WorkQueue("local", [5, 3, 9])
    assert list(q) == [5, 3, 9] and q.claimed == [5, 3, 9] and q.claim() is None
    with pytest.raises(ValueError, match="name"):
        WorkQueue("a/b", [1])
