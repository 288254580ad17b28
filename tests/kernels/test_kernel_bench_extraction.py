"""The extraction benchmark end to end on a tiny saved model: the three paths, the floor, memory, JSON keys."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~15-45 s: prepare + three extraction paths + profiled memory passes
def test_extraction_benchmark_reports_floor_memory_and_the_four_keys(tmp_path, capsys):
    from rapidun_dist.config import TinyModelConfig
    from rapidun_dist.models.loading import build_tiny_model, save_model, train_tokenizer

    texts = [f"instruction {i} answer words {i * 7} and more" for i in range(50)]
    tok = train_tokenizer(texts + ["### Instruction:\n### Response:\n"] * 5, 300)
    model = build_tiny_model(TinyModelConfig(hidden_size=32, intermediate_size=64, vocab_size=len(tok)),
                             vocab_size=len(tok), max_length=64, tokenizer=tok)  # fmt: skip
    save_model(model, tok, tmp_path / "model")
    path = REPO / "kernels" / "benchmarks" / "bench_feature_extraction.py"
    spec = importlib.util.spec_from_file_location("bench_feature_extraction", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)  # the script imports only the installed package: no path to add
    argv = ["--quick", "--run-dir", str(tmp_path / "run"), "--model-dir", str(tmp_path / "model"), "--rows", "6",
            "--repeat", "1", "--json", "--rapidgrad-cache-mib", "0", "--threads", "0"]  # fmt: skip
    result = bench.main(argv)
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in (
        "fused_tokens_per_s",
        "rapidgrad_tokens_per_s",
        "floor_tokens_per_s",
        "peak_extra_bytes_per_token",
    ):
        assert key in last and last[key] == result[key] and last[key] > 0, key
    assert result["rows"] == 6 and result["rapidgrad_cache_bytes"] == 0
    assert 0 < result["peak_extra_bytes_per_token"] <= result["memory_bound_bytes_per_token"]
