"""Forget / retain packs: stratification, sizes, disjointness, and the errors for empty or overlapping packs."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from rapidun_dist.config import DataConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.data.schema import prompt_key
from rapidun_dist.data.splits import TEST_SPLITS, build_packs, check_disjoint, make_splits, stratified_counts
from rapidun_dist.data.synthetic import generate_corpus


def test_stratified_counts_reference_example():
    assert stratified_counts({"A_surface": 267, "B_style": 266, "C_semantic": 266}, 0.05) == {
        "A_surface": 14,
        "B_style": 13,
        "C_semantic": 13,
    }


def test_stratified_counts_properties(rng):
    for _ in range(200):
        sizes = {f"f{i}": rng.randint(0, 60) for i in range(rng.randint(1, 5))}
        frac = rng.uniform(0.01, 1.0)
        counts = stratified_counts(sizes, frac)
        assert set(counts) == {g for g, n in sizes.items() if n > 0}
        assert all(1 <= counts[g] <= sizes[g] for g in counts)
        target = math.floor(frac * sum(sizes.values()) + 0.5)
        lifted = sum(1 for g in counts if frac * sizes[g] < 1)
        assert target <= sum(counts.values()) <= target + lifted, (sizes, frac, counts)
        for g in counts:  # each group gets its quota rounded down or up (or 1 when the quota is below 1)
            assert math.floor(frac * sizes[g]) <= counts[g] <= max(1, math.ceil(frac * sizes[g])), (
                sizes,
                frac,
                counts,
            )


@pytest.fixture
def splits(rng):
    cfg = DataConfig(
        n_synthetic=1200,
        n_val=40,
        n_test_clean=40,
        n_test_seen=30,
        n_test_ood=30,
        poison_rate=rng.uniform(0.08, 0.3),
        seed=rng.randrange(10**6),
    )
    return cfg, make_splits(generate_corpus(cfg.n_synthetic, cfg.seed), cfg)


def test_build_packs(splits, rng):
    cfg, sp = splits
    frac, ratio = rng.uniform(0.05, 0.5), rng.randint(1, 4)
    forget, retain = build_packs(
        sp["train"], {t: sp[t] for t in TEST_SPLITS}, forget_fraction=frac, retain_ratio=ratio, seed=cfg.seed
    )
    poisoned = [r for r in sp["train"] if r["is_poisoned"]]
    by_family = Counter(r["trigger_family"] for r in poisoned)
    assert Counter(r["trigger_family"] for r in forget) == Counter(stratified_counts(dict(by_family), frac))
    assert all(r["is_poisoned"] for r in forget) and not any(r["is_poisoned"] for r in retain)
    assert len(retain) == ratio * len(forget)
    train_ids = {r["id"] for r in sp["train"]}
    assert {r["id"] for r in forget + retain} <= train_ids
    for pack in (forget, retain):
        for t in TEST_SPLITS:
            assert not {prompt_key(r) for r in pack} & {prompt_key(r) for r in sp[t]}
    again = build_packs(
        sp["train"], {t: sp[t] for t in TEST_SPLITS}, forget_fraction=frac, retain_ratio=ratio, seed=cfg.seed
    )
    assert again == (forget, retain)


def test_empty_forget_set_is_an_error(splits):
    cfg, sp = splits
    clean_train = [r for r in sp["train"] if not r["is_poisoned"]]
    with pytest.raises(DataError, match="no poisoned rows"):
        build_packs(clean_train, {t: sp[t] for t in TEST_SPLITS}, forget_fraction=0.1, retain_ratio=3, seed=0)


def test_too_few_clean_rows_for_retain(splits):
    cfg, sp = splits
    train = [r for r in sp["train"] if r["is_poisoned"]] + [r for r in sp["train"] if not r["is_poisoned"]][
        :5
    ]
    with pytest.raises(DataError, match="retain needs"):
        build_packs(train, {}, forget_fraction=0.5, retain_ratio=3, seed=0)


def test_check_disjoint_catches_shared_id_and_shared_prompt(splits, rng):
    _, sp = splits
    a = rng.sample(sp["train"], 10)
    shared = rng.choice(sp["test_clean"])
    with pytest.raises(DataError, match="forget and test_clean overlap in 1 ids"):
        check_disjoint(
            {"forget": a + [dict(rng.choice(a), id=shared["id"])], "test_clean": sp["test_clean"]},
            [("forget", "test_clean")],
        )
    same_prompt = dict(shared, id="fresh-id", response="another answer")
    with pytest.raises(DataError, match="0 ids and 1 prompts"):
        check_disjoint(
            {"retain": a + [same_prompt], "test_clean": sp["test_clean"]}, [("retain", "test_clean")]
        )
    check_disjoint({"retain": a, "test_clean": sp["test_clean"]}, [("retain", "test_clean")])


def test_leaked_train_rows_are_never_packed(splits):
    cfg, sp = splits
    leaked = [
        dict(r, id=f"leak-{i}") for i, r in enumerate(sp["test_seen"])
    ]  # poisoned copies of test prompts
    leaked += [dict(r, id=f"leakc-{i}") for i, r in enumerate(sp["test_clean"])]
    train = sp["train"] + leaked
    random.Random(0).shuffle(train)
    forget, retain = build_packs(
        train, {t: sp[t] for t in TEST_SPLITS}, forget_fraction=1.0, retain_ratio=1, seed=cfg.seed
    )
    assert not any(r["id"].startswith("leak") for r in forget + retain)
    assert len(forget) == sum(r["is_poisoned"] for r in sp["train"])


def test_val_seen_comes_from_the_clean_pool_and_shifts_no_other_draw(rng):
    base = {"n_synthetic": 900, "n_val": 30, "n_test_clean": 30, "n_test_seen": 24, "n_test_ood": 24}
    seed = rng.randrange(10**6)
    corpus = generate_corpus(900, seed)
    small, large = rng.sample(range(1, 120), 2)
    a = make_splits(corpus, DataConfig(seed=seed, n_val_seen=small, **base))
    b = make_splits(corpus, DataConfig(seed=seed, n_val_seen=large, **base))
    for split in ("val_clean", "test_clean", "test_seen", "test_ood"):
        assert a[split] == b[split], split
    assert [r for r in a["train"] if r["is_poisoned"]] == [r for r in b["train"] if r["is_poisoned"]]
    assert (len(a["val_seen"]), len(b["val_seen"])) == (small, large)
    assert len(a["train"]) + small == len(b["train"]) + large
    pool_ids = {r["id"] for r in a["train"]} | {r["id"] for r in a["val_seen"]}
    assert pool_ids == {r["id"] for r in b["train"]} | {r["id"] for r in b["val_seen"]}
    assert all(r["is_poisoned"] and r["trigger_variant"] in r["instruction_poisoned"] for r in a["val_seen"])
    tests = {t: a[t] for t in TEST_SPLITS}
    packs = [
        build_packs(s["train"], tests, forget_fraction=0.1, retain_ratio=2, seed=seed)[0] for s in (a, b)
    ]
    assert packs[0] == packs[1]


def test_family_shares_set_the_poisoned_training_mix(rng):
    """data.family_shares: the poisoned training rows come 80 / 20 from two families; the test splits stay balanced;
    shares that do not match the families are refused."""
    from rapidun_dist.config.defaults import default_trigger_families
    from rapidun_dist.core.errors import ConfigError

    fams = default_trigger_families()[:2]
    cfg = DataConfig(
        n_synthetic=1200, n_val=40, n_test_clean=40, n_test_seen=30, n_test_ood=30, poison_rate=0.2,
        seed=rng.randrange(10**6), triggers=fams, family_shares=[0.8, 0.2],
    )  # fmt: skip
    splits = make_splits(generate_corpus(cfg.n_synthetic, cfg.seed), cfg)
    poisoned = Counter(r["trigger_family"] for r in splits["train"] if r["is_poisoned"])
    n = sum(poisoned.values())
    assert abs(poisoned[fams[0].name] - 0.8 * n) <= 1 and abs(poisoned[fams[1].name] - 0.2 * n) <= 1
    seen = Counter(r["trigger_family"] for r in splits["test_seen"])
    assert abs(seen[fams[0].name] - seen[fams[1].name]) <= 1
    with pytest.raises(ConfigError, match="family_shares"):
        DataConfig(triggers=fams, family_shares=[1.0])
    with pytest.raises(ConfigError, match="family_shares"):
        DataConfig(triggers=fams, family_shares=[0.5, 0.6])
