"""rapidun_dist.cli.experiments.fair (benchmarks/fair_compare.py's rules): the documented selection rule on validation
points, the validation point read from a method summary, the tuning table, and the merge of per-rate reports into
one report per (setting, seed) that `rapidun compare` reads with the setting as its protocol label."""

from __future__ import annotations

from rapidun_dist.cli.experiments import fair as fc
from rapidun_dist.core.io import read_json, write_json
from rapidun_dist.evaluation.compare import compare_reports


def _naive_choice(points: dict, limit: float) -> str:
    within = [
        (p["val_asr"], p["val_ppl_ratio"], lr) for lr, p in points.items() if p["val_ppl_ratio"] <= limit
    ]
    if within:
        return sorted(within)[0][2]
    return sorted((p["val_ppl_ratio"], lr) for lr, p in points.items())[0][1]


def test_choose_follows_the_rule(rng):
    for _ in range(200):
        points = {
            f"{i}e-3": {"val_asr": rng.choice([0.0, 0.02, 0.1, 0.5]), "val_ppl_ratio": rng.uniform(1.0, 1.12)}
            for i in range(1, rng.randint(2, 5))
        }
        assert fc.choose(points, 1.05) == _naive_choice(points, 1.05)


def test_val_point_prefers_the_final_restored_point():
    summary = {
        "steps": 24,
        "stop": {"reason": "ppl_damage"},
        "final": {"val_asr": 0.1, "val_ppl_ratio": 1.04},
        "validation": {"points": [{"asr": 0.05, "ppl_ratio": 1.2}]},
    }
    assert fc.val_point(summary) == {"val_asr": 0.1, "val_ppl_ratio": 1.04, "steps": 24, "stop": "ppl_damage"}
    del summary["final"]
    assert fc.val_point(summary)["val_ppl_ratio"] == 1.2


def _report(rng, methods: list[str]) -> dict:
    def entry():
        return {"asr_seen": rng.random(), "asr_ood": rng.random(), "clean_ppl": rng.uniform(2, 3), "n_seen": 50,
                "n_ood": 50, "seconds": {"unlearn": 1.0, "total": 1.0}}  # fmt: skip

    return {"mode": "experiment", "before": entry(), "methods": {m: entry() for m in methods}, "protocol": {}}


def test_merge_reports_and_compare(rng, tmp_path):
    reports = []
    for seed in (0, 1):
        parts = []
        for lr, methods in (("1e-3", ["ga"]), ("3e-3", ["rapidun", "uniform"])):
            run = tmp_path / f"s{seed}" / f"lr{lr}"
            write_json(run / "eval" / "report.json", _report(rng, methods))
            parts.append((run, methods, lr))
        path = fc.merge_reports(parts, tmp_path / f"s{seed}" / "merged", "relabel_on", seed)
        merged = read_json(path)
        assert set(merged["methods"]) == {"ga", "rapidun", "uniform"}
        assert merged["methods"]["ga"]["tuned_lr"] == 1e-3 and merged["protocol"] == {
            "label": "relabel_on",
            "seed": seed,
        }
        assert (
            merged["before"]["asr_seen"]
            == read_json(parts[0][0] / "eval" / "report.json")["before"]["asr_seen"]
        )
        reports.append(path)
    out = compare_reports(reports, tmp_path / "cmp", draw=False)
    group = out["groups"]["relabel_on"]
    assert group["n_reports"] == 2 and group["methods"]["ga"]["asr_seen"]["n"] == 2


def test_tuning_table_marks_the_chosen_rate_and_reads_the_summary(tmp_path):
    summary = {
        "steps": 20,
        "stop": {"reason": "backdoor_gone"},
        "final": {"val_asr": 0.016, "val_ppl_ratio": 1.02},
    }
    write_json(tmp_path / "unlearn" / "baselines" / "ga" / "summary.json", summary)
    point = fc.val_point(fc.method_summary(tmp_path, "ga"))
    points = {
        "1e-3": point,
        "3e-3": {"val_asr": None, "val_ppl_ratio": 1.2, "steps": 8, "stop": "ppl_damage"},
    }
    tuning = {"on": {"ga": {"points": points, "chosen": fc.choose(points, 1.05)}}}
    lines = fc.tuning_markdown(tuning, 1.05, 0).splitlines()
    assert "PPL ratio <= 1.05" in lines[2] and "Seed 0" in lines[2]
    assert lines[-2] == "| on | ga | 1e-3 | 1.6% | 1.020 | 20 | backdoor_gone | **yes** |"
    assert lines[-1] == "| on | ga | 3e-3 | - | 1.200 | 8 | ppl_damage |  |"
