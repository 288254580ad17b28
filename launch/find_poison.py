"""The find_poison stage on P ranks: features of every training row in work units the ranks claim as they free up,
scores across ranks, rank 0 writes suspects/ (DESIGN section 11).

    torchrun --nproc_per_node 8 launch/find_poison.py --config configs/alpaca57k_cpu.yaml run_dir=runs/x
    deepspeed --num_accelerators 2 launch/find_poison.py --config configs/tiny_cpu.yaml
    mpiexec -n 2 python launch/find_poison.py --config configs/tiny_cpu.yaml
    srun python launch/find_poison.py --config configs/tiny_cpu.yaml

The run dir must hold finished prepare + implant stages (`rapidun run CONFIG --stages prepare,implant`). Resume =
run again: valid feature units are kept, a finished stage is skipped (per manifest.json).
"""

from __future__ import annotations

import argparse
import os
import sys

WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument(
        "--force", action="store_true", help="recompute the stage even if complete (units are kept)"
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="ignored (set by launchers)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. find_poison.z=3.5")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    from rapidun_dist.config import load_config
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.errors import StageError
    from rapidun_dist.logging import attach_run_log
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.rundir import RunDir
    from rapidun_dist.stages import readiness
    from rapidun_dist.validate import check_rules

    cfg = load_config(args.config, args.overrides)
    info = dist_env.init_distributed()
    check_rules(cfg, info.world_size)
    rd = RunDir(cfg.run_dir)
    attach_run_log(rd.root)
    problem = dist_env.broadcast_object(readiness(cfg, rd, "find_poison") if info.rank == 0 else None)
    if problem:
        raise StageError(problem)
    run_stage(cfg, rd, "find_poison", force=args.force, world_size=info.world_size, rank=info.rank)
    dist_env.barrier()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if max(int(os.environ.get(k, "1")) for k in WORLD_SIZE_VARS) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: P ranks must not oversubscribe
    from rapidun_dist.distributed.env import destroy
    from rapidun_dist.errors import RapidUnError
    from rapidun_dist.logging import get_logger

    log = get_logger("launch.find_poison")
    try:
        run(args)
        log.info("find_poison: done")
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2
    finally:
        destroy()


if __name__ == "__main__":
    sys.exit(main())
