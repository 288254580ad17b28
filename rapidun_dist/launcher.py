"""The body of every launch script (launch/run.py, launch/influence.py, launch/find_poison.py, launch/unlearn.py):
parse the command line, set up the process, hand the stages to the one driver (`rapidun_dist.pipeline.run_pipeline`,
which runs them on the ranks of the launch), exit with a status.

Done stages are skipped (manifest fingerprint), so a requeued job resumes; SIGTERM / SIGUSR1 make the step loops checkpoint and stop
(rapidun_dist.distributed.preempt). Exit status: 0 done, 2 a RapidUnError (bad config or input, a stage not ready),
logged as one line; anything else is a bug and raises.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

WORLD_SIZE_VARS = ("WORLD_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def parse_args(
    argv: list[str] | None,
    *,
    description: str,
    stages: Sequence[str] | None,
    example: str,
    evaluate_flag: bool = False,
) -> argparse.Namespace:
    """--config, --force, --local_rank (ignored), overrides; --stages only when the launcher has no fixed list;
    --evaluate (run the evaluate stage afterwards, forced) when `evaluate_flag`."""
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
    if evaluate_flag:
        p.add_argument(
            "--evaluate", action="store_true", help="run the evaluate stage afterwards (every rank)"
        )
    p.add_argument("overrides", nargs="*", help=f"dotted key=value overrides, e.g. {example}")
    args = p.parse_intermixed_args(argv)
    if stages is not None:
        args.stages = ",".join(stages)
    return args


def run(args: argparse.Namespace) -> None:
    from rapidun_dist.config import load_config
    from rapidun_dist.distributed import preempt
    from rapidun_dist.pipeline import run_pipeline

    preempt.install()
    cfg = load_config(args.config, args.overrides)
    names = [s.strip() for s in args.stages.split(",")] if args.stages else None
    if getattr(args, "evaluate", False):
        names = [*(names or []), "evaluate"]
    run_pipeline(
        cfg, names, force=args.force, force_stages=("evaluate",) if getattr(args, "evaluate", False) else ()
    )


def main(
    argv: list[str] | None = None,
    *,
    description: str,
    stages: Sequence[str] | None = None,
    name: str = "run",
    example: str = "implant.grad_accum=4",
    evaluate_flag: bool = False,
) -> int:
    """Parse `argv`, run the stages (`stages`, or those --stages names), return the exit status."""
    args = parse_args(
        argv, description=description, stages=stages, example=example, evaluate_flag=evaluate_flag
    )
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
