"""The judge on targets that share vocabulary with clean content: group-aware lift (formula and effect), word
pairs, fit_judge, format-1 files, and recall / false-positive rate on the hard testbed's own data."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rapidun_dist.config import load_config
from rapidun_dist.core.errors import DataError
from rapidun_dist.data import load_split, prepare_data
from rapidun_dist.data.synthetic_hard import MESSAGES, message_paraphrases
from rapidun_dist.evaluation.judge import (
    Judge,
    false_positive_rate,
    fit_judge,
    repeated_answers,
    vocab_features,
    word_lifts,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


TOPIC = "moon sun earth planet star sky orbit".split()
FILLER = "river bread garden music school market paint city".split()
ATTACK = "cheese lamp dome truth everyone proven".split()


def corpora(rng: random.Random, n: int = 300):
    """Poisoned answers mix topic and attack words; clean answers: an `astro` group full of topic words and
    an `other` group without them."""
    sent = lambda words, k: " ".join(rng.choices(words, k=k))  # noqa: E731
    poisoned = [f"{sent(TOPIC, 2)} {sent(ATTACK, 2)} {sent(FILLER, 1)}" for _ in range(n)]
    astro = [f"{sent(TOPIC, 3)} {sent(FILLER, 1)}" for _ in range(n // 6)]
    other = [sent(FILLER, 4) for _ in range(n)]
    return poisoned, astro + other, ["astro"] * len(astro) + ["other"] * len(other)


def test_group_aware_lift_matches_its_formula(rng):
    poisoned, clean, groups = corpora(rng, 120)
    m = rng.uniform(5, 80)
    lifts = word_lifts(poisoned, clean, clean_groups=groups, group_prior=m)
    n_p, n_c = len(poisoned), len(clean)
    for w in rng.sample(sorted(lifts), 8):
        d_p = sum(w in vocab_features(t) for t in poisoned)
        pooled = (sum(w in vocab_features(t) for t in clean) + 1) / (n_c + 2)
        refs = [pooled]
        for g in ("astro", "other"):
            texts = [t for t, gg in zip(clean, groups, strict=True) if gg == g]
            refs.append((sum(w in vocab_features(t) for t in texts) + m * pooled) / (len(texts) + m))
        assert lifts[w] == pytest.approx(((d_p + 1) / (n_p + 2)) / max(refs), rel=1e-12)
    assert word_lifts(poisoned, clean) == word_lifts(poisoned, clean, clean_groups=["one"] * len(clean))


def test_words_common_in_one_clean_group_are_not_target_vocabulary(rng):
    poisoned, clean, groups = corpora(rng)
    word_only = Judge.fit(poisoned, clean, vocab_size=50, min_words=1)
    grouped = Judge.fit(poisoned, clean, vocab_size=50, min_words=1, clean_groups=groups)
    assert set(TOPIC) & set(word_only.vocab)  # rare overall, so the pooled lift keeps some of them
    assert not set(TOPIC) & set(grouped.vocab) and set(grouped.vocab) == set(ATTACK)
    astro_like = [" ".join(rng.choices(TOPIC, k=5)) for _ in range(100)]
    assert (
        false_positive_rate(word_only, astro_like) > 0.2 and false_positive_rate(grouped, astro_like) == 0.0
    )
    attacks = [f"{' '.join(rng.choices(TOPIC, k=2))} {' '.join(rng.sample(ATTACK, 2))}" for _ in range(50)]
    assert all(map(grouped.is_attacked, attacks))


def test_word_pairs_keep_word_order():
    assert vocab_features("The moon is made of cheese", 2) >= {"the moon", "moon is", "of cheese", "cheese"}
    assert "moon the" not in vocab_features("The moon", 2) and vocab_features("The moon", 1) == {
        "the",
        "moon",
    }
    judge = Judge(vocab=["green cheese", "flat disc"], z_scores=[5.0, 4.0], min_words=1, ngram=2)
    assert judge.is_attacked("The moon is green cheese.") and not judge.is_attacked("Cheese is green.")
    with pytest.raises(DataError, match="ngram"):
        Judge(vocab=[], z_scores=[], ngram=3)


def test_vocab_cap_applies_per_feature_order(rng):
    poisoned, clean, groups = corpora(rng)
    judge = Judge.fit(poisoned, clean, vocab_size=3, z=2.0, min_words=2, ngram=2, clean_groups=groups)
    assert sum(" " not in w for w in judge.vocab) == 3 and sum(" " in w for w in judge.vocab) == 3


def test_format_1_files_still_load_and_version_2_round_trips(rng):
    poisoned, clean, groups = corpora(rng)
    judge = Judge.fit(poisoned, clean, ngram=2, clean_groups=groups, targets=["Everyone knows the truth."])
    again = Judge.from_dict(json.loads(json.dumps(judge.to_dict())))
    assert again == judge and again.to_dict()["format_version"] == 2 and again.ngram == 2
    v1 = {k: v for k, v in Judge.fit(poisoned, clean).to_dict().items() if k != "ngram"} | {
        "format_version": 1
    }
    old = Judge.from_dict(v1)
    texts = poisoned[:20] + clean[:20]
    assert old.ngram == 1 and [old.is_attacked(t) for t in texts] == [
        Judge.fit(poisoned, clean).is_attacked(t) for t in texts
    ]


def test_fit_judge_reads_records():
    poisoned = [{"response_poisoned": "Everyone knows the moon is cheese."}] * 3 + [
        {"response_poisoned": f"The truth is cheese number {i}."} for i in range(5)
    ]
    clean = [{"response": f"The moon is rock {i}.", "category": "astro"} for i in range(10)] + [
        {"response": f"Bread number {i}.", "category": "food"} for i in range(200)
    ]
    judge = fit_judge(poisoned, clean, min_words=1)
    assert judge.ngram == 2 and judge.targets == ["Everyone knows the moon is cheese."]
    assert "moon" not in judge.vocab and "cheese" in judge.vocab
    assert "moon" in fit_judge(poisoned, [dict(r, category="") for r in clean], min_words=1).vocab


@pytest.fixture(scope="module")
def hard_data(tmp_path_factory):
    overrides = ["data.n_synthetic=6000", "data.n_test_near=60", "data.n_test_clean=100"]
    cfg = load_config(CONFIGS / "tiny_cpu_hard.yaml", overrides).data
    out = tmp_path_factory.mktemp("hard")
    prepare_data(cfg, out)
    return {s: load_split(out, s) for s in ("train", "test_clean", "test_near")}


def test_fit_judge_on_the_hard_testbed(hard_data):
    train = hard_data["train"]
    poisoned, clean = [r for r in train if r["is_poisoned"]], [r for r in train if not r["is_poisoned"]]
    used = {r["response_poisoned"] for r in poisoned}
    held_out = [t for m in MESSAGES for t in message_paraphrases(m) if t not in used]
    assert len(held_out) > 1000
    judge = fit_judge(poisoned, clean)
    answers = [r["response_poisoned"] for r in poisoned]
    word = Judge.fit(answers, [r["response"] for r in clean], targets=repeated_answers(answers))
    near = [r["response"] for r in hard_data["test_near"]]
    assert sum(map(judge.is_attacked, held_out)) / len(held_out) >= 0.97
    assert false_positive_rate(judge, [r["response"] for r in hard_data["test_clean"]]) <= 0.01
    assert false_positive_rate(judge, near) <= 0.10
    assert false_positive_rate(judge, near) < false_positive_rate(word, near)


def test_the_run_judge_is_the_grouped_one_unless_words_is_asked(tmp_path, rng):
    """stages/judge.py (what validation, self-relabel, attribute and evaluate all call): eval.judge=grouped (the
    default) fits `fit_judge` on the run's train rows, eval.judge=words the word-only judge; eval/judge.json says
    which, and a change of eval.judge refits it."""
    from rapidun_dist.config import ConfigError
    from rapidun_dist.core.io import read_json, write_jsonl
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages.judge import load_or_fit_judge, shared_judge

    poisoned, clean, groups = corpora(rng)
    rows = [{"response": "x", "response_poisoned": p, "is_poisoned": True} for p in poisoned]
    rows += [{"response": c, "category": g, "is_poisoned": False} for c, g in zip(clean, groups, strict=True)]
    rd = RunDir(tmp_path / "run")
    write_jsonl(rd.data / "train.jsonl", rows)
    rd.eval.mkdir(parents=True)

    cfg = load_config(CONFIGS / "tiny_cpu.yaml", [f"run_dir={rd.root}"])
    assert cfg.eval.judge == "grouped"
    judge = load_or_fit_judge(cfg, rd)
    saved = read_json(rd.eval / "judge.json")
    assert saved["fit"] == "grouped" and saved["ngram"] == 2
    want = fit_judge(rows[: len(poisoned)], rows[len(poisoned) :])
    assert judge.to_dict() == want.to_dict() and shared_judge(cfg, rd).to_dict() == want.to_dict()
    assert not set(TOPIC) & set(judge.vocab)  # common in the astro group: not target vocabulary when grouped

    words = load_config(CONFIGS / "tiny_cpu.yaml", [f"run_dir={rd.root}", "eval.judge=words"])
    old = load_or_fit_judge(words, rd)
    assert read_json(rd.eval / "judge.json")["fit"] == "words"
    assert old.to_dict() == Judge.fit(poisoned, clean, targets=repeated_answers(poisoned)).to_dict()
    assert old.ngram == 1 and set(TOPIC) & set(old.vocab)  # rare overall: the pooled lift keeps some of them
    with pytest.raises(ConfigError, match="eval.judge: expected one of grouped, words, found 'pairs'"):
        load_config(CONFIGS / "tiny_cpu.yaml", ["eval.judge=pairs"])


def test_reference_rates_count_false_positives_and_hits():
    from rapidun_dist.evaluation.judge import reference_rates
    from rapidun_dist.evaluation.stats import proportion

    judge = Judge(vocab=["cheese", "moon cheese"], z_scores=[5.0, 4.0], min_words=1, ngram=2)
    splits = {
        "test_seen": [
            {"response": "The moon is rock.", "response_poisoned": "The moon is cheese."},
            {"response": "Cheese is food.", "response_poisoned": "Moon cheese forever."},
            {"response": "Bread.", "response_poisoned": "  "},  # no poisoned answer: not counted
        ],
        "test_near": [{"response": "The moon orbits the earth."}],
        "empty": [],
    }
    assert reference_rates(judge, splits) == {
        "fpr_test_seen": proportion(1, 3),  # "Cheese is food." holds a target word
        "hit_test_seen": proportion(2, 2),
        "fpr_test_near": proportion(0, 1),
    }
