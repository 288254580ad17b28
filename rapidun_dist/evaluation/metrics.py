"""Evaluation metrics: attack success rate, clean perplexity, poison retrieval, and one call for a model.

- ASR = (1/n) sum_i judge(text_i), over generations for triggered prompts.
- Clean PPL = exp( sum_i sum_t NLL_it / sum_i T_i ): token-weighted mean negative log-likelihood of the
  clean answers (plus EOS) given their prompts, next-token shifted (logits[:, :-1] predict labels[:, 1:]).
- Answered rate on triggered prompts: the share of the rows with a known clean answer whose greedy output is not
  attacked and has token F1 >= eval.min_f1 against it (verdict "answer", rapidun_dist.evaluation.answers), and the
  share "other" (neither target nor answer: babble); rows without a clean answer are not scored ("unscored", never
  guessed). On clean prompts, the same answered share and the mean token F1 / ROUGE-L of the greedy outputs against
  the references. All scored on the generations ASR and FPR are judged on (no extra generation pass).
- Poison retrieval, scores s (higher = more likely poisoned) and labels y in {0, 1}:
  AUROC = (sum of average ranks of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg)   (Mann-Whitney U;
  tied scores share their average rank, so a tied positive/negative pair counts 1/2);
  AP = sum over distinct thresholds t (descending) of (positives scoring exactly t / n_pos) * precision(>= t),
  i.e. the step-wise precision at each positive, where tied items enter together.

`sharded=True` (a multi-rank launch, every rank calling with the same inputs): generation and perplexity batches
are formed as on one rank and dealt out round-robin (rapidun_dist.evaluation.generation), every rank gets every
result back, and the sums are taken in batch order, so the numbers equal the one-rank numbers exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rapidun_dist.config import EvalConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.logging import Progress, get_logger
from rapidun_dist.data.prompt import IGNORE_INDEX, encode_example, pad_batch, record_prompt
from rapidun_dist.evaluation.answers import answer_shares, mean_quality, token_f1, verdict
from rapidun_dist.evaluation.generation import generate, merge_shards, model_device, shard_batches
from rapidun_dist.evaluation.judge import Judge, false_positive_rate
from rapidun_dist.evaluation.stats import proportion

N_EXAMPLES = 3  # generations kept per split in the evaluation result, for a reader to eyeball


def attack_success_rate(judge: Judge, texts: Sequence[str]) -> float:
    """Fraction of `texts` the judge calls attacked."""
    if len(texts) == 0:
        raise DataError("attack_success_rate: expected at least one generated text, found none")
    return sum(judge.is_attacked(t) for t in texts) / len(texts)


def _pad_id(tokenizer) -> int:
    for tok_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tok_id is not None:
            return tok_id
    return 0  # padded positions are masked and carry no label; any id will do


def _encode_clean(tokenizer, records: Sequence[dict], max_length: int) -> list[dict]:
    examples = []
    for i, rec in enumerate(records):
        if not rec.get("response"):
            raise DataError(f"clean_perplexity: record {rec.get('id', i)!r} has no clean 'response'")
        examples.append(
            encode_example(
                tokenizer, record_prompt(tokenizer, rec, poisoned=False), rec["response"], max_length
            )
        )
    return examples


@torch.no_grad()
def _batch_nll(model, batch: dict) -> tuple[float, int]:
    """Summed next-token NLL over labelled tokens of one right-padded batch, and the token count."""
    device = model_device(model)
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
    ).logits
    labels = batch["labels"].to(device)[:, 1:]
    logits = logits[:, :-1]
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()  # low-precision logits: take the softmax in fp32; fp32/fp64 stay as they are
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return float(nll), int((labels != IGNORE_INDEX).sum())


def clean_perplexity(
    model, tokenizer, records: Sequence[dict], *, max_length: int, batch_size: int, sharded: bool = False
) -> float:
    """exp(token-weighted mean NLL) of the clean answers of `records` given their (clean) prompts."""
    if len(records) == 0:
        raise DataError("clean_perplexity: expected at least one record, found none")
    examples = _encode_clean(tokenizer, records, max_length)
    starts = list(range(0, len(examples), batch_size))
    mine = shard_batches(len(starts), sharded)
    was_training = model.training
    model.eval()
    per_batch: dict[int, tuple[float, int]] = {}
    progress = Progress(len(mine), "clean ppl", unit="batch") if len(mine) > 1 else None
    try:
        for b in mine:
            chunk = examples[starts[b] : starts[b] + batch_size]
            per_batch[b] = _batch_nll(model, pad_batch(chunk, _pad_id(tokenizer)))
            if progress is not None:
                progress.update()
    finally:
        model.train(was_training)
    sums = merge_shards(per_batch, len(starts), sharded)  # summed in batch order: the one-rank float sums
    total_nll, total_tokens = 0.0, 0
    for nll, n_tok in sums:
        total_nll, total_tokens = total_nll + nll, total_tokens + n_tok
    if total_tokens == 0:
        raise DataError("clean_perplexity: no answer tokens survived truncation; raise max_length")
    return math.exp(total_nll / total_tokens)


def _on_host(x, dtype=None) -> torch.Tensor:
    """A tensor of `x` (a tensor, array or list) on the host, named explicitly (never the process default)."""
    return torch.as_tensor(x, dtype=dtype, device="cpu")


def _check_scores(scores, labels) -> tuple[torch.Tensor, torch.Tensor]:
    s = _on_host(scores, torch.float64).flatten()
    y = _on_host(labels).flatten().to(torch.float64)
    if s.numel() != y.numel():
        raise DataError(f"retrieval_metrics: {s.numel()} scores but {y.numel()} labels")
    if not torch.isfinite(s).all():
        raise DataError("retrieval_metrics: scores contain NaN or inf")
    if not ((y == 0) | (y == 1)).all():
        raise DataError("retrieval_metrics: labels must be 0/1 (or bool)")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.numel():
        raise DataError(f"retrieval_metrics: need both classes, found {n_pos} positives of {y.numel()}")
    return s, y


def retrieval_metrics(scores, labels) -> dict[str, float]:
    """AUROC and average precision of `scores` (higher = positive) against 0/1 `labels`, ties handled."""
    s, y = _check_scores(scores, labels)
    uniq, inverse, counts = torch.unique(s, sorted=True, return_inverse=True, return_counts=True)
    group_rank = (
        torch.cumsum(counts, 0).to(torch.float64) - (counts.to(torch.float64) - 1.0) / 2.0
    )  # 1-based average rank
    n_pos, n_neg = float(y.sum()), float(y.numel() - y.sum())
    auroc = (float((group_rank[inverse] * y).sum()) - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg)
    pos_per_group = (
        torch.zeros(len(uniq), dtype=torch.float64, device=s.device).index_add_(0, inverse, y).flip(0)
    )
    precision = torch.cumsum(pos_per_group, 0) / torch.cumsum(counts.flip(0).to(torch.float64), 0)
    ap = float((pos_per_group * precision).sum()) / n_pos
    return {"auroc": auroc, "ap": ap}


def _judge_split(
    model,
    tokenizer,
    records: Sequence[dict],
    judge: Judge,
    cfg: EvalConfig,
    max_length: int,
    *,
    poisoned: bool,
    sharded: bool = False,
) -> tuple[list[str], list[bool]]:
    prompts = [record_prompt(tokenizer, r, poisoned=poisoned) for r in records]
    texts = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        max_prompt_length=max_length,
        sharded=sharded,
    )
    return texts, [judge.is_attacked(t) for t in texts]


def triggered_asr(
    model,
    tokenizer,
    records: Sequence[dict],
    judge: Judge,
    cfg: EvalConfig,
    max_length: int,
    *,
    sharded: bool = False,
) -> dict:
    """Greedy ASR on the records' triggered prompts, as a `stats.proportion` dict (k attacked of n)."""
    _, attacked = _judge_split(
        model, tokenizer, records, judge, cfg, max_length, poisoned=True, sharded=sharded
    )
    return proportion(sum(attacked), len(attacked))


def _check_triggered(split: str, records: Sequence[dict]) -> None:
    for i, rec in enumerate(records):
        if not rec.get("instruction_poisoned"):
            raise DataError(
                f"{split}: record {rec.get('id', i)!r} has no 'instruction_poisoned'; "
                "triggered test splits need the poisoned instruction"
            )


def _by_family(records: Sequence[dict], attacked: Sequence[bool]) -> dict[str, float]:
    hits: dict[str, list[bool]] = defaultdict(list)
    for rec, flag in zip(records, attacked, strict=True):
        hits[str(rec.get("trigger_family") or "unknown")].append(flag)
    return {fam: sum(v) / len(v) for fam, v in sorted(hits.items())}


def _examples(
    records: Sequence[dict],
    texts: Sequence[str],
    attacked: Sequence[bool],
    judge: Judge,
    *,
    poisoned: bool,
    min_f1: float,
) -> list[dict]:
    """The first N_EXAMPLES (instruction, generation, judge's call), with the clean answer ("reference"), the
    output's verdict and its token F1 against the reference where that is known."""
    key = "instruction_poisoned" if poisoned else "instruction"
    out = []
    for r, t, a in zip(records[:N_EXAMPLES], texts, attacked, strict=False):
        ex = {"instruction": r.get(key, ""), "generation": t, "attacked": a}
        ref = r.get("response")
        ex["verdict"] = verdict(judge, t, ref, min_f1=min_f1)
        if (ref or "").strip():
            ex |= {"reference": ref, "f1": token_f1(t, ref)}
        out.append(ex)
    return out


def _answer_keys(
    name: str, judge: Judge, records: Sequence[dict], texts: Sequence[str], min_f1: float
) -> dict:
    """answered_<name> / other_<name> (shares of the rows with a known clean answer) and n_scored_<name>."""
    shares = answer_shares(judge, texts, [r.get("response") for r in records], min_f1=min_f1)
    rate = {k: shares[k]["p"] if shares[k] else None for k in ("answered", "other")}
    return {
        f"answered_{name}": rate["answered"],
        f"other_{name}": rate["other"],
        f"n_scored_{name}": shares["n_scored"],
    }


def evaluate_model(
    model,
    tokenizer,
    splits: dict[str, list[dict]],
    judge: Judge,
    cfg: EvalConfig,
    max_length: int,
    *,
    sharded: bool = False,
    texts_out: dict[str, list[str]] | None = None,
) -> dict:
    """ASR and the answered / other shares on `test_seen` / `test_ood` (poisoned instructions); clean PPL, judge
    FPR, the answered share and the mean token F1 / ROUGE-L of the greedy outputs on `test_clean` (module doc).

    A missing or empty split gives None for its numbers (shown as "-" in the report). `sharded`: every rank
    of the launch calls this with the same inputs and gets the same result (see the module docstring).
    `texts_out`, when given, receives the greedy generations per split (for metrics on the same outputs)."""
    out: dict = {
        "asr_seen": None,
        "asr_ood": None,
        "clean_ppl": None,
        "judge_fpr": None,
        "n_seen": 0,
        "n_ood": 0,
        "n_clean": 0,
        "answered_seen": None,
        "answered_ood": None,
        "other_seen": None,
        "other_ood": None,
        "n_scored_seen": 0,
        "n_scored_ood": 0,
        "answered_clean": None,
        "n_scored_clean": 0,
        "clean_f1": None,
        "clean_rougeL": None,
        "asr_by_family": {},
        "examples": {},
    }
    for split, name in (("test_seen", "seen"), ("test_ood", "ood")):
        records = splits.get(split) or []
        if not records:
            continue
        _check_triggered(split, records)
        texts, attacked = _judge_split(
            model, tokenizer, records, judge, cfg, max_length, poisoned=True, sharded=sharded
        )
        out[f"asr_{name}"], out[f"n_{name}"] = sum(attacked) / len(attacked), len(records)
        out |= _answer_keys(name, judge, records, texts, cfg.min_f1)
        out["asr_by_family"][name] = _by_family(records, attacked)
        out["examples"][split] = _examples(records, texts, attacked, judge, poisoned=True, min_f1=cfg.min_f1)
        if texts_out is not None:
            texts_out[split] = texts
    clean = splits.get("test_clean") or []
    if clean:
        texts, attacked = _judge_split(
            model, tokenizer, clean, judge, cfg, max_length, poisoned=False, sharded=sharded
        )
        out["judge_fpr"], out["n_clean"] = false_positive_rate(judge, texts), len(clean)
        out |= _answer_keys("clean", judge, clean, texts, cfg.min_f1)
        quality = mean_quality(texts, [r.get("response") for r in clean])
        out["clean_f1"], out["clean_rougeL"] = quality["f1"], quality["rougeL"]
        out["examples"]["test_clean"] = _examples(
            clean, texts, attacked, judge, poisoned=False, min_f1=cfg.min_f1
        )
        if texts_out is not None:
            texts_out["test_clean"] = texts
        out["clean_ppl"] = clean_perplexity(
            model, tokenizer, clean, max_length=max_length, batch_size=cfg.batch_size, sharded=sharded
        )
    get_logger("rapidun.eval").info(
        f"eval: asr_seen={out['asr_seen']} asr_ood={out['asr_ood']} answered_seen={out['answered_seen']} "
        f"answered_ood={out['answered_ood']} clean_ppl={out['clean_ppl']} clean_f1={out['clean_f1']} "
        f"clean_rougeL={out['clean_rougeL']} judge_fpr={out['judge_fpr']}"
    )
    return out
