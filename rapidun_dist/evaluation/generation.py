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
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from rapidun_dist.data.prompt import has_chat_template
from rapidun_dist.errors import ConfigError
from rapidun_dist.logging import Progress


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


def _generation_config(model, tokenizer, pad_id: int, max_new_tokens: int, sampling: Sampling | None = None):
    """The model's generation config made greedy (or sampled): one beam, fixed max new tokens."""
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


@torch.no_grad()
def _generate_batch(model, tokenizer, batch_ids: list[list[int]], gen_cfg) -> list[str]:
    padded = tokenizer.pad({"input_ids": batch_ids}, padding=True, return_tensors="pt")
    device = model_device(model)
    input_ids, mask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
    out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=gen_cfg)
    new_tokens = out[:, input_ids.shape[1] :]
    return tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    batch_size: int,
    max_prompt_length: int | None = None,
    sampling: Sampling | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` (only the new text, special tokens skipped), in input order.

    With `sampling`, `num_samples` sampled continuations per prompt, prompt-major: text i * num_samples + j
    is sample j of prompt i. Works for a Hugging Face causal LM and a PEFT-wrapped one. The model is put in
    eval mode and its previous mode restored afterwards; the tokenizer's padding side and pad token are
    restored too."""
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
            gen_cfg = _generation_config(model, tokenizer, pad_id, max_new_tokens, sampling)
            ids = _encode_prompts(tokenizer, prompts, max_prompt_length)
            if sampling is not None:
                ids = [x for x in ids for _ in range(sampling.num_samples)]
            order = sorted(range(len(ids)), key=lambda i: (-len(ids[i]), i))
            progress = Progress(len(ids), "generate", unit="prompt") if len(ids) > batch_size else None
            texts: list[str] = [""] * len(ids)
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                with _seeded(sampling, start // batch_size, model_device(model)):
                    batch_texts = _generate_batch(model, tokenizer, [ids[i] for i in chunk], gen_cfg)
                for i, text in zip(chunk, batch_texts, strict=True):
                    texts[i] = text
                if progress is not None:
                    progress.update(len(chunk))
    finally:
        model.train(was_training)
    return texts
