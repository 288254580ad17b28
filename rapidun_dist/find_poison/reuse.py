"""Copying features a feature store holds already into another store, instead of computing them again: the
influence stage's pack rows from find_poison's stores, and find_poison's known and reference rows (its groups
store) from its training store when they are training rows.

A row is held when a source store has a row with the same id and the same text as trained, under the same
extractor spec and feature context: its features are the same function of the row (only the batch it was padded
in differs, a float-rounding difference).
"""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.core.io import read_json
from rapidun_dist.find_poison import suspects as S

REUSE_BYTES = 1 << 30  # features held at once while copying shards from the source stores
# a shard is completed by the copy when at most this share of its rows is not held
REUSE_COMPUTE_SHARE = 0.25


def copy_held_features(
    cfg: RunConfig,
    extractor,
    tokenizer,
    context: dict,
    sources: list[tuple[Path, list[dict]]],
    records: list[dict],
    root: Path,
    shard_size: int,
) -> tuple[int, int]:
    """Write the shards (of `shard_size` rows) of the store at `root` for `records` whose rows the feature stores
    of `sources` ((store root, rows it was built from), earlier ones first) hold already: same id, same text as
    trained, same extractor spec and feature context. A source store may hold any subset of its rows in any order
    (a two-stage run's candidates, a length-ordered training store): its index's ids say which row sits where.
    A shard is written when at most REUSE_COMPUTE_SHARE of its rows are held nowhere (those few are computed here);
    valid shards and the others are left alone. Returns (rows copied, rows computed)."""
    from rapidun_dist.influence.store import FeatureStore, ids_hash, load_features, plan_shards, spec_hash
    from rapidun_dist.training.finetune import encode_records

    spec = extractor.spec() | {"context": context}
    held_in = []  # (store root, dim) of the sources built under this spec
    # id -> [(source, position in its store, row)], earlier sources first
    held: dict[str, list[tuple[int, int, dict]]] = {}
    for src, rows in sources:
        if not (src / "index.json").exists():
            continue
        index = read_json(src / "index.json")
        if index.get("spec_hash") != spec_hash(spec):
            continue
        by_id = {r["id"]: r for r in rows}
        k = len(held_in)
        held_in.append((src, int(index["dim"])))
        for p, i in enumerate(index["ids"]):
            if i in by_id:
                held.setdefault(i, []).append((k, p, by_id[i]))
    if not held:
        return 0, 0

    def locate(row: dict) -> tuple[int, int] | None:
        text = S.as_trained(row)
        return next(((k, p) for k, p, r in held.get(row["id"], ()) if S.as_trained(r) == text), None)

    store = FeatureStore(root, spec)
    root.mkdir(parents=True, exist_ok=True)
    todo = []  # (shard, rows span, [(source, position) | None per row], ids hash) of every shard written here
    for i, (s, e) in enumerate(plan_shards(len(records), shard_size)):
        ids = ids_hash([r["id"] for r in records[s:e]])
        if store.is_valid(i, (s, e), ids):
            continue
        where = [locate(r) for r in records[s:e]]
        if sum(w is None for w in where) <= REUSE_COMPUTE_SHARE * (e - s):
            todo.append((i, (s, e), where, ids))
    # A shard's rows are scattered over every source unit: read the units once per group of shards (as many rows
    # as REUSE_BYTES holds), not once per shard.
    dim = max(d for _, d in held_in)
    per_group = max(1, REUSE_BYTES // max(1, shard_size * dim * 4))
    copied = computed = 0
    extractor.model.eval()
    for g in range(0, len(todo), per_group):
        group = todo[g : g + per_group]
        loaded = {}  # (source, position) -> row of that source's loaded block
        blocks = []
        for k, (src, _) in enumerate(held_in):
            union = sorted({w[1] for *_, where, _ in group for w in where if w is not None and w[0] == k})
            if union:
                loaded |= {(k, p): (len(blocks), j) for j, p in enumerate(union)}
                blocks.append(load_features(src, union)[0])
        for i, (s, e), where, ids in group:
            feats = torch.zeros(e - s, extractor.dim)
            for j, w in enumerate(where):
                if w is not None:
                    b, row = loaded[w]
                    feats[j] = blocks[b][row]
            missing = [j for j, w in enumerate(where) if w is None]
            examples = encode_records([records[s + j] for j in missing], tokenizer, cfg.model.max_length)
            for b in range(0, len(missing), cfg.influence.batch_size):
                part = missing[b : b + cfg.influence.batch_size]
                feats[part] = extractor(examples[b : b + len(part)]).detach().float().cpu()
            store.write_shard(i, (s, e), feats, ids)
            copied += e - s - len(missing)
            computed += len(missing)
    return copied, computed
