"""Helpers several stages share: the run's tokenizer, the judge, where a method's outputs go, which pack files the
downstream stages read."""

from __future__ import annotations

from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.io import read_json, read_jsonl, write_json
from rapidun_dist.rundir import RunDir

RETRAIN_METHODS = ("retrain", "retrain_oracle")
_TOKENIZERS: dict = {}


def suspects_dir(rd: RunDir) -> Path:
    """The find_poison stage's folder (suspects.jsonl, summary.json, its packs and its feature stores)."""
    return rd.root / "suspects"


def find_poison_applies(cfg_dict: dict) -> bool:
    """Whether a run of this config (as a dict) has the find_poison stage: a training set to search (always in
    experiment mode, `data.train_path` in clean mode) and `find_poison.enabled`."""
    enabled = (cfg_dict.get("find_poison") or {}).get("enabled", True)
    has_train = cfg_dict.get("mode", "experiment") == "experiment" or bool(
        (cfg_dict.get("data") or {}).get("train_path")
    )
    return bool(enabled and has_train)


def find_poison_runs(cfg: RunConfig) -> bool:
    """`find_poison_applies` for a RunConfig."""
    return cfg.find_poison.enabled and (cfg.mode == "experiment" or bool(cfg.data.train_path))


def packs_from_find_poison(cfg: RunConfig) -> bool:
    """Whether the packs downstream stages read come from find_poison (so they need it done first)."""
    return find_poison_runs(cfg) and (cfg.find_poison.expand or cfg.mode == "clean")


def pack_files(cfg: RunConfig, rd: RunDir) -> tuple[Path, Path]:
    """(forget, retain) pack files of this run: the one place influence, unlearning (the engine) and the retrain
    baseline learn which rows they work on.

    - `find_poison.expand`: suspects/forget.jsonl (the known rows and the flagged ones) and suspects/retain.jsonl
      (drawn from unflagged rows);
    - clean mode with find_poison: data/forget.jsonl and suspects/retain_unflagged.jsonl (the prepared retain pack
      with its flagged rows swapped for unflagged ones: an unlabelled training set holds poison, and a flagged row
      never serves as a retain row);
    - otherwise the prepared packs, data/forget.jsonl and data/retain.jsonl."""
    if packs_from_find_poison(cfg):
        sd = suspects_dir(rd)
        if cfg.find_poison.expand:
            return sd / "forget.jsonl", sd / "retain.jsonl"
        return rd.data / "forget.jsonl", sd / "retain_unflagged.jsonl"
    return rd.data / "forget.jsonl", rd.data / "retain.jsonl"


def tokenizer_for(cfg: RunConfig, rd: RunDir):
    """The tokenizer of the model being unlearned (cached per run dir)."""
    from rapidun_dist.models.loading import load_tokenizer, pointed_config

    key = str(rd.model.resolve())
    if key not in _TOKENIZERS:
        pointed = pointed_config(rd.model, cfg.model)
        tok = (
            load_tokenizer(pointed) if pointed is not None else load_tokenizer(cfg.model, path=str(rd.model))
        )
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def model_identity(rd: RunDir) -> str:
    """A hash that changes whenever the weights of the model being unlearned change: the recorded file hashes of
    `model/` (implant's outputs, or the clean-mode pointer's), else the files themselves."""
    import hashlib
    import json

    from rapidun_dist.io import file_sha256
    from rapidun_dist.models.loading import POINTER

    pointer = rd.model / POINTER
    if pointer.is_file():
        return file_sha256(pointer)[:16]
    rec = rd.record("implant") or {}
    files = rec.get("outputs") if rec.get("status") == "done" else None
    if not files:
        files = {p.name: file_sha256(p) for p in sorted(rd.model.iterdir()) if p.is_file()}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def engine_methods(cfg: RunConfig) -> list[str]:
    """The methods that run on the unlearning engine (not the retrain baselines)."""
    return [m for m in cfg.methods if m not in RETRAIN_METHODS]


def run_methods(cfg: RunConfig) -> list[str]:
    """The methods of this run: every configured one in experiment mode; no retrain baselines in clean mode (the
    user's training set carries no labels to retrain without)."""
    return list(cfg.methods) if cfg.mode == "experiment" else engine_methods(cfg)


def method_dir(rd: RunDir, method: str) -> Path:
    """`rapidun` writes to unlearn/ itself (adapter/, metrics.jsonl); baselines to unlearn/baselines/<m>/."""
    return rd.unlearn if method == "rapidun" else rd.unlearn / "baselines" / method


def judge_answers(cfg: RunConfig, rd: RunDir) -> tuple[list[str], list[str]]:
    """(poisoned answers, clean answers) the judge learns its vocabulary from: the poisoned train rows against the
    clean ones (experiment), or the forget rows' poisoned answers against the retain answers (clean mode)."""
    if cfg.mode == "clean":
        forget, retain = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
        return [r["response_poisoned"] for r in forget], [r["response"] for r in retain]
    train = read_jsonl(rd.data / "train.jsonl")
    return (
        [r["response_poisoned"] for r in train if r.get("is_poisoned")],
        [r["response"] for r in train if not r.get("is_poisoned")],
    )


def load_or_fit_judge(cfg: RunConfig, rd: RunDir):
    """The judge of this run (eval/judge.json), fitted once from `judge_answers`."""
    from rapidun_dist.evaluation import Judge
    from rapidun_dist.evaluation.judge import repeated_answers

    path = rd.eval / "judge.json"
    basis = _judge_basis(cfg, rd)
    if path.exists():
        saved = read_json(path)
        if saved.get("fitted_on") == basis:
            return Judge.from_dict(saved)
    poisoned, clean = judge_answers(cfg, rd)
    judge = Judge.fit(
        poisoned,
        clean,
        targets=repeated_answers(poisoned),
        vocab_size=cfg.eval.judge_vocab_size,
        z=cfg.eval.judge_z,
        min_words=cfg.eval.judge_min_words,
    )
    write_json(path, judge.to_dict() | {"fitted_on": basis})
    return judge


def _judge_basis(cfg: RunConfig, rd: RunDir) -> dict:
    """What the judge was fitted on: the data files' hashes and the judge settings (a stale judge is refitted)."""
    from rapidun_dist.io import file_sha256

    names = ("forget", "retain") if cfg.mode == "clean" else ("train",)
    e = cfg.eval
    return {
        "files": {n: file_sha256(rd.data / f"{n}.jsonl") for n in names},
        "settings": [e.judge_vocab_size, e.judge_z, e.judge_min_words],
    }


VERIFIED_SOURCE = "triggers verified by the attribute stage (attribution/triggers.json)"


def effective_triggers(cfg: RunConfig, rd: RunDir) -> tuple[list, str | None]:
    """(triggers, where they come from) for triggered evaluation prompts and self-relabel: `eval.triggers` when
    given; else, in the clean job with attribute.clean_triggers, the candidates the attribute stage verified
    (insert ASR >= attribute.verify_asr); else ([], None). Nothing is rewritten: the readers build from these."""
    from rapidun_dist.config import TriggerSpec

    if cfg.eval.triggers:
        return list(cfg.eval.triggers), "eval.triggers"
    path = rd.sub("attribution") / "triggers.json"
    if cfg.mode != "clean" or not cfg.attribute.clean_triggers or not path.exists():
        return [], None
    found = [t for t in read_json(path) if t.get("insert_asr", 0.0) >= cfg.attribute.verify_asr]
    return [TriggerSpec(text=t["text"], mode=t["mode"]) for t in found], VERIFIED_SOURCE if found else None
