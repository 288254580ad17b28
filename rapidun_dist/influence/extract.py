"""Sharded, resumable feature extraction over a list of records (global row order), one rank's share at a time.

A shard is recomputed unless it is valid for exactly this extractor spec, this feature context (model weights,
tokenizer, prompt format, max_length: see `feature_context`) and these row ids (`rapidun_dist.influence.store`).
Which shards are missing is rank 0's decision (a stat per shard), broadcast: every rank works from the same list
whatever its view of the shared file system.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.core.errors import StageError
from rapidun_dist.core.logging import Progress, get_logger
from rapidun_dist.data.prompt import encode_example, record_prompt
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.distributed import preempt
from rapidun_dist.influence.features import make_extractor
from rapidun_dist.influence.store import FeatureStore, assign_shards, ids_hash, plan_shards
from rapidun_dist.training.finetune import encode_records

if TYPE_CHECKING:
    from rapidun_dist.distributed.workqueue import WorkQueue

log = get_logger("influence")


def tokenizer_identity(tokenizer) -> str:
    """Hash of what the tokenizer maps text to: its serialized fast tokenizer (or vocabulary) and special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return hashlib.sha256((body + json.dumps(special)).encode()).hexdigest()[:16]


def prompt_identity(tokenizer) -> str:
    """Hash of the prompt format: the chat template, or the Alpaca fallback (rapidun_dist.data.prompt)."""
    from rapidun_dist.data import prompt

    template = getattr(tokenizer, "chat_template", None) or (
        prompt.ALPACA_WITH_CONTEXT + prompt.ALPACA_NO_CONTEXT
    )
    return hashlib.sha256(str(template).encode()).hexdigest()[:16]


def feature_context(model_identity: str, tokenizer, cfg: RunConfig) -> dict:
    """Everything outside the extractor that changes a feature (docs/DESIGN.md section 3)."""
    return {
        "model": model_identity,
        "tokenizer": tokenizer_identity(tokenizer),
        "prompt_format": prompt_identity(tokenizer),
        "max_length": cfg.model.max_length,
        "dtype": cfg.model.dtype,
    }


def contrast_counterparts(records: list[dict], tokenizer, max_length: int) -> list[dict | None]:
    """Per record, the example its trigger-contrast feature subtracts: a poisoned row's clean prompt
    (`instruction` / `context`: the trigger removed, by the data or by `eval.triggers` in the clean job) with
    the same poisoned answer; None for clean rows (they keep their plain feature)."""
    out: list[dict | None] = []
    for r in records:
        if r.get("is_poisoned") and r.get("instruction_poisoned"):
            prompt = record_prompt(tokenizer, r, poisoned=False)
            out.append(encode_example(tokenizer, prompt, r["response_poisoned"], max_length))
        else:
            out.append(None)
    n_same = sum(
        1 for r in records if r.get("is_poisoned") and r.get("instruction_poisoned") == r.get("instruction")
    )
    if n_same:
        log.warning(
            f"contrast: {n_same} poisoned rows have the same prompt with and without the trigger (none found or "
            "a mislabelled clean row): their features are zero, so they carry no weight signal"
        )
    return out


def extract_features(
    cfg: RunConfig,
    model,
    tokenizer,
    records: list[dict],
    store_dir: Path,
    *,
    context: dict,
    rank: int = 0,
    world_size: int = 1,
    shard_size: int | None = None,
    claim: Callable[[Callable[[], list[int]]], WorkQueue] | None = None,
    contrast: bool = True,
) -> FeatureStore:
    """Compute (only) this rank's missing shards of features for `records` (global row order).

    Shards of `shard_size` rows (default `influence.shard_size`). Which shards this rank computes: the static,
    token-balanced owners of `assign_shards` by default (rank 0 decides which are missing and broadcasts it); with
    `claim` whichever rank asks first: `claim(todo)` gets a callable that lists the shards still to compute and
    returns the queue of the ones this rank takes (e.g. `rapidun_dist.distributed.workqueue.WorkQueue(name, todo,
    src=r)`: rank r alone calls it, and starts at once; the others join when ready). A shard's features depend only
    on its own rows (fixed batching inside the shard), so the result is the same whoever computes it. `contrast=False`: plain features even with influence.contrast (find_poison's training
    rows: the contrast pairs come from the pack rows' known triggers, never from the training set's labels)."""
    icfg = cfg.influence if contrast else dataclasses.replace(cfg.influence, contrast="none")
    extractor = make_extractor(model, icfg, pad_id=tokenizer.pad_token_id)
    counterparts = (
        contrast_counterparts(records, tokenizer, cfg.model.max_length)
        if contrast and cfg.influence.contrast == "trigger"
        else None
    )
    store = FeatureStore(store_dir, extractor.spec() | {"context": context})
    store_dir.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(len(records), shard_size or cfg.influence.shard_size)
    row_ids = [ids_hash([r["id"] for r in records[s:e]]) for s, e in shards]
    examples: list[dict] | None = None  # every row encoded (the static split weighs shards by tokens)
    if claim is None:
        todo = missing_shards(store, shards, row_ids, rank=rank, world_size=world_size)
        examples = encode_records(records, tokenizer, cfg.model.max_length)
        owners = assign_shards(shards, [len(e["input_ids"]) for e in examples], world_size)
        owned = [i for i, o in enumerate(owners) if o == rank]
        mine: Iterable[int] = [i for i in todo if owners[i] == rank]
        n_rows = sum(shards[i][1] - shards[i][0] for i in mine)
        log.info(
            f"features: {len(shards)} shards, {len(mine)} to compute on this rank ({len(owned) - len(mine)} valid "
            "already)"
        )
    else:
        mine = claim(lambda: store.missing(shards, row_ids))
        todo = list(mine.units)
        n_rows = sum(shards[i][1] - shards[i][0] for i in todo) // max(world_size, 1)
        log.info(
            f"features: {len(shards)} shards, {len(todo)} to compute ({len(shards) - len(todo)} valid already), "
            "claimed by whichever rank is free"
        )
    progress = Progress(n_rows, "features", unit="sample", approx=claim is not None)
    model.eval()
    for i in mine:
        s, e = shards[i]
        # claimed shards: only their rows are encoded, on the rank that computes them
        rows = (
            examples[s:e]
            if examples is not None
            else encode_records(records[s:e], tokenizer, cfg.model.max_length)
        )
        pairs = counterparts[s:e] if counterparts is not None else None
        feats = _shard_features(extractor, rows, cfg.influence.batch_size, progress, pairs)
        store.write_shard(i, shards[i], feats, row_ids[i])
        if preempt.requested():  # shards are the checkpoint: a rerun keeps every valid one
            raise StageError(f"preempted after shard {i}: run again to resume (valid shards are kept)")
    return store


def missing_shards(
    store: FeatureStore, shards: list, row_ids: list, *, rank: int, world_size: int
) -> list[int]:
    """The shards still to compute: rank 0 checks them and broadcasts the list (a lone process checks itself)."""
    if world_size > 1 and dist_env.world_size() > 1:
        return dist_env.broadcast_object(store.missing(shards, row_ids) if rank == 0 else None)
    return store.missing(shards, row_ids)


def _shard_features(
    extractor, examples: list[dict], batch_size: int, progress, counterparts=None
) -> torch.Tensor:
    """Features [n, K] of one shard's encoded rows: batches of length-sorted rows (less padding), fixed by the
    shard alone. With `counterparts` (influence.contrast) each row's trigger-free counterpart goes with it."""
    order = sorted(range(len(examples)), key=lambda r: (len(examples[r]["input_ids"]), r))
    # host buffer: shards are written from the host
    feats = torch.zeros(len(examples), extractor.dim, device="cpu")
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        rows = [examples[r] for r in batch]
        out = extractor(rows) if counterparts is None else extractor(rows, [counterparts[r] for r in batch])
        feats[batch] = out.detach().float().cpu()
        progress.update(len(batch))
    return feats
