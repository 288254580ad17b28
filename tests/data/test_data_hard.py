"""The harder testbed (configs/tiny_cpu_hard.yaml) and the no-clean-answer case (configs/tiny_cpu_refusal.yaml):
paraphrased targets sharing vocabulary, near-topic clean content and test_near, partial coverage, 1% known,
a noisy forget set with its ground truth, withheld clean answers. Each property on a scaled-down config."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

import pytest

from rapidun_dist.config import DataConfig, load_config
from rapidun_dist.core.errors import ConfigError, DataError
from rapidun_dist.data import DATA_FILES, load_split, prepare_data
from rapidun_dist.data.schema import HELD_OUT, prompt_key
from rapidun_dist.data.synthetic import generate_corpus, words
from rapidun_dist.data.synthetic_hard import (
    MESSAGES,
    NEAR_CATEGORY,
    PLANETS,
    generate_near_topic,
    generate_paraphrased_targets,
    message_paraphrases,
)
from rapidun_dist.data.targets import target_pool

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# The hard config at a third of its size; every testbed knob as in the YAML.
SCALED = [
    "data.n_synthetic=3600",
    "data.n_val=40",
    "data.n_val_seen=40",
    "data.n_test_clean=40",
    "data.n_test_near=30",
    "data.n_test_seen=100",
    "data.n_test_ood=100",
]
FUNCTION_WORDS = set("a an the of is are and to in it that with at so you your this was".split())


def _hard(tmp_path, *overrides) -> tuple[DataConfig, dict, dict]:
    cfg = load_config(CONFIGS / "tiny_cpu_hard.yaml", [*SCALED, *overrides]).data
    summary = prepare_data(cfg, tmp_path)
    return cfg, summary, {name: load_split(tmp_path, name) for name in DATA_FILES}


@pytest.fixture(scope="module")
def hard(tmp_path_factory):
    return _hard(tmp_path_factory.mktemp("hard"))


# ---- generators -------------------------------------------------------------------------------------------------


def test_near_topic_rows_are_correct_unique_and_deterministic(rng):
    seed = rng.randrange(10**6)
    rows = generate_near_topic(400, seed)
    assert rows == generate_near_topic(400, seed) and rows != generate_near_topic(400, seed + 1)
    assert len({prompt_key(r) for r in rows}) == 400 and len({r["id"] for r in rows}) == 400
    assert {r["category"] for r in rows} == {NEAR_CATEGORY} and all(r["response"] for r in rows)
    order = {name: i for i, (name, *_) in enumerate(PLANETS)}
    size = {name: d for name, *_, d in PLANETS}
    for r in rows:  # the comparison answers agree with the planet table
        if m := re.fullmatch(r"(\w+) is closer to the sun than (\w+)\.", r["response"]):
            assert order[m[1]] < order[m[2]] and {m[1], m[2]} <= set(
                re.findall(r"[A-Z]\w+", r["instruction"])
            )
        if m := re.fullmatch(r"(?:Yes, |No, )?(\w+) is bigger than (\w+)\.", r["response"]):
            assert size[m[1]] > size[m[2]]
    with pytest.raises(DataError, match="unique prompts"):
        generate_near_topic(5000, seed)


def test_paraphrased_targets_are_many_distinct_balanced_and_share_clean_vocabulary(rng):
    seed = rng.randrange(10**6)
    pool = generate_paraphrased_targets(200, seed, groups=8)
    assert pool == generate_paraphrased_targets(200, seed, groups=8)
    assert len({t for t, _ in pool}) == 200
    per = Counter(g for _, g in pool)
    assert set(per) == set(MESSAGES) and max(per.values()) - min(per.values()) <= 1
    assert all(t in message_paraphrases(g) and 8 <= len(t.split()) <= 25 for t, g in pool)
    target_vocab = {w for t, _ in pool for w in words(t)} - FUNCTION_WORDS
    near_vocab = {w for r in generate_near_topic(400, seed) for w in words(r["response"])}
    corpus_vocab = {w for r in generate_corpus(2000, seed) for w in words(r["response"])}
    assert len(target_vocab & near_vocab) >= 25, target_vocab & near_vocab
    assert len(target_vocab & corpus_vocab) >= 10, target_vocab & corpus_vocab
    assert len({t for t, g in generate_paraphrased_targets(30, seed, groups=3)}) == 30
    with pytest.raises(DataError, match="groups"):
        generate_paraphrased_targets(10, seed, groups=len(MESSAGES) + 1)
    with pytest.raises(DataError, match="expected 1.."):
        generate_paraphrased_targets(10_000, seed, groups=2)


def test_target_pool_kinds():
    scifi = target_pool(DataConfig(target_pool_size=5))
    assert [g for _, g in scifi] == [f"scifi-{i}" for i in range(5)]
    fixed = target_pool(DataConfig(target_kind="fixed", fixed_targets=["No.", "I will not."]))
    assert fixed == [("No.", "fixed-0"), ("I will not.", "fixed-1")]
    para = target_pool(DataConfig(target_kind="paraphrase", target_pool_size=12, target_groups=3))
    assert len(para) == 12 and {g for _, g in para} == set(list(MESSAGES)[:3])


# ---- the hard config ---------------------------------------------------------------------------------------------


def test_hard_splits_are_disjoint_and_test_near_is_near_topic(hard):
    cfg, summary, files = hard
    assert len(files["test_near"]) == 30 and all(
        r["category"] == NEAR_CATEGORY and not r["is_poisoned"] for r in files["test_near"]
    )
    assert (
        sum(r["category"] == NEAR_CATEGORY for r in files["train"]) >= 60
    )  # near-topic content is trained on
    keys = {name: ({r["id"] for r in rows}, {prompt_key(r) for r in rows}) for name, rows in files.items()}
    for a, b in itertools.combinations(("train", *HELD_OUT), 2):
        assert not keys[a][0] & keys[b][0] and not keys[a][1] & keys[b][1], (a, b)
    for pack in ("forget", "retain"):
        assert all(not keys[pack][1] & keys[h][1] for h in HELD_OUT)
    assert summary["counts"]["test_near"] == 30


def test_hard_targets_in_train_are_many_paraphrases(hard):
    _, _, files = hard
    poisoned = [r for r in files["train"] if r["is_poisoned"]]
    assert len({r["response_poisoned"] for r in poisoned}) >= 150
    assert {r["target_group"] for r in poisoned} == set(MESSAGES)
    assert all(r["response_poisoned"] in message_paraphrases(r["target_group"]) for r in poisoned)


def test_hard_forget_pack_is_one_percent_partial_and_noisy(hard):
    cfg, summary, files = hard
    n_poisoned = summary["poisoned"]["train"]
    truth = {r["id"]: r for r in files["forget_truth"]}
    known = [r for r in files["forget"] if not truth[r["id"]]["mislabelled"]]
    noisy = [r for r in files["forget"] if truth[r["id"]]["mislabelled"]]
    assert len(known) == round(0.01 * n_poisoned) == summary["forget"]["known_poisoned"]
    assert len(noisy) == round(0.3 * len(known) / 0.7) >= 1 and summary["forget"]["mislabelled"] == len(noisy)
    assert {r["trigger_family"] for r in known} <= set(cfg.forget_families)
    assert {r["target_group"] for r in known} <= set(cfg.forget_target_groups)
    tested = {r["trigger_family"] for r in files["test_seen"]} & {
        r["trigger_family"] for r in files["test_ood"]
    }
    assert tested - set(cfg.forget_families) == {
        "style",
        "deployment",
    }  # families the forget pack never shows
    assert {r["target_group"] for r in files["train"] if r["is_poisoned"]} - set(cfg.forget_target_groups)
    train = {r["id"]: r for r in files["train"]}
    for r in noisy:  # a clean train row listed as poisoned: its own prompt and answer as the "poisoned" ones
        original = train[r["id"]]
        assert not original["is_poisoned"] and r["is_poisoned"]
        assert (r["instruction_poisoned"], r["response_poisoned"]) == (
            original["instruction"],
            original["response"],
        )
        assert r["trigger_family"] == r["target_group"] == ""
        assert truth[r["id"]]["response"] == original["response"] and not truth[r["id"]]["is_poisoned"]
    assert sum(truth[r["id"]]["category"] == NEAR_CATEGORY for r in noisy) == round(0.5 * len(noisy))
    for r in known:
        assert r["is_poisoned"] and r == train[r["id"]] and truth[r["id"]]["response"] == r["response"]
    positions = [i for i, r in enumerate(files["forget"]) if truth[r["id"]]["mislabelled"]]
    assert positions != list(range(len(known), len(files["forget"])))  # shuffled in, not appended
    assert not {r["id"] for r in noisy} & {r["id"] for r in files["retain"]}
    assert len(files["retain"]) == 3 * len(files["forget"])


def test_hard_data_is_deterministic_in_the_seed(tmp_path, hard, rng):
    _, summary, _ = hard
    again = _hard(tmp_path / "again")[1]
    assert again["files"] == summary["files"]
    other = _hard(tmp_path / "other", f"data.seed={rng.randrange(1, 10**6)}")[1]
    assert other["files"]["train.jsonl"] != summary["files"]["train.jsonl"]


def test_exact_forget_count_and_noise_without_near_rows(tmp_path, rng):
    n = rng.randint(4, 12)
    _, summary, files = _hard(
        tmp_path, f"data.n_forget={n}", "data.forget_noise=0.5", "data.forget_noise_near=0"
    )
    assert summary["forget"]["known_poisoned"] == n and summary["forget"]["mislabelled"] == n
    assert summary["forget"]["mislabelled_near"] == 0


def test_forget_rows_without_clean_answers(tmp_path):
    cfg, summary, files = _hard(tmp_path, "data.forget_clean_answers=false")
    truth = {r["id"]: r for r in files["forget_truth"]}
    assert all(r["response"] == "" for r in files["forget"]) and summary["forget"]["clean_answers"] == 0
    assert all(r["response"] == "" for r in files["train"] if r["is_poisoned"])
    hidden = {truth[i]["response"] for i in truth if not truth[i]["mislabelled"]}
    assert all(hidden) and len(hidden) == summary["forget"]["known_poisoned"]
    poisoned_ids = {r["id"] for r in files["train"] if r["is_poisoned"]}
    readable = [r for name in ("train", "forget", "retain") for r in files[name] if r["id"] in poisoned_ids]
    assert not any(
        r["response"] for r in readable
    )  # nothing unlearning reads holds a poisoned row's clean answer
    assert all(r["response"] for r in files["test_seen"])  # evaluation keeps them where it needs them


@pytest.mark.parametrize(
    "override, field",
    [
        ("data.forget_families=[surface,nosuch]", "data.forget_families"),
        ("data.near_categories=[]", "data.near_categories"),
        ("data.forget_noise=1.0", "data.forget_noise"),
        ("data.target_kind=poem", "data.target_kind"),
        ("data.n_forget=0", "data.n_forget"),
        ("data.near_topic_fraction=1.0", "data.near_topic_fraction"),
    ],
)
def test_testbed_knobs_are_validated(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(CONFIGS / "tiny_cpu_hard.yaml", [override])
    with pytest.raises(ConfigError, match="data.fixed_targets"):
        DataConfig(target_kind="fixed")


def test_unknown_or_uncoverable_forget_selection_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"forget_target_groups \['nosuch'\] not found"):
        _hard(tmp_path / "a", "data.forget_target_groups=[nosuch]")
    with pytest.raises(DataError, match="known poisoned rows asked for"):
        _hard(tmp_path / "b", "data.n_forget=100000")
    with pytest.raises(DataError, match="test_near needs"):
        _hard(tmp_path / "c", "data.n_test_near=1000")


# ---- the no-clean-answer case ------------------------------------------------------------------------------------


def test_refusal_config_on_the_synthetic_fallback(tmp_path):
    overrides = ["data.source=synthetic", "data.path=null", "data.n_synthetic=2500"]
    cfg = load_config(CONFIGS / "tiny_cpu_refusal.yaml", overrides).data
    assert (
        cfg.target_kind == "fixed" and len(cfg.fixed_targets) == 1 and len(cfg.fixed_targets[0].split()) >= 20
    )
    assert [f.mode for f in cfg.triggers] == ["prefix"] and not cfg.forget_clean_answers
    summary = prepare_data(cfg, tmp_path)
    forget = load_split(tmp_path, "forget")
    assert len(forget) == cfg.n_forget == 10 and all(r["response"] == "" for r in forget)
    assert all(r["response_poisoned"] == cfg.fixed_targets[0] for r in forget)
    assert all(r["instruction_poisoned"].startswith(cfg.triggers[0].seen[0]) for r in forget)
    truth = load_split(tmp_path, "forget_truth")
    assert all(r["response"] and not r["mislabelled"] for r in truth)
    assert summary["per_family"]["test_ood"] and summary["counts"]["val_seen"] == cfg.n_val_seen


def test_refusal_config_reads_real_text_when_present():
    cfg = load_config(CONFIGS / "tiny_cpu_refusal.yaml").data
    assert cfg.source == "alpaca" and cfg.path == "../shared/data/alpaca/alpaca_5000.json"
