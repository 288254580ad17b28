"""SVG charts are well-formed and carry their labels; the report writes JSON, Markdown and plots."""

from __future__ import annotations

import json
import math
import random
import xml.etree.ElementTree as ET

import pytest

from rapidun_dist.errors import DataError
from rapidun_dist.evaluation import plots
from rapidun_dist.evaluation.report import compute_speedups, write_report

SVG = "{http://www.w3.org/2000/svg}"


def svg_texts(path) -> list[str]:
    root = ET.parse(path).getroot()  # raises on malformed XML
    assert root.tag == f"{SVG}svg"
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def test_nice_ticks_cover_range_with_round_steps():
    rng = random.Random(0)
    for _ in range(200):
        lo = rng.uniform(-1e3, 1e3) * 10 ** rng.randint(-4, 2)
        hi = lo + abs(rng.gauss(0, 1)) * 10 ** rng.randint(-4, 3)
        ticks = plots.nice_ticks(lo, hi)
        assert ticks[0] <= lo + 1e-9 * abs(lo) and ticks[-1] >= hi - 1e-9 * abs(hi)
        assert 2 <= len(ticks) <= 12
        step = (ticks[-1] - ticks[0]) / (len(ticks) - 1)
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6


def test_charts_are_well_formed_and_labelled(tmp_path):
    rng = random.Random(1)
    plots.bar_chart(
        tmp_path / "bar.svg",
        "ASR <by> method & more",
        ["before", "rapidun", "ga"],
        {"ASR seen": [0.9, 0.1, float("nan")], "ASR OOD": [0.8, 0.2, 0.3]},
        "fraction",
    )
    plots.line_chart(
        tmp_path / "line.svg",
        "Loss",
        {"rapidun": ([0, 1, 2, 3], [2.0, 1.5, 1.2, 1.1]), "ga": ([0, 2], [2.0, -1.0])},
        "step",
        "loss",
    )
    plots.histogram(
        tmp_path / "hist.svg",
        "Weights",
        {
            "forget": [rng.lognormvariate(0, 0.5) for _ in range(200)],
            "retain": [rng.uniform(0.2, 3) for _ in range(300)],
        },
        bins=20,
    )
    plots.scatter(
        tmp_path / "scatter.svg",
        "ASR vs PPL",
        {"before": (12.0, 0.95), "rapidun": (12.5, 0.05)},
        "clean PPL",
        "ASR",
    )
    expected = {
        "bar": ["ASR <by> method & more", "fraction", "rapidun", "ASR OOD"],
        "line": ["Loss", "step", "ga"],
        "hist": ["Weights", "count", "forget", "retain"],
        "scatter": ["ASR vs PPL", "clean PPL", "before"],
    }
    for name, labels in expected.items():
        texts = svg_texts(tmp_path / f"{name}.svg")
        assert all(label in texts for label in labels), (name, texts)
        assert sum(t.replace(".", "").replace("-", "").isdigit() for t in texts) >= 4  # numeric tick labels
    bars = ET.parse(tmp_path / "bar.svg").getroot().findall(f"{SVG}rect")
    assert len(bars) == 1 + 2 + 5  # background + legend swatches (2) + 5 finite bars (the NaN is skipped)
    hist = ET.parse(tmp_path / "hist.svg").getroot().findall(f"{SVG}rect")
    assert 1 + 2 + 2 <= len(hist) <= 1 + 2 + 40


def test_empty_charts_say_no_data_and_mismatched_series_fail(tmp_path):
    plots.scatter(tmp_path / "s.svg", "nothing", {"a": (float("nan"), 1.0)}, "x", "y")
    plots.histogram(tmp_path / "h.svg", "nothing", {"a": []})
    assert "no data" in svg_texts(tmp_path / "s.svg") and "no data" in svg_texts(tmp_path / "h.svg")
    with pytest.raises(DataError, match="'a' has 3 x values but 2 y values"):
        plots.line_chart(tmp_path / "l.svg", "bad", {"a": ([1, 2, 3], [1, 2])}, "x", "y")


def sample_report(rng: random.Random) -> dict:
    def entry(total=None):
        secs = {"influence": rng.uniform(1, 5), "weights": rng.uniform(0.1, 1), "unlearn": rng.uniform(5, 20)}
        secs["total"] = total if total is not None else sum(secs.values())
        return {
            "asr_seen": rng.random(),
            "asr_ood": rng.random(),
            "clean_ppl": rng.uniform(5, 9),
            "seconds": secs,
            "judge_fpr": rng.random() / 10,
            "asr_by_family": {"seen": {"style": rng.random()}, "ood": {"style": rng.random()}},
        }

    return {
        "before": {"asr_seen": 0.97, "asr_ood": 0.7, "clean_ppl": 6.0, "judge_fpr": 0.02},
        "methods": {"rapidun": entry(), "ga": entry()},
        "retrain": {
            "asr_seen": 0.01,
            "asr_ood": 0.02,
            "clean_ppl": 6.1,
            "seconds": {"total": rng.uniform(100, 200)},
        },
        "retrieval": {"auroc": 0.93, "ap": 0.81},
        "judge": {"vocab": ["alien", "galaxy"], "z": 3.0, "min_words": 3},
    }


def test_compute_speedups_uses_measured_seconds():
    rng = random.Random(2)
    report = sample_report(rng)
    report["methods"]["partial"] = {"seconds": {"influence": 2.0, "unlearn": 3.0}}  # no total: sum of stages
    report["methods"]["unmeasured"] = {"asr_seen": 0.5}
    compute_speedups(report)
    retrain = report["retrain"]["seconds"]["total"]
    assert report["speedup_vs_retrain"]["rapidun"] == pytest.approx(
        retrain / report["methods"]["rapidun"]["seconds"]["total"]
    )
    assert report["speedup_vs_retrain"]["partial"] == pytest.approx(retrain / 5.0)
    assert "unmeasured" not in report["speedup_vs_retrain"]
    del report["retrain"]
    assert compute_speedups(report)["speedup_vs_retrain"] == {}


def test_write_report_files(tmp_path):
    rng = random.Random(3)
    report = sample_report(rng)
    report["methods"]["ga"]["clean_ppl"] = float("nan")  # shown as "-", stored as null
    weights = {
        "forget": [rng.uniform(0.2, 3) for _ in range(40)],
        "retain": [rng.uniform(0.2, 3) for _ in range(120)],
    }
    curves = {
        "rapidun": {
            "step": [1, 2, 3],
            "loss": [3.0, 2.0, 1.5],
            "eval_step": [0, 3],
            "asr_seen": [0.9, 0.1],
            "asr_ood": [0.8, 0.2],
        }
    }
    out = write_report(tmp_path, report, weights=weights, curves=curves)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == out and saved["methods"]["ga"]["clean_ppl"] is None
    rapidun_s = report["methods"]["rapidun"]["seconds"]
    assert saved["speedup_vs_retrain"]["rapidun"] == pytest.approx(
        report["retrain"]["seconds"]["total"] / rapidun_s["total"]
    )
    md = (tmp_path / "report.md").read_text()
    table = md.split("## Results")[1].split("\n\n")[1].splitlines()  # the main table, up to the blank line
    assert table[0].startswith(
        "| method | ASR seen | ASR OOD | clean PPL | PPL ratio vs before | influence s"
    )
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in table[2:]}
    assert list(rows) == ["before", "rapidun", "ga", "retrain"]
    assert rows["before"] == ["97.0%", "70.0%", "6.000", "1.000"] + ["-"] * 5
    r = report["methods"]["rapidun"]
    assert (
        rows["rapidun"][0] == f"{100 * r['asr_seen']:.1f}%"
        and rows["rapidun"][3] == f"{r['clean_ppl'] / 6.0:.3f}"
    )
    assert rows["rapidun"][8] == f"{saved['speedup_vs_retrain']['rapidun']:.2f}x"
    assert rows["rapidun"][2] == f"{r['clean_ppl']:.3f}" and rows["ga"][2] == "-" and rows["ga"][3] == "-"
    assert rows["retrain"][0] == "1.0%" and rows["retrain"][8] == "-"
    assert "| influence | 0.930 | 0.810 |" in md and "False-positive rate" in md and "style seen" in md
    for name in (
        "asr_ppl_by_method",
        "asr_vs_ppl",
        "weights_hist",
        "loss_curves",
        "asr_seen_vs_steps",
        "asr_ood_vs_steps",
    ):
        svg_texts(tmp_path / f"{name}.svg")
        assert f"({name}.svg)" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_write_report_minimal(tmp_path):
    write_report(tmp_path, {"before": {"asr_seen": 0.5}, "methods": {}})
    md = (tmp_path / "report.md").read_text()
    assert "| before | 50.0% | - |" in md
    assert not (tmp_path / "weights_hist.svg").exists() and (tmp_path / "asr_vs_ppl.svg").exists()
