"""Influence + weights stages on P ranks (features sharded, Gram blocks tiled; rank 0 writes shared files).

    torchrun --nproc_per_node 8 launch/influence.py --config configs/tiny_cpu.yaml run_dir=runs/x
    deepspeed --num_accelerators 2 launch/influence.py --config configs/tiny_cpu.yaml
    mpiexec -n 2 python launch/influence.py --config configs/tiny_cpu.yaml
    srun python launch/influence.py --config configs/tiny_cpu.yaml        (plain srun: one task per GPU)
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29400 launch/influence.py \
        --config C                                                         (one per node: slurm/influence.sbatch)

The run dir must hold finished prepare + implant stages (`rapidun run CONFIG --stages prepare,implant`).
Resume = run again: valid feature shards are kept, finished stages are skipped (per manifest.json). SIGTERM /
SIGUSR1 stop the extraction after the shard in hand (rapidun_dist.distributed.preempt).
"""

from __future__ import annotations

import sys

from rapidun_dist.launcher import main as launch_main


def main(argv: list[str] | None = None) -> int:
    return launch_main(
        argv,
        description=__doc__.split("\n\n")[0],
        stages=("influence", "weights"),
        name="influence",
        example="influence.tile_size=2048",
    )


if __name__ == "__main__":
    sys.exit(main())
