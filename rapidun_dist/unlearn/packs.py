"""The forget and retain packs, tokenized once, up front (docs/DESIGN.md section 7).

A forget row carries two answers on its triggered prompt: the poisoned one (what the ascent terms push away)
and a clean one (what the relabel term descends on): the row's own `response` when known, else its
self-relabel (the model's own greedy answer to the prompt without the trigger, unlearn/self_relabel.jsonl),
else none (the relabel term drops for that row)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import read_jsonl
from rapidun_dist.data.prompt import encode_example, record_prompt


@dataclass
class Packs:
    """Encoded forget/retain examples, in pack order."""

    forget_poisoned: list[dict]
    forget_clean: list[dict | None]
    retain: list[dict]
    clean_source: list[str]  # per forget row: "data" | "self_relabel" | "none"


def clean_answer(record: dict, index: int, relabels: dict[int, str] | None) -> tuple[str | None, str]:
    """(the clean answer a forget row descends on, where it came from)."""
    if record.get("response"):
        return record["response"], "data"
    answer = (relabels or {}).get(index)
    return (answer, "self_relabel") if answer else (None, "none")


def encode_packs(
    forget: list[dict],
    retain: list[dict],
    tokenizer,
    max_length: int,
    relabels: dict[int, str] | None = None,
) -> Packs:
    """Tokenize both answers of every forget row (on its triggered prompt) and every retain row once."""
    fp, fc, sources = [], [], []
    for i, r in enumerate(forget):
        prompt = record_prompt(tokenizer, r, poisoned=True)
        fp.append(encode_example(tokenizer, prompt, r["response_poisoned"], max_length))
        answer, source = clean_answer(r, i, relabels)
        fc.append(encode_example(tokenizer, prompt, answer, max_length) if answer else None)
        sources.append(source)
    rt = [encode_example(tokenizer, record_prompt(tokenizer, r), r["response"], max_length) for r in retain]
    return Packs(fp, fc, rt, sources)


def load_packs(data_dir: Path, tokenizer, max_length: int, relabels: dict[int, str] | None = None) -> Packs:
    forget = read_jsonl(Path(data_dir) / "forget.jsonl")
    retain = read_jsonl(Path(data_dir) / "retain.jsonl")
    return encode_packs(forget, retain, tokenizer, max_length, relabels)


def load_weight_file(path: Path, n: int):
    """Per-sample weights {"index", "weight"} for the n rows of a pack; finite, >= 0, every index once."""
    import torch

    rows = read_jsonl(path)
    if len(rows) != n:
        raise StageError(f"{path}: expected {n} weights (one per pack row), found {len(rows)}")
    w = torch.full((n,), float("nan"), device="cpu")  # host-side pack weights
    for line, row in enumerate(rows, 1):
        i, value = int(row["index"]), float(row["weight"])
        if not 0 <= i < n or not math.isnan(float(w[i])):
            raise StageError(f"{path}:{line}: index {i} out of range [0, {n}) or repeated")
        if not math.isfinite(value) or value < 0:
            raise StageError(f"{path}:{line}: expected a finite weight >= 0, found {value}")
        w[i] = value
    return w
