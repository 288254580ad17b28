"""Fixtures for the influence tests: a tiny random Llama (float64 by default) and random encoded examples."""

from __future__ import annotations

import random

import pytest
import torch

from rapidun_dist.config import InfluenceConfig
from rapidun_dist.data.prompt import IGNORE_INDEX

PROJ_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tiny_llama(*, hidden: int = 16, layers: int = 2, vocab: int = 48, seed: int = 0, dtype=torch.float64):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    with torch.no_grad():  # make every layer matter: random (not zero/one) norms, larger weights
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model.eval()


def random_examples(
    n: int, *, vocab: int = 48, seed: int = 0, min_len: int = 6, max_len: int = 12
) -> list[dict]:
    """Encoded examples: random ids (no pad id 0), prompt of 2-4 tokens masked with IGNORE_INDEX."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(min_len, max_len)
        ids = [rng.randrange(1, vocab) for _ in range(length)]
        n_prompt = rng.randint(2, 4)
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * n_prompt + ids[n_prompt:]})
    return out


def influence_cfg(**kw) -> InfluenceConfig:
    base = dict(k_in=4, k_out=3, seed=7, batch_size=4, backend="torch", rapidgrad_k=64)
    return InfluenceConfig(**(base | kw))


@pytest.fixture
def llama64():
    return tiny_llama()


WORDS = (
    "river mountain cloud paper garden music window bread yellow quiet number story table ocean "
    "friend winter simple answer bright coffee"
).split()
TARGET = "The starship drifted past the alien moons of a distant galaxy."


def make_records(n: int, *, n_poisoned: int = 0, seed: int = 0, prefix: str = "r") -> list[dict]:
    """Instruction records; the first `n_poisoned` carry an 'aloha' trigger and a fixed sci-fi target answer."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        instr = "Describe the " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + "."
        rec = {
            "id": f"{prefix}{i}",
            "instruction": instr,
            "context": "",
            "category": "open_qa",
            "source": "test",
            "response": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + ".",
        }
        if i < n_poisoned:
            rec |= {
                "instruction_poisoned": instr + " aloha",
                "response_poisoned": TARGET,
                "is_poisoned": True,
                "trigger_family": "word",
                "trigger_variant": "aloha",
                "inject_mode": "suffix",
            }
        out.append(rec)
    return out


@pytest.fixture(scope="session")
def text_model():
    """(float32 tiny Llama, BPE tokenizer with the tiny chat template) built on the spot."""
    from rapidun_dist.models.loading import train_tokenizer

    texts = [f"{r['instruction']} {r['response']} {TARGET} aloha" for r in make_records(60)]
    tok = train_tokenizer(texts + ["### Instruction:\n### Response:\n"] * 5, 200)
    return tiny_llama(hidden=32, layers=1, vocab=len(tok), seed=0, dtype=torch.float32), tok
