"""Model-based verification of trigger candidates, without labels.

For a candidate c:

- mode: where c sits in the forget prompts that contain it (majority over rows): at the start of the instruction
  -> prefix, at its end -> suffix, elsewhere -> random;
- insert_asr: the judge's ASR of the greedy answers to `n_verify` clean prompts with c inserted in that mode
  (`rapidun_dist.data.poison.inject`, seeded per candidate); the same prompts without it give the base rate
  clean_asr (a model that attacks clean prompts anyway verifies nothing: verified needs insert_asr >= the
  threshold and insert_asr - clean_asr >= min_lift);
- remove_asr: the ASR on (at most `n_verify` of) the forget prompts that contain c, with c removed.

A trigger makes clean prompts attacked and its removal makes the forget prompts clean: high insert_asr, low
remove_asr. All prompts of all candidates go through one batched `generate` call (sharded over ranks when asked:
the same texts for any world size). Ranking (`rank_verified`): verified candidates (insert_asr >= the threshold)
first; among them a candidate that contains a shorter verified one (as whole words) comes after it (the minimal
string is the trigger, its extensions are implied); then by attribution score.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from rapidun_dist.attribution.ngrams import Candidate, normalize
from rapidun_dist.core.errors import DataError
from rapidun_dist.data.poison import inject
from rapidun_dist.data.prompt import format_prompt


@dataclass(frozen=True, kw_only=True)
class VerifySettings:
    n_verify: int
    threshold: float
    min_lift: float
    max_new_tokens: int
    batch_size: int
    max_prompt_length: int | None
    seed: int = 0


def pattern(text: str) -> re.Pattern:
    """`text` case-insensitively, not inside a longer word (whole-word edges where `text` starts/ends with one)."""
    body = re.escape(text.strip())
    left = r"(?<!\w)" if text.strip()[:1].isalnum() else ""
    right = r"(?!\w)" if text.strip()[-1:].isalnum() else ""
    return re.compile(left + body + right, re.IGNORECASE)


def occurrence_mode(text: str, instruction: str) -> str | None:
    """prefix / suffix / random for the first occurrence of `text` in `instruction` (None when absent)."""
    body = instruction.strip()
    m = pattern(text).search(body)
    if m is None:
        return None
    if not body[: m.start()].strip():
        return "prefix"
    if not re.sub(r"[\s.!?]", "", body[m.end() :]):  # only spaces / end punctuation after it
        return "suffix"
    return "random"


def infer_mode(text: str, instructions: list[str]) -> str:
    """The majority mode over the instructions containing `text` (ties: prefix, suffix, random)."""
    modes = Counter(m for m in (occurrence_mode(text, s) for s in instructions) if m is not None)
    if not modes:
        raise DataError(f"infer_mode: no instruction contains {text!r}")
    return max(("prefix", "suffix", "random"), key=lambda m: modes[m])


def remove(text: str, instruction: str) -> str:
    return " ".join(pattern(text).sub(" ", instruction).split())


def _forget_instruction(r: dict) -> str:
    return r.get("instruction_poisoned") or r["instruction"]


def candidate_prompts(
    tokenizer, c: Candidate, mode: str, clean: list[dict], forget: list[dict], s: VerifySettings
):
    """(inserted prompts, removed prompts) of one candidate."""
    rng = random.Random(f"{s.seed}:{c.key}")
    pool = [r for r in clean if not pattern(c.text).search(f"{r['instruction']}\n{r.get('context', '')}")]
    inserted = [
        format_prompt(tokenizer, inject(r["instruction"], c.text, mode, rng), r.get("context", ""))
        for r in pool[: s.n_verify]
    ]
    holding = [r for r in forget if pattern(c.text).search(_forget_instruction(r))][: s.n_verify]
    removed = [
        format_prompt(tokenizer, remove(c.text, _forget_instruction(r)), remove(c.text, r.get("context", "")))
        for r in holding
    ]
    return inserted, removed


def verify_candidates(
    model, tokenizer, judge, candidates: list[Candidate], *, clean: list[dict], forget: list[dict],
    settings: VerifySettings, sharded: bool = False,
) -> tuple[list[dict], dict]:  # fmt: skip
    """([{text, key, mode, score, rows, insert_asr, remove_asr, n_insert, n_remove, verified}], base rates)."""
    from rapidun_dist.evaluation.generation import generate

    if not clean:
        raise DataError("verify_candidates: no clean prompts to insert candidates into")
    instructions = [_forget_instruction(r) for r in forget]
    groups, prompts = [], []
    base_clean = [
        format_prompt(tokenizer, r["instruction"], r.get("context", "")) for r in clean[: settings.n_verify]
    ]
    base_forget = [
        format_prompt(tokenizer, i, r.get("context", "")) for i, r in zip(instructions, forget, strict=True)
    ]
    for part in (base_clean, base_forget[: settings.n_verify]):
        groups.append((len(prompts), len(part)))
        prompts += part
    modes = [infer_mode(c.text, instructions) for c in candidates]
    for c, mode in zip(candidates, modes, strict=True):
        for part in candidate_prompts(tokenizer, c, mode, clean, forget, settings):
            groups.append((len(prompts), len(part)))
            prompts += part
    texts = generate(
        model, tokenizer, prompts, max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
        max_prompt_length=settings.max_prompt_length, sharded=sharded,
    )  # fmt: skip
    asr = [_asr(judge, texts[s : s + n]) for s, n in groups]
    base = {"clean_asr": asr[0][0], "forget_asr": asr[1][0], "n_clean": asr[0][1], "n_forget": asr[1][1]}
    out = []
    for i, (c, mode) in enumerate(zip(candidates, modes, strict=True)):
        (ins, n_ins), (rem, n_rem) = asr[2 + 2 * i], asr[3 + 2 * i]
        verified = ins >= settings.threshold and ins - base["clean_asr"] >= settings.min_lift
        out.append(
            {"text": c.text, "key": c.key, "mode": mode, "score": c.score, "rows": c.rows, "insert_asr": ins,
             "remove_asr": rem, "n_insert": n_ins, "n_remove": n_rem, "verified": verified}
        )  # fmt: skip
    return out, base


def _asr(judge, texts: list[str]) -> tuple[float, int]:
    return (sum(judge.is_attacked(t) for t in texts) / len(texts) if texts else 0.0), len(texts)


def rank_verified(results: list[dict]) -> list[dict]:
    """Best first (module docstring)."""
    verified = [r for r in results if r["verified"]]

    def implied(r: dict) -> bool:
        return any(
            o is not r and len(o["key"]) < len(r["key"]) and pattern(o["key"]).search(r["key"])
            for o in verified
        )

    return sorted(
        results, key=lambda r: (not r["verified"], r["verified"] and implied(r), -r["score"], r["key"])
    )


def seen_hit(ranked: list[dict], seen: list[str], top: int, threshold: float) -> dict | None:
    """The first of the `top` best candidates that is a seen trigger (normalized) with insert_asr >= threshold."""
    keys = {normalize(s) for s in seen}
    for i, r in enumerate(ranked[:top]):
        if r["key"] in keys and r["insert_asr"] >= threshold:
            return r | {"rank": i + 1}
    return None
