"""compare_reports: mean and 95% t interval per protocol, method and metric, checked against a hand computation."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from matplotlib.image import imread

from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_json, write_json
from rapidun_dist.evaluation import compare

T975 = {
    2: 12.7062047,
    3: 4.3026527,
    4: 3.1824463,
}  # Student t, 97.5% quantile, by sample size (n - 1 degrees of freedom)
RATE, POSITIVE, FREE = (0.0, 1.0), (0.0, math.inf), (-math.inf, math.inf)


def run_report(rng: random.Random, seed: int, relabel: bool, *, ga_collapses: bool = False) -> dict:
    def method(ppl_ratio: float, unlearn_s: float) -> dict:
        return {
            "asr_seen": rng.randint(0, 300) / 300,
            "asr_ood": rng.randint(0, 300) / 300,
            "clean_ppl": 6.0 * ppl_ratio,
            "judge_fpr": rng.randint(0, 10) / 120,
            "n_seen": 300, "n_ood": 300, "n_clean": 120,
            "seconds": {"influence": 2.0, "weights": 0.5, "unlearn": unlearn_s, "total": 2.5 + unlearn_s},
            "token_f1": rng.random(),
            "relearn": {"asr_seen": rng.randint(0, 20) / 20, "n_seen": 20},
            "asr_by_family": {"seen": {"surface": rng.randint(0, 100) / 100, "style": rng.randint(0, 100) / 100}},
        }  # fmt: skip

    return {
        "protocol": {"relabel": relabel, "seed": seed},
        "config": {"seed": seed},
        "before": {"asr_seen": 0.97, "asr_ood": 0.8, "clean_ppl": 6.0, "n_seen": 300, "n_ood": 300},
        "methods": {
            "rapidun": method(rng.uniform(1.0, 1.1), rng.uniform(5, 10)),
            "ga": method(rng.uniform(2, 9) if ga_collapses else rng.uniform(1.0, 1.3), rng.uniform(5, 10)),
        },
        "retrain": {
            "asr_seen": 0.0,
            "asr_ood": 0.01,
            "clean_ppl": 6.1,
            "seconds": {"total": rng.uniform(100, 200)},
        },
    }


def expected(values: list[float], bounds: tuple[float, float]) -> dict:
    """Mean +- t sd / sqrt(n), the interval clipped to the metric's range."""
    n, mean = len(values), sum(values) / len(values)
    sd = statistics.stdev(values)
    half = T975[n] * sd / math.sqrt(n)
    return {
        "mean": mean,
        "lo": max(mean - half, bounds[0]),
        "hi": min(mean + half, bounds[1]),
        "sd": sd,
        "n": n,
    }


@pytest.fixture
def sources(tmp_path):
    rng = random.Random(11)
    reports = {}
    for seed in range(3):  # relabel on: run directories (RUN/eval/report.json)
        reports[f"on{seed}"] = run_report(rng, seed, True)
        write_json(tmp_path / f"on{seed}" / "eval" / "report.json", reports[f"on{seed}"])
    for seed in range(2):  # relabel off: ga collapses in one run; bare report files
        reports[f"off{seed}"] = run_report(rng, seed, False, ga_collapses=seed == 1)
        write_json(tmp_path / f"off{seed}.json", reports[f"off{seed}"])
    paths = [tmp_path / f"on{s}" for s in range(3)] + [tmp_path / f"off{s}.json" for s in range(2)]
    return reports, paths


def test_compare_matches_hand_computation(tmp_path, sources):
    reports, paths = sources
    out = compare.compare_reports(paths, tmp_path / "cmp", draw=False)
    assert (
        not list((tmp_path / "cmp").glob("*.png"))
        and "![" not in (tmp_path / "cmp" / "compare.md").read_text()
    )
    assert read_json(tmp_path / "cmp" / "compare.json") == out
    assert list(out["groups"]) == ["relabel=True", "relabel=False"]
    on, off = out["groups"]["relabel=True"], out["groups"]["relabel=False"]
    assert on["n_reports"] == 3 and on["seeds"] == [0, 1, 2] and off["seeds"] == [0, 1]
    on_reports = [reports[f"on{s}"] for s in range(3)]
    flags = []
    for method in ("rapidun", "ga"):
        for metric, bounds, get in (
            ("asr_ood", RATE, lambda r, m: r["methods"][m]["asr_ood"]),
            ("ppl_ratio", POSITIVE, lambda r, m: r["methods"][m]["clean_ppl"] / 6.0),
            ("seconds.total", POSITIVE, lambda r, m: r["methods"][m]["seconds"]["total"]),
            ("speedup_vs_retrain", POSITIVE, lambda r, m: r["retrain"]["seconds"]["total"] / r["methods"][m]["seconds"]["total"]),
            ("token_f1", FREE, lambda r, m: r["methods"][m]["token_f1"]),  # no count: a mean, not a proportion
            ("relearn.asr_seen", RATE, lambda r, m: r["methods"][m]["relearn"]["asr_seen"]),
            ("asr_seen.style", RATE, lambda r, m: r["methods"][m]["asr_by_family"]["seen"]["style"]),  # per family
        ):  # fmt: skip
            got = on["methods"][method][metric]
            values = [get(r, method) for r in on_reports]
            assert got["values"] == pytest.approx(values)
            want = expected(values, bounds)
            assert {k: got[k] for k in ("mean", "lo", "hi", "sd", "n")} == pytest.approx(want, rel=1e-7)
            raw = expected(values, FREE)
            assert got.get("clipped", False) == (raw["lo"] < bounds[0] or raw["hi"] > bounds[1])
            flags.append(got.get("clipped", False))
    assert any(flags) and not all(flags)  # both cases occur in this data
    assert "relearn.n_seen" not in on["methods"]["rapidun"] and "n_seen" not in on["methods"]["rapidun"]
    assert on["methods"]["before"]["asr_seen"]["n"] == 3 and on["methods"]["before"]["asr_seen"]["sd"] < 1e-12
    # a collapsed run is counted, and its speedup is left out of the mean
    assert off["collapsed"] == {"ga": 1} and on["collapsed"] == {}
    ga_off = off["methods"]["ga"]
    assert ga_off["speedup_vs_retrain"]["n"] == 1 and ga_off["asr_ood"]["n"] == 2
    r0 = reports["off0"]
    assert ga_off["speedup_vs_retrain"]["mean"] == pytest.approx(
        r0["retrain"]["seconds"]["total"] / r0["methods"]["ga"]["seconds"]["total"]
    )
    assert out["metrics"][:5] == ["asr_seen", "asr_ood", "clean_ppl", "ppl_ratio", "judge_fpr"]


def test_compare_markdown_and_plots(tmp_path, sources):
    _, paths = sources
    labels = ["on"] * 3 + ["off", "off"]
    out = compare.compare_reports(paths, tmp_path / "cmp", labels=labels)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    on = out["groups"]["on"]["methods"]["rapidun"]["asr_ood"]
    cell = f"{100 * on['mean']:.1f}% [{100 * on['lo']:.1f}%, {100 * on['hi']:.1f}%]"
    assert cell in md.split("## Protocol: on")[1] and cell in md.split("## Protocols side by side")[1]
    assert "| method | on | off |" in md and "**ga**" in md.split("## Protocol: off")[1]
    assert "1 collapsed run(s) left out" in md
    for name in ("pareto_on", "pareto_off", "bars_on", "bars_off", "pareto_all"):
        png = tmp_path / "cmp" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and min(imread(png).shape[:2]) >= 200
        assert f"({name}.png)" in md


def test_sources_labels_and_cli(tmp_path, sources):
    _, paths = sources
    assert compare.parse_source("relabel_off=runs/a") == ("relabel_off", "runs/a")
    assert compare.parse_source("runs/a") == (None, "runs/a") and compare.parse_source("a/b=c") == (
        None,
        "a/b=c",
    )
    assert compare.protocol_label({"protocol": {"label": "x", "seed": 1}}) == "x"
    assert (
        compare.protocol_label({"protocol": {"seed": 1}}) == "all"
        and compare.protocol_label({}, "given") == "given"
    )
    assert compare.report_seed({"config": {"seed": 4}}) == 4 and compare.report_seed({}) is None
    argv = [str(tmp_path / "cli"), f"A={paths[0]}", f"A={paths[1]}", f"B={paths[3]}", "--no-plots"]
    assert compare.main(argv) == 0
    saved = read_json(tmp_path / "cli" / "compare.json")
    assert list(saved["groups"]) == ["A", "B"] and saved["groups"]["A"]["n_reports"] == 2
    assert saved["groups"]["B"]["methods"]["rapidun"]["asr_seen"]["n"] == 1
    assert "(n=1)" in (tmp_path / "cli" / "compare.md").read_text()
    assert compare.main([str(tmp_path / "bad"), str(tmp_path / "missing")]) == 2
    with pytest.raises(DataError, match="no report.json at"):
        compare.compare_reports([tmp_path / "missing"], tmp_path / "bad")
    with pytest.raises(DataError, match="2 reports but 1 labels"):
        compare.compare_reports(paths[:2], tmp_path / "bad", labels=["x"])
