"""Per-prompt-token attribution of forget rows, and two baselines on the same rows.

Token features. With every instruction token its own segment (`per_token_layout`), the hook-time projection
(docs/DESIGN.md section 5) returns per token t the unit outer products phi_tl = unit(P_out g_t) unit(P_in x_t)^T, g_t the
gradient of the poisoned answer's summed NLL at prompt position t; phi_t = concat_l phi_tl / sqrt(L), so
<phi_t, phi_s> is the layer-balanced mean cosine of the two tokens' gradients.

Attribution (`match_scores`, what the candidates are ranked by): how much token t of forget row i aligns with the
forget set against the retain set, token against token,

    a_t = mean of the m best  max_{t' in row j} <phi_t, phi_t'>  over forget rows j != i
        - mean of the m best  max_{t' in row j} <phi_t, phi_t'>  over retain rows j,

(a top-m aggregation as in section 6). A trigger token meets its own copies, under the same poisoned answers, in
other forget rows, and nothing like it in the retain rows; a common word meets itself in both.

Direction split (baseline 1, `token_attribution`): d = mean forget feature - mean retain feature (prompt
positions, unit features), split per layer into D_l; `TokenwiseExtractor.token_scores` gives
s_t = sum_l u_tl^T D_l v_tl / (||S_il|| sqrt(L)) with sum_t s_t = <f_i, d>. On the default testbed it finds the
one trigger that sits in a third of the forget rows and misses the others: the template tokens (shared by every
row, under the same poisoned answers) dominate d (benchmarks/results.md).

Saliency (baseline 2, `input_saliency`): sal_t = <e_t, dL/de_t>, e_t the input embedding of prompt token t.

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
from rapidun_dist.core.errors import DataError
from rapidun_dist.data.prompt import IGNORE_INDEX, encode_example, format_prompt, has_chat_template, pad_batch
from rapidun_dist.influence.features import (
    TokenwiseExtractor,
    answer_loss_backward,
    answer_positions,
    model_device,
    model_dtype,
)
from rapidun_dist.influence.hooks import HookProjector
from rapidun_dist.kernels import TokenLayout
from rapidun_dist.training.losses import per_sample_nll


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


def encode_prompt_tokens(
    tokenizer, instruction: str, context: str, answer: str, max_length: int
) -> PromptTokens:
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
            encode_prompt_tokens(
                tokenizer, instruction, r.get("context", ""), r["response_poisoned"], max_length
            )
        )
    return out


def feature_sum(extractor: TokenwiseExtractor, examples: list[dict], batch_size: int) -> torch.Tensor:
    """[dim] float64 sum of the (unit) prompt-position features of `examples` (zeros when empty)."""
    total = torch.zeros(extractor.dim, dtype=torch.float64, device="cpu")
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
    dirs = {
        n: d.to(torch.promote_types(model_dtype(extractor.model), torch.float32)) for n, d in dirs.items()
    }
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


def per_token_layout(mask_BT: torch.Tensor, device) -> TokenLayout:
    """The tracked tokens of `mask_BT`, each its own segment: the hooks' per-sample sums become per-token unit
    outer products u_t v_t^T (phi_t, unit)."""
    base = TokenLayout.from_mask(mask_BT, device)
    n = base.n_tokens
    return dataclasses.replace(
        base,
        sample=torch.arange(n, dtype=torch.int32, device=base.sample.device),
        offsets=torch.arange(n + 1, dtype=torch.long, device=base.offsets.device),
        pos=torch.zeros(n, dtype=torch.long, device=base.pos.device),
        n_samples=n,
        max_count=min(n, 1),
    )


def token_features(
    extractor: TokenwiseExtractor, rows: list[PromptTokens], batch_size: int
) -> list[torch.Tensor]:
    """Per row, phi [n_content, dim] (float32, host) of its instruction tokens: concat_l unit(P_out g_t)
    unit(P_in x_t)^T / sqrt(L) (zeros for a layer the loss never reached), g_t of the row's summed answer NLL."""
    dev, model = model_device(extractor.model), extractor.model
    pad_id = extractor.pad_id
    out: list[torch.Tensor] = []
    for s in range(0, len(rows), batch_size):
        chunk = rows[s : s + batch_size]
        batch_cpu = pad_batch([r.example for r in chunk], pad_id)
        mask = torch.zeros(tuple(batch_cpu["attention_mask"].shape), dtype=torch.bool, device="cpu")  # host
        for i, r in enumerate(chunk):
            mask[i, : r.n_prompt] = torch.tensor(r.content, dtype=torch.bool, device="cpu")
        layout = per_token_layout(mask, dev)
        hooks = HookProjector(extractor.layers, extractor.bank, layout, backend=extractor.cfg.backend)
        with hooks:
            batch = {k: v.to(dev) for k, v in batch_cpu.items()}
            answer_loss_backward(model, batch, answer_positions(batch_cpu["labels"]))
        phi = torch.cat(
            [_layer_part(extractor, hooks.sums, n, layout.n_tokens) for n in extractor.layers], dim=1
        )
        out += list((phi / len(extractor.layers) ** 0.5).split(mask.sum(1).tolist()))
    return out


def _layer_part(extractor: TokenwiseExtractor, sums: dict, name: str, n: int) -> torch.Tensor:
    k_in, k_out = extractor.proj[name][0].shape[0], extractor.proj[name][1].shape[0]
    part = sums.get(name)
    return (
        torch.zeros(n, k_out * k_in, device="cpu") if part is None else part.detach().flatten(1).float().cpu()
    )


def best_matches(q_ND: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
    """[N, len(refs)]: for each query token, its best inner product with any token of each reference row."""
    sizes = [len(r) for r in refs]
    if not refs or not sum(sizes):
        raise DataError("attribution: no reference rows with instruction tokens to match against")
    sims = q_ND.double() @ torch.cat(refs).double().T
    row_of = torch.repeat_interleave(
        torch.arange(len(refs), device="cpu"), torch.tensor(sizes, device="cpu")
    ).expand_as(sims)
    out = torch.full((len(q_ND), len(refs)), float("-inf"), dtype=torch.float64, device="cpu")
    return out.scatter_reduce(1, row_of, sims, reduce="amax")


def match_scores(
    q_ND: torch.Tensor,
    forget_refs: list[torch.Tensor],
    retain_refs: list[torch.Tensor],
    *,
    own: int | None,
    m: int,
) -> torch.Tensor:
    """a_t = mean of the m best forget-row matches (own row excluded) - mean of the m best retain-row matches,
    a row's match being the best <phi_t, phi_t'> over its instruction tokens (rows without any are skipped)."""
    f = [r for j, r in enumerate(forget_refs) if j != own and len(r)]
    r = [x for x in retain_refs if len(x)]
    if not len(q_ND):
        return torch.zeros(0, dtype=torch.float64, device="cpu")
    bf, br = best_matches(q_ND, f), best_matches(q_ND, r)
    return bf.topk(min(m, bf.shape[1]), dim=1).values.mean(1) - br.topk(
        min(m, br.shape[1]), dim=1
    ).values.mean(1)
