"""The `model` section: which model is backdoored or cleaned, and how it is loaded (docs/DESIGN.md sections 9-10)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from rapidun_dist.config.checks import check, check_literal

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The seven linear projections of a Llama-style block: the default `influence.target_modules` and
`unlearn.target_modules`."""


@dataclass(kw_only=True)
class TinyModelConfig:
    """A Llama built from config, for CPU runs and tests."""

    hidden_size: int = 64
    """Width of the residual stream; divisible by num_attention_heads."""
    num_hidden_layers: int = 2
    """Transformer blocks (each adds the seven tracked projections to the influence features)."""
    num_attention_heads: int = 4
    """Query heads; a multiple of num_key_value_heads."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention when fewer than the query heads)."""
    intermediate_size: int = 128
    """Width of the MLP (gate_proj / up_proj outputs)."""
    vocab_size: int = 1024
    """Target vocabulary of the BPE tokenizer trained on the corpus; the model's embedding table takes the trained
    tokenizer's actual size."""

    def __post_init__(self):
        check(
            self.hidden_size % self.num_attention_heads == 0,
            "model.tiny.hidden_size",
            "must be divisible by num_attention_heads",
        )
        check(
            self.num_attention_heads % self.num_key_value_heads == 0,
            "model.tiny.num_key_value_heads",
            "must divide num_attention_heads",
        )


@dataclass(kw_only=True)
class ModelConfig:
    """The model: a hub id, a local folder or GGUF file (clean mode: the model to clean; experiment mode: the base
    model the backdoor is implanted into), or a tiny Llama built from config when `name_or_path` is null."""

    name_or_path: str | None = None
    """Hub id, local Hugging Face folder, or `package:NAME[/sub]` (a folder inside an installed Python package);
    null = the tiny model built from `model.tiny` with a BPE tokenizer trained on the corpus (experiment mode only:
    clean mode requires a model)."""
    gguf_file: str | None = None
    """A GGUF file name inside name_or_path (or inside the installed package), dequantized on load; null = a
    regular checkpoint."""
    tokenizer: str | None = None
    """Where to load the tokenizer from (hub id or folder); null = the model's own. With name_or_path null the
    tokenizer is always a BPE trained on the corpus ("train" names that case)."""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    """The tiny Llama's shape; used only when name_or_path is null."""
    max_length: int = 128
    """Tokens per example (prompt + answer, >= 16) wherever a row is encoded: fine-tuning, influence features,
    unlearning, evaluation. A longer example keeps its answer (at least half the window) and loses the start of
    its prompt."""
    trust_remote_code: bool = False
    """Let transformers run the model repository's own Python code when loading (off: only built-in
    architectures)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights and compute dtype; auto = bfloat16 on a GPU that supports it, float32 otherwise."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass of the implant / retrain fine-tune and of unlearning (not of
    influence extraction): less activation memory for a second forward pass; the 7-8B configs turn it on."""

    def __post_init__(self):
        if isinstance(self.tiny, dict):
            self.tiny = TinyModelConfig(**self.tiny)
        check_literal(self, "model")
        check(self.max_length >= 16, "model.max_length", f"expected >= 16, found {self.max_length}")
