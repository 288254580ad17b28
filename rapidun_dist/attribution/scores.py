"""Per-prompt-token attribution of forget rows, and the gradient x input saliency baseline.

Attribution. Token-wise features with prompt positions tracked (g_t is dL/dy_t of the poisoned answer's summed
NLL at prompt position t, DESIGN section 5): the direction is d = mean_i f_i (forget) - mean_j f_j (retain), each
f unit, in the layout of the features; split per layer into D_l [k_out, k_in], `TokenwiseExtractor.token_scores`
gives, for every prompt position t of a forget row,

    s_t = sum_l u_tl^T D_l v_tl / (||S_il|| sqrt(L)),      sum_t s_t = <f_i, d>,

the share of the row's alignment with "forget against retain" that position t carries.

Saliency (baseline, same rows): sal_t = <e_t, dL/de_t>, e_t the input embedding of prompt token t and L the
poisoned answer's summed NLL (gradient x input).

Prompt tokens are mapped back to the prompt text by the tokenizer's offsets: `PromptTokens.texts[t]` is the
exact substring token t covers, `content[t]` whether it lies in the instruction rather
than in the prompt template or the context, so candidates are drawn from what a user or an attacker wrote where
triggers are inserted (`rapidun_dist.data.poison.inject`) and where verification inserts them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from rapidun_dist.config import InfluenceConfig
from rapidun_dist.data.prompt import IGNORE_INDEX, encode_example, format_prompt, has_chat_template, pad_batch
from rapidun_dist.errors import DataError
from rapidun_dist.influence.features import TokenwiseExtractor, model_device, model_dtype
from rapidun_dist.losses import per_sample_nll


@dataclass(frozen=True)
class PromptTokens:
    """One row encoded for attribution: `example` (input_ids, labels: prompt masked), and per prompt token its
    surface text in the prompt and whether it lies in the instruction (`content`)."""

    example: dict
    texts: list[str]
    content: list[bool]

    @property
    def n_prompt(self) -> int:
        return len(self.texts)


def attribution_extractor(model, cfg: InfluenceConfig, *, pad_id: int) -> TokenwiseExtractor:
    """The token-wise extractor of the run's projection settings with prompt positions tracked (whatever the
    influence stage's estimator and positions are)."""
    return TokenwiseExtractor(
        model, dataclasses.replace(cfg, estimator="tokenwise", positions="prompt"), pad_id=pad_id
    )


def _spans(prompt: str, parts: list[str]) -> list[tuple[int, int]]:
    """Character spans of `parts` (instruction, context) in `prompt`, each searched after the previous one."""
    spans, start = [], 0
    for part in (p.strip() for p in parts):
        if not part:
            continue
        at = prompt.find(part, start)
        if at < 0:
            raise DataError(f"attribution: the prompt does not contain the row's text {part[:40]!r}")
        spans.append((at, at + len(part)))
        start = at + len(part)
    return spans


def encode_prompt_tokens(tokenizer, instruction: str, context: str, answer: str, max_length: int) -> PromptTokens:
    """Encode like training (`encode_example`, left truncation included) and map each prompt token to its text."""
    prompt = format_prompt(tokenizer, instruction, context)
    example = encode_example(tokenizer, prompt, answer, max_length)
    n_prompt = next((i for i, y in enumerate(example["labels"]) if y != IGNORE_INDEX), len(example["labels"]))
    enc = tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer), return_offsets_mapping=True)
    ids, offsets = enc["input_ids"][-n_prompt:], enc["offset_mapping"][-n_prompt:]
    if ids != example["input_ids"][:n_prompt]:
        raise DataError("attribution: the tokenizer's offsets do not line up with the encoded prompt")
    spans = _spans(prompt, [instruction])
    texts = [prompt[a:b] for a, b in offsets]
    content = [b > a and any(a < e and b > s for s, e in spans) for a, b in offsets]
    return PromptTokens(example=example, texts=texts, content=content)


def encode_forget_rows(tokenizer, rows: list[dict], max_length: int) -> list[PromptTokens]:
    """Forget rows as the model saw them in the attack: the poisoned prompt and the poisoned answer."""
    out = []
    for r in rows:
        instruction = r.get("instruction_poisoned") or r["instruction"]
        out.append(
            encode_prompt_tokens(tokenizer, instruction, r.get("context", ""), r["response_poisoned"], max_length)
        )
    return out


def feature_sum(extractor: TokenwiseExtractor, examples: list[dict], batch_size: int) -> torch.Tensor:
    """[dim] float64 sum of the (unit) prompt-position features of `examples` (zeros when empty)."""
    total = torch.zeros(extractor.dim, dtype=torch.float64)
    for s in range(0, len(examples), batch_size):
        total += extractor(examples[s : s + batch_size]).detach().double().sum(0).cpu()
    return total


def contrast_direction(sum_f: torch.Tensor, n_f: int, sum_r: torch.Tensor, n_r: int) -> torch.Tensor:
    """d = mean forget feature - mean retain feature (the sums of unit features and the row counts)."""
    if n_f < 1 or n_r < 1:
        raise DataError(f"attribution needs forget and retain rows; found {n_f} forget, {n_r} retain")
    return sum_f / n_f - sum_r / n_r


def token_attribution(
    extractor: TokenwiseExtractor, rows: list[PromptTokens], direction: torch.Tensor, batch_size: int
) -> list[list[float]]:
    """Per row, s_t at each prompt position (module docstring), float64 on the host."""
    dev = model_device(extractor.model)
    dirs = extractor.layer_directions(direction.to(dev, torch.float64))
    dirs = {n: d.to(torch.promote_types(model_dtype(extractor.model), torch.float32)) for n, d in dirs.items()}
    out: list[list[float]] = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        res = extractor.token_scores([r.example for r in chunk], dirs, positions="prompt")
        scores = res.scores.detach().double().cpu()
        out += [scores[i, : r.n_prompt].tolist() for i, r in enumerate(chunk)]
    return out


def input_saliency(model, rows: list[PromptTokens], *, pad_id: int, batch_size: int) -> list[list[float]]:
    """Per row, <e_t, dL/de_t> at each prompt position (L: the row's summed answer NLL), float64 on the host."""
    dev = model_device(model)
    embed = model.get_input_embeddings()
    out: list[list[float]] = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        batch = {k: v.to(dev) for k, v in pad_batch([r.example for r in chunk], pad_id).items()}
        with torch.enable_grad():
            e_BTH = embed(batch["input_ids"]).detach().requires_grad_(True)
            logits = model(inputs_embeds=e_BTH, attention_mask=batch["attention_mask"]).logits
            (g_BTH,) = torch.autograd.grad(per_sample_nll(logits, batch["labels"])[0].sum(), [e_BTH])
        sal_BT = (e_BTH.detach().double() * g_BTH.double()).sum(-1).cpu()
        out += [sal_BT[i, : r.n_prompt].tolist() for i, r in enumerate(chunk)]
    return out
