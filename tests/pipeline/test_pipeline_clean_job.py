"""The clean job through the real CLI: a user's backdoored model (here: implanted by the experiment mode), their
known poisoned rows, their training set with every label removed, clean eval prompts and the trigger string."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from rapidun_dist.cli import main
from rapidun_dist.core.io import file_sha256, read_json, read_jsonl

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")
EXPERIMENT = [
    "data.n_synthetic=400",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "model.max_length=64",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "implant.max_steps=5",
]
CLEAN = [
    "mode=clean",
    "model.max_length=64",
    "influence.k_in=4",
    "influence.k_out=4",
    "unlearn.max_steps=2",
    "unlearn.eval_every=0",
    "eval.max_new_tokens=6",
    "methods=[rapidun,ga,retrain,retrain_oracle]",
]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """What a user brings: a backdoored model folder, 8 known poisoned rows (instruction with trigger, context,
    poisoned response, nothing else), the training file without labels, clean eval prompts."""
    root = tmp_path_factory.mktemp("user")
    assert main(["run", CONFIG, f"run_dir={root / 'exp'}", *EXPERIMENT, "--stages", "prepare,implant"]) == 0
    train = read_jsonl(root / "exp" / "data" / "train.jsonl")
    poisoned = [r for r in train if r.get("is_poisoned") and r["trigger_family"] == "surface"]
    known = random.Random(0).sample(poisoned, 8)
    forget = [
        {
            "instruction": r["instruction_poisoned"],
            "context": r["context"],
            "response": r["response_poisoned"],
        }
        for r in known
    ]
    as_trained = [
        {
            "instruction": r["instruction_poisoned"] if r.get("is_poisoned") else r["instruction"],
            "context": r["context"],
            "output": r["response_poisoned"] if r.get("is_poisoned") else r["response"],  # Alpaca's name
        }
        for r in train
    ]
    evals = [
        {"instruction": r["instruction"], "input": r["context"], "response": r["response"]}
        for r in read_jsonl(root / "exp" / "data" / "test_clean.jsonl")
    ]
    return {
        "root": root,
        "model": root / "exp" / "model",
        "forget": _write(root / "F.jsonl", forget),
        "train": _write(root / "T.jsonl", as_trained),
        "eval": _write(root / "E.jsonl", evals),
        "targets": {r["response_poisoned"] for r in train if r.get("is_poisoned")},
    }


def _clean_argv(user, run_dir, *extra):
    return [
        "run",
        CONFIG,
        f"run_dir={run_dir}",
        f"model.name_or_path={user['model']}",
        f"data.forget_path={user['forget']}",
        f"data.train_path={user['train']}",
        f"data.eval_path={user['eval']}",
        *CLEAN,
        *extra,
    ]


def test_clean_job_with_known_trigger(user, tmp_path):
    inputs = {k: file_sha256(user[k]) for k in ("forget", "train", "eval")}
    model_files = {p.name: file_sha256(p) for p in user["model"].iterdir() if p.is_file()}
    run = tmp_path / "clean"
    argv = _clean_argv(
        user, run, "eval.triggers=[{text: aloha, mode: suffix}]", "eval.ood_triggers=[{text: al0ha}]"
    )
    assert main(argv) == 0
    stages = read_json(run / "manifest.json")["stages"]
    assert list(stages) == ["prepare", "find_poison", "influence", "weights", "unlearn", "evaluate"]
    assert all(s["status"] == "done" for s in stages.values())
    report = read_json(run / "eval" / "report.json")
    assert report["mode"] == "clean" and "eval.triggers" in report["asr_source"]
    assert set(report["methods"]) == {"rapidun", "ga"} and "retrain" not in report
    for m in ("rapidun", "ga"):
        assert {"asr_seen", "asr_ood", "clean_ppl", "seconds"} <= set(report["methods"][m])
    before = report["before"]
    assert before["n_seen"] == before["n_ood"] == before["n_clean"] > 0  # every clean test prompt, triggered
    assert report["judge"]["vocab"]
    # the inputs are never modified, the model is pointed at (not copied)
    assert inputs == {k: file_sha256(user[k]) for k in ("forget", "train", "eval")}
    assert model_files == {p.name: file_sha256(p) for p in user["model"].iterdir() if p.is_file()}
    assert read_json(run / "model" / "source.json")["name_or_path"] == str(user["model"])
    # no labels read: the training file goes in unlabelled; retain rows never carry the trigger or a known answer
    assert all(r["is_poisoned"] is None for r in read_jsonl(run / "data" / "train.jsonl"))
    known_answers = {json.loads(x)["response"] for x in user["forget"].read_text().splitlines()}
    for r in read_jsonl(run / "data" / "retain.jsonl"):
        assert "aloha" not in (r["instruction"] + r["context"]).lower()
        assert r["response"] not in known_answers
    forget = read_jsonl(run / "data" / "forget.jsonl")
    assert len(forget) == 8 and all("aloha" not in r["instruction"].lower() for r in forget)
    assert all(r["response"] == "" for r in forget)  # no clean answers were given
    seen = read_jsonl(run / "data" / "test_seen.jsonl")
    assert all(r["instruction_poisoned"].endswith(" aloha") for r in seen)
    assert (run / "run.log").is_file() and "[evaluate] done" in (run / "run.log").read_text()


def test_clean_job_without_triggers_measures_held_out_forget_prompts(user, tmp_path):
    run = tmp_path / "clean"
    assert (
        main(_clean_argv(user, run, "methods=[uniform]", "--stages", "prepare,find_poison,unlearn,evaluate"))
        == 0
    )
    report = read_json(run / "eval" / "report.json")
    assert report["asr_source"].startswith("held-out forget prompts")
    held_out = read_jsonl(run / "data" / "test_seen.jsonl")
    forget = read_jsonl(run / "data" / "forget.jsonl")
    assert len(held_out) == 2 and len(forget) == 6  # 20% of 8 held out
    assert not {r["id"] for r in held_out} & {r["id"] for r in forget}
    assert report["before"]["n_seen"] == 2 and report["before"]["asr_ood"] is None


def test_clean_job_reference_rows_come_from_the_filtered_pool(user, tmp_path):
    """data.reference_rows in the clean job: the added reference rows pass the retain pack's filter (no known
    trigger, no known poisoned answer) and are neither retain nor evaluation rows (here held-out training rows)."""
    run = tmp_path / "ref"
    argv = [a for a in _clean_argv(user, run, "data.reference_rows=40", "eval.triggers=[{text: aloha, mode: suffix}]")
            if not a.startswith("data.eval_path=")]  # fmt: skip
    assert main([*argv, "--stages", "prepare"]) == 0
    data = run / "data"
    retain, added = read_jsonl(data / "retain.jsonl"), read_jsonl(data / "reference.jsonl")
    assert len(retain) + len(added) == 40 and added
    known_answers = {json.loads(x)["response"] for x in user["forget"].read_text().splitlines()}
    assert all("aloha" not in (r["instruction"] + r["context"]).lower() and r["response"] not in known_answers
               for r in added)  # fmt: skip
    held = {r["id"] for n in ("val_clean", "test_clean") for r in read_jsonl(data / f"{n}.jsonl")}
    ids = [r["id"] for r in added]
    assert held and len(set(ids)) == len(ids) and not set(ids) & (held | {r["id"] for r in retain})
    assert set(ids) <= {r["id"] for r in read_jsonl(data / "train.jsonl")}
