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

import argparse
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument(
        "--force", action="store_true", help="recompute the stages even if complete (shards are kept)"
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="ignored (set by launchers)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. influence.tile_size=2048")
    return p.parse_args(argv)


WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def run(args: argparse.Namespace) -> None:
    from rapidun_dist.config import dump_config, load_config
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.distributed import preempt
    from rapidun_dist.errors import StageError
    from rapidun_dist.io import write_text
    from rapidun_dist.logging import attach_run_log
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.rundir import RunDir
    from rapidun_dist.stages import readiness
    from rapidun_dist.validate import check_rules

    preempt.install()
    cfg = load_config(args.config, args.overrides)
    info = dist_env.init_distributed(config=cfg.distributed)
    check_rules(cfg, info.world_size)
    rd = RunDir(cfg.run_dir)
    attach_run_log(rd.root)
    problem = dist_env.broadcast_object(readiness(cfg, rd, "influence") if info.rank == 0 else None)
    if problem:
        raise StageError(problem)
    if info.rank == 0:
        write_text(rd.root / "config.yaml", dump_config(cfg))
    run_stage(cfg, rd, "influence", force=args.force, world_size=info.world_size, rank=info.rank)
    if info.rank == 0:  # weights: rank-0-only math on the gathered scores
        run_stage(cfg, rd, "weights", force=args.force)
    dist_env.barrier()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if max(int(os.environ.get(k, "1")) for k in WORLD_SIZE_VARS) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: P ranks must not oversubscribe
    from rapidun_dist.distributed.env import destroy
    from rapidun_dist.errors import RapidUnError
    from rapidun_dist.logging import get_logger

    log = get_logger("launch.influence")
    try:
        run(args)
        log.info("influence + weights: done")
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2
    finally:
        destroy()


if __name__ == "__main__":
    sys.exit(main())
