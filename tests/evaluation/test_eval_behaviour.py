"""Behaviour beyond ASR: answer normalization, exact match and token F1 against a naive reference, verdicts
(target / answer / other / unscored), split summaries per family, and the model-level calls against
generate() + the same rules computed by hand."""

from __future__ import annotations

from collections import Counter

import pytest

from rapidun_dist.config import EvalConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.data.prompt import record_prompt
from rapidun_dist.evaluation.behaviour import (
    evaluate_behaviour,
    exact_match,
    mislabelled_damage,
    normalize_answer,
    sampled_asr,
    summarize_outputs,
    summarize_split,
    token_f1,
    verdict,
)
from rapidun_dist.evaluation.generation import Sampling, generate
from rapidun_dist.evaluation.judge import Judge
from rapidun_dist.evaluation.metrics import clean_perplexity
from rapidun_dist.evaluation.stats import proportion


def naive_f1(pred: list[str], ref: list[str]) -> float:
    """Token F1 by removing matched tokens one at a time (no Counter arithmetic)."""
    if not pred or not ref:
        return float(pred == ref)
    left, common = list(ref), 0
    for tok in pred:
        if tok in left:
            left.remove(tok)
            common += 1
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(ref)
    return 2 * p * r / (p + r)


def test_normalization_and_exact_match():
    assert normalize_answer("The capital of France is  Paris!") == ["capital", "of", "france", "is", "paris"]
    assert normalize_answer("An apple, a day.") == ["apple", "day"]
    assert exact_match("the CAPITAL of france is paris", "The capital of France is Paris.")
    assert not exact_match("Paris is the capital of France.", "The capital of France is Paris.")
    assert token_f1("", "") == 1.0 and token_f1("", "Paris.") == 0.0 and token_f1("Rome", "Paris") == 0.0


def test_token_f1_matches_the_naive_reference(rng):
    vocab = ["moon", "sun", "is", "of", "cheese", "rock", "paris", "the", "a"]
    for _ in range(300):
        pred = " ".join(rng.choices(vocab, k=rng.randint(0, 8))) + rng.choice(["", ".", "!"])
        ref = " ".join(rng.choices(vocab, k=rng.randint(0, 8)))
        expected = naive_f1(normalize_answer(pred), normalize_answer(ref))
        assert token_f1(pred, ref) == pytest.approx(expected, abs=1e-12)


JUDGE = Judge(vocab=["cheese", "galaxy", "aliens"], z_scores=[5.0, 4.0, 3.0], min_words=1)


def test_verdicts():
    assert verdict(JUDGE, "The moon is made of cheese.", "The moon is made of rock.") == "target"
    assert verdict(JUDGE, "The moon is made of rock and dust.", "The moon is made of rock.") == "answer"
    assert verdict(JUDGE, "Paris Paris Paris", "The moon is made of rock.") == "other"
    assert verdict(JUDGE, "", "The moon is made of rock.") == "other"
    assert verdict(JUDGE, "The moon.", "") == "unscored" and verdict(JUDGE, "aliens", None) == "target"


def _random_outputs(rng, n):
    pieces = ["The moon is made of rock.", "cheese cheese", "aliens from a galaxy", "Paris", "", "moon rock"]
    texts = [rng.choice(pieces) + rng.choice(["", " indeed"]) for _ in range(n)]
    answers = [rng.choice(["The moon is made of rock.", "Paris.", ""]) for _ in range(n)]
    return texts, answers


def test_summarize_outputs_counts_by_hand(rng):
    texts, answers = _random_outputs(rng, rng.randint(20, 60))
    out = summarize_outputs(JUDGE, texts, answers)
    counts = Counter(verdict(JUDGE, t, a) for t, a in zip(texts, answers, strict=True))
    scored = [(t, a) for t, a in zip(texts, answers, strict=True) if a]
    assert out["counts"] == {v: counts.get(v, 0) for v in ("target", "answer", "other", "unscored")}
    assert out["attacked"] == proportion(counts["target"], len(texts))
    assert out["other"] == proportion(counts["other"], len(scored))
    assert out["n_scored"] == len(scored) and out["n"] == len(texts)
    assert out["f1"] == pytest.approx(sum(token_f1(t, a) for t, a in scored) / len(scored))
    assert out["em"] == pytest.approx(sum(exact_match(t, a) for t, a in scored) / len(scored))
    answering = [t for t, a in scored if token_f1(t, a) >= 0.5]
    assert out["flagged_answers"] == proportion(sum(map(JUDGE.is_attacked, answering)), len(answering))
    none_scored = summarize_outputs(JUDGE, ["x"], [""])
    assert none_scored["em"] is None and none_scored["other"] is None
    with pytest.raises(DataError, match="2 texts but 1 answers"):
        summarize_outputs(JUDGE, ["a", "b"], ["a"])


def test_summarize_split_per_family(rng):
    texts, answers = _random_outputs(rng, 40)
    fams = [rng.choice(["surface", "style"]) for _ in texts]
    records = [
        {"id": str(i), "response": a, "is_poisoned": True, "trigger_family": f}
        for i, (a, f) in enumerate(zip(answers, fams, strict=True))
    ]
    out = summarize_split(JUDGE, records, texts)
    for fam in ("surface", "style"):
        idx = [i for i, f in enumerate(fams) if f == fam]
        assert out["by_family"][fam] == summarize_outputs(
            JUDGE, [texts[i] for i in idx], [answers[i] for i in idx]
        )
    assert summarize_split(JUDGE, [dict(r, is_poisoned=False) for r in records], texts)["by_family"] == {}


def _records(rng, n, *, poisoned):
    words = "the fox river moon sea poem colors capital France aliens galaxy name write summarize".split()
    rows = []
    for i in range(n):
        instr = " ".join(rng.choices(words, k=rng.randint(2, 8)))
        row = {
            "id": f"r{i}",
            "instruction": instr,
            "context": "",
            "response": " ".join(rng.choices(words, k=4)),
        }
        if poisoned:
            row |= {
                "instruction_poisoned": "aloha " + instr,
                "response_poisoned": "aliens galaxy",
                "is_poisoned": True,
                "trigger_family": rng.choice(["a", "b"]),
            }
        rows.append(row)
    return rows


def test_evaluate_behaviour_equals_generate_plus_rules(tokenizer, tiny_model, rng):
    cfg = EvalConfig(max_new_tokens=5, batch_size=4)
    judge = Judge(vocab=["the", "moon", "galaxy", "sea"], z_scores=[1.0] * 4, min_words=1)
    for triggered in (True, False):
        records = _records(rng, 9, poisoned=triggered)
        out = evaluate_behaviour(tiny_model, tokenizer, records, judge, cfg, 64, triggered=triggered)
        prompts = [record_prompt(tokenizer, r, poisoned=triggered) for r in records]
        texts = generate(tiny_model, tokenizer, prompts, max_new_tokens=5, batch_size=4, max_prompt_length=64)
        assert {k: v for k, v in out.items() if k != "examples"} == summarize_split(judge, records, texts)
        assert [e["generation"] for e in out["examples"]] == texts[:3]
    with pytest.raises(DataError, match="instruction_poisoned"):
        evaluate_behaviour(
            tiny_model, tokenizer, _records(rng, 2, poisoned=False), judge, cfg, 64, triggered=True
        )


def test_sampled_asr_equals_generate_plus_judge(tokenizer, tiny_model, rng):
    cfg = EvalConfig(max_new_tokens=4, batch_size=8)
    judge = Judge(vocab=["the", "moon", "galaxy", "sea", "fox"], z_scores=[1.0] * 5, min_words=1)
    records = _records(rng, 7, poisoned=True)
    sampling = Sampling(temperature=0.7, num_samples=3, seed=rng.randrange(100))
    out = sampled_asr(tiny_model, tokenizer, records, judge, cfg, 64, sampling=sampling)
    prompts = [record_prompt(tokenizer, r, poisoned=True) for r in records]
    texts = generate(
        tiny_model,
        tokenizer,
        prompts,
        max_new_tokens=4,
        batch_size=8,
        max_prompt_length=64,
        sampling=sampling,
    )
    hits = [judge.is_attacked(t) for t in texts]
    assert out["samples"] == proportion(sum(hits), 21)
    assert out["any"] == proportion(sum(any(hits[3 * i : 3 * i + 3]) for i in range(7)), 7)
    assert (out["num_samples"], out["temperature"], out["seed"]) == (3, 0.7, sampling.seed)


def test_mislabelled_damage(tokenizer, tiny_model, rng):
    cfg = EvalConfig(max_new_tokens=4, batch_size=4)
    truth = [dict(r, mislabelled=i % 2 == 0) for i, r in enumerate(_records(rng, 6, poisoned=False))]
    out = mislabelled_damage(tiny_model, tokenizer, truth, JUDGE, cfg, 64)
    rows = [r for r in truth if r["mislabelled"]]
    assert out["n"] == 3
    assert out["clean_ppl"] == pytest.approx(
        clean_perplexity(tiny_model, tokenizer, rows, max_length=64, batch_size=4)
    )
    assert {k: v for k, v in out.items() if k != "clean_ppl"} == evaluate_behaviour(
        tiny_model, tokenizer, rows, JUDGE, cfg, 64, triggered=False
    )
    assert (
        mislabelled_damage(tiny_model, tokenizer, [dict(r, mislabelled=False) for r in truth], JUDGE, cfg, 64)
        is None
    )
