"""Every YAML in configs/ loads into RunConfig, holds no absolute path, and every DeepSpeed JSON is usable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from rapidun_dist.config import load_config
from rapidun_dist.training.engine import ZERO_DIR
from rapidun_dist.unlearn.model import build_ds_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))
ABSOLUTE = re.compile(
    r"^(/[\w.-]|~/|~$|[A-Za-z]:[\\/]|\\\\)"
)  # a path, not a trigger string such as "//" or "~>"


def _strings(node):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_the_expected_configs_exist():
    names = {p.name for p in YAMLS}
    assert {
        "tiny_cpu.yaml",
        "llama3_8b_dolly15k.yaml",
        "mistral_7b_alpaca57k.yaml",
        "smollm2_135m_dolly.yaml",
    } <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_yaml_loads_has_a_launch_header_and_no_absolute_paths(path):
    text = path.read_text(encoding="utf-8")
    cfg = load_config(path)
    assert text.startswith("#") and ("rapidun run" in text or "launch/" in text), (
        "header comment with the command"
    )
    bad = [s for s in _strings(yaml.safe_load(text)) if ABSOLUTE.match(s)]
    assert not bad, f"{path.name}: absolute paths {bad}"
    assert not Path(cfg.run_dir).is_absolute()
    if cfg.model.name_or_path and "llama" in path.name:
        assert cfg.unlearn.zero_stage == 2 and cfg.model.dtype == "bfloat16" and cfg.unlearn.lora_r == 16


def test_absolute_path_detector_is_not_vacuous():
    raw = {
        "run_dir": "/home/me/runs",
        "data": {"path": "data/x.jsonl"},
        "m": ["~/w", "C:\\x"],
        "t": ["//", "~>"],
    }
    assert sorted(s for s in _strings(raw) if ABSOLUTE.match(s)) == ["/home/me/runs", "C:\\x", "~/w"]


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_json_is_filled_consistently(stage):
    raw = json.loads((ZERO_DIR / f"zero{stage}.json").read_text())
    assert raw["zero_optimization"]["stage"] == stage
    assert "optimizer" not in raw and "scheduler" not in raw  # the engine passes torch AdamW + LambdaLR
    cfg = load_config(
        CONFIGS / "tiny_cpu.yaml",
        [
            f"unlearn.zero_stage={stage}",
            "unlearn.batch_size=16",
            "unlearn.grad_accum=2",
            "unlearn.clip_grad=0.5",
            "model.dtype=float32",
        ],
    )
    ds = build_ds_config(cfg, world_size=4)
    assert "auto" not in json.dumps(ds)
    assert (
        ds["train_batch_size"]
        == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * 4
        == 16
    )
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is False
    cfg.model.dtype = "bfloat16"
    assert build_ds_config(cfg, world_size=4)["bf16"]["enabled"] is True
