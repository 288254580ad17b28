"""Splits (train / val_clean / test_clean / test_seen / test_ood) and the forget / retain packs.

From a pool of clean records with unique prompts:

    val_clean, test_clean, seen prompts, ood prompts, train  = disjoint slices of a seeded shuffle
    train:     round(poison_rate * |train|) rows poisoned (families balanced, seen variants only)
    test_seen: seen-prompt rows with a seen trigger injected, test_ood likewise with OOD variants

Packs: forget = a stratified fraction of the poisoned train rows (per family, largest-remainder rounding of
forget_fraction * |poisoned|, at least one per family); retain = retain_ratio * |forget| clean train rows.
Both are disjoint from every test split and from each other, by id and by prompt (instruction + context).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict

from rapidun_dist.config import DataConfig, TriggerFamily
from rapidun_dist.data.poison import balanced_plan, poison_record
from rapidun_dist.data.schema import ID, IS_POISONED, TRIGGER_FAMILY, prompt_key
from rapidun_dist.data.synthetic import generate_target_pool
from rapidun_dist.errors import DataError
from rapidun_dist.logging import get_logger

TEST_SPLITS = ("val_clean", "test_clean", "test_seen", "test_ood")
_log = get_logger("rapidun.data")


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def dedupe_prompts(records: list[dict]) -> tuple[list[dict], int]:
    """Keep the first record of each prompt (instruction + context); return (kept, number dropped)."""
    seen, kept = set(), []
    for rec in records:
        key = prompt_key(rec)
        if key not in seen:
            seen.add(key)
            kept.append(rec)
    return kept, len(records) - len(kept)


def carve(clean: list[dict], cfg: DataConfig, rng: random.Random) -> dict[str, list[dict]]:
    """Disjoint slices of a seeded shuffle: val_clean, test_clean, seen/ood test prompts, and train (the rest)."""
    sizes = {
        "val_clean": cfg.n_val,
        "test_clean": cfg.n_test_clean,
        "seen": cfg.n_test_seen,
        "ood": cfg.n_test_ood,
    }
    n_train = len(clean) - sum(sizes.values())
    n_poison = _round(cfg.poison_rate * n_train)
    if n_train < 2 or n_poison < 1 or n_poison >= n_train:
        raise DataError(
            f"data: {len(clean)} clean records leave {n_train} train rows ({n_poison} poisoned at "
            f"poison_rate={cfg.poison_rate}) after {sizes}; expected at least one clean and one poisoned "
            "train row - add data or shrink the test splits"
        )
    order = rng.sample(clean, len(clean))
    out, start = {}, 0
    for name, size in sizes.items():
        out[name] = order[start : start + size]
        start += size
    out["train"] = order[start:]
    return out


def poison_train(
    train: list[dict], n_poison: int, families: list[TriggerFamily], targets: list[str], rng: random.Random
) -> list[dict]:
    """Train rows with `n_poison` of them poisoned (seen variants, families balanced, a target from the pool)."""
    chosen = sorted(rng.sample(range(len(train)), n_poison))
    plan = balanced_plan(n_poison, families, "seen", rng)
    out = list(train)
    for idx, (fam, variant) in zip(chosen, plan, strict=True):
        out[idx] = poison_record(train[idx], fam, variant, rng.choice(targets), rng)
    return out


def triggered(
    rows: list[dict], families: list[TriggerFamily], kind: str, targets: list[str], rng: random.Random
) -> list[dict]:
    """Test prompts with a trigger of `kind` ('seen' or 'ood') injected and `response_poisoned` = a target."""
    plan = balanced_plan(len(rows), families, kind, rng)
    return [
        poison_record(rec, fam, variant, rng.choice(targets), rng)
        for rec, (fam, variant) in zip(rows, plan, strict=True)
    ]


def make_splits(clean: list[dict], cfg: DataConfig) -> dict[str, list[dict]]:
    """The five splits from clean records with unique prompts (see module docstring). Deterministic in cfg.seed."""
    rng = random.Random(f"{cfg.seed}:splits")
    parts = carve(clean, cfg, rng)
    targets = generate_target_pool(cfg.target_pool_size, cfg.seed)
    n_poison = _round(cfg.poison_rate * len(parts["train"]))
    return {
        "train": poison_train(parts["train"], n_poison, cfg.triggers, targets, rng),
        "val_clean": parts["val_clean"],
        "test_clean": parts["test_clean"],
        "test_seen": triggered(parts["seen"], cfg.triggers, "seen", targets, rng),
        "test_ood": triggered(parts["ood"], cfg.triggers, "ood", targets, rng),
    }


def stratified_counts(sizes: dict[str, int], fraction: float) -> dict[str, int]:
    """Per-group sample counts: total = round(fraction * sum(sizes)), split by largest remainder, >= 1 per
    non-empty group, never more than the group has. E.g. sizes 267/266/266 at 0.05 -> 14/13/13."""
    quotas = {g: fraction * n for g, n in sizes.items() if n > 0}
    counts = {g: min(sizes[g], max(1, math.floor(q))) for g, q in quotas.items()}
    missing = _round(fraction * sum(sizes.values())) - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda g: (-(quotas[g] - math.floor(quotas[g])), g))
    for g in by_remainder:
        if missing <= 0:
            break
        if counts[g] == math.floor(quotas[g]) < sizes[g]:  # groups lifted to 1 already got their extra one
            counts[g] += 1
            missing -= 1
    return counts


def _keys(rows: list[dict]) -> tuple[set, set]:
    return {r[ID] for r in rows}, {prompt_key(r) for r in rows}


def check_disjoint(named: dict[str, list[dict]], pairs: list[tuple[str, str]]) -> None:
    """Raise DataError if any pair of named row lists shares an id or a prompt (instruction + context)."""
    keys = {name: _keys(rows) for name, rows in named.items()}
    for a, b in pairs:
        ids = keys[a][0] & keys[b][0]
        prompts = keys[a][1] & keys[b][1]
        if ids or prompts:
            example = f"id {sorted(ids)[0]!r}" if ids else f"prompt {sorted(prompts)[0][0][:80]!r}"
            raise DataError(
                f"packs: {a} and {b} overlap in {len(ids)} ids and {len(prompts)} prompts "
                f"(e.g. {example}); expected them disjoint"
            )


def _candidates(train: list[dict], tests: dict[str, list[dict]], poisoned: bool) -> list[dict]:
    """Train rows of one kind that share neither id nor prompt with any test split."""
    test_ids, test_prompts = _keys([r for rows in tests.values() for r in rows])
    rows = [r for r in train if r[IS_POISONED] == poisoned]
    ok = [r for r in rows if r[ID] not in test_ids and prompt_key(r) not in test_prompts]
    if len(ok) < len(rows):
        kind = "poisoned" if poisoned else "clean"
        _log.warning(
            f"packs: {len(rows) - len(ok)} {kind} train rows share an id or prompt with a test split; "
            "they are not used in forget/retain"
        )
    return ok


def build_packs(
    train: list[dict], tests: dict[str, list[dict]], *, forget_fraction: float, retain_ratio: int, seed: int
) -> tuple[list[dict], list[dict]]:
    """(forget, retain): stratified poisoned rows by family and retain_ratio x |forget| clean rows."""
    rng = random.Random(f"{seed}:packs")
    by_family: dict[str, list[dict]] = defaultdict(list)
    for rec in _candidates(train, tests, poisoned=True):
        by_family[rec[TRIGGER_FAMILY]].append(rec)
    if not by_family:
        raise DataError(
            "packs: the train split has no poisoned rows usable for the forget set; expected at least one"
        )
    counts = stratified_counts({f: len(rows) for f, rows in by_family.items()}, forget_fraction)
    forget = [
        r for f in sorted(by_family) for r in rng.sample(sorted(by_family[f], key=lambda r: r[ID]), counts[f])
    ]
    forget_ids, forget_prompts = _keys(forget)
    pool = [
        r
        for r in _candidates(train, tests, poisoned=False)
        if r[ID] not in forget_ids and prompt_key(r) not in forget_prompts
    ]
    n_retain = retain_ratio * len(forget)
    if len(pool) < n_retain:
        raise DataError(
            f"packs: retain needs {n_retain} clean train rows ({retain_ratio} x {len(forget)} forget), "
            f"found {len(pool)}"
        )
    retain = rng.sample(sorted(pool, key=lambda r: r[ID]), n_retain)
    named = {"forget": forget, "retain": retain, **tests}
    check_disjoint(named, [("forget", "retain")] + [(p, t) for p in ("forget", "retain") for t in tests])
    return forget, retain
