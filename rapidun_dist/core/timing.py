"""What a stage's seconds count as its cost, and what they leave out.

Every stage record in `manifest.json` holds `seconds` (wall clock of the stage, everything it did) and
`overhead_seconds` ({what: seconds} this process spent inside `overhead(what)` during the stage). Two kinds of work
are overhead, not cost:

- `imports`: one-time process set-up, the libraries a fresh Python process loads whatever the method (torch,
  transformers and the model's class, peft). The retrain baseline is timed inside the unlearn stage after its
  warm-up, so its seconds hold none of this; an influence stage run in its own process would otherwise carry 5-70 s
  of imports (the range measured on a quiet and on a loaded 2-core machine) against about 1 s of feature work on the
  default config.
- `report`: artefacts for a person (plots) that no later stage reads.

`RunDir.stage_cost_seconds(stage)` = seconds - sum(overhead_seconds); the speedup against retraining uses it for the
influence and weights stages. Only the recording rank's (rank 0's) overhead is counted: the ranks do the same set-up
side by side.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

KINDS = ("imports", "report")
_spent: defaultdict[str, float] = defaultdict(float)


@contextmanager
def overhead(what: str) -> Iterator[None]:
    """Count the seconds spent inside the block as overhead of kind `what` (one of KINDS)."""
    if what not in KINDS:
        raise ValueError(f"timing.overhead: unknown kind {what!r}, expected one of {KINDS}")
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _spent[what] += time.perf_counter() - t0


def take() -> dict[str, float]:
    """The overhead seconds counted since the last call, by kind; resets the counters."""
    out = dict(_spent)
    _spent.clear()
    return out


def cost_seconds(record: dict | None) -> float | None:
    """A stage record's seconds less its overhead (None for a record without seconds)."""
    if record is None or record.get("seconds") is None:
        return None
    spent = sum((record.get("overhead_seconds") or {}).values())
    return max(float(record["seconds"]) - spent, 0.0)
