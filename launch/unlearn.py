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

import argparse
import os
import sys

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="YAML run config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. unlearn.zero_stage=3")
    p.add_argument(
        "--local_rank",
        "--local-rank",
        type=int,
        default=int(os.environ.get("LOCAL_RANK", 0)),
        help="set by the deepspeed launcher (the rank layout is read from the environment)",
    )
    p.add_argument("--evaluate", action="store_true", help="run the evaluate stage afterwards (every rank)")
    p.add_argument("--force", action="store_true", help="rerun even if the unlearn outputs are complete")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from rapidun_dist.config import load_config
    from rapidun_dist.core.errors import RapidUnError, StageError
    from rapidun_dist.core.logging import attach_run_log, get_logger
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.distributed import preempt
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import readiness
    from rapidun_dist.validate import check_rules

    log = get_logger("launch.unlearn")
    preempt.install()  # SIGTERM / SIGUSR1: checkpoint after the current step, stop, resume on the next launch
    try:
        cfg = load_config(args.config, args.overrides)
        if not torch.cuda.is_available() and cfg.model.dtype in ("bfloat16", "float16"):
            log.warning(f"no CUDA device: model.dtype={cfg.model.dtype} -> float32 (bf16 is for GPUs)")
            cfg.model.dtype = "float32"
        info = dist_env.init_distributed(config=cfg.distributed)
        check_rules(cfg, info.world_size)
        rd = RunDir(cfg.run_dir)
        attach_run_log(rd.root)
        problem = dist_env.broadcast_object(readiness(cfg, rd, "unlearn") if info.rank == 0 else None)
        if problem:
            raise StageError(problem)
        run_stage(cfg, rd, "unlearn", force=args.force, world_size=info.world_size, rank=info.rank)
        if args.evaluate:  # collective: every rank evaluates its share of the prompts
            run_stage(cfg, rd, "evaluate", force=True, world_size=info.world_size, rank=info.rank)
        dist_env.barrier()
        return 0
    except RapidUnError as e:
        log.error(f"error: {e}")
        return 2
    finally:
        dist_env.destroy()


if __name__ == "__main__":
    sys.exit(main())
