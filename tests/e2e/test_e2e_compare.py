"""The run comparison (e2e_compare.py) on two small hand-made run directories: what it calls volatile, what it
reports as a difference, and which stage it names first."""

from __future__ import annotations

import io
import json
from pathlib import Path

from e2e_compare import compare_runs, file_difference, main, value_differences


def _run(root: Path, asr: float, seconds: float, weight: float) -> Path:
    files = {
        "data/train.jsonl": '{"id": "a"}\n',
        "weights/forget_weights.jsonl": json.dumps({"index": 0, "id": "a", "weight": weight}) + "\n",
        "suspects/summary.json": json.dumps(
            {"recall": 0.9, "seconds": {"total": seconds}, "rows_per_s": seconds}
        ),
        "eval/report.json": json.dumps(
            {
                "config": {"run_dir": str(root)},
                "methods": {"rapidun": {"asr_seen": asr, "seconds": {"x": seconds}}},
            }
        ),
        "eval/report.md": f"- **Run**: `{root}`\n| rapidun | {seconds} |\n",
        "unlearn/adapter/adapter_config.json": json.dumps(
            {
                "base_model_name_or_path": f"{root}/model",
                "target_modules": ["q", "v"] if seconds < 2 else ["v", "q"],
            }
        ),
    }
    stages = {"prepare": ["data/train.jsonl"], "find_poison": ["suspects/summary.json"]}
    stages |= {
        "weights": ["weights/forget_weights.jsonl"],
        "evaluate": ["eval/report.json", "eval/report.md"],
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    manifest = {s: {"outputs": {rel: f"{hash(files[rel])}" for rel in rels}} for s, rels in stages.items()}
    (root / "manifest.json").write_text(json.dumps({"stages": manifest}))
    (root / "run.log").write_text(f"took {seconds}\n")
    return root


def test_same_results_other_timings_and_paths_compare_equal(tmp_path):
    old = _run(tmp_path / "old", asr=0.1, seconds=1.0, weight=0.5)
    new = _run(tmp_path / "new", asr=0.1, seconds=3.0, weight=0.5)
    out = io.StringIO()
    assert compare_runs(old, new, out=out), out.getvalue()
    text = out.getvalue()
    assert "stage find_poison: 1 outputs, bytes differ in volatile fields only" in text
    assert "first stage whose output content differs: none" in text
    assert "0 differ in content" in text  # adapter_config.json: path and target_modules order only


def test_a_changed_number_is_reported_with_its_first_stage(tmp_path):
    old = _run(tmp_path / "old", asr=0.1, seconds=1.0, weight=0.5)
    new = _run(tmp_path / "new", asr=0.2, seconds=1.0, weight=0.25)
    out = io.StringIO()
    assert not compare_runs(old, new, out=out)
    text = out.getvalue()
    assert "/methods/rapidun/asr_seen: 0.1 -> 0.2" in text
    assert "first stage whose output content differs: weights" in text
    assert "weights/forget_weights.jsonl: content differs (1 values, first [0]/weight: 0.5 -> 0.25)" in text
    assert main([str(old), str(new)]) == 1 and main([str(old), str(old)]) == 0


def test_tolerance_and_missing_values():
    assert value_differences({"a": 1.0}, {"a": 1.0 + 1e-12}) == ["/a: 1.0 -> 1.000000000001"]
    assert value_differences({"a": 1.0}, {"a": 1.0 + 1e-12}, rtol=1e-9) == []
    assert value_differences({"a": 1, "seconds": 2}, {"b": 1}) == ["/a: 1 -> (missing)", "/b: (missing) -> 1"]
    assert value_differences({"x": True}, {"x": 1}) == ["/x: True -> 1"]  # a flag is not a number


def test_markdown_outside_the_rendered_report_must_match(tmp_path):
    for root, n in ((tmp_path / "a", 1), (tmp_path / "b", 2)):
        root.mkdir()
        (root / "notes.md").write_text(f"steps: {n}\n")
    assert file_difference(tmp_path / "a", tmp_path / "b", "notes.md").startswith("content differs")
