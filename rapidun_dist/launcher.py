"""The body of the stage launchers (launch/run.py, launch/influence.py, launch/find_poison.py): parse the command
line, check everything before the first stage, run the stages on the ranks of the launch, exit with a status.

Collective stages run on every rank; rank-0 stages on rank 0 alone. Leading rank-0 stages (prepare) run on rank 0
before any process group exists (the other ranks wait in the rendezvous, under `distributed.init_timeout_s`); a
rank-0 stage after a collective one (weights) runs while the others wait in a barrier. Done stages are skipped
(manifest fingerprint), so a requeued job resumes; SIGTERM / SIGUSR1 make the step loops checkpoint and stop
(rapidun_dist.distributed.preempt). Exit status: 0 done, 2 a RapidUnError (bad config or input, a stage not ready),
logged as one line; anything else is a bug and raises.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def parse_args(
    argv: list[str] | None, *, description: str, stages: Sequence[str] | None, example: str
) -> argparse.Namespace:
    """--config, --force, --local_rank (ignored), overrides; --stages only when the launcher has no fixed list."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML run config")
    if stages is None:
        p.add_argument("--stages", help="comma-separated stages (default: every stage of the config's mode)")
    p.add_argument(
        "--force",
        action="store_true",
        help="rerun the stages even if complete (valid feature shards are kept)",
    )
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help="ignored (set by launchers)")
    p.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {example}")
    args = p.parse_intermixed_args(argv)
    if stages is not None:
        args.stages = ",".join(stages)
    return args


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
    from rapidun_dist.core.errors import StageError
    from rapidun_dist.core.io import write_text
    from rapidun_dist.core.logging import attach_run_log
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.distributed import preempt
    from rapidun_dist.pipeline import run_stage, select_stages
    from rapidun_dist.run.rundir import RunDir
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


def main(
    argv: list[str] | None = None,
    *,
    description: str,
    stages: Sequence[str] | None = None,
    name: str = "run",
    example: str = "implant.grad_accum=4",
) -> int:
    """Parse `argv`, run the stages (`stages`, or those --stages names), return the exit status."""
    args = parse_args(argv, description=description, stages=stages, example=example)
    if max(int(os.environ.get(k, "1")) for k in WORLD_SIZE_VARS) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch loads: P ranks must not oversubscribe
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rapidun_dist.core.errors import RapidUnError
    from rapidun_dist.core.logging import get_logger
    from rapidun_dist.distributed.env import destroy

    log = get_logger(f"launch.{name}")
    try:
        run(args)
        log.info(f"{args.stages or 'stages'}: done")
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2
    finally:
        destroy()
