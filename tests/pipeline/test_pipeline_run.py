"""The whole pipeline on a very small synthetic setting, through the real CLI: every stage, the report contract,
resume (skip) semantics, and clear errors on bad input."""

import json
from pathlib import Path

import pytest

from rapidun_dist.cli import main
from rapidun_dist.core.io import read_json, read_jsonl

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "tiny_cpu.yaml")
SMALL = [
    "data.n_synthetic=500",
    "data.n_val=20",
    "data.n_test_clean=20",
    "data.n_test_seen=12",
    "data.n_test_ood=12",
    "data.forget_fraction=0.2",
    "model.max_length=64",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "implant.max_steps=30",
    "implant.batch_size=16",
    "influence.k_in=4",
    "influence.k_out=4",
    "unlearn.max_steps=4",
    "unlearn.eval_every=2",
    "unlearn.lr=1e-3",
    "eval.max_new_tokens=8",
    "eval.retrieval_rows=40",
    "eval.sampled.n=4",
    "eval.relearn.steps=2",
    "eval.relearn.rows=4",
    "eval.relearn.n=6",
    "methods=[rapidun,ga,retrain]",
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    rd = tmp_path_factory.mktemp("run") / "r"
    assert main(["run", CONFIG, f"run_dir={rd}", *SMALL]) == 0
    return rd


def test_every_stage_recorded(run_dir):
    man = read_json(run_dir / "manifest.json")["stages"]
    for stage in ("prepare", "implant", "influence", "weights", "unlearn", "evaluate"):
        assert man[stage]["status"] == "done", stage
        assert man[stage]["seconds"] > 0
        assert man[stage]["outputs"], stage
    assert (run_dir / "config.yaml").exists()


def test_every_recorded_output_is_declared_by_its_stage(run_dir):
    """Stage.writes is the run directory's documentation: every output a stage recorded is one it declares, and
    every unconditional file it declares (no wildcard, no "(when ...)" note) is there."""
    from rapidun_dist.stages import STAGES

    man = read_json(run_dir / "manifest.json")["stages"]
    for name, rec in man.items():
        st = STAGES[name]
        assert [o for o in rec["outputs"] if not st.declares(o)] == [], name
        for entry in st.writes:
            if "(" not in entry and "*" not in entry and "<" not in entry and name in ("prepare", "weights"):
                assert (run_dir / entry).exists(), (name, entry)


def test_stage_declarations_match_paths_and_refuse_others():
    from rapidun_dist.stages import STAGES

    unlearn, evaluate, weights = STAGES["unlearn"], STAGES["evaluate"], STAGES["weights"]
    assert unlearn.declares("unlearn/baselines/ga/summary.json") and unlearn.declares("unlearn/adapter/a.bin")
    assert not unlearn.declares("weights/forget_weights.jsonl")
    assert evaluate.declares("eval/asr_curve.png") and not evaluate.declares("eval/other.json")
    assert weights.declares("weights/contamination.json") and not weights.declares("weights/x.json")


def test_report_contract(run_dir):
    report = read_json(run_dir / "eval" / "report.json")
    for key in ("asr_seen", "asr_ood", "clean_ppl"):
        assert isinstance(report["before"][key], float)
    for method in ("rapidun", "ga"):
        entry = report["methods"][method]
        assert {"asr_seen", "asr_ood", "clean_ppl", "seconds"} <= set(entry)
        assert entry["seconds"]["unlearn"] > 0
        assert report["speedup_vs_retrain"][method] > 0
    assert report["methods"]["rapidun"]["seconds"]["influence"] > 0
    man = read_json(run_dir / "manifest.json")["stages"]
    for stage, kind in (("influence", "imports"), ("weights", "report")):  # rapidun_dist.core.timing
        spent = man[stage]["overhead_seconds"]
        assert kind in spent and 0 <= sum(spent.values()) <= man[stage]["seconds"]
        cost = man[stage]["seconds"] - sum(spent.values())
        assert report["methods"]["rapidun"]["seconds"][stage] == pytest.approx(cost)
        assert report["stage_overhead_seconds"][stage] == spent
    assert report["methods"]["ga"]["seconds"]["influence"] == 0
    assert report["retrain"]["seconds"]["total"] > 0
    for entry in (
        report["methods"]["rapidun"],
        report["retrain"],
    ):  # the eval extras (tiny_cpu: behaviour on)
        assert entry["answer_seen"]["em"]["n"] == 12 and entry["answer_clean"]["em"]["n"] == 20
        assert entry["sampled"]["samples"]["n"] == 12 and entry["relearn"]["asr_seen"]["n"] == 6
    assert "relearn" not in report["before"] and "sampled" in report["before"]
    for est in ("tokenwise", "rapidgrad"):
        assert 0.0 <= report["retrieval"][est]["auroc"] <= 1.0
    judge = read_json(run_dir / "eval" / "judge.json")  # the grouped judge, the one every stage got
    assert judge["fit"] == "grouped" and judge["ngram"] == 2 and report["judge"]["fit"] == "grouped"
    ref = report["judge"]["reference"]
    assert ref["fpr_test_clean"]["n"] == 20 and ref["hit_test_seen"]["n"] == 12
    for entry in (report["before"], *report["methods"].values(), report["retrain"]):
        assert (
            entry["n_scored_seen"] == 12 and entry["n_scored_ood"] == 12
        )  # every synthetic row has its answer
        for name in ("seen", "ood"):
            assert 0.0 <= entry[f"answered_{name}"] <= 1.0 and 0.0 <= entry[f"other_{name}"] <= 1.0
            assert entry[f"answered_{name}"] + entry[f"other_{name}"] <= 1.0 + 1e-12
            assert entry["intervals"][f"answered_{name}"]["n"] == 12
        assert 0.0 <= entry["clean_f1"] <= 1.0 and 0.0 <= entry["clean_rougeL"] <= 1.0
        assert entry["answer_clean"]["f1"] == pytest.approx(
            entry["clean_f1"]
        )  # eval.behaviour's, same outputs
        assert [len(entry["examples"][s]) for s in ("test_seen", "test_ood", "test_clean")] == [3, 3, 3]
        assert all("verdict" in ex and "reference" in ex for ex in entry["examples"]["test_seen"])
    assert set(report["collapsed"]) == set(report["collapse_reasons"])
    md = (run_dir / "eval" / "report.md").read_text()
    assert "| rapidun |" in md and "| before |" in md
    assert "| answered seen | ASR OOD | answered OOD |" in md and "| clean F1 | clean ROUGE-L |" in md
    assert "| method | generation | judge | answer |" in md and "the grouped judge" in md
    assert any(p.suffix in (".svg", ".png") for p in (run_dir / "eval").iterdir())


def test_adapter_and_metrics(run_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = run_dir / "unlearn" / "adapter"
    assert (adapter / "adapter_model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    model = PeftModel.from_pretrained(base, str(adapter))
    assert any("lora_B" in n and float(p.abs().max()) > 0 for n, p in model.named_parameters())
    rows = read_jsonl(run_dir / "unlearn" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["grad_norm"] is not None and r["grad_norm"] >= 0 for r in rows)
    assert sum("asr_seen" in r for r in rows) == 2
    assert (run_dir / "unlearn" / "baselines" / "ga" / "adapter").exists()


def test_weights_and_features_files(run_dir):
    f = read_jsonl(run_dir / "weights" / "forget_weights.jsonl")
    r = read_jsonl(run_dir / "weights" / "retain_weights.jsonl")
    forget = read_jsonl(run_dir / "data" / "forget.jsonl")
    assert [x["id"] for x in f] == [x["id"] for x in forget]
    for rows in (f, r):
        w = [x["weight"] for x in rows]
        assert sum(w) / len(w) == pytest.approx(1.0, abs=1e-9)
    index = read_json(run_dir / "features" / "index.json")
    assert index["n"] == len(f) + len(r) and index["n_forget"] == len(f)
    assert index["spec"]["estimator"] == "tokenwise"


def test_rerun_skips_completed_stages(run_dir):
    before = read_json(run_dir / "manifest.json")["stages"]
    assert main(["run", CONFIG, f"run_dir={run_dir}", *SMALL]) == 0
    after = read_json(run_dir / "manifest.json")["stages"]
    assert {s: r["start"] for s, r in before.items()} == {s: r["start"] for s, r in after.items()}


def test_changed_config_reruns_downstream_only(run_dir):
    before = read_json(run_dir / "manifest.json")["stages"]
    assert (
        main(["run", CONFIG, f"run_dir={run_dir}", *SMALL, "weights.tau_f=0.5", "--stages", "weights"]) == 0
    )
    after = read_json(run_dir / "manifest.json")["stages"]
    assert after["weights"]["start"] != before["weights"]["start"]
    assert after["influence"]["start"] == before["influence"]["start"]


def _prepared_dir(tmp_path, run_dir) -> Path:
    src = tmp_path / "prepared"
    src.mkdir()
    for name in ("train", "val_clean", "test_clean", "test_seen", "test_ood"):
        (src / f"{name}.jsonl").write_text((run_dir / "data" / f"{name}.jsonl").read_text())
    return src


def test_prepared_source_and_malformed_line(tmp_path, run_dir, capfd):
    src = _prepared_dir(tmp_path, run_dir)
    out = tmp_path / "ok"
    assert main(["prepare", CONFIG, f"run_dir={out}", *SMALL, "data.source=prepared", f"data.dir={src}"]) == 0
    assert len(read_jsonl(out / "data" / "forget.jsonl")) > 0
    lines = (src / "train.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (src / "train.jsonl").write_text("\n".join(lines) + "\n")
    bad = tmp_path / "bad"
    assert main(["prepare", CONFIG, f"run_dir={bad}", *SMALL, "data.source=prepared", f"data.dir={src}"]) == 2
    assert "train.jsonl:3" in capfd.readouterr().err
    assert not (bad / "data" / "train.jsonl").exists()
    assert read_json(bad / "manifest.json")["stages"]["prepare"]["status"] == "failed"


def test_no_poisoned_rows_is_a_clear_error(tmp_path, run_dir, capfd):
    src = _prepared_dir(tmp_path, run_dir)
    rows = [json.loads(x) for x in (src / "train.jsonl").read_text().splitlines()]
    (src / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows if not r.get("is_poisoned")))
    assert (
        main(
            [
                "prepare",
                CONFIG,
                f"run_dir={tmp_path / 'x'}",
                *SMALL,
                "data.source=prepared",
                f"data.dir={src}",
            ]
        )
        == 2
    )
    assert "forget" in capfd.readouterr().err.lower()


def test_unknown_key_exits_cleanly(tmp_path, capfd):
    assert main(["run", CONFIG, f"run_dir={tmp_path / 'y'}", "unlearn.nope=1"]) == 2
    assert "unlearn.nope" in capfd.readouterr().err
    assert not (tmp_path / "y").exists()


def test_reimplant_with_another_seed_recomputes_features(run_dir, tmp_path):
    """Re-implanting with another seed, then influence + weights, gives exactly the weights of a fresh run with
    that seed: the old feature shards are not valid for the new model weights."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    seed = ["implant.seed=7", "--stages", "prepare,implant,influence,weights"]
    assert main(["run", CONFIG, f"run_dir={copy}", *SMALL, *seed]) == 0
    assert main(["run", CONFIG, f"run_dir={tmp_path / 'fresh'}", *SMALL, *seed]) == 0
    for name in ("forget_weights.jsonl", "retain_weights.jsonl"):
        assert read_jsonl(copy / "weights" / name) == read_jsonl(tmp_path / "fresh" / "weights" / name)
    assert read_jsonl(copy / "weights" / "forget_weights.jsonl") != read_jsonl(
        run_dir / "weights" / "forget_weights.jsonl"
    )
