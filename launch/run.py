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

import argparse
import os
import sys

WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("--stages", help="comma-separated stages (default: every stage of the config's mode)")
    p.add_argument("--force", action="store_true", help="rerun the stages even if complete")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="ignored (set by launchers)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. implant.grad_accum=4")
    return p.parse_intermixed_args(argv)


def _rank_zero_first(cfg, rd, names: list[str], force: bool) -> list[str]:
    """Run the leading rank-0 stages on rank 0 before any process group exists; the stages left."""
    from rapidun_dist.distributed.env import discover_launch_env
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.stages import check_ready, get_stage

    lead = []
    for name in names:
        if get_stage(name).collective:
            break
        lead.append(name)
    if lead and discover_launch_env().rank == 0:
        for name in lead:
            check_ready(cfg, rd, name)
            run_stage(cfg, rd, name, force=force)
    return names[len(lead) :]


def run(args: argparse.Namespace) -> None:
    from rapidun_dist.config import dump_config, load_config
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.distributed import preempt
    from rapidun_dist.errors import StageError
    from rapidun_dist.io import write_text
    from rapidun_dist.logging import attach_run_log
    from rapidun_dist.pipeline import run_stage, select_stages
    from rapidun_dist.rundir import RunDir
    from rapidun_dist.stages import get_stage, readiness
    from rapidun_dist.validate import check_run

    preempt.install()
    cfg = load_config(args.config, args.overrides)
    names = select_stages(cfg, [s.strip() for s in args.stages.split(",")] if args.stages else None)
    launch = dist_env.discover_launch_env()
    check_run(cfg, world_size=launch.world_size, stages=names)  # every check before any stage, on every rank
    rd = RunDir(cfg.run_dir)
    attach_run_log(rd.root)
    if launch.rank == 0:
        write_text(rd.root / "config.yaml", dump_config(cfg))
    rest = _rank_zero_first(cfg, rd, names, args.force)
    info = dist_env.init_distributed(config=cfg.distributed)
    for name in rest:
        problem = dist_env.broadcast_object(readiness(cfg, rd, name) if info.rank == 0 else None)
        if problem:
            raise StageError(problem)
        if get_stage(name).collective:
            run_stage(cfg, rd, name, force=args.force, world_size=info.world_size, rank=info.rank)
        elif info.rank == 0:
            run_stage(cfg, rd, name, force=args.force)
        dist_env.barrier()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if max(int(os.environ.get(k, "1")) for k in WORLD_SIZE_VARS) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: P ranks must not oversubscribe
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rapidun_dist.distributed.env import destroy
    from rapidun_dist.errors import RapidUnError
    from rapidun_dist.logging import get_logger

    log = get_logger("launch.run")
    try:
        run(args)
        log.info("stages: done")
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2
    finally:
        destroy()


if __name__ == "__main__":
    sys.exit(main())
