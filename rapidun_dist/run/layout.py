"""Where everything of a run lives: the one home of the run-directory layout beyond the stage folders
(`RunDir`): which pack files the downstream stages read, where find_poison and each method write, the identity
of the model being unlearned, the triggers the evaluation builds its prompts from.

Every stage, the engine and the retrain baseline ask here; nothing else spells these paths.
"""

from __future__ import annotations

from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.core.io import read_json
from rapidun_dist.run.rundir import RunDir

POINTER = "source.json"
"""In clean mode `model/` holds only this file: where the user's model is and the hashes of its weight files."""

VERIFIED_SOURCE = "triggers verified by the attribute stage (attribution/triggers.json)"


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


def model_identity(rd: RunDir) -> str:
    """A hash that changes whenever the weights of the model being unlearned change: the recorded file hashes of
    `model/` (implant's outputs, or the clean-mode pointer's), else the files themselves."""
    import hashlib
    import json

    from rapidun_dist.core.io import file_sha256

    pointer = rd.model / POINTER
    if pointer.is_file():
        return file_sha256(pointer)[:16]
    rec = rd.record("implant") or {}
    files = rec.get("outputs") if rec.get("status") == "done" else None
    if not files:
        files = {p.name: file_sha256(p) for p in sorted(rd.model.iterdir()) if p.is_file()}
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:16]


def method_dir(rd: RunDir, method: str) -> Path:
    """`rapidun` writes to unlearn/ itself (adapter/, metrics.jsonl); baselines to unlearn/baselines/<m>/."""
    return rd.unlearn if method == "rapidun" else rd.unlearn / "baselines" / method


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
