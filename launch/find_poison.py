"""The find_poison stage on P ranks: features of every training row in work units the ranks claim as they free up,
scores across ranks, rank 0 writes suspects/ (docs/DESIGN.md section 11).

    torchrun --nproc_per_node 8 launch/find_poison.py --config configs/alpaca57k_cpu.yaml run_dir=runs/x
    deepspeed --num_accelerators 2 launch/find_poison.py --config configs/tiny_cpu.yaml
    mpiexec -n 2 python launch/find_poison.py --config configs/tiny_cpu.yaml
    srun python launch/find_poison.py --config configs/tiny_cpu.yaml

The run dir must hold finished prepare + implant stages (`rapidun run CONFIG --stages prepare,implant`). Resume =
run again: valid feature units are kept, a finished stage is skipped (per manifest.json).
"""

from __future__ import annotations

import sys

from rapidun_dist.launcher import main as launch_main


def main(argv: list[str] | None = None) -> int:
    return launch_main(
        argv,
        description=__doc__.split("\n\n")[0],
        stages=("find_poison",),
        name="find_poison",
        example="find_poison.z=3.5",
    )


if __name__ == "__main__":
    sys.exit(main())
