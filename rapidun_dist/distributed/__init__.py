"""Rank-aware infrastructure: launcher discovery, the process group, checked collectives, preemption, the
work queue.

`env.py` is the only module of the package that imports torch.distributed; everything rank-aware goes through
it. The sharded Gram-block scores built on these collectives live in `rapidun_dist.influence.gram`.

- `env.py`: launcher discovery, process group, collective wrappers that count the bytes they move.
- `preempt.py`: SIGTERM / SIGUSR1 handling and the agreed stop.
- `workqueue.py`: shards claimed by ranks through files.
"""

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

__all__ = [
    "DistInfo",
    "LaunchEnv",
    "all_gather_object",
    "barrier",
    "broadcast_object",
    "destroy",
    "discover_launch_env",
    "init_distributed",
    "is_main",
    "rank",
    "total_recv_bytes",
    "world_size",
]
