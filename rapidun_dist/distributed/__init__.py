"""Everything rank-aware: process-group setup, checked collectives, sharded Gram-block scores.

The only package folder that imports torch.distributed.
"""

from rapidun_dist.distributed.blocks import distributed_directional_scores, gather_scores_to_rank0
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
    world_size,
)

__all__ = [
    "DistInfo",
    "LaunchEnv",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "destroy",
    "discover_launch_env",
    "distributed_directional_scores",
    "gather_scores_to_rank0",
    "init_distributed",
    "is_main",
    "rank",
    "world_size",
]
