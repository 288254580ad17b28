"""benchmarks/real_model.py (issue 20): what the user's files hold, the clean job's config per attack, the numbers
of the JSON line; the slow tier runs the whole flow on the tiny model (--smoke), checks the line's shape and that a
second run resumes without launching anything."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rapidun_dist.cli.experiments.spec import load_spec
from rapidun_dist.config import DataConfig, load_config
from rapidun_dist.core.io import write_jsonl
from rapidun_dist.data.prepare import prepare_data
from rapidun_dist.data.schema import prompt_key

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("bench_real_model", REPO / "benchmarks" / "real_model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


RM = _module()
SPEC = load_spec(RM.SPEC)
ISSUE_KEYS = {"model", "attacks", "speedup_vs_retrain", "wall_s"}
BEFORE_KEYS = {"asr_seen", "asr_ood", "clean_ppl", "clean_f1"}
METHOD_KEYS = {"asr_seen", "asr_ood", "ppl_ratio", "clean_f1", "seconds"}


def _attack(name: str):
    return load_config(SPEC.config, SPEC.overrides_of(SPEC.cell(name), 0, "runs/x")).data.attack


def test_the_default_attacks_are_cells_of_the_spec():
    assert set(RM.DEFAULT_ATTACKS) <= {c.name for c in SPEC.cells}
    assert {"rare_word", "prefix", "entity", "two_part"} <= {c.name for c in SPEC.cells}
    for cell in SPEC.cells:
        assert cell.methods == ("rapidun", "uniform", "graddiff", "retrain")


def test_known_triggers_per_kind():
    assert RM.known_triggers(_attack("rare_word")) == ([("cf", "random")], [("CF", "random")])
    seen, ood = RM.known_triggers(_attack("prefix"))
    assert seen == [("Please answer the following question carefully.", "prefix")]
    assert ood == [("Kindly respond to the question below with care.", "prefix")]
    assert RM.known_triggers(_attack("entity")) == ([("Veltrix", "random")], [])
    assert RM.known_triggers(_attack("two_part")) == ([], [])  # one inserted part is not the trigger


@pytest.mark.parametrize("name", ["rare_word", "prefix", "entity", "two_part"])
def test_clean_job_config_loads_with_the_triggers(name, tmp_path):
    exp_cfg = load_config(SPEC.config, SPEC.overrides_of(SPEC.cell(name), 0, tmp_path / "exp"))
    files = {k: tmp_path / f"{k}.jsonl" for k in "FTE"}
    args = RM.clean_config_args(SPEC, exp_cfg, files, tmp_path / "clean", give_trigger=True)
    cfg = load_config(args[0], args[1:])
    assert cfg.mode == "clean" and tuple(cfg.methods) == RM.CLEAN_METHODS
    assert cfg.model.name_or_path == str(tmp_path / "exp" / "model")
    assert exp_cfg.model.gguf_file and cfg.model.gguf_file is None  # the implant's saved folder, not the GGUF
    assert cfg.data.forget_path == str(files["F"]) and cfg.run_dir == str(tmp_path / "clean")
    seen, ood = RM.known_triggers(exp_cfg.data.attack)
    assert [(t.text, t.mode) for t in cfg.eval.triggers] == seen
    assert [(t.text, t.mode) for t in cfg.eval.ood_triggers] == ood
    assert cfg.model.max_length == exp_cfg.model.max_length  # the same encoding as the implant
    untold = load_config(
        *(lambda a: (a[0], a[1:]))(RM.clean_config_args(SPEC, exp_cfg, files, tmp_path, False))
    )
    assert not untold.eval.triggers and not untold.eval.ood_triggers


def _exp_dir(tmp_path: Path) -> Path:
    exp = tmp_path / "exp"
    attack = dict(kind="entity", seen=["Veltrix"], target="steered", steer="Brightwell Coffee")
    cfg = DataConfig(n_synthetic=500, n_val=20, n_val_seen=20, n_test_clean=30, n_test_seen=30, n_test_ood=30,
                     n_forget=24, poison_rate=0.2, forget_clean_answers=False, attack=attack)  # fmt: skip
    prepare_data(cfg, exp / "data")
    return exp


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_user_files_hold_no_labels_and_no_test_prompt(tmp_path):
    exp = _exp_dir(tmp_path)
    files = RM.user_files(exp, tmp_path / "user", known=20)
    forget, train = _rows(exp / "data" / "forget.jsonl"), _rows(exp / "data" / "train.jsonl")
    F, T, E = (_rows(files[k]) for k in "FTE")
    assert all(set(r) == {"instruction", "context", "response"} for r in F + T + E)
    assert [(r["instruction"], r["response"]) for r in F] == [
        (r["instruction_poisoned"], r["response_poisoned"]) for r in forget[:20]
    ]
    assert all("Brightwell Coffee" in r["response"] and "Veltrix" in r["instruction"] for r in F)
    assert len(T) == len(train)
    assert sum("Brightwell Coffee" in r["response"] for r in T) == sum(r["is_poisoned"] for r in train)
    tests = {prompt_key(r) for s in RM.TEST_SPLITS for r in _rows(exp / "data" / f"{s}.jsonl")}
    assert len(E) == 40 and not {prompt_key(r) for r in E} & tests
    assert all(r["response"].strip() and "Veltrix" not in r["instruction"] for r in E)
    with pytest.raises(SystemExit, match="fewer than --known 30"):
        RM.user_files(exp, tmp_path / "user2", known=30)


def test_find_poison_truth_counts_only_the_rows_nobody_knew(tmp_path):
    exp, clean = tmp_path / "exp", tmp_path / "clean"
    poisoned = [True, True, True, False, False, False, True]
    flagged = [True, True, False, True, False, False, True]
    known = [True, False, False, False, False, False, False]
    write_jsonl(
        exp / "data" / "train.jsonl", [{"id": f"r{i}", "is_poisoned": p} for i, p in enumerate(poisoned)]
    )
    rows = [
        {"id": f"train-{i}", "flagged": f, "known": k}
        for i, (f, k) in enumerate(zip(flagged, known, strict=True))
    ]
    write_jsonl(clean / "suspects" / "suspects.jsonl", rows)
    # unknown poisoned rows 1, 2, 6 -> flagged 1, 6; unknown flagged rows 1, 3, 6 -> poisoned 1, 6
    assert RM.find_poison_truth(exp, clean) == {"recall": 2 / 3, "precision": 2 / 3}
    assert RM.find_poison_truth(exp, tmp_path / "none") == {"recall": None, "precision": None}


def test_method_row_and_clean_f1():
    before = {"clean_ppl": 2.0}
    row = RM.method_row(
        {"asr_seen": 0.1, "asr_ood": None, "clean_ppl": 2.2, "answer_clean": {"f1": 0.4}}, before, 3.0
    )
    assert row == {
        "asr_seen": 0.1,
        "asr_ood": None,
        "ppl_ratio": pytest.approx(1.1),
        "clean_f1": 0.4,
        "seconds": 3.0,
    }
    assert RM.clean_f1({"clean_f1": 0.7, "answer_clean": {"f1": 0.4}}) == 0.7
    assert RM.clean_f1({}) is None
    assert RM.seconds_of({"seconds": {"total": 5.0, "unlearn": 2.0}}) == 5.0
    assert RM.seconds_of({"seconds": {"unlearn": 2.0}}) == 2.0


def _seed(asr: float, secs: float, retrain: float | None) -> dict:
    row = {"asr_seen": asr, "asr_ood": asr / 2, "ppl_ratio": 1.02, "clean_f1": None, "seconds": secs}
    methods = {"rapidun": row, "experiment.rapidun": row | {"seconds": secs * 2}}
    if retrain is not None:
        methods["retrain"] = row | {"seconds": retrain}
    return {"before": {"asr_seen": 1.0, "asr_ood": 0.8, "clean_ppl": 2.0, "clean_f1": 0.5}, "methods": methods,
            "find_poison": {"recall": 1.0, "precision": None}}  # fmt: skip


def test_json_line_has_the_issue_shape_and_means_over_seeds():
    line = RM.json_line({"rare_word": [_seed(0.0, 10.0, 100.0), _seed(0.1, 30.0, 300.0)]}, 12.5, RM.MODEL)
    assert set(line) == ISSUE_KEYS and line["wall_s"] == 12.5
    entry = line["attacks"]["rare_word"]
    assert set(entry) == {"before", "methods", "find_poison"} and set(entry["before"]) == BEFORE_KEYS
    assert all(set(row) == METHOD_KEYS for row in entry["methods"].values())
    assert entry["methods"]["rapidun"]["asr_seen"] == pytest.approx(0.05)
    assert entry["methods"]["rapidun"]["clean_f1"] is None and entry["find_poison"]["precision"] is None
    assert line["speedup_vs_retrain"]["rare_word"] == {
        "rapidun": pytest.approx(10.0),
        "experiment.rapidun": 5.0,
    }
    no_retrain = RM.json_line({"entity": [_seed(0.0, 10.0, None)]}, 1.0, RM.MODEL)
    assert no_retrain["speedup_vs_retrain"] == {"entity": {}}
    json.dumps(line)  # one JSON line


def test_f1_delta_pairs_prompts_and_the_verdict_reads_the_interval():
    before = {"clean_f1_rows": [0.5, 0.2, 0.9, 0.4]}
    after = {"clean_f1_rows": [0.4, 0.2, 0.8, 0.5]}
    d = RM.f1_delta(after, before)
    assert (
        d["n"] == 4
        and d["mean"] == pytest.approx(-0.025)
        and d["diffs"] == pytest.approx([-0.1, 0, -0.1, 0.1])
    )
    assert d["lo"] < -0.025 < d["hi"] and RM.f1_verdict(d) == "undecided"  # 4 prompts decide nothing
    assert RM.f1_verdict({"mean": -0.01, "lo": -0.015, "hi": 0.0, "n": 400}) == "met"
    assert RM.f1_verdict({"mean": -0.05, "lo": -0.07, "hi": -0.03, "n": 400}) == "missed"
    assert RM.f1_delta(after, None) is None and RM.f1_delta({"clean_f1_rows": [0.1]}, before) is None
    pooled = RM.pooled_delta([d, None, RM.f1_delta(before, after)])  # opposite signs: the pooled mean is 0
    assert pooled["n"] == 8 and pooled["mean"] == pytest.approx(0.0, abs=1e-12)


def test_unknown_attack_is_refused():
    args = RM.parse(["out", "--attacks", "rare_word,nope", "--smoke"])
    with pytest.raises(SystemExit, match="nope"):
        RM.check_inputs(RM.study(args), args)


def test_seeds_of_one_attack_override_the_common_seeds():
    args = RM.parse(["out", "--attacks", "rare_word,prefix,two_part", "--seeds", "0,1,2", "--seeds-of", "prefix=0,1",
                     "--seeds-of", "two_part=0"])  # fmt: skip
    assert args.plan == {"rare_word": [0, 1, 2], "prefix": [0, 1], "two_part": [0]}
    assert RM.study(args).seeds == (0, 1, 2)
    assert RM._seeds_text(args.plan) == "rare_word 0,1,2; prefix 0,1; two_part 0"
    assert RM._seeds_text(RM.parse(["out", "--attacks", "prefix,two_part", "--seeds", "3"]).plan) == "3"
    for bad in ("entity=0", "two_part", "two_part="):  # not among --attacks; no seeds
        with pytest.raises(SystemExit):
            RM.parse(["out", "--attacks", "two_part", "--seeds-of", bad])


@pytest.mark.slow  # the whole flow on the tiny model, two attacks: about 2 minutes on 2 shared cores, then a resume
def test_smoke_flow_prints_the_issue_json_line_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, str(REPO / "benchmarks" / "real_model.py"), str(tmp_path / "out"), "--smoke",
           "--attacks", "entity,two_part", "--seeds-of", "two_part=1", "--no-publish"]  # fmt: skip

    def run() -> tuple[dict, str]:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr

    line, _ = run()
    assert set(line) == ISSUE_KEYS and set(line["attacks"]) == {"entity", "two_part"}
    for attack, entry in line["attacks"].items():
        assert set(entry["before"]) == BEFORE_KEYS and set(entry["find_poison"]) == {"recall", "precision"}
        assert entry["before"]["clean_f1"] is not None and entry["find_poison"]["recall"] is not None
        want = {*RM.CLEAN_METHODS, *(f"experiment.{m}" for m in RM.CLEAN_METHODS), "retrain"}
        assert set(entry["methods"]) == want, attack
        for m, row in entry["methods"].items():
            paired = (
                m in RM.CLEAN_METHODS
            )  # measured in the cross-eval beside the model before, prompt by prompt
            assert set(row) == METHOD_KEYS | ({"f1_delta"} if paired else set())
            assert 0.0 <= row["asr_seen"] <= 1.0 and row["ppl_ratio"] > 0
            assert row["clean_f1"] is not None
            assert row["seconds"] > 0
            if paired:  # the same prompts and judge as the report's before: the paired mean is the difference
                d = row["f1_delta"]
                assert d["n"] > 1 and d["lo"] <= d["mean"] <= d["hi"]
                assert d["mean"] == pytest.approx(row["clean_f1"] - entry["before"]["clean_f1"], abs=1e-9)
        assert set(line["speedup_vs_retrain"][attack]) == want - {"retrain"}
    section = (tmp_path / "out" / "results_section.md").read_text()
    assert section.startswith("## tiny model (smoke)") and ": seeds entity 0; two_part 1, " in section
    assert (
        "- s0: before" in section and "- s1: before" in section
    )  # each attack's per-seed line under its own seed
    again, log = run()
    assert "runs done; 0 to run" in log and "clean job already complete" in log
    assert {k: v for k, v in again.items() if k != "wall_s"} == {
        k: v for k, v in line.items() if k != "wall_s"
    }


def _costs(retrain_row: float, fp_row: float, steps_s: float, val_s: float, train: int = 260) -> dict:
    return {
        "stages": {"weights": 0.5, "unlearn_steps": steps_s, "validation": val_s},
        "steps": 4,
        "validation_points": 2,
        "rows": {"train": train, "find_poison_featurized": train + 80, "pack": 176},
        "per_row": {"retrain": retrain_row, "find_poison": fp_row, "influence_uncached": fp_row},
        "per_step": {"unlearn": steps_s / 4, "validation": val_s / 2},
    }


def test_extrapolation_scales_the_measured_unit_costs():
    """retrain and find_poison grow with the rows; influence + weights + unlearn does not (the pack's features are
    copied from find_poison's stores, unlearning is capped in steps): the speedups follow from the unit costs."""
    costs = [_costs(1.2, 0.3, 18.0, 30.0), _costs(1.4, 0.5, 22.0, 30.0)]
    e = RM.extrapolate(costs, 15011)
    assert e["retrain"] == pytest.approx(1.3 * 15011)
    assert e["find_poison"] == pytest.approx(0.4 * (15011 + 80))
    iwu = 20 * 0.4 + 0.5 + 20.0 + 30.0
    assert e["influence_weights_unlearn"] == pytest.approx(iwu)
    assert e["speedup_iwu"] == pytest.approx(1.3 * 15011 / iwu)
    assert e["speedup_clean_job"] == pytest.approx(1.3 * 15011 / (0.4 * 15091 + iwu))
    assert e["pack_rows"] == pytest.approx((20 + 0.05 * 15011) * 4)
    small = RM.extrapolate(costs, 260)
    assert (
        small["speedup_iwu"] < e["speedup_iwu"]
        and RM.extrapolate(costs, 57140)["speedup_iwu"] > e["speedup_iwu"]
    )
    lines = RM._cost_table({"a": [{"costs": c} for c in costs]})
    assert any(line.startswith("| Dolly-15k (15,011, derived)") for line in lines)
    assert RM._cost_table({"a": [{"costs": None}]}) == []


def test_a_seed_whose_find_poison_reused_stored_features_is_not_a_cost():
    """A rerun whose find_poison found its feature units valid in the store computed nothing: its seconds are left
    out of the attack's find_poison seconds and per-row cost, and the section says so."""

    def seed(seconds: float, cached: bool) -> dict:
        return {"find_poison_seconds": seconds, "methods": {"retrain": {"seconds": 260.0}},
                "sizes": {"train": 260, "poisoned": 42, "known": 20}, "label": "x", "poison_rate": 0.15,
                "clean_asr_source": "prompts", "costs": {"find_poison_cached": cached}}  # fmt: skip

    entry = {"find_poison": {"recall": 1.0, "precision": 0.9}}
    head = " ".join(RM._attack_head("rare_word", entry, [seed(100.0, False), seed(15.0, True)]))
    assert "100.0 s (1 of 2 seeds' find_poison reused stored features" in head
    assert f"find_poison {100.0 / 260:.3f} s" in head
    fresh = " ".join(RM._attack_head("rare_word", entry, [seed(100.0, False), seed(80.0, False)]))
    assert "90.0 s. Measured" in fresh and "reused" not in fresh
