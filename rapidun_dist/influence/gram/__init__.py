"""Sharded Gram-block scores: the directional scores FF / FR / RF / RR of the packs (and find_poison's scores of a
large row set against a few groups), computed across ranks without ever gathering the whole feature matrix.

- `layout.py`: which rows every rank holds (gathered once).
- `grid.py`: the r x c process grid and the bytes each shape makes a rank receive.
- `linear.py`: group means through per-group sums of unit features (one all_reduce).
- `pairwise.py`: the 2D block decomposition for the pairwise aggregations.
- `blocks.py`: directional scores FF/FR/RR/RF of the packs (and the tiled all_gather cross-check).
- `groups.py`: scores of a large row set against a few groups (find_poison).

The dense single-process formulas they are tested against are in `rapidun_dist.influence.scores`.
"""

from rapidun_dist.influence.gram.blocks import (
    comm_summary,
    distributed_directional_scores,
    gather_scores_to_rank0,
)
from rapidun_dist.influence.gram.grid import Grid
from rapidun_dist.influence.gram.groups import GroupShard, distributed_group_scores

__all__ = [
    "Grid",
    "GroupShard",
    "comm_summary",
    "distributed_directional_scores",
    "distributed_group_scores",
    "gather_scores_to_rank0",
]
