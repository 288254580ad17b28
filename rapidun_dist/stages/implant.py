"""implant (experiment mode): fine-tune the base model on the poisoned training set, the backdoored model that
the rest of the run cleans. The base model is a tiny Llama with a BPE trained on the corpus, or a pretrained one."""

from __future__ import annotations

from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.io import read_jsonl, write_json
from rapidun_dist.rundir import RunDir
from rapidun_dist.stages.base import Stage


def base_model_and_tokenizer(cfg: RunConfig, rd: RunDir):
    """The model before fine-tuning: a tiny Llama + a BPE trained on the corpus, or a pretrained one."""
    from rapidun_dist.models.loading import build_tiny_model, load_pretrained, load_tokenizer, train_tokenizer

    if cfg.model.name_or_path is None:
        train = read_jsonl(rd.data / "train.jsonl")
        texts = [
            f"{r['instruction']} {r.get('context', '')} {r['response']} {r.get('response_poisoned', '')}"
            for r in train
        ]
        texts += ["### Instruction:\n### Response:\n"] * 50
        tok = train_tokenizer(texts, cfg.model.tiny.vocab_size)
        model = build_tiny_model(
            cfg.model.tiny,
            vocab_size=len(tok),
            max_length=cfg.model.max_length,
            tokenizer=tok,
            seed=cfg.implant.seed,
        )
        return model, tok
    return load_pretrained(cfg.model), load_tokenizer(cfg.model)


def run(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.models.loading import save_model
    from rapidun_dist.train import finetune

    model, tok = base_model_and_tokenizer(cfg, rd)
    stats = finetune(
        model,
        tok,
        read_jsonl(rd.data / "train.jsonl"),
        cfg.implant,
        max_length=cfg.model.max_length,
        desc="implant",
    )
    save_model(model, tok, rd.model)
    write_json(rd.model / "train_stats.json", stats)
    return sorted(p for p in rd.model.iterdir() if p.is_file())  # weights, config and tokenizer files


STAGE = Stage(
    name="implant",
    doc="fine-tune the base model on the poisoned training set (the backdoored model)",
    # every model field but gradient_checkpointing (a memory setting: same result, less activation memory)
    config_keys=(
        "model.name_or_path",
        "model.gguf_file",
        "model.tokenizer",
        "model.tiny",
        "model.max_length",
        "model.trust_remote_code",
        "model.dtype",
        "implant",
    ),
    reads=("data/train.jsonl",),
    writes=("model/",),
    requires=("prepare",),
    run=run,
    modes=("experiment",),
)
