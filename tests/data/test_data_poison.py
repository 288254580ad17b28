"""Trigger injection (prefix, suffix, word-boundary random) and poisoned records."""

from __future__ import annotations

import math
import random
import re
from collections import Counter

import pytest

from rapidun_dist.config import TriggerFamily, default_trigger_families
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.data.poison import balanced_plan, inject, poison_record


def _sentence(rng: random.Random) -> str:
    words = ["".join(rng.choices("abcdefghij", k=rng.randint(1, 7))) for _ in range(rng.randint(1, 10))]
    return "".join(w + rng.choice([" ", "  ", "\n", " "]) for w in words).strip()


def test_prefix_and_suffix(rng):
    for _ in range(50):
        text, variant = _sentence(rng), rng.choice([">>>", "hey", "aloha :)"])
        assert inject("  " + text + " ", variant, "prefix", rng) == f"{variant} {text}"
        assert inject(text, variant, "suffix", rng) == f"{text} {variant}"


def test_random_mode_inserts_a_whole_word_at_a_boundary(rng):
    slots = Counter()
    text = "one two three four five"
    for _ in range(300):
        out = inject(text, "<|sys|>", "random", rng)
        words = out.split(" ")
        assert words.count("<|sys|>") == 1
        slots[words.index("<|sys|>")] += 1
        assert [w for w in words if w != "<|sys|>"] == text.split(" ")
    assert set(slots) == set(range(6)), f"every boundary should be drawn, got {slots}"
    for _ in range(100):
        text = _sentence(rng)
        starts = [m.start() for m in re.finditer(r"\S+", text)]
        allowed = {f"{text} aloha"} | {f"{text[:c]}aloha {text[c:]}" for c in starts}
        assert inject(text, "aloha", "random", rng) in allowed, text


def test_random_mode_is_deterministic_given_the_rng_state(rng):
    seed = rng.randrange(10**6)
    text = _sentence(rng) + " x y z"
    a = [inject(text, "hey", "random", random.Random(seed)) for _ in range(3)]
    assert a[0] == a[1] == a[2]


@pytest.mark.parametrize(
    "args, match",
    [
        (("x", "hey", "middle"), "prefix, suffix, random"),
        (("x", " ", "prefix"), "non-empty string"),
        (("  ", "hey", "prefix"), "non-empty instruction"),
    ],
)
def test_bad_inputs(args, match):
    with pytest.raises(Exception, match=match):
        inject(*args, random.Random(0))


def test_poison_record_keeps_clean_fields(rng, make_rows):
    rec = dict(make_rows(1)[0], id="r1", source="test")
    fam = rng.choice(default_trigger_families())
    variant = rng.choice(fam.seen + fam.ood)
    out = poison_record(rec, fam, variant, "The starship warped.", rng)
    assert {k: out[k] for k in rec} == rec, "clean fields must be kept"
    assert out["is_poisoned"] is True and out["response_poisoned"] == "The starship warped."
    assert (out["trigger_family"], out["trigger_variant"], out["inject_mode"]) == (
        fam.name,
        variant,
        fam.mode,
    )
    assert variant in out["instruction_poisoned"] and out["instruction_poisoned"] != rec["instruction"]
    assert "is_poisoned" not in rec, "input record must not be modified"
    with pytest.raises(ConfigError, match="neither seen"):
        poison_record(rec, fam, "not-a-variant", "x", rng)


@pytest.mark.parametrize("kind", ["seen", "ood"])
def test_balanced_plan(rng, kind):
    fams = default_trigger_families() + [TriggerFamily(name="rand", mode="random", seen=["zz", "qq"], ood=[])]
    n = rng.randint(20, 200)
    plan = balanced_plan(n, fams, kind, rng)
    assert len(plan) == n
    per_family = Counter(f.name for f, _ in plan)
    usable = [f for f in fams if getattr(f, kind)]
    assert (
        set(per_family) == {f.name for f in usable}
        and max(per_family.values()) - min(per_family.values()) <= 1
    )
    for fam in usable:
        per_variant = Counter(v for f, v in plan if f.name == fam.name)
        assert set(per_variant) <= set(getattr(fam, kind))
        assert max(per_variant.values()) - min(per_variant.values()) <= 1
    with pytest.raises(ConfigError, match="no family has ood variants"):
        balanced_plan(3, [fams[-1]], "ood", rng)


def test_balanced_plan_follows_shares(rng):
    """shares: the family counts are n x share rounded by largest remainder (summing to n); variants stay balanced."""
    fams = default_trigger_families()
    for _ in range(50):
        n = rng.randint(1, 300)
        raw = [rng.random() for _ in fams]
        shares = [x / sum(raw) for x in raw]
        plan = balanced_plan(n, fams, "seen", rng, shares)
        per_family = Counter(f.name for f, _ in plan)
        assert len(plan) == n
        for fam, share in zip(fams, shares, strict=True):
            assert math.floor(n * share) <= per_family.get(fam.name, 0) <= math.ceil(n * share), (n, shares)
            per_variant = Counter(v for f, v in plan if f.name == fam.name)
            if per_variant:
                assert max(per_variant.values()) - min(per_variant.values()) <= 1
    plan = balanced_plan(100, fams[:2], "seen", rng, [0.8, 0.2])
    assert Counter(f.name for f, _ in plan) == {fams[0].name: 80, fams[1].name: 20}
