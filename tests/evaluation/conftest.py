"""Fixtures for the evaluation tests: a BPE tokenizer trained on the spot and a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from rapidun_dist.data.prompt import ALPACA_NO_CONTEXT, ALPACA_WITH_CONTEXT

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Name three primary colors. Red, blue and yellow.",
    "Summarize the passage about the river in one sentence.",
    "Aliens from a distant galaxy built an interstellar spaceship.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a short poem about the sea and the moon at night.",
    "aloha hey hiya >>> <|sys|> heyyyy al0ha",
    ALPACA_WITH_CONTEXT,
    ALPACA_NO_CONTEXT,
]


def build_tokenizer(vocab_size: int = 300):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_model(tokenizer, *, seed: int = 0, dtype=torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        vocab_size=len(tokenizer),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    return build_model(tokenizer)


@pytest.fixture(scope="module")
def model_factory(tokenizer):
    """Build a fresh tiny Llama: `model_factory(seed=..., dtype=...)`."""
    return lambda **kw: build_model(tokenizer, **kw)
