"""Dynamic work claiming across ranks: a rank that finishes a unit early takes the next one.

A `WorkQueue` hands out the entries of a list of work units through one shared atomic counter in the process
group's key-value store (`Store.add` is atomic on the TCP, file and hash stores torch.distributed uses). Each claim
is one `add(key, 1)`: the returned value v says "unit v - 1 is yours", and values past the end mean "done". No rank
waits for another while units are left, so ranks of unequal speed (longer rows, a busier node) stay busy, and the
static owner-per-shard plan of `influence.store.assign_shards` is not needed.

One rank decides what is left to do (`src`, rank 0 by default: the resume decision, e.g. which feature shards are
missing): its list is the one handed out, and a callable `units` is called on that rank alone. The list travels
through the same store, not a collective: the deciding rank sets it and starts claiming at once, and a rank that
arrives later (still loading its model, or busy with rank-0-only work) reads it when it gets there. So with
`src` set to a rank that is ready early, the others' late start costs nothing but their own share.

Which rank computes a unit changes from run to run; what it computes must not. The callers keep every unit
self-contained (its own rows, its own fixed batching), so the results do not depend on the claiming order.

Queues are numbered per name in the order a process creates them (every rank creates the same queues in the same
order, as with any collective), so a second queue in the same process group - a rerun, the next stage - gets fresh
keys and starts from zero. With world size 1 there is no store: the units come out in order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from rapidun_dist.distributed.env import default_store, hand_off, world_size

KEY_PREFIX = "rapidun/workqueue"
_CREATED: dict[str, int] = {}  # queues this process has created, per name (their counters' sequence numbers)


class WorkQueue:
    """The units of `units` (rank `src`'s list, or what its callable returns there; other ranks' are ignored)
    claimed one at a time by whichever rank asks first. Every rank constructs it (in the same order as its other
    queues) and iterates until exhausted; only the ranks other than `src` wait, for `src`'s list.

        queue = WorkQueue("features", lambda: missing(), src=world_size() - 1)
        for unit in queue:          # this rank's share, in claiming order
            compute(unit)
        queue.claimed               # the units this rank took
    """

    def __init__(
        self, name: str, units: Sequence[int] | Callable[[], Sequence[int]], *, store=None, src: int = 0
    ):
        if not name or "/" in name:
            raise ValueError(f"WorkQueue: name must be a non-empty string without '/'; found {name!r}")
        self.world = world_size()
        if not 0 <= src < self.world:
            raise ValueError(f"WorkQueue: src must be a rank in [0, {self.world}); found {src}")
        self._store = store if store is not None else (default_store() if self.world > 1 else None)
        self.units = [int(u) for u in hand_off(f"workqueue-{name}", units, src=src, store=self._store)]
        _CREATED[name] = _CREATED.get(name, 0) + 1
        self.key = f"{KEY_PREFIX}/{name}/{_CREATED[name]}/next"
        self._next_local = 0
        self.claimed: list[int] = []

    def __len__(self) -> int:
        return len(self.units)

    def claim(self) -> int | None:
        """The next unclaimed unit, or None when every unit has been handed out."""
        if self._store is None:
            pos, self._next_local = self._next_local, self._next_local + 1
        else:
            pos = int(self._store.add(self.key, 1)) - 1
        if pos >= len(self.units):
            return None
        unit = self.units[pos]
        self.claimed.append(unit)
        return unit

    def __iter__(self) -> Iterator[int]:
        while (unit := self.claim()) is not None:
            yield unit
