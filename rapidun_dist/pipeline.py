"""The driver, the one for 1 and N ranks: checks the config and inputs, then runs the stages of the run's mode in
order (rapidun_dist.stages). `rapidun run` calls it in one process; launch/*.py call it on every rank of a launch.

Each stage reads and writes the run directory and is skipped when the manifest says its outputs are complete and
consistent with the config (unless forced).
"""

from __future__ import annotations

from rapidun_dist.config import RunConfig, dump_config
from rapidun_dist.core import timing
from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import write_text
from rapidun_dist.core.logging import attach_run_log, get_logger
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import (
    check_ready,
    default_stages,
    get_stage,
    pipeline_stages,
    readiness,
    stage_context,
)

log = get_logger("pipeline")


def run_stage(
    cfg: RunConfig, rd: RunDir, stage: str, *, force: bool = False, world_size: int = 1, rank: int = 0
) -> bool:
    """Run one stage unless done; returns True when it ran.

    `world_size` = how many ranks call this together. With world_size > 1 every rank calls it (the stage must be
    collective); rank 0 decides whether to skip (broadcast, so a lagging shared file system cannot split the
    ranks) and alone writes the manifest. A rank-0-only stage is called with world_size=1.
    """
    from rapidun_dist.distributed.env import broadcast_object

    st = get_stage(stage)
    if world_size > 1 and not st.collective:
        raise StageError(f"stage {stage!r} runs on one rank; call it with world_size=1 on rank 0")
    ctx = stage_context(cfg, rd, stage, world_size=world_size, rank=rank)
    fp = ctx.fingerprint
    skip = not force and rank == 0 and rd.is_done(stage, fp)
    skip = broadcast_object(skip, src=0) if world_size > 1 else skip
    if skip:
        log.info(f"[{stage}] complete and consistent with the config: skipped (use --force to redo)")
        return False
    log.info(f"[{stage}] starting")
    rec = rd.start(stage, fp, world_size=world_size) if rank == 0 else None
    timing.take()  # overhead counted from here on is this stage's
    try:
        outputs = st.run(ctx)
    except BaseException as e:
        if rec is not None:
            rd.fail(stage, rec, e)
        raise
    if rec is not None:
        undeclared = [
            str(o.relative_to(rd.root)) for o in outputs if not st.declares(str(o.relative_to(rd.root)))
        ]
        if undeclared:  # the stage contract (Stage.writes) is the run directory's documentation: keep it true
            log.warning(f"[{stage}] wrote outputs its Stage.writes does not declare: {undeclared}")
        spent = timing.take()
        rec = rd.finish(stage, rec, outputs, extra={"overhead_seconds": spent} if spent else None)
        note = f" ({', '.join(f'{k} {v:.1f}s' for k, v in spent.items())} of it overhead)" if spent else ""
        log.info(f"[{stage}] done in {rec['seconds']:.1f}s{note}")
    return True


def select_stages(cfg: RunConfig, names: list[str] | None) -> list[str]:
    """The requested stages in pipeline order (all of the mode's stages when `names` is None)."""
    order = [s.name for s in pipeline_stages(cfg.mode, cfg.to_dict())]
    if names is None:
        return [s.name for s in default_stages(cfg)]
    for n in names:
        get_stage(n)  # unknown names: a clear error listing the stages
        if n not in order:
            raise StageError(
                f"stage {n!r} is not part of a {cfg.mode!r} run with this config ({get_stage(n).doc}); its "
                f"stages: {', '.join(order)}"
            )
    return [n for n in order if n in names]


def for_this_machine(cfg: RunConfig) -> RunConfig:
    """The config as this machine runs it: without a CUDA device a bf16 / fp16 `model.dtype` becomes float32
    (half precision is for GPUs; on CPU it is slow and loses the small gradients unlearning needs). Every driver
    calls this, so `rapidun run`, launch/run.py and launch/unlearn.py run the same numbers on the same machine."""
    import torch

    if not torch.cuda.is_available() and cfg.model.dtype in ("bfloat16", "float16"):
        log.warning(
            f"no CUDA device: model.dtype={cfg.model.dtype} -> float32 ({cfg.model.dtype} is for GPUs)"
        )
        cfg.model.dtype = "float32"
    return cfg


def run_pipeline(
    cfg: RunConfig,
    stages: list[str] | None = None,
    *,
    force: bool = False,
    force_stages: tuple[str, ...] = (),
) -> RunDir:
    """The one driver, for 1 and N ranks: check everything before the first stage, then run the stages in order.

    One process (`rapidun run`): every stage runs here. N ranks (torchrun / deepspeed / srun / mpiexec, through
    launch/*.py): leading rank-0 stages (prepare) run on rank 0 before any process group exists (the other ranks
    wait in the rendezvous, under `distributed.init_timeout_s`); after that collective stages run on every rank
    and rank-0 stages on rank 0 while the others wait in a barrier. Rank 0 decides readiness and skips (broadcast).
    `force_stages`: stages rerun even when complete (launch/unlearn.py --evaluate)."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.validate import check_run

    cfg = for_this_machine(cfg)
    names = select_stages(cfg, stages)
    launch = dist_env.discover_launch_env()
    check_run(cfg, world_size=launch.world_size, stages=names)  # every check before any stage, on every rank
    rd = RunDir(cfg.run_dir)
    rd.root.mkdir(parents=True, exist_ok=True)
    attach_run_log(rd.root)
    if launch.rank == 0:
        write_text(rd.root / "config.yaml", dump_config(cfg))
    forced = lambda name: force or name in force_stages  # noqa: E731
    if launch.world_size == 1:
        for i, stage in enumerate(names):
            log.info(f"=== stage {i + 1}/{len(names)}: {stage} ===")
            check_ready(cfg, rd, stage)
            run_stage(cfg, rd, stage, force=forced(stage))
        return rd
    lead = []
    for name in names:
        if get_stage(name).collective:
            break
        lead.append(name)
    if lead and launch.rank == 0:
        for name in lead:
            check_ready(cfg, rd, name)
            run_stage(cfg, rd, name, force=forced(name))
    info = dist_env.init_distributed(config=cfg.distributed)
    for name in names[len(lead) :]:
        problem = dist_env.broadcast_object(readiness(cfg, rd, name) if info.rank == 0 else None)
        if problem:
            raise StageError(problem)
        if get_stage(name).collective:
            run_stage(cfg, rd, name, force=forced(name), world_size=info.world_size, rank=info.rank)
        elif info.rank == 0:
            run_stage(cfg, rd, name, force=forced(name))
        dist_env.barrier()
    return rd
