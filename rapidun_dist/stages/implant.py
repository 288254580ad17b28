"""implant (experiment mode): fine-tune the base model on the poisoned training set, the backdoored model that
the rest of the run cleans. The base model is a tiny Llama with a BPE trained on the corpus, or a pretrained one.

Collective: every rank of a launch loads the base model onto its device and trains its share of every batch (one
DeepSpeed job, rapidun_dist.training.finetune); rank 0 writes the model. A preempted or killed run resumes from
`checkpoints/implant/` (written every `implant.save_every` steps and on SIGTERM / SIGUSR1; removed once done)."""

from __future__ import annotations

from pathlib import Path

from rapidun_dist.core.io import read_jsonl, write_json
from rapidun_dist.models.loading import base_model_and_tokenizer
from rapidun_dist.stages.base import Stage, StageContext


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.models.loading import save_model
    from rapidun_dist.training.finetune import finetune

    info = dist_env.init_distributed(config=cfg.distributed)
    model, tok = base_model_and_tokenizer(cfg, rd, device=info.device)
    stats = finetune(
        model,
        tok,
        read_jsonl(rd.data / "train.jsonl"),
        cfg.implant,
        max_length=cfg.model.max_length,
        device=info.device,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        ckpt_dir=rd.sub("checkpoints") / "implant",
        resume_key=ctx.fingerprint,
        desc="implant",
    )
    if info.rank == 0:  # every rank holds the same weights; rank 0 writes them
        save_model(model, tok, rd.model)
        # the dtypes of the weights that trained (after the cast to model.dtype), not of the model as built
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()})
        write_json(
            rd.model / "train_stats.json", stats | {"world_size": info.world_size, "param_dtypes": dtypes}
        )
    dist_env.barrier()
    return sorted(p for p in rd.model.iterdir() if p.is_file())  # weights, config and tokenizer files


STAGE = Stage(
    name="implant",
    doc="fine-tune the base model on the poisoned training set (the backdoored model)",
    # Every field that changes the result. Left out, like the world size: memory and layout settings that change only
    # the floating-point summation order (model.gradient_checkpointing, implant.grad_accum, implant.zero_stage) and
    # where the ranks run (the distributed section).
    config_keys=(
        "model.name_or_path",
        "model.gguf_file",
        "model.tokenizer",
        "model.tiny",
        "model.max_length",
        "model.trust_remote_code",
        "model.dtype",
        "implant.epochs",
        "implant.lr",
        "implant.batch_size",
        "implant.clip_grad",
        "implant.weight_decay",
        "implant.warmup_ratio",
        "implant.max_steps",
        "implant.seed",
    ),
    reads=("data/train.jsonl",),
    writes=("model/",),
    requires=("prepare",),
    run=run,
    collective=True,
    modes=("experiment",),
)
