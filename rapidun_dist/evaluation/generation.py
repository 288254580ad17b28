"""Greedy, batched generation with left padding.

Prompts are tokenized one by one exactly as in training (`encode_example`: special tokens only when
the tokenizer has no chat template), optionally cut from the left, sorted by length so that a batch
holds similar lengths, left-padded (so every prompt ends at the same column and the new tokens line
up), generated greedily, and returned in the caller's order. Greedy decoding with an attention mask
and mask-derived positions makes the output independent of batch size and padding (up to
floating-point ties).

Sampling (`sampling=Sampling(...)`, e.g. ASR under temperature 0.7) draws `num_samples` continuations per
prompt; the torch RNG is seeded per batch from `Sampling.seed` inside a forked RNG state (the caller's
RNG is untouched), so the texts are reproducible for the same prompts, seed and batch size.

Sharded over ranks (`sharded=True` in a multi-rank launch, every rank calling with the same prompts): the batches
are formed exactly as on one rank, batch b runs on rank b mod P, and every rank gets every text back (one
all_gather), so the result is the one-rank result bit for bit. The model must be rank-local (a ZeRO-3 partitioned
model needs every rank in every forward: call it unsharded there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.core.logging import Progress
from rapidun_dist.data.prompt import has_chat_template


@contextlib.contextmanager
def left_padding(tokenizer) -> Iterator[int]:
    """Temporarily set `padding_side="left"` and a pad token (falling back to EOS); yields the pad id.

    The tokenizer is restored on exit, so callers that train with right padding are not affected."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                "generation: the tokenizer has neither a pad token nor an eos token to pad with"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    try:
        yield tokenizer.pad_token_id
    finally:
        tokenizer.padding_side = side
        if pad is None:
            tokenizer.pad_token = None


@dataclass(frozen=True, kw_only=True)
class Sampling:
    """Sampled instead of greedy decoding: `num_samples` continuations per prompt."""

    temperature: float = 0.7
    top_p: float = 1.0
    num_samples: int = 1
    seed: int = 0

    def __post_init__(self):
        if self.temperature <= 0 or not 0 < self.top_p <= 1 or self.num_samples < 1:
            raise ConfigError(
                f"sampling: expected temperature > 0, 0 < top_p <= 1 and num_samples >= 1, found "
                f"{self.temperature}, {self.top_p}, {self.num_samples}"
            )


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def _generation_config(
    model,
    tokenizer,
    pad_id: int,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    bad_words_ids: list[list[int]] | None = None,
):
    """The model's generation config made greedy (or sampled): one beam, fixed max new tokens; `bad_words_ids`:
    token sequences the output may not contain (the last token of each is banned after the others)."""
    from transformers import GenerationConfig

    base = getattr(model, "generation_config", None)
    cfg = GenerationConfig.from_dict(base.to_dict()) if base is not None else GenerationConfig()
    cfg.update(
        do_sample=sampling is not None,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        max_length=None,
        min_new_tokens=None,
        temperature=sampling.temperature if sampling else None,
        top_p=sampling.top_p if sampling else None,
        top_k=0 if sampling else None,  # 0 = no top-k cut (the model's own default may set one)
        pad_token_id=pad_id,
        bad_words_ids=bad_words_ids or None,
    )
    if cfg.eos_token_id is None:
        cfg.eos_token_id = tokenizer.eos_token_id
    return cfg


@contextlib.contextmanager
def _seeded(sampling: Sampling | None, batch: int, device: torch.device) -> Iterator[None]:
    """Greedy: nothing. Sampling: a forked RNG state seeded from (seed, batch number)."""
    if sampling is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(sampling.seed * 1_000_003 + batch)
        yield


def _encode_prompts(tokenizer, prompts: Sequence[str], max_prompt_length: int | None) -> list[list[int]]:
    add_special = not has_chat_template(tokenizer)
    ids = [tokenizer(p, add_special_tokens=add_special)["input_ids"] for p in prompts]
    if max_prompt_length is not None:
        ids = [x[-max_prompt_length:] for x in ids]
    return ids


def left_padded(batch_ids: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) [B, T] built on `device`, every row ending at the last column."""
    width = max(len(x) for x in batch_ids)
    ids = [[pad_id] * (width - len(x)) + x for x in batch_ids]
    mask = [[0] * (width - len(x)) + [1] * len(x) for x in batch_ids]
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(mask, dtype=torch.long, device=device),
    )


@torch.no_grad()
def _generate_batch(model, tokenizer, batch_ids: list[list[int]], gen_cfg) -> list[str]:
    input_ids, mask = left_padded(batch_ids, gen_cfg.pad_token_id, model_device(model))
    out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg)
    new_tokens = out[:, input_ids.shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def shard_batches(n_batches: int, sharded: bool) -> list[int]:
    """The batch indices this rank runs: all of them, or b = rank, rank + P, ... when sharded over P ranks."""
    from rapidun_dist.distributed import env as dist_env

    if not sharded or dist_env.world_size() == 1:
        return list(range(n_batches))
    return list(range(dist_env.rank(), n_batches, dist_env.world_size()))


def merge_shards(mine: dict[int, object], n: int, sharded: bool) -> list:
    """Every rank's {index: value} merged into the list of all `n` values (one all_gather when sharded)."""
    from rapidun_dist.distributed import env as dist_env

    parts = dist_env.all_gather_object(mine) if sharded and dist_env.world_size() > 1 else [mine]
    merged = {k: v for part in parts for k, v in part.items()}
    if sorted(merged) != list(range(n)):
        raise RuntimeError(f"merge_shards: expected indices 0..{n - 1}, found {len(merged)} distinct ones")
    return [merged[i] for i in range(n)]


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    max_prompt_length: int | None = None,
    sampling: Sampling | None = None,
    sharded: bool = False,
    bad_words_ids: list[list[int]] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (only the new text, special tokens skipped), in input order.

    With `sampling`, `num_samples` sampled continuations per prompt, prompt-major: text i * num_samples + j
    is sample j of prompt i. Works for a Hugging Face causal LM and a PEFT-wrapped one. The model is put in
    eval mode and its previous mode restored afterwards; the tokenizer's padding side and pad token are
    restored too. `sharded`: every rank of the launch calls this with the same prompts, runs its share of the
    batches and gets every text back (see the module docstring)."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError(
            f"generation: max_new_tokens and batch_size must be >= 1, found {max_new_tokens}, {batch_size}"
        )
    if len(prompts) == 0:
        return []
    was_training = model.training
    model.eval()
    try:
        with left_padding(tokenizer) as pad_id:
            gen_cfg = _generation_config(model, tokenizer, pad_id, max_new_tokens, sampling, bad_words_ids)
            ids = _encode_prompts(tokenizer, prompts, max_prompt_length)
            if sampling is not None:
                ids = [x for x in ids for _ in range(sampling.num_samples)]
            order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
            chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
            mine = shard_batches(len(chunks), sharded)
            n_mine = sum(len(chunks[b]) for b in mine)
            progress = Progress(n_mine, "generate", unit="prompt") if n_mine > batch_size else None
            texts: dict[int, str] = {}
            for b in mine:
                with _seeded(sampling, b, model_device(model)):
                    out = _generate_batch(model, tokenizer, [ids[i] for i in chunks[b]], gen_cfg)
                texts.update(zip(chunks[b], out, strict=True))
                if progress is not None:
                    progress.update(len(chunks[b]))
    finally:
        model.train(was_training)
    return merge_shards(texts, len(ids), sharded)
