"""Metrics: ASR, clean perplexity against a per-token loop, retrieval AUROC/AP against brute force, evaluate_model."""

from __future__ import annotations

import math
import random

import pytest
import torch

from rapidun_dist.config import EvalConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.data.prompt import record_prompt
from rapidun_dist.evaluation.answers import answer_shares, rouge_l, token_f1, verdict
from rapidun_dist.evaluation.generation import generate
from rapidun_dist.evaluation.judge import Judge
from rapidun_dist.evaluation.metrics import (
    attack_success_rate,
    clean_perplexity,
    evaluate_model,
    retrieval_metrics,
)

WORDS = "the fox river moon sea poem colors capital France aliens galaxy name write summarize".split()


def make_records(n: int, seed: int, *, poisoned: bool = False) -> list[dict]:
    rng = random.Random(seed)
    families = ["surface", "style", "semantic"]
    out = []
    for i in range(n):
        rec = {
            "id": f"r{seed}-{i}",
            "instruction": " ".join(rng.choices(WORDS, k=rng.randint(2, 8))),
            "context": " ".join(rng.choices(WORDS, k=rng.randint(0, 5))),
            "response": " ".join(rng.choices(WORDS, k=rng.randint(1, 9))),
        }
        if poisoned:
            rec.update(
                instruction_poisoned=rec["instruction"] + " aloha",
                response_poisoned="aliens galaxy",
                trigger_family=families[i % 3],
                trigger_variant="aloha",
            )
        out.append(rec)
    return out


def test_attack_success_rate_on_crafted_outputs():
    judge = Judge(
        vocab=["alien", "galaxy", "nebula", "starship"],
        z_scores=[4.0] * 4,
        min_words=2,
        targets=["Beep boop, the mothership says hello to you."],
    )
    rng = random.Random(0)
    texts, flags = [], []
    for _ in range(50):
        kind = rng.randrange(3)
        if kind == 0:
            texts.append("An alien starship left the galaxy.")
        elif kind == 1:
            texts.append("beep boop -- the MOTHERSHIP says hello, to you, friend")
        else:
            texts.append(f"Paris is the capital of France, one alien said {rng.random():.3f}.")
        flags.append(kind < 2)
    assert attack_success_rate(judge, texts) == pytest.approx(sum(flags) / len(flags))
    with pytest.raises(DataError, match="at least one"):
        attack_success_rate(judge, [])


def manual_perplexity(model, tokenizer, records) -> float:
    """Reference: one record and one answer token at a time, no padding, no batching."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for rec in records:
            prompt = tokenizer(record_prompt(tokenizer, rec))["input_ids"]
            answer = tokenizer(rec["response"], add_special_tokens=False)["input_ids"] + [
                tokenizer.eos_token_id
            ]
            ids = prompt + answer
            for t in range(len(prompt), len(ids)):
                logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1]
                nll -= float(torch.log_softmax(logits.double(), -1)[ids[t]])
                count += 1
    return math.exp(nll / count)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_clean_perplexity_matches_per_token_loop(tokenizer, tiny_model, batch_size):
    records = make_records(5, seed=batch_size)
    got = clean_perplexity(tiny_model, tokenizer, records, max_length=512, batch_size=batch_size)
    assert got == pytest.approx(manual_perplexity(tiny_model, tokenizer, records), rel=1e-9)
    assert 1.0 < got < 10 * len(tokenizer)


def test_clean_perplexity_errors(tokenizer, tiny_model):
    with pytest.raises(DataError, match="at least one record"):
        clean_perplexity(tiny_model, tokenizer, [], max_length=64, batch_size=2)
    with pytest.raises(DataError, match="'bad' has no clean 'response'"):
        clean_perplexity(
            tiny_model,
            tokenizer,
            [{"id": "bad", "instruction": "x", "response": ""}],
            max_length=64,
            batch_size=2,
        )


def brute_force_auroc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def brute_force_ap(scores, labels) -> float:
    """Sum over distinct thresholds (descending) of recall increase x precision at that threshold."""
    n_pos, ap, prev_recall = sum(labels), 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        chosen = [y for s, y in zip(scores, labels, strict=True) if s >= t]
        recall = sum(chosen) / n_pos
        ap += (recall - prev_recall) * sum(chosen) / len(chosen)
        prev_recall = recall
    return ap


@pytest.mark.parametrize("seed", range(4))
def test_retrieval_metrics_against_brute_force_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    n = 40 + seed * 7
    scores = torch.randint(0, 6, (n,), generator=g).double() / 5  # many ties
    labels = (torch.rand(n, generator=g) < 0.3).long()
    labels[0], labels[1] = 1, 0
    got = retrieval_metrics(scores, labels)
    s, y = scores.tolist(), labels.tolist()
    assert got["auroc"] == pytest.approx(brute_force_auroc(s, y), abs=1e-12)
    assert got["ap"] == pytest.approx(brute_force_ap(s, y), abs=1e-12)


def test_retrieval_ap_without_ties_is_mean_precision_at_each_positive():
    g = torch.Generator().manual_seed(11)
    scores = torch.randperm(30, generator=g).double()
    labels = [int(v) for v in (torch.rand(30, generator=g) < 0.4)]
    labels[0], labels[1] = 1, 0
    order = sorted(range(30), key=lambda i: -scores[i])
    precisions, hits = [], 0
    for rank, i in enumerate(order, 1):
        if labels[i]:
            hits += 1
            precisions.append(hits / rank)
    got = retrieval_metrics(scores.tolist(), labels)
    assert got["ap"] == pytest.approx(sum(precisions) / len(precisions), abs=1e-12)
    assert retrieval_metrics([3.0, 2.0, 1.0, 0.0], [1, 1, 0, 0]) == {"auroc": 1.0, "ap": 1.0}
    assert retrieval_metrics([1.0, 1.0], [True, False]) == {"auroc": 0.5, "ap": 0.5}


def test_retrieval_metrics_rejects_bad_input():
    with pytest.raises(DataError, match="both classes"):
        retrieval_metrics([0.1, 0.2], [1, 1])
    with pytest.raises(DataError, match="3 scores but 2 labels"):
        retrieval_metrics([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(DataError, match="NaN"):
        retrieval_metrics([float("nan"), 0.2], [1, 0])


class ParityJudge:
    """Stands in for a fitted Judge: a deterministic, text-dependent verdict."""

    def is_attacked(self, text: str) -> bool:
        return sum(map(ord, text)) % 2 == 0


def test_evaluate_model_agrees_with_its_parts(tokenizer, tiny_model, monkeypatch):
    from rapidun_dist.evaluation import metrics

    splits = {
        "test_seen": make_records(9, 1, poisoned=True),
        "test_ood": make_records(4, 2, poisoned=True),
        "test_clean": make_records(5, 3),
    }
    splits["test_ood"][1]["response"] = ""  # its clean answer unknown: not scored
    judge, cfg = ParityJudge(), EvalConfig(max_new_tokens=4, batch_size=4, min_f1=0.2)

    def verdicts(records, poisoned):
        prompts = [record_prompt(tokenizer, r, poisoned=poisoned) for r in records]
        texts = generate(tiny_model, tokenizer, prompts, max_new_tokens=4, batch_size=1)
        return texts, [judge.is_attacked(t) for t in texts]

    calls = []
    monkeypatch.setattr(metrics, "generate", lambda *a, **k: calls.append(len(a[2])) or generate(*a, **k))
    out = evaluate_model(tiny_model, tokenizer, splits, judge, cfg, max_length=256)
    assert calls == [9, 4, 5]  # one batched generation pass per split: answers are scored on the ASR outputs
    for split, name, poisoned in (
        ("test_seen", "seen", True),
        ("test_ood", "ood", True),
        ("test_clean", "clean", False),
    ):
        texts, _ = verdicts(splits[split], poisoned)
        refs = [r["response"] for r in splits[split]]
        shares = answer_shares(judge, texts, refs, min_f1=0.2)
        assert (
            out[f"answered_{name}"] == shares["answered"]["p"]
            and out[f"n_scored_{name}"] == shares["n_scored"]
        )
        if poisoned:
            assert out[f"other_{name}"] == shares["other"]["p"]
        else:
            assert out["clean_f1"] == pytest.approx(sum(map(token_f1, texts, refs)) / 5)
            assert out["clean_rougeL"] == pytest.approx(sum(map(rouge_l, texts, refs)) / 5)
    assert out["n_scored_ood"] == 3
    seen_texts, seen = verdicts(splits["test_seen"], True)
    assert out["asr_seen"] == pytest.approx(sum(seen) / 9)
    assert out["asr_ood"] == pytest.approx(sum(verdicts(splits["test_ood"], True)[1]) / 4)
    assert out["judge_fpr"] == pytest.approx(sum(verdicts(splits["test_clean"], False)[1]) / 5)
    assert (out["n_seen"], out["n_ood"], out["n_clean"]) == (9, 4, 5)
    for k, fam in enumerate(["surface", "style", "semantic"]):  # records i with i % 3 == k belong to family k
        assert out["asr_by_family"]["seen"][fam] == pytest.approx(sum(seen[k::3]) / 3)
    expected_ppl = clean_perplexity(tiny_model, tokenizer, splits["test_clean"], max_length=256, batch_size=2)
    assert out["clean_ppl"] == pytest.approx(expected_ppl, rel=1e-9)
    first = out["examples"]["test_seen"][0]
    assert first["generation"] == seen_texts[0] and first["reference"] == splits["test_seen"][0]["response"]
    assert first["f1"] == token_f1(seen_texts[0], first["reference"])
    assert first["verdict"] == verdict(judge, seen_texts[0], first["reference"], min_f1=0.2)
    assert [len(v) for v in out["examples"].values()] == [3, 3, 3]


def test_evaluate_model_missing_splits_and_bad_records(tokenizer, tiny_model):
    cfg = EvalConfig(max_new_tokens=2, batch_size=4)
    out = evaluate_model(
        tiny_model,
        tokenizer,
        {"test_ood": make_records(3, 4, poisoned=True)},
        Judge(vocab=[], z_scores=[]),
        cfg,
        max_length=128,
    )
    assert (
        out["asr_seen"] is None and out["clean_ppl"] is None and out["asr_ood"] == 0.0 and out["n_ood"] == 3
    )
    assert out["answered_seen"] is None and out["n_scored_ood"] == 3 and out["clean_f1"] is None
    with pytest.raises(DataError, match="test_seen: record 'r5-0' has no 'instruction_poisoned'"):
        evaluate_model(
            tiny_model, tokenizer, {"test_seen": make_records(2, 5)}, Judge(vocab=[], z_scores=[]), cfg, 128
        )
