"""Any stages of a run on P ranks: collective stages (implant, influence, unlearn, evaluate) on every rank,
rank-0 stages (prepare, weights) on rank 0.

    torchrun --nproc_per_node 8 launch/run.py --config configs/llama3_8b_dolly15k.yaml --stages implant
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint $HEAD:29400 \
        launch/run.py --config C --stages implant,influence,weights,unlearn,evaluate      (slurm/run.sbatch)
    srun python launch/run.py --config C --stages evaluate                                (one task per GPU)
    deepspeed --num_accelerators 2 launch/run.py --config configs/tiny_cpu.yaml
    python launch/run.py --config configs/tiny_cpu.yaml                                   (one process)

Stages run in pipeline order; done stages are skipped (manifest fingerprint), so a requeued job resumes. Leading
rank-0 stages (prepare) run on rank 0 before the rendezvous, where the other ranks wait under
`distributed.init_timeout_s`; a rank-0 stage after a collective one (weights: seconds) runs while the others wait
in a barrier. SIGTERM / SIGUSR1 make the step loops checkpoint and stop (rapidun_dist.distributed.preempt).
"""

from __future__ import annotations

import sys

from rapidun_dist.launcher import main as launch_main


def main(argv: list[str] | None = None) -> int:
    return launch_main(
        argv,
        description=__doc__.split("\n\n")[0],
        name="run",
        example="implant.grad_accum=4",
    )


if __name__ == "__main__":
    sys.exit(main())
