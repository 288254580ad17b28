"""The evaluate stage's metrics beyond ASR (evaluation/extras.py): answer EM / F1 / neither-count from given
generations counted by hand, collateral damage and mislabelled-row damage against the behaviour functions,
ratios against the model before, the relearning attack on the model's device, the eval config's checks, and the
report / `rapidun compare` picking the new keys up as metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from rapidun_dist.config import ConfigError, EvalConfig, load_config
from rapidun_dist.evaluation import extras as ex
from rapidun_dist.evaluation.behaviour import evaluate_behaviour, mislabelled_damage, token_f1
from rapidun_dist.evaluation.compare import entry_metrics
from rapidun_dist.evaluation.judge import Judge
from rapidun_dist.evaluation.metrics import clean_perplexity
from rapidun_dist.evaluation.report import extra_metrics, prepare_report
from rapidun_dist.evaluation.stats import proportion

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from placement import placement_guard  # noqa: E402

JUDGE = Judge(vocab=["cheese", "galaxy", "aliens"], z_scores=[5.0, 4.0, 3.0], min_words=1)
WORDS = "the fox river moon sea poem colors capital france name write summarize".split()
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]


def _rows(rng, n: int, *, poisoned: bool, prefix: str = "r") -> list[dict]:
    rows = []
    for i in range(n):
        instr = " ".join(rng.choices(WORDS, k=rng.randint(2, 6)))
        row = {
            "id": f"{prefix}{i}",
            "instruction": instr,
            "context": "",
            "response": " ".join(rng.choices(WORDS, k=4)),
        }
        if poisoned:
            row |= {
                "instruction_poisoned": "aloha " + instr,
                "response_poisoned": "aliens galaxy cheese",
                "is_poisoned": True,
                "trigger_family": "surface",
            }
        rows.append(row)
    return rows


def _outputs(rng, rows: list[dict]) -> tuple[list[str], list[str]]:
    """Per row one of: the clean answer, the target, babble; returns (texts, kinds)."""
    texts, kinds = [], []
    for r in rows:
        kind = rng.choice(["answer", "target", "other"])
        kinds.append(kind)
        texts.append(
            r["response"] if kind == "answer" else "aliens from the galaxy" if kind == "target" else "zzz qqq"
        )
    return texts, kinds


def test_behaviour_entry_counts_by_hand(rng):
    splits = {
        "test_seen": _rows(rng, rng.randint(5, 20), poisoned=True),
        "test_ood": _rows(rng, rng.randint(5, 20), poisoned=True, prefix="o"),
        "test_clean": _rows(rng, rng.randint(5, 20), poisoned=False, prefix="c"),
    }
    texts, kinds = {}, {}
    for s, rows in splits.items():
        texts[s], kinds[s] = _outputs(rng, rows)
    out = ex.behaviour_entry(JUDGE, splits, texts)
    for split, key in (
        ("test_seen", "answer_seen"),
        ("test_ood", "answer_ood"),
        ("test_clean", "answer_clean"),
    ):
        n, k = len(splits[split]), kinds[split]
        assert out[key]["em"] == proportion(k.count("answer"), n)
        assert out[key]["answered"] == proportion(k.count("answer"), n)
        f1 = sum(token_f1(t, r["response"]) for t, r in zip(texts[split], splits[split], strict=True)) / n
        assert out[key]["f1"] == pytest.approx(f1)
        if split != "test_clean":
            assert out[key]["other"] == proportion(k.count("other"), n)
        else:
            assert "other" not in out[key]


def test_behaviour_entry_skips_rows_without_clean_answers(rng):
    rows = [dict(r, response="") for r in _rows(rng, 6, poisoned=True)]
    out = ex.behaviour_entry(JUDGE, {"test_seen": rows}, {"test_seen": ["x"] * 6})
    assert out == {}
    assert ex.behaviour_entry(JUDGE, {"test_seen": rows}, {}) == {}  # no generations: nothing to score


def test_near_and_mislabelled_entries_match_the_behaviour_functions(tokenizer, tiny_model, rng):
    cfg = EvalConfig(max_new_tokens=4, batch_size=4)
    near = _rows(rng, 7, poisoned=False, prefix="n")
    out = ex.near_entry(tiny_model, tokenizer, near, JUDGE, cfg, 64)
    ref = evaluate_behaviour(tiny_model, tokenizer, near, JUDGE, cfg, 64, triggered=False)
    assert out["f1"] == pytest.approx(ref["f1"])
    assert out["attacked"] == ref["attacked"]
    assert out["em"] == proportion(round(ref["em"] * 7), 7)
    assert out["ppl"] == pytest.approx(
        clean_perplexity(tiny_model, tokenizer, near, max_length=64, batch_size=4)
    )
    truth = [dict(r, mislabelled=i % 3 == 0) for i, r in enumerate(_rows(rng, 9, poisoned=False, prefix="t"))]
    mis = ex.mislabelled_entry(tiny_model, tokenizer, truth, JUDGE, cfg, 64)
    ref = mislabelled_damage(tiny_model, tokenizer, truth, JUDGE, cfg, 64)
    assert mis["em"]["n"] == 3 and mis["ppl"] == pytest.approx(ref["clean_ppl"])
    assert mis["f1"] == pytest.approx(ref["f1"])
    clean_truth = [dict(r, mislabelled=False) for r in truth]
    assert ex.mislabelled_entry(tiny_model, tokenizer, clean_truth, JUDGE, cfg, 64) is None


def test_against_before_ratios(rng):
    before = {
        "near": {"ppl": rng.uniform(1, 5)},
        "mislabelled": {"ppl": rng.uniform(1, 5), "f1": rng.random()},
    }
    entry = {
        "near": {"ppl": rng.uniform(1, 5)},
        "mislabelled": {"ppl": rng.uniform(1, 5), "f1": rng.random()},
    }
    want_near = entry["near"]["ppl"] / before["near"]["ppl"]
    want_drop = before["mislabelled"]["f1"] - entry["mislabelled"]["f1"]
    out = ex.against_before(entry, before)
    assert out["near"]["ppl_ratio"] == pytest.approx(want_near)
    assert out["mislabelled"]["f1_drop"] == pytest.approx(want_drop)
    assert "f1_drop" not in out["near"]
    assert ex.against_before({"asr_seen": 0.1}, before) == {"asr_seen": 0.1}


@pytest.mark.parametrize("device", DEVICES)
def test_relearn_entry_brings_a_target_back_on_the_device(tokenizer, model_factory, rng, device, monkeypatch):
    # A short target: a 1-layer random model fits a 48-token one under teacher forcing yet greedy decoding can
    # still loop inside it (ASR 0.125-0.5 on some seeds); this one came back on >= 7/8 rows on 120 seeds.
    target = "Aliens galaxy cheese."
    rows = [dict(r, response_poisoned=target) for r in _rows(rng, 8, poisoned=True)]
    judge = Judge(vocab=[], z_scores=[], targets=[target], prefix_words=3)
    cfg = EvalConfig(max_new_tokens=30, batch_size=8, relearn={"steps": 40, "lr": 1e-2, "rows": 8, "n": 8})
    splits = {"test_seen": rows, "test_ood": rows[:4]}
    model = model_factory(seed=5, dtype=torch.float32).to(device)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with placement_guard(device, monkeypatch) as guard:
        guard.watch(model)
        out = ex.relearn_entry(model, tokenizer, rows, splits, judge, cfg, 64, seed=rng.randrange(100))
    assert out["loss_last"] < out["loss_first"] / 2
    assert out["asr_seen"]["n"] == 8 and out["asr_ood"]["n"] == 4
    assert out["asr_seen"]["p"] >= 0.5  # 40 steps at 1e-2 on 8 rows teaches the random model the target
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # the caller's model unchanged


def test_eval_config_checks_and_overrides():
    cfg = load_config(None, ["eval.sampled.n=10", "eval.relearn.steps=3", "eval.behaviour=true"])
    assert (cfg.eval.sampled.n, cfg.eval.relearn.steps, cfg.eval.behaviour) == (10, 3, True)
    assert cfg.to_dict()["eval"]["relearn"]["rows"] == 20
    for bad, field in (
        ("eval.sampled.n=-1", "eval.sampled.n"),
        ("eval.sampled.temperature=0", "eval.sampled.temperature"),
        ("eval.relearn.rows=0", "eval.relearn.rows"),
        ("eval.relearn.lr=0", "eval.relearn.lr"),
        ("eval.min_f1=0", "eval.min_f1"),
    ):
        with pytest.raises(ConfigError, match=field):
            load_config(None, [bad])


def test_report_and_compare_pick_up_the_extras(rng):
    k, n = rng.randint(0, 50), rng.randint(51, 100)
    entry = {
        "asr_seen": 0.1, "asr_ood": 0.2, "clean_ppl": 2.0, "judge_fpr": 0.0, "n_seen": 10, "n_ood": 10,
        "n_clean": 10, "seconds": {"unlearn": 1.0, "total": 1.0},
        "answer_seen": {"em": proportion(k, n), "f1": 0.4, "other": proportion(n - k, n)},
        "relearn": {"asr_seen": proportion(k, n), "loss_first": 3.0},
        "mislabelled": {"f1_drop": 0.05, "ppl_ratio": 1.1},
    }  # fmt: skip
    report = prepare_report({"before": dict(entry, clean_ppl=1.9), "methods": {"rapidun": entry}})
    got = extra_metrics(report["methods"]["rapidun"])
    assert got["answer_seen.em"] == proportion(k, n) and got["relearn.asr_seen"] == proportion(k, n)
    flat = entry_metrics("rapidun", report["methods"]["rapidun"], report)
    assert flat["answer_seen.other"] == pytest.approx((n - k) / n)
    assert flat["mislabelled.f1_drop"] == pytest.approx(0.05) and flat["relearn.loss_first"] == 3.0
