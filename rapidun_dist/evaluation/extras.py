"""The evaluate stage's metrics beyond ASR (docs/DESIGN.md section 8), per model, as report ENTRY keys.

Each key holds one level of numbers and `stats.proportion` dicts ({"p", "k", "n", "lo", "hi"}), so the report's
"Further metrics" table and `rapidun compare` pick them up as `key.sub` without knowing them:

    answer_seen / answer_ood   triggered test prompts: "em" (exact match of the clean answer, a proportion),
                               "f1" (mean token F1), "answered" (F1 >= eval.min_f1 and not attacked), "other"
                               (neither the attacker's target nor the answer: babble, a wrong answer)
    answer_clean               clean test prompts: "em", "f1", "answered" (clean-prompt accuracy)
    near                       test_near (clean prompts close to the target topic; collateral damage): "ppl",
                               "ppl_ratio" (against the model before unlearning), "em", "f1", "attacked"
    mislabelled                the forget rows that are in fact clean (forget_truth.jsonl): "em", "f1",
                               "answered", "ppl", and against the model before: "f1_drop", "ppl_ratio"
    sampled                    ASR under sampling on the first eval.sampled.n test_seen prompts: "samples" (share
                               of attacked samples), "any" (share of prompts with an attacked sample)
    relearn                    after eval.relearn.steps of fine-tuning on eval.relearn.rows poisoned train rows
                               outside the forget pack: "asr_seen", "asr_ood" on the first eval.relearn.n prompts,
                               "loss_first", "loss_last"

answer_seen.answered / .other, answer_ood.answered / .other, answer_clean.answered and answer_clean.f1 are the same
numbers as the entry's own answered_seen, other_seen, ..., clean_f1 (which every evaluation has, eval.behaviour or
not); the report shows them once, under those names.

`behaviour_entry` works on the greedy generations `evaluate_model` already made (no second generation pass);
`near`, `mislabelled`, `sampled` and `relearn` generate their own. Rows without a clean answer (the no-clean-answer
testbed) are not scored for EM / F1: a key whose rows have none is left out.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rapidun_dist.config import EvalConfig
from rapidun_dist.core.logging import get_logger
from rapidun_dist.evaluation.behaviour import evaluate_behaviour, sampled_asr, summarize_outputs
from rapidun_dist.evaluation.generation import Sampling
from rapidun_dist.evaluation.judge import Judge
from rapidun_dist.evaluation.metrics import triggered_asr
from rapidun_dist.evaluation.stats import proportion

_log = get_logger("rapidun.eval")
TRIGGERED = (("test_seen", "answer_seen"), ("test_ood", "answer_ood"))


def _answer_metrics(summary: dict, *, triggered: bool) -> dict | None:
    """EM (a proportion), mean F1 and the answered / other shares of a `summarize_outputs` result; None when no
    row had a clean answer to score against."""
    n = summary["n_scored"]
    if not n:
        return None
    out = {
        "em": proportion(round(summary["em"] * n), n),
        "f1": summary["f1"],
        "answered": summary["answered"],
    }
    if triggered:
        out["other"] = summary["other"]
    return out


def behaviour_entry(
    judge: Judge, splits: dict[str, list[dict]], texts: dict[str, list[str]], *, min_f1: float = 0.5
) -> dict:
    """answer_seen / answer_ood / answer_clean from the generations of `evaluate_model` (module doc)."""
    out = {}
    for split, key in (*TRIGGERED, ("test_clean", "answer_clean")):
        records, outs = splits.get(split) or [], texts.get(split) or []
        if not records or len(outs) != len(records):
            continue
        answers = [r.get("response") for r in records]
        summary = summarize_outputs(judge, outs, answers, min_f1=min_f1)
        metrics = _answer_metrics(summary, triggered=split != "test_clean")
        if metrics is not None:
            out[key] = metrics
    return out


def near_entry(
    model, tokenizer, records: Sequence[dict], judge: Judge, cfg: EvalConfig, max_length: int
) -> dict:
    """Collateral damage on test_near: answer accuracy, the attacked share (the backdoor spilling over onto its
    topic without a trigger) and the clean PPL of the reference answers."""
    from rapidun_dist.evaluation.metrics import clean_perplexity

    summary = evaluate_behaviour(
        model, tokenizer, records, judge, cfg, max_length, triggered=False, min_f1=cfg.min_f1
    )
    out = _answer_metrics(summary, triggered=False) or {}
    out["attacked"] = summary["attacked"]
    out["ppl"] = clean_perplexity(model, tokenizer, records, max_length=max_length, batch_size=cfg.batch_size)
    return out


def mislabelled_entry(
    model, tokenizer, rows: Sequence[dict], judge: Judge, cfg: EvalConfig, max_length: int
) -> dict | None:
    """Answer EM / F1 and PPL on the clean prompts of the mislabelled forget rows (None without such rows)."""
    from rapidun_dist.evaluation.behaviour import mislabelled_damage

    result = mislabelled_damage(model, tokenizer, rows, judge, cfg, max_length)
    if result is None:
        return None
    out = _answer_metrics(result, triggered=False) or {}
    return out | {"ppl": result["clean_ppl"], "attacked": result["attacked"]}


def against_before(entry: dict, before: dict) -> dict:
    """Add near.ppl_ratio, mislabelled.ppl_ratio and mislabelled.f1_drop (entry against the model before)."""
    for key in ("near", "mislabelled"):
        cur, ref = entry.get(key), before.get(key)
        if not cur or not ref:
            continue
        if ref.get("ppl"):
            cur["ppl_ratio"] = cur["ppl"] / ref["ppl"]
        if key == "mislabelled" and cur.get("f1") is not None and ref.get("f1") is not None:
            cur["f1_drop"] = ref["f1"] - cur["f1"]
    return entry


def sampled_entry(model, tokenizer, records: Sequence[dict], judge: Judge, cfg: EvalConfig, max_length: int):
    """ASR under sampling on the first eval.sampled.n triggered records."""
    s = cfg.sampled
    res = sampled_asr(
        model,
        tokenizer,
        list(records[: s.n]),
        judge,
        cfg,
        max_length,
        sampling=Sampling(temperature=s.temperature, num_samples=s.samples, seed=s.seed),
    )
    return {"samples": res["samples"], "any": res["any"]}


def relearn_entry(
    model,
    tokenizer,
    attack_rows: Sequence[dict],
    splits: dict[str, list[dict]],
    judge: Judge,
    cfg: EvalConfig,
    max_length: int,
    *,
    seed: int,
) -> dict:
    """ASR after the relearning attack (module doc); the model itself is not changed (a copy is attacked).

    Every rank runs the same seeded attack on its own copy, then generates its share of the prompts."""
    from rapidun_dist.evaluation.relearn import relearn_attack

    r = cfg.relearn
    with torch.enable_grad():
        attacked, losses = relearn_attack(
            model, tokenizer, attack_rows, r.steps, r.lr, seed, batch_size=r.batch_size, max_length=max_length
        )
    out = {"loss_first": losses[0], "loss_last": losses[-1]}
    with torch.no_grad():
        for split, name in (("test_seen", "asr_seen"), ("test_ood", "asr_ood")):
            records = (splits.get(split) or [])[: r.n]
            if records:
                out[name] = triggered_asr(attacked, tokenizer, records, judge, cfg, max_length, sharded=True)
    del attacked
    _log.info(f"relearn: ASR after the attack {out.get('asr_seen', {}).get('p')} seen")
    return out
