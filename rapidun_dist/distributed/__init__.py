"""Everything rank-aware: process-group setup, checked collectives, sharded Gram-block scores.

The only package folder that imports torch.distributed (through `env.py`).

- `env.py`: launcher discovery, process group, collective wrappers that count the bytes they move.
- `layout.py`: which rows every rank holds (gathered once).
- `grid.py`: the r x c process grid and the bytes each shape makes a rank receive.
- `linear.py`: group means through per-group sums of unit features (one all_reduce).
- `pairwise.py`: the 2D block decomposition for the pairwise aggregations.
- `blocks.py`: directional scores FF/FR/RR/RF of the packs (and the tiled all_gather cross-check).
- `groups.py`: scores of a large row set against a few groups (find_poison).
"""

from rapidun_dist.distributed.blocks import (
    comm_summary,
    distributed_directional_scores,
    gather_scores_to_rank0,
)
from rapidun_dist.distributed.env import (
    DistInfo,
    LaunchEnv,
    all_gather_object,
    barrier,
    broadcast_object,
    destroy,
    discover_launch_env,
    init_distributed,
    is_main,
    rank,
    total_recv_bytes,
    world_size,
)
from rapidun_dist.distributed.grid import Grid
from rapidun_dist.distributed.groups import GroupShard, distributed_group_scores

__all__ = [
    "DistInfo",
    "Grid",
    "GroupShard",
    "LaunchEnv",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "comm_summary",
    "destroy",
    "discover_launch_env",
    "distributed_directional_scores",
    "distributed_group_scores",
    "gather_scores_to_rank0",
    "init_distributed",
    "is_main",
    "rank",
    "total_recv_bytes",
    "world_size",
]
