"""The work queue: on 1, 2 and 4 gloo ranks (the stage tests add 2) every unit is claimed exactly once, the deciding
rank's list is the one handed out (its callable called there alone), a slow rank takes fewer units, a late rank
does not hold up the deciding one, and a second queue starts from zero; the store hand-off under it returns at once
on the rank that sets it."""

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


def _late_rank0(rank: int, world_size: int, units: list[int]) -> dict:
    calls = []

    def decide():
        calls.append(rank)
        return units

    if rank == 0:
        time.sleep(3.0)  # rank 0 still loading its model: the last rank decides and starts without it
    t0 = time.perf_counter()
    q = WorkQueue("late", decide, src=world_size - 1)
    waited = time.perf_counter() - t0
    claimed = []
    for unit in q:
        claimed.append((unit, time.time()))  # noqa: PERF401 - the work is the sleep below
        time.sleep(0.01)
    return {"claimed": claimed, "calls": calls, "waited": waited}


@pytest.mark.dist
def test_a_late_rank_does_not_hold_up_the_deciding_rank():
    units = list(range(20))
    r0, r1 = run_distributed(_late_rank0, 2, units)
    assert r0["calls"] == [] and r1["calls"] == [1]  # the list is decided on the last rank alone
    assert r1["waited"] < 1.0  # it did not wait for rank 0 to arrive
    assert sorted(u for r in (r0, r1) for u, _ in r["claimed"]) == units  # each unit once
    # 20 units x 10 ms: all gone before rank 0 woke up
    assert r0["claimed"] == [] and [u for u, _ in r1["claimed"]] == units


def _hand_offs(rank: int, world_size: int) -> dict:
    from rapidun_dist.distributed import env as dist_env

    calls = []
    if rank == 1:
        time.sleep(2.0)  # rank 1 still loading its model
    t0 = time.perf_counter()
    first = dist_env.hand_off("positions", lambda: calls.append(rank) or [3, 1, 2])
    returned = time.perf_counter() - t0
    second = dist_env.hand_off("positions", {"rank": rank})  # same name: fresh keys, the new value
    dist_env.barrier()  # rank 0 hosts the store: it stays up until rank 1 has read
    return {"first": first, "second": second, "returned": returned, "calls": calls}


@pytest.mark.dist
def test_a_hand_off_does_not_wait_for_the_readers():
    r0, r1 = run_distributed(_hand_offs, 2)
    assert r0["first"] == r1["first"] == [3, 1, 2] and r0["calls"] == [0] and r1["calls"] == []
    assert r0["second"] == r1["second"] == {"rank": 0}
    assert r0["returned"] < 1.0  # rank 0 went on while rank 1 slept (a broadcast would have held it 2 s)


def test_single_process_hands_out_units_in_order():
    q = WorkQueue("local", [5, 3, 9])
    assert list(q) == [5, 3, 9] and q.claimed == [5, 3, 9] and q.claim() is None
    assert list(WorkQueue("local", lambda: [2, 1])) == [2, 1]  # a callable is the decider's list
    with pytest.raises(ValueError, match="name"):
        WorkQueue("a/b", [1])
    with pytest.raises(ValueError, match="src"):
        WorkQueue("local", [1], src=1)
