"""Spawn helper for multi-process tests: runs `fn(rank, world_size, *args)` on N gloo ranks.

A free port is picked at run time; each rank gets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT and
OMP_NUM_THREADS=1, initialises through `rapidun_dist.distributed.init_distributed(backend="gloo")`, and
writes `fn`'s JSON-serialisable return value to a file; `run_distributed` returns them in rank order.
`fn` must be a module-level function (spawn pickles it by name).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out_dir: str, fn, args: tuple) -> None:
    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
    )
    import torch

    torch.set_num_threads(1)
    from rapidun_dist.distributed import destroy, init_distributed

    init_distributed(backend="gloo", timeout_s=120)
    try:
        result = fn(rank, world_size, *args)
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        destroy()


def run_distributed(fn, world_size: int, *args) -> list:
    """Run `fn` on `world_size` spawned gloo ranks; a failure in any rank raises here."""
    os.environ["OMP_NUM_THREADS"] = "1"
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_worker, args=(world_size, free_port(), out_dir, fn, args), nprocs=world_size, join=True)
        return [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(world_size)]
