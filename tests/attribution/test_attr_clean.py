"""The clean job without eval.triggers reads the verified triggers (run.layout.effective_triggers): triggered
evaluation prompts, self-relabel prompts, the report's source line, the default stage list and fingerprints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rapidun_dist.core.io import write_jsonl

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml"
CANDIDATES = [
    {
        "text": "cf",
        "key": "cf",
        "mode": "random",
        "score": 0.3,
        "rows": 9,
        "insert_asr": 0.9,
        "remove_asr": 0.1,
    },
    {
        "text": "the",
        "key": "the",
        "mode": "random",
        "score": 0.2,
        "rows": 20,
        "insert_asr": 0.4,
        "remove_asr": 0.9,
    },
]


def clean_cfg(run: Path, *extra: str):
    from rapidun_dist.config import load_config

    return load_config(
        CONFIG, [f"run_dir={run}", "mode=clean", "data.forget_path=f.jsonl", "model.name_or_path=m", *extra]
    )


@pytest.fixture
def run(tmp_path) -> Path:
    (tmp_path / "attribution").mkdir()
    (tmp_path / "attribution" / "triggers.json").write_text(json.dumps(CANDIDATES))
    data = tmp_path / "data"
    data.mkdir()
    clean = [
        {"id": f"c{i}", "instruction": f"Name a colour number {i}.", "context": "", "response": "Red."}
        for i in range(5)
    ]
    write_jsonl(data / "test_clean.jsonl", clean)
    write_jsonl(data / "test_seen.jsonl", [clean[0] | {"instruction_poisoned": "cf held out"}])
    write_jsonl(data / "test_ood.jsonl", [])
    return tmp_path


def test_effective_triggers_prefer_eval_triggers_then_verified(run):
    from rapidun_dist.run.layout import VERIFIED_SOURCE, effective_triggers
    from rapidun_dist.run.rundir import RunDir

    rd = RunDir(run)
    triggers, source = effective_triggers(clean_cfg(run), rd)
    assert source == VERIFIED_SOURCE and [(t.text, t.mode) for t in triggers] == [("cf", "random")]
    given, source = effective_triggers(clean_cfg(run, "eval.triggers=[{text: aloha, mode: suffix}]"), rd)
    assert source == "eval.triggers" and [t.text for t in given] == ["aloha"]
    assert effective_triggers(clean_cfg(run, "attribute.clean_triggers=false"), rd) == ([], None)
    assert effective_triggers(clean_cfg(run, "attribute.verify_asr=0.95"), rd) == ([], None)
    (run / "attribution" / "triggers.json").unlink()
    assert effective_triggers(clean_cfg(run), rd) == ([], None)


def test_evaluation_prompts_and_self_relabel_use_the_verified_triggers(run):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages.evaluate import _splits, asr_source
    from rapidun_dist.stages.unlearn import _relabel_prompts

    cfg, rd = clean_cfg(run), RunDir(run)
    splits = _splits(cfg, rd)
    assert len(splits["test_seen"]) == 5  # built from test_clean, not the held-out file
    for r in splits["test_seen"]:
        assert " cf " in f" {r['instruction_poisoned']} " and r["trigger_variant"] == "cf"
    assert "verified by the attribute stage" in asr_source(cfg, rd) and "'cf' (random)" in asr_source(cfg, rd)
    forget = [{"id": "f0", "instruction": "Name cf a colour.", "context": "", "response": ""}]
    assert _relabel_prompts(cfg, rd, forget)[0]["instruction"] == "Name a colour."
    held = clean_cfg(run, "attribute.clean_triggers=false")
    assert _splits(held, rd)["test_seen"][0]["instruction_poisoned"] == "cf held out"
    assert asr_source(held, rd).startswith("held-out forget prompts")
    assert _relabel_prompts(held, rd, forget) == forget


def test_attribute_joins_the_clean_job_only_without_known_triggers(run):
    from rapidun_dist.pipeline import select_stages
    from rapidun_dist.stages import fingerprint

    names = select_stages(clean_cfg(run), None)
    assert names.index("attribute") < names.index("unlearn")
    assert "attribute" not in select_stages(clean_cfg(run, "eval.triggers=[{text: aloha}]"), None)
    # later stages' fingerprints follow attribute's outputs only where they read them
    manifest = {"attribute": {"outputs": {"attribution/triggers.json": "abc"}}}
    for cfg, follows in ((clean_cfg(run), True), (clean_cfg(run, "eval.triggers=[{text: aloha}]"), False)):
        d = cfg.to_dict()
        assert (fingerprint("unlearn", d, manifest) != fingerprint("unlearn", d, {})) == follows
