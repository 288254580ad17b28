"""The unlearning stage as a multi-rank DeepSpeed job (LoRA, ZeRO 0-3 from `unlearn.zero_stage`).

Needs a run directory whose prepare / implant / influence / weights stages are done. Runs every method in
`methods` on every rank (engine methods and the `retrain` baselines: one DeepSpeed job each).

    deepspeed --num_accelerators 2 launch/unlearn.py --config configs/tiny_cpu.yaml unlearn.zero_stage=3
    torchrun --nproc_per_node 2 launch/unlearn.py --config configs/tiny_cpu.yaml unlearn.max_steps=20
    python launch/unlearn.py --config configs/tiny_cpu.yaml methods=[rapidun,ga] --evaluate

On CPU set DS_ACCELERATOR=cpu and OMP_NUM_THREADS=1 per rank (torchrun does the latter). Only rank 0 writes
the manifest, metrics and adapters. SIGTERM or SIGUSR1 (e.g. `sbatch --signal=USR1@120`) checkpoints after the
current step and exits with status 2; the same command resumes. With unlearn.lora_dropout > 0 the result depends on the world size
(each rank draws its own dropout masks); everything else is world-size invariant.
"""

from __future__ import annotations

import sys

from rapidun_dist.launcher import main as launch_main


def main(argv: list[str] | None = None) -> int:
    return launch_main(
        argv,
        description=__doc__.split("\n\n")[0],
        stages=("unlearn",),
        name="unlearn",
        example="unlearn.zero_stage=3",
        evaluate_flag=True,
    )


if __name__ == "__main__":
    sys.exit(main())
