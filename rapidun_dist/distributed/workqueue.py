"""Dynamic work claiming across ranks: a rank that finishes a unit early takes the next one.

A `WorkQueue` hands out the entries of a list of work units (rank 0's list, broadcast, so every rank agrees on
what is left to do - the resume decision is rank 0's) through one shared atomic counter in the process group's
key-value store (`Store.add` is atomic on the TCP, file and hash stores torch.distributed uses). Each claim is
one `add(key, 1)`: the returned value v says "unit v - 1 is yours", and values past the end mean "done". No
rank waits for another while units are left, so ranks of unequal speed (longer rows, a busier node) stay busy,
and the static owner-per-shard plan of `influence.store.assign_shards` is not needed.

Which rank computes a unit changes from run to run; what it computes must not. The callers keep every unit
self-contained (its own rows, its own fixed batching), so the results do not depend on the claiming order.

Every queue gets a fresh counter key (a name plus a nonce drawn by rank 0), so a second queue in the same
process group - a rerun, the next stage - starts from zero. With world size 1 there is no store: the units
come out in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence

from rapidun_dist.core.errors import StageError
from rapidun_dist.distributed.env import broadcast_object, rank, world_size

KEY_PREFIX = "rapidun/workqueue"


def _default_store():
    """The default process group's key-value store (the c10d rendezvous store)."""
    from torch.distributed import distributed_c10d

    getter = getattr(distributed_c10d, "_get_default_store", None)
    if getter is None:
        raise StageError(
            "workqueue: this torch build does not expose the process group's store "
            "(torch.distributed.distributed_c10d._get_default_store); dynamic work claiming needs it"
        )
    return getter()


class WorkQueue:
    """The units of `units` (this is rank 0's list; other ranks' lists are ignored) claimed one at a time by
    whichever rank asks first. Collective to construct (a broadcast); iterate on every rank until exhausted.

        queue = WorkQueue("features", todo)
        for unit in queue:          # this rank's share, in claiming order
            compute(unit)
        queue.claimed               # the units this rank took
    """

    def __init__(self, name: str, units: Sequence[int], *, store=None):
        if not name or "/" in name:
            raise ValueError(f"WorkQueue: name must be a non-empty string without '/'; found {name!r}")
        self.world = world_size()
        payload = (list(units), uuid.uuid4().hex) if rank() == 0 else None
        self.units, nonce = broadcast_object(payload, src=0) if self.world > 1 else (list(units), "local")
        self.key = f"{KEY_PREFIX}/{name}/{nonce}"
        self._store = store if store is not None else (_default_store() if self.world > 1 else None)
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
