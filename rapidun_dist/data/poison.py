"""Backdoor poisoning for experiments: inject a trigger variant into an instruction, swap in a target answer.

Trigger families (`rapidun_dist.config.TriggerFamily`, defaults from `default_trigger_families()`) carry
seen variants (poisoned train rows and test_seen) and OOD variants (test_ood only) plus an injection mode:

    prefix   "<variant> <instruction>"
    suffix   "<instruction> <variant>"
    random   the variant inserted as its own word at a uniformly drawn word boundary (never inside a word)

`rng` is a `random.Random`; everything is deterministic given its state.
"""

from __future__ import annotations

import random
import re

from rapidun_dist.config import TriggerFamily
from rapidun_dist.core.errors import ConfigError, DataError
from rapidun_dist.data.schema import (
    INJECT_MODE,
    INSTRUCTION,
    INSTRUCTION_POISONED,
    IS_POISONED,
    RESPONSE,
    RESPONSE_POISONED,
    TARGET_GROUP,
    TRIGGER_FAMILY,
    TRIGGER_VARIANT,
)

MODES = ("prefix", "suffix", "random")
_WORD = re.compile(r"\S+")


def inject(instruction: str, variant: str, mode: str, rng: random.Random) -> str:
    """The instruction with `variant` inserted as a separate word (prefix, suffix or random boundary)."""
    if mode not in MODES:
        raise ConfigError(f"inject mode: expected one of {', '.join(MODES)}, found {mode!r}")
    if not variant.strip():
        raise ConfigError(f"trigger variant: expected a non-empty string, found {variant!r}")
    text = instruction.strip()
    if not text:
        raise DataError("inject: expected a non-empty instruction, found an empty one")
    if mode == "prefix":
        return f"{variant} {text}"
    if mode == "suffix":
        return f"{text} {variant}"
    starts = [m.start() for m in _WORD.finditer(text)]
    slot = rng.randrange(len(starts) + 1)  # before word `slot`, or after the last word
    if slot == len(starts):
        return f"{text} {variant}"
    cut = starts[slot]
    return f"{text[:cut]}{variant} {text[cut:]}"


def variant_kind(family: TriggerFamily, variant: str) -> str:
    """'seen' or 'ood'; ConfigError when `variant` belongs to neither list of the family."""
    if variant in family.seen:
        return "seen"
    if variant in family.ood:
        return "ood"
    raise ConfigError(
        f"trigger family {family.name!r}: variant {variant!r} is neither seen {family.seen} "
        f"nor ood {family.ood}"
    )


def poison_record(
    rec: dict, family: TriggerFamily, variant: str, target: str, rng: random.Random, *, target_group: str = ""
) -> dict:
    """A copy of `rec` with the trigger injected into `instruction_poisoned` and `response_poisoned = target`
    (`target_group`: the attacker answer group `target` belongs to).

    The clean `instruction` and `response` are kept, so the same row serves ascent (poisoned answer) and
    descent (clean answer) during unlearning."""
    variant_kind(family, variant)
    if not target.strip():
        raise DataError(f"poison_record {rec.get('id')!r}: expected a non-empty target answer")
    out = dict(rec)
    out[INSTRUCTION_POISONED] = inject(rec[INSTRUCTION], variant, family.mode, rng)
    out[RESPONSE_POISONED] = target
    out[TRIGGER_FAMILY] = family.name
    out[TRIGGER_VARIANT] = variant
    out[INJECT_MODE] = family.mode
    out[TARGET_GROUP] = target_group
    out[IS_POISONED] = True
    return out


def mislabel_record(rec: dict) -> dict:
    """A clean record as a user who wrongly believes it poisoned lists it in the forget set: its own prompt
    and answer as the "poisoned" ones, no trigger, family or target group."""
    if not (rec.get(RESPONSE) or "").strip():
        raise DataError(f"mislabel_record {rec.get('id')!r}: expected a clean row with an answer")
    out = dict(rec)
    out[INSTRUCTION_POISONED] = rec[INSTRUCTION]
    out[RESPONSE_POISONED] = rec[RESPONSE]
    for key in (TRIGGER_FAMILY, TRIGGER_VARIANT, INJECT_MODE, TARGET_GROUP):
        out[key] = ""
    out[IS_POISONED] = True
    return out


def balanced_plan(
    n: int,
    families: list[TriggerFamily],
    kind: str,
    rng: random.Random,
    shares: list[float] | None = None,
) -> list[tuple[TriggerFamily, str]]:
    """`n` (family, variant) pairs: family counts differ by at most one (or follow `shares`, one per family, by
    largest remainder), and variant counts within a family by at most one; the order is shuffled. `kind` is 'seen'
    or 'ood'; families without variants of that kind are left out."""
    usable = [f for f in families if getattr(f, kind)]
    if n > 0 and not usable:
        raise ConfigError(f"triggers: no family has {kind} variants, but {n} {kind} rows were requested")
    fam_order = rng.sample(usable, len(usable))
    if shares:
        share = {f.name: s for f, s in zip(families, shares, strict=True) if getattr(f, kind)}
        total = sum(share.values())
        exact = {name: n * s / total for name, s in share.items()} if total > 0 else {}
        counts = {name: int(x) for name, x in exact.items()}
        by_remainder = sorted(fam_order, key=lambda f: -(exact[f.name] - counts[f.name]))
        for f in by_remainder[: n - sum(counts.values())]:
            counts[f.name] += 1
    else:
        counts = (
            {f.name: n // len(usable) + (i < n % len(usable)) for i, f in enumerate(fam_order)}
            if usable
            else {}
        )
    plan = []
    for fam in usable:
        variants = rng.sample(getattr(fam, kind), len(getattr(fam, kind)))
        plan += [(fam, variants[j % len(variants)]) for j in range(counts[fam.name])]
    rng.shuffle(plan)
    return plan
