"""Splits (train / val_clean / val_seen / test_clean / test_near / test_seen / test_ood) and the packs.

From a pool of clean records with unique prompts:

    test_near  n_test_near rows of `near_categories` (own seeded draw; empty when n_test_near = 0)
    val_clean, test_clean, seen prompts, ood prompts, training pool = disjoint slices of a seeded shuffle of
               the rest
    pool:      round(poison_rate * |pool|) rows poisoned (families balanced, seen variants only)
    val_seen:  n_val_seen clean rows of the poisoned pool (own seeded draw), a seen trigger injected;
               train = the pool without them (so adding val_seen left every poisoned row and test draw as
               it was; the poison rate of train is poison_rate * |pool| / |train|)
    test_seen: seen-prompt rows with a seen trigger injected, test_ood likewise with OOD variants

Packs (`make_packs`): forget = known poisoned rows, round(forget_fraction * |poisoned|) of them (or
`n_forget`), stratified by family (largest-remainder rounding, at least one per family) over the families
and target groups the pack covers; plus, with `noise` > 0, clean train rows the user mislabelled as poisoned
(a share `noise` of the pack), shuffled in; retain = retain_ratio * |forget| clean train rows. With
`contamination` c > 0, max(1, round(c * |retain|)) of those rows (at seeded positions, own RNG stream, so the
other rows stay as at c = 0) are swapped for poisoned train rows outside the forget pack - the poison a user's
unlabelled training set still holds - written as the user holds them: triggered instruction, poisoned answer,
no labels. All of them are disjoint from every held-out split and from each other, by id and by prompt
(instruction + context; a contaminated row's clean prompt too). `forget_truth` / `retain_truth` list, per pack
row, the true record and whether it is mislabelled / contaminated (evaluation only).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field

from rapidun_dist.config import DataConfig, TriggerFamily
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.logging import get_logger
from rapidun_dist.data.poison import balanced_plan, mislabel_record, poison_record
from rapidun_dist.data.schema import (
    CATEGORY,
    CONTAMINATED,
    CONTEXT,
    HELD_OUT,
    ID,
    INJECT_MODE,
    INSTRUCTION,
    INSTRUCTION_POISONED,
    IS_POISONED,
    MISLABELLED,
    RESPONSE,
    RESPONSE_POISONED,
    SOURCE,
    TARGET_GROUP,
    TRIGGER_FAMILY,
    TRIGGER_VARIANT,
    prompt_key,
)
from rapidun_dist.data.targets import Target, target_pool

TEST_SPLITS = HELD_OUT  # every split the packs must stay disjoint from (validation and test)
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


def near_slice(clean: list[dict], cfg: DataConfig) -> tuple[list[dict], list[dict]]:
    """(test_near, the rest): n_test_near rows of `near_categories`, drawn with their own seeded RNG."""
    if cfg.n_test_near == 0:
        return [], clean
    near = [r for r in clean if r.get(CATEGORY) in cfg.near_categories]
    if len(near) <= cfg.n_test_near:
        raise DataError(
            f"data: test_near needs {cfg.n_test_near} rows of categories {cfg.near_categories} and some left "
            f"for train, found {len(near)}; lower data.n_test_near or add near-topic rows"
        )
    picked = random.Random(f"{cfg.seed}:near").sample(near, cfg.n_test_near)
    ids = {r[ID] for r in picked}
    return picked, [r for r in clean if r[ID] not in ids]


def carve(clean: list[dict], cfg: DataConfig, rng: random.Random) -> dict[str, list[dict]]:
    """Disjoint slices: test_near, then from a seeded shuffle of the rest val_clean, test_clean, seen/ood test
    prompts, and the training pool (what is left; val_seen is drawn from it after poisoning)."""
    test_near, rest = near_slice(clean, cfg)
    sizes = {
        "val_clean": cfg.n_val,
        "test_clean": cfg.n_test_clean,
        "seen": cfg.n_test_seen,
        "ood": cfg.n_test_ood,
    }
    n_pool = len(rest) - sum(sizes.values())
    n_poison = _round(cfg.poison_rate * n_pool)
    if n_pool - n_poison - cfg.n_val_seen < 1 or n_poison < 1:
        raise DataError(
            f"data: {len(clean)} clean records leave {n_pool} train rows ({n_poison} poisoned at "
            f"poison_rate={cfg.poison_rate}, val_seen={cfg.n_val_seen} clean ones held out) after {sizes} and "
            f"test_near={len(test_near)}; expected at least one clean and one poisoned train row - add data or "
            "shrink the held-out splits"
        )
    order = rng.sample(rest, len(rest))
    out, start = {"test_near": test_near}, 0
    for name, size in sizes.items():
        out[name] = order[start : start + size]
        start += size
    out["train"] = order[start:]
    return out


def split_off(pool: list[dict], n: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """(the pool without them, n of its clean rows): a seeded draw, the pool's order kept."""
    clean = [i for i, r in enumerate(pool) if not r[IS_POISONED]]
    picked = set(rng.sample(clean, n))
    return [r for i, r in enumerate(pool) if i not in picked], [r for i, r in enumerate(pool) if i in picked]


def poison_train(
    train: list[dict],
    n_poison: int,
    families: list[TriggerFamily],
    targets: list[Target],
    rng: random.Random,
    shares: list[float] | None = None,
) -> list[dict]:
    """Train rows with `n_poison` of them poisoned (seen variants, families balanced or in `shares`, a target from
    the pool)."""
    chosen = sorted(rng.sample(range(len(train)), n_poison))
    plan = balanced_plan(n_poison, families, "seen", rng, shares)
    out = list(train)
    for idx, (fam, variant) in zip(chosen, plan, strict=True):
        text, group = rng.choice(targets)
        out[idx] = poison_record(train[idx], fam, variant, text, rng, target_group=group)
    return out


def triggered(
    rows: list[dict], families: list[TriggerFamily], kind: str, targets: list[Target], rng: random.Random
) -> list[dict]:
    """Prompts with a trigger of `kind` ('seen' or 'ood') injected and `response_poisoned` = a target."""
    plan = balanced_plan(len(rows), families, kind, rng)
    out = []
    for rec, (fam, variant) in zip(rows, plan, strict=True):
        text, group = rng.choice(targets)
        out.append(poison_record(rec, fam, variant, text, rng, target_group=group))
    return out


def make_splits(clean: list[dict], cfg: DataConfig) -> dict[str, list[dict]]:
    """The seven splits from clean records with unique prompts (module docstring). Deterministic in cfg.seed."""
    rng = random.Random(f"{cfg.seed}:splits")
    parts = carve(clean, cfg, rng)
    targets = target_pool(cfg)
    n_poison = _round(cfg.poison_rate * len(parts["train"]))
    pool = poison_train(parts["train"], n_poison, cfg.triggers, targets, rng, cfg.family_shares)
    test_seen = triggered(parts["seen"], cfg.triggers, "seen", targets, rng)
    test_ood = triggered(parts["ood"], cfg.triggers, "ood", targets, rng)
    seen_rng = random.Random(f"{cfg.seed}:val_seen")  # its own stream: val_seen shifts no other draw
    train, val_prompts = split_off(pool, cfg.n_val_seen, seen_rng)
    return {
        "train": train,
        "val_clean": parts["val_clean"],
        "val_seen": triggered(val_prompts, cfg.triggers, "seen", targets, seen_rng),
        "test_clean": parts["test_clean"],
        "test_near": parts["test_near"],
        "test_seen": test_seen,
        "test_ood": test_ood,
    }


def seen_triggers_of(train: list[dict]) -> tuple[list[TriggerFamily], list[Target]]:
    """The seen trigger families (variants as found, the mode of a family's first row) and the attacker answers
    of a train split's poisoned rows."""
    modes: dict[str, str] = {}
    variants: dict[str, dict[str, None]] = defaultdict(dict)
    targets: dict[Target, None] = {}
    for r in train:
        if r[IS_POISONED] and r[TRIGGER_FAMILY] and r[TRIGGER_VARIANT] and r[INJECT_MODE]:
            modes.setdefault(r[TRIGGER_FAMILY], r[INJECT_MODE])
            variants[r[TRIGGER_FAMILY]][r[TRIGGER_VARIANT]] = None
            targets[(r[RESPONSE_POISONED], r.get(TARGET_GROUP, ""))] = None
    families = [
        TriggerFamily(name=n, mode=modes[n], seen=list(v), ood=[]) for n, v in sorted(variants.items())
    ]
    return families, list(targets)


def carve_val_seen(splits: dict[str, list[dict]], cfg: DataConfig) -> dict[str, list[dict]]:
    """A prepared dataset without val_seen: take n_val_seen of its val_clean rows (half of them, with a
    warning, when val_clean is not larger than that) and inject the seen triggers (and attacker answers)
    found in its train split. The rest stays val_clean."""
    val = splits["val_clean"]
    n = cfg.n_val_seen if len(val) > cfg.n_val_seen else len(val) // 2
    if n < 1:
        raise DataError(
            f"prepared data has no val_seen.jsonl, and its val_clean ({len(val)} rows) is too small to carve "
            "one from (needs at least 2 rows); add val_seen.jsonl or more val_clean rows"
        )
    if n < cfg.n_val_seen:
        _log.warning(
            f"data: val_clean has {len(val)} rows, not more than data.n_val_seen={cfg.n_val_seen}: "
            f"val_seen gets half of them ({n})"
        )
    families, targets = seen_triggers_of(splits["train"])
    if not families:
        raise DataError(
            "prepared data has no val_seen.jsonl, and its train split has no poisoned rows with "
            "trigger_family / trigger_variant / inject_mode to build one from; add val_seen.jsonl"
        )
    rng = random.Random(f"{cfg.seed}:val_seen")
    picked = set(rng.sample(range(len(val)), n))
    seen = triggered([r for i, r in enumerate(val) if i in picked], families, "seen", targets, rng)
    _log.info(
        f"data: val_seen carved from val_clean ({len(seen)} rows, {len(families)} seen trigger families)"
    )
    return {**splits, "val_clean": [r for i, r in enumerate(val) if i not in picked], "val_seen": seen}


def stratified_counts(sizes: dict[str, int], fraction: float, *, total: int | None = None) -> dict[str, int]:
    """Per-group sample counts: `total` (default round(fraction * sum(sizes))) split in proportion to the group
    sizes by largest remainder, >= 1 per non-empty group, never more than the group has. E.g. sizes
    267/266/266 at 0.05 -> 14/13/13."""
    if total is not None:
        fraction = total / max(sum(sizes.values()), 1)
    quotas = {g: fraction * n for g, n in sizes.items() if n > 0}
    counts = {g: min(sizes[g], max(1, math.floor(q))) for g, q in quotas.items()}
    missing = (_round(fraction * sum(sizes.values())) if total is None else total) - sum(counts.values())
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


@dataclass(frozen=True, kw_only=True)
class PackSpec:
    """How to build the packs (the `data.*` fields of the same names, see DataConfig)."""

    forget_fraction: float
    retain_ratio: int
    seed: int
    n_forget: int | None = None  # known poisoned rows as a count (overrides forget_fraction)
    families: tuple[str, ...] = ()  # trigger families the forget pack covers (empty = all)
    groups: tuple[str, ...] = ()  # target groups it covers (empty = all)
    noise: float = 0.0  # share of the forget pack that is mislabelled clean rows
    noise_near: float = 0.0  # share of the mislabelled rows drawn from near_categories rows
    near_categories: tuple[str, ...] = ()
    contamination: float = 0.0  # share of the retain pack that is poisoned train rows outside the forget pack
    reference_rows: int = 0  # find_poison's reference: the retain pack plus clean rows up to this many

    @classmethod
    def from_config(cls, cfg: DataConfig) -> PackSpec:
        return cls(
            forget_fraction=cfg.forget_fraction,
            retain_ratio=cfg.retain_ratio,
            seed=cfg.seed,
            n_forget=cfg.n_forget,
            families=tuple(cfg.forget_families),
            groups=tuple(cfg.forget_target_groups),
            noise=cfg.forget_noise,
            noise_near=cfg.forget_noise_near,
            near_categories=tuple(cfg.near_categories),
            contamination=cfg.retain_contamination,
            reference_rows=cfg.reference_rows,
        )


@dataclass
class PackSet:
    """The packs and their ground truth (`truth` in the order of `forget`, `retain_truth` in that of `retain`)."""

    forget: list[dict]
    retain: list[dict]
    truth: list[dict]
    retain_truth: list[dict]
    reference: list[dict] = field(default_factory=list)  # find_poison's reference rows beyond the retain pack


def _covered(poisoned: list[dict], spec: PackSpec) -> list[dict]:
    """The poisoned candidates whose family and target group the forget pack covers."""
    groups_found = sorted({r.get(TARGET_GROUP, "") for r in poisoned})
    unknown = [g for g in spec.groups if g not in groups_found]
    if unknown:
        raise DataError(
            f"packs: data.forget_target_groups {unknown} not found among the poisoned train rows' target "
            f"groups {groups_found}"
        )
    rows = [
        r
        for r in poisoned
        if (not spec.families or r[TRIGGER_FAMILY] in spec.families)
        and (not spec.groups or r.get(TARGET_GROUP, "") in spec.groups)
    ]
    if not rows:
        raise DataError(
            f"packs: no poisoned train row has a covered family {list(spec.families) or 'any'} and target group "
            f"{list(spec.groups) or 'any'}; expected at least one"
        )
    return rows


def _known_poisoned(poisoned: list[dict], spec: PackSpec, rng: random.Random) -> list[dict]:
    """The truly poisoned forget rows: stratified by family over the covered candidates."""
    by_family: dict[str, list[dict]] = defaultdict(list)
    for rec in _covered(poisoned, spec):
        by_family[rec[TRIGGER_FAMILY]].append(rec)
    sizes = {f: len(rows) for f, rows in by_family.items()}
    if spec.n_forget is None and not (spec.families or spec.groups):
        counts = stratified_counts(sizes, spec.forget_fraction)
    else:
        total = spec.n_forget if spec.n_forget is not None else _round(spec.forget_fraction * len(poisoned))
        total = max(total, 1)
        if total > sum(sizes.values()):
            raise DataError(
                f"packs: {total} known poisoned rows asked for, only {sum(sizes.values())} poisoned train rows "
                "have a covered family and target group"
            )
        counts = stratified_counts(sizes, 0.0, total=total)
    return [
        r for f in sorted(by_family) for r in rng.sample(sorted(by_family[f], key=lambda r: r[ID]), counts[f])
    ]


def _mislabelled(clean: list[dict], n_known: int, spec: PackSpec, rng: random.Random) -> list[dict]:
    """Clean train rows the user wrongly lists as poisoned: a share `noise` of the pack, a share `noise_near`
    of them from near-topic rows."""
    n_noise = _round(spec.noise * n_known / (1.0 - spec.noise))
    if n_noise == 0:
        return []
    near = [r for r in clean if r.get(CATEGORY) in spec.near_categories]
    other = [r for r in clean if r.get(CATEGORY) not in spec.near_categories]
    n_near = _round(spec.noise_near * n_noise)
    if n_near > len(near) or n_noise - n_near > len(other):
        raise DataError(
            f"packs: {n_noise} mislabelled rows ({n_near} near-topic) asked for, found {len(near)} near-topic "
            f"and {len(other)} other clean train rows"
        )
    by_id = lambda rows: sorted(rows, key=lambda r: r[ID])  # noqa: E731
    return rng.sample(by_id(near), n_near) + rng.sample(by_id(other), n_noise - n_near)


def _truth(forget: list[dict], mislabelled_ids: set[str]) -> list[dict]:
    return [dict(r, **{MISLABELLED: r[ID] in mislabelled_ids}) for r in forget]


def as_unlabelled(rec: dict) -> dict:
    """A poisoned train row as a user's unlabelled training set holds it: its triggered instruction and poisoned
    answer as `instruction` / `response`, no poison fields, `is_poisoned` false (no labels)."""
    return {
        ID: rec[ID],
        INSTRUCTION: rec[INSTRUCTION_POISONED],
        CONTEXT: rec.get(CONTEXT, ""),
        RESPONSE: rec[RESPONSE_POISONED],
        CATEGORY: rec.get(CATEGORY, ""),
        SOURCE: rec.get(SOURCE, ""),
        IS_POISONED: False,
    }


def _contaminate(
    retain: list[dict], uncovered: list[dict], n_poisoned: int, spec: PackSpec
) -> tuple[list[dict], list[dict]]:
    """(retain with a share `contamination` of its rows swapped for uncovered poisoned rows, unlabelled; the
    truth per retain row). Own RNG stream: the swap leaves every other draw as at contamination 0."""
    truth = [dict(r, **{CONTAMINATED: False}) for r in retain]
    if spec.contamination == 0.0:
        return retain, truth
    n = max(1, _round(spec.contamination * len(retain)))
    if n > len(uncovered):
        raise DataError(
            f"packs: data.retain_contamination={spec.contamination} asks for {n} poisoned rows of the "
            f"{len(retain)}-row retain pack, found {len(uncovered)} poisoned train rows outside the forget pack "
            f"(of {n_poisoned} usable poisoned train rows); lower data.retain_contamination or data.forget_fraction, "
            "or raise data.poison_rate"
        )
    rng = random.Random(f"{spec.seed}:retain_contamination")
    picked = rng.sample(sorted(uncovered, key=lambda r: r[ID]), n)
    slots = sorted(rng.sample(range(len(retain)), n))
    rows = list(retain)
    for slot, rec in zip(slots, picked, strict=True):
        rows[slot], truth[slot] = as_unlabelled(rec), dict(rec, **{CONTAMINATED: True})
    return rows, truth


def make_packs(train: list[dict], tests: dict[str, list[dict]], spec: PackSpec) -> PackSet:
    """forget (known poisoned + mislabelled rows), retain (retain_ratio x |forget| rows: clean, a share
    `contamination` of them poisoned) and the truth of both."""
    rng = random.Random(f"{spec.seed}:packs")
    poisoned = _candidates(train, tests, poisoned=True)
    if not poisoned:
        raise DataError(
            "packs: the train split has no poisoned rows usable for the forget set; expected at least one"
        )
    known = _known_poisoned(poisoned, spec, rng)
    clean = _candidates(train, tests, poisoned=False)
    noisy = _mislabelled(clean, len(known), spec, rng)
    truth = _truth(known, set()) + _truth(noisy, {r[ID] for r in noisy})
    forget = known + [mislabel_record(r) for r in noisy]
    if noisy:  # shuffled in, so the pack order does not tell which rows are mislabelled
        order = rng.sample(range(len(forget)), len(forget))
        forget, truth = [forget[i] for i in order], [truth[i] for i in order]
    forget_ids, forget_prompts = _keys(forget)

    def outside(rows: list[dict]) -> list[dict]:
        return [r for r in rows if r[ID] not in forget_ids and prompt_key(r) not in forget_prompts]

    pool = outside(clean)
    n_retain = spec.retain_ratio * len(forget)
    if len(pool) < n_retain:
        raise DataError(
            f"packs: retain needs {n_retain} clean train rows ({spec.retain_ratio} x {len(forget)} forget), "
            f"found {len(pool)}"
        )
    retain = rng.sample(sorted(pool, key=lambda r: r[ID]), n_retain)
    reference = extra_reference(pool, retain, spec.reference_rows, random.Random(f"{spec.seed}:reference"))
    retain, retain_truth = _contaminate(retain, outside(poisoned), len(poisoned), spec)
    named = {
        "forget": forget,
        "retain": retain,
        "retain_truth": retain_truth,
        "reference": reference,
        **tests,
    }
    pairs = [
        ("forget", "retain"),
        ("forget", "retain_truth"),
        ("forget", "reference"),
        ("retain", "reference"),
    ]
    packs = ("forget", "retain", "retain_truth", "reference")
    check_disjoint(named, pairs + [(p, t) for p in packs for t in tests])
    return PackSet(forget=forget, retain=retain, truth=truth, retain_truth=retain_truth, reference=reference)


def extra_reference(pool: list[dict], retain: list[dict], rows: int, rng: random.Random) -> list[dict]:
    """find_poison's reference rows beyond the retain pack (`data.reference_rows`): `rows` - |retain| rows of `pool`
    that are not retain rows (by id and prompt), a seeded draw of its own (every other draw is as without it); none
    when `rows` <= |retain|."""
    need = rows - len(retain)
    if need <= 0:
        return []
    taken_ids, taken_prompts = _keys(retain)
    free = [r for r in pool if r[ID] not in taken_ids and prompt_key(r) not in taken_prompts]
    if len(free) < need:
        raise DataError(
            f"data.reference_rows={rows}: the retain pack holds {len(retain)} rows and {len(free)} more usable clean "
            f"rows are left, {need} needed; lower data.reference_rows"
        )
    return rng.sample(sorted(free, key=lambda r: r[ID]), need)


def build_packs(
    train: list[dict],
    tests: dict[str, list[dict]],
    *,
    forget_fraction: float,
    retain_ratio: int,
    seed: int,
    **kw,
) -> tuple[list[dict], list[dict]]:
    """(forget, retain) of `make_packs`; `kw` are the other PackSpec fields (n_forget, families, noise, ...)."""
    packs = make_packs(
        train, tests, PackSpec(forget_fraction=forget_fraction, retain_ratio=retain_ratio, seed=seed, **kw)
    )
    return packs.forget, packs.retain
