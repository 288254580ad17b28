"""The retraining baselines: the implant recipe from the base model on the training set minus the known forget
rows (`retrain`; with `find_poison.expand` also minus the flagged rows) or minus every poisoned row
(`retrain_oracle`, experiment mode only: it reads the labels). Measured end to end: this is the cost RapidUn is
compared against.

Collective, like implant: every rank of the launch loads the base model onto its device and trains its share of
every batch; rank 0 writes the model and the summary. A preempted or killed run resumes from `<out>/checkpoints/`
(rapidun_dist.training.finetune: every `implant.save_every` steps and on SIGTERM / SIGUSR1, as implant)."""

from __future__ import annotations

import time
from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.core.io import read_jsonl, write_json
from rapidun_dist.run.rundir import RunDir


def retrain_rows(train: list[dict], forget_ids: set[str], method: str) -> list[dict]:
    """The rows a retrain baseline trains on."""
    return [
        r
        for r in train
        if r["id"] not in forget_ids and not (method == "retrain_oracle" and r.get("is_poisoned"))
    ]


def run_retrain(cfg: RunConfig, rd: RunDir, method: str, out: Path, *, fingerprint: str) -> dict:
    """Retrain baseline `method` on every rank of the launch (call it on all of them); returns the summary."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.models.loading import base_model_and_tokenizer, save_model, tokenizer_for
    from rapidun_dist.run.layout import pack_files
    from rapidun_dist.training.finetune import finetune

    info = dist_env.init_distributed(config=cfg.distributed)
    t0 = time.perf_counter()
    train = read_jsonl(rd.data / "train.jsonl")
    forget_path, _ = pack_files(cfg, rd)  # with find_poison.expand: the known and the flagged rows
    keep = retrain_rows(train, {r["id"] for r in read_jsonl(forget_path)}, method)
    model, tok = base_model_and_tokenizer(cfg, rd, device=info.device)
    if cfg.model.name_or_path is None:  # same tokenizer as the implanted model, so the numbers compare
        tok = tokenizer_for(cfg, rd)
    stats = finetune(
        model,
        tok,
        keep,
        cfg.implant,
        max_length=cfg.model.max_length,
        device=info.device,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        ckpt_dir=out / "checkpoints",
        resume_key=fingerprint,
        desc=method,
    )
    seconds = time.perf_counter() - t0
    summary = {
        "method": method,
        "fingerprint": fingerprint,
        "n_train": len(keep),
        "steps": stats["steps"],
        "world_size": info.world_size,
        "seconds": {"total": seconds, "unlearn": seconds},
        "final_loss": stats["final_loss"],
    }
    if info.rank == 0:
        save_model(model, tok, out / "model")
        write_json(out / "summary.json", summary)
    dist_env.barrier()
    return summary
