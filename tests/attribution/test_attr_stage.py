"""The attribute stage on a small prepared run: the output contract, the CLI command, the report, clear errors,
and (dist) 2 ranks under torchrun against one process."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "distributed"))
from stage_helpers import cfg_for, torchrun  # noqa: E402

ATTR = [
    "data.forget_fraction=0.2",
    "attribute.top_k=4",
    "attribute.n_verify=4",
    "attribute.report_rows=2",
    "eval.max_new_tokens=4",
]


@pytest.fixture(scope="module")
def implanted(tmp_path_factory) -> Path:
    """prepare + implant (5 steps) on the small setting of the collective-stage tests."""
    from rapidun_dist.pipeline import run_pipeline

    run = tmp_path_factory.mktemp("attr") / "implanted"
    run_pipeline(cfg_for(run, ATTR), ["prepare", "implant"])
    return run


@pytest.fixture(scope="module")
def attributed(implanted, tmp_path_factory) -> Path:
    from rapidun_dist.cli import main

    run = shutil.copytree(implanted, tmp_path_factory.mktemp("attr") / "one")
    from stage_helpers import CONFIG, SMALL

    assert main(["attribute", str(CONFIG), f"run_dir={run}", *SMALL, *ATTR]) == 0
    return run


def test_outputs_follow_the_contract(attributed):
    from rapidun_dist.core.io import read_jsonl

    forget = read_jsonl(attributed / "data" / "forget.jsonl")
    triggers = json.loads((attributed / "attribution" / "triggers.json").read_text())
    assert 0 < len(triggers) <= 4
    for t in triggers:
        assert {"text", "mode", "score", "insert_asr", "remove_asr"} <= set(t)
        assert t["mode"] in ("prefix", "suffix", "random") and 0.0 <= t["insert_asr"] <= 1.0
    rows = read_jsonl(attributed / "attribution" / "tokens.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in forget]
    for r, f in zip(rows, forget, strict=True):
        assert len(r["tokens"]) == len(r["scores"]) == len(r["saliency"]) == len(r["content"])
        # the content tokens spell the poisoned instruction back (its end, when max_length cut the prompt's start)
        user = " ".join("".join(t for t, c in zip(r["tokens"], r["content"], strict=True) if c).split())
        assert user and " ".join(f["instruction_poisoned"].split()).endswith(user)
    md = (attributed / "attribution" / "report.md").read_text()
    assert "| # | candidate |" in md and md.count("<span style=") > 4
    man = json.loads((attributed / "manifest.json").read_text())["stages"]
    assert man["attribute"]["status"] == "done"


def test_attribute_is_not_in_a_default_experiment_run(implanted):
    from rapidun_dist.pipeline import select_stages

    cfg = cfg_for(implanted)
    assert "attribute" not in select_stages(cfg, None)
    assert select_stages(cfg, ["attribute"]) == ["attribute"]


def test_attribute_needs_the_implanted_model(tmp_path):
    from rapidun_dist.core.errors import StageError
    from rapidun_dist.pipeline import run_pipeline

    with pytest.raises(StageError, match="'prepare' has not run"):
        run_pipeline(cfg_for(tmp_path / "empty", ATTR), ["attribute"])


def test_bad_attribute_settings_name_the_field():
    from rapidun_dist.core.errors import ConfigError

    for bad, field in (
        ("attribute.top_k=0", "attribute.top_k"),
        ("attribute.verify_asr=1.5", "attribute.verify_asr"),
    ):
        with pytest.raises(ConfigError, match=field):
            cfg_for(Path("x"), [bad])


@pytest.mark.dist
def test_two_ranks_equal_one_process(implanted, attributed, tmp_path):
    from rapidun_dist.core.io import read_jsonl

    two = shutil.copytree(implanted, tmp_path / "two")
    torchrun(two, "attribute", *ATTR)
    assert json.loads((two / "manifest.json").read_text())["stages"]["attribute"]["world_size"] == 2
    for a, b in zip(
        read_jsonl(attributed / "attribution" / "tokens.jsonl"), read_jsonl(two / "attribution" / "tokens.jsonl"),
        strict=True,
    ):  # fmt: skip
        assert a["tokens"] == b["tokens"] and a["content"] == b["content"]
        for key in ("scores", "saliency"):
            assert max(abs(x - y) for x, y in zip(a[key], b[key], strict=True)) <= 1e-5 * (
                1 + max(map(abs, a[key]))
            )
    one_t = json.loads((attributed / "attribution" / "triggers.json").read_text())
    two_t = json.loads((two / "attribution" / "triggers.json").read_text())
    strip = lambda ts: [(t["text"], t["mode"], t["insert_asr"], t["remove_asr"], t["verified"]) for t in ts]  # noqa: E731
    assert strip(one_t) == strip(two_t)


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if __import__("torch").cuda.is_available() else []))
def test_attribute_places_its_tensors_on_the_device(implanted, tmp_path, monkeypatch, device):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from placement import placement_guard, watch_loaded_models

    import rapidun_dist.unlearn.engine  # noqa: F401 - imported before the loaders are wrapped
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import attribute, stage_context

    run = shutil.copytree(implanted, tmp_path / "run")
    cfg = cfg_for(run, [*ATTR, f"distributed.device={device}"])
    with placement_guard(
        device, monkeypatch, watch_models=lambda g: watch_loaded_models(g, monkeypatch)
    ) as g:
        attribute.run(stage_context(cfg, RunDir(run), "attribute"))
    assert g.violations == [] and g.calls > 0
    assert (run / "attribution" / "triggers.json").is_file()
