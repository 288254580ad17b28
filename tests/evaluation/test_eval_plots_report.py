"""matplotlib charts are real images; the report writes JSON, Markdown with intervals, warnings, examples and PNGs."""

from __future__ import annotations

import json
import math
import random
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from matplotlib.image import imread

from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_json, write_json
from rapidun_dist.evaluation import plots
from rapidun_dist.evaluation.markdown import cell
from rapidun_dist.evaluation.report import compute_speedups, prepare_report, render_markdown, write_report
from rapidun_dist.evaluation.report import main as report_main
from rapidun_dist.evaluation.stats import wilson_interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_side: int = 200) -> np.ndarray:
    """A real, non-blank PNG of reasonable size."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    img = imread(path)
    assert img.ndim == 3 and min(img.shape[:2]) >= min_side, (path, img.shape)
    assert float(img[..., :3].std()) > 0.01, f"{path} is blank"
    return img


# ---------------------------------------------------------------------------------------------- plots


def dominated_reference(pts: np.ndarray) -> list[int]:
    """Brute force with numpy: i is on the front unless some j is <= on both and < on one."""
    le = (pts[None, :, 0] <= pts[:, None, 0]) & (pts[None, :, 1] <= pts[:, None, 1])
    lt = (pts[None, :, 0] < pts[:, None, 0]) | (pts[None, :, 1] < pts[:, None, 1])
    dominated = (le & lt).any(axis=1)
    return sorted(np.flatnonzero(~dominated).tolist(), key=lambda i: tuple(pts[i]))


def test_pareto_front_matches_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 25))
        pts = rng.integers(0, 6, size=(n, 2)).astype(float) if trial % 2 else rng.random((n, 2))  # ties too
        front = plots.pareto_front([tuple(p) for p in pts])
        assert front == dominated_reference(pts)
        xs = [pts[i][0] for i in front]
        ys = [pts[i][1] for i in front]
        assert xs == sorted(xs) and all(a >= b for a, b in zip(ys, ys[1:], strict=False))  # a staircase


def test_histogram_counts_match_numpy():
    rng = np.random.default_rng(1)
    values = {
        "forget": rng.lognormal(0, 0.5, 57).tolist(),
        "retain": (rng.random(300) * 3).tolist() + [math.nan],
    }
    edges, counts = plots.histogram_counts(values, bins=17)
    allv = np.array(values["forget"] + values["retain"][:-1])
    ref_edges = np.histogram_bin_edges(allv, bins=17)
    np.testing.assert_allclose(edges, ref_edges, rtol=1e-12)
    for name in values:
        ref, _ = np.histogram(np.array(values[name])[np.isfinite(values[name])], bins=ref_edges)
        assert counts[name] == ref.tolist()
    assert plots.histogram_counts({"a": [2.0, 2.0]}, bins=4)[1]["a"] == [0, 0, 2, 0]  # one value: centred


def test_charts_are_real_images(tmp_path):
    rng = random.Random(2)
    est = [plots.Estimate(v, max(0, v - 0.1), min(1, v + 0.1)) for v in (rng.random() for _ in range(4))]
    plots.method_summary(
        tmp_path / "summary.png", "ASR", ["before", "rapidun", "ga", "retrain"],
        {"ASR seen": est, "ASR OOD": [*est[:3], None]}, [1.0, 1.02, 7.5, float("nan")],
    )  # fmt: skip
    plots.bar_chart(tmp_path / "bar.png", "bars", ["a", "b"], {"s": [0.5, None]}, "y", hlines={"one": 1.0})
    plots.line_panels(
        tmp_path / "lines.png", "Loss",
        {"loss": {"rapidun": ([0, 1, 2], [2.0, 1.5, 1.2]), "ga": ([0, 2], [2.0, -1.0])}, "ce": {"ga": ([1], [3.0])}},
        "step",
    )  # fmt: skip
    plots.histogram(tmp_path / "hist.png", "Weights", {"forget": [rng.gauss(1, 0.3) for _ in range(80)]})
    points = {
        "rapidun": plots.Point(plots.Estimate(1.01), est[1]),
        "ga": (4.2, 0.1),
        "bad": (float("nan"), 1),
    }
    plots.scatter(tmp_path / "scatter.png", "Pareto", [points, points], "ratio", ["seen", "ood"],
                  reference=[{"before": (1.0, 0.95)}] * 2)  # fmt: skip
    plots.pareto_curves(
        tmp_path / "curves.png", "curves", {"rapidun": [(1.0, 5.0), (1.1, 2.0)], "ga": [(3.5, 1.0)]}, "x", "y",
        means={"rapidun": plots.Point(plots.Estimate(1.05, 1.0, 1.1), plots.Estimate(3.5, 2.0, 5.0))},
    )  # fmt: skip
    for name in ("summary", "bar", "lines", "hist", "scatter", "curves"):
        assert_png(tmp_path / f"{name}.png")
    assert not list(tmp_path.glob(".*.tmp"))


def test_svg_and_no_data_and_mismatched_series(tmp_path):
    plots.histogram(tmp_path / "w.svg", "weights", {"forget": [0.5, 1.0, 1.5]})  # the influence stage's call
    assert ET.parse(tmp_path / "w.svg").getroot().tag.endswith("svg")
    plots.scatter(tmp_path / "s.png", "nothing", {"a": (float("nan"), 1.0)}, "x", "y")
    plots.histogram(tmp_path / "h.png", "nothing", {"a": []})
    no_data = assert_png(tmp_path / "s.png")
    assert no_data.shape == assert_png(tmp_path / "h.png").shape
    with pytest.raises(DataError, match="'a' has 3 x values but 2 y values"):
        plots.line_chart(tmp_path / "l.png", "bad", {"a": ([1, 2, 3], [1, 2])}, "x", "y")
    with pytest.raises(DataError, match="2 panels, 2 references, 1 y labels"):
        plots.scatter(tmp_path / "x.png", "bad", [{"a": (1, 1)}, {"a": (1, 1)}], "x", ["y"])


# ---------------------------------------------------------------------------------------------- markdown cells


def test_cells_are_escaped_and_shortened():
    text = "<|sys|> pick *one* | two_three [x](y)\nnext\u200dline " + "word " * 80
    out = cell(text, 100)
    assert "\n" not in out and "|" not in out.replace("\\|", "")
    assert out.startswith(
        "&lt;\\|sys\\|> pick \\*one\\* \\| two\\_three \\[x\\](y) / next\u27e8U+200D\u27e9line"
    )
    kept, left_out = re.fullmatch(r"(.*)\.\.\. \(\+(\d+) chars\)", out).groups()
    assert kept.endswith("word") and 60 <= len(kept) <= 130 and int(left_out) > 300
    assert len(out) < 150 and cell("") == "*(empty)*" and cell("AT&T &amp;") == "AT&T &amp;amp;"


# ---------------------------------------------------------------------------------------------- the report


def entry(rng: random.Random, *, n_seen=300, n_ood=300, n_clean=120, ppl=None) -> dict:
    k_seen, k_ood, k_fpr = rng.randint(0, n_seen), rng.randint(0, n_ood), rng.randint(0, n_clean // 4)
    secs = {"influence": rng.uniform(1, 5), "weights": rng.uniform(0.1, 1), "unlearn": rng.uniform(5, 20)}
    secs["total"] = sum(secs.values())
    examples = {
        split: [
            {"instruction": f"{split} prompt {i} | a pipe", "generation": f"answer *{i}* {rng.random():.3f} " * 20,
             "attacked": bool(rng.getrandbits(1))}
            for i in range(3)
        ]
        for split in ("test_seen", "test_ood", "test_clean")
    }  # fmt: skip
    return {
        "asr_seen": k_seen / n_seen,
        "asr_ood": k_ood / n_ood if n_ood else None,
        "clean_ppl": ppl if ppl is not None else rng.uniform(5.5, 7),
        "judge_fpr": k_fpr / n_clean,
        "n_seen": n_seen,
        "n_ood": n_ood,
        "n_clean": n_clean,
        "seconds": secs,
        "asr_by_family": {"seen": {"style": rng.random()}, "ood": {"style": rng.random()}},
        "examples": examples,
    }


def sample_report(rng: random.Random) -> dict:
    methods = {"rapidun": entry(rng), "ga": entry(rng, ppl=6.0 * rng.uniform(1.6, 30))}  # ga collapses
    methods["rapidun"] |= {"token_f1": rng.random(), "asr_sampled": 0.25, "n_asr_sampled": 40,
                           "relearn": {"asr_seen": 0.5, "n_seen": 20}}  # fmt: skip
    return {
        "mode": "experiment",
        "asr_source": "test_seen/test_ood (experiment)",
        "config": {"run_dir": "runs/x", "methods": list(methods), "seed": 3},
        "before": entry(rng, ppl=6.0) | {"seconds": {}},
        "methods": methods,
        "retrain": entry(rng) | {"seconds": {"total": rng.uniform(200, 400)}},
        "retrieval": {"tokenwise": {"auroc": 0.93, "ap": 0.81}},
        "judge": {
            "vocab": [f"w{i}" for i in range(60)],
            "z_scores": [20 - i * 0.25 for i in range(60)],
            "targets": ["The alien fleet " + "warped " * 40, "short target"],
            "min_words": 3,
            "z": 3.0,
            "prefix_words": 6,
            "min_lift": 5.0,
        },  # fmt: skip
        "find_poison": {  # suspects/summary.json (stages/find_poison.py build_summary), shortened
            "agg": "mean",
            "expand": False,
            "prevalence": 0.1,
            "counts": {
                "train": 5000,
                "known": 25,
                "flagged": 480,
                "flagged_new": 455,
                "expected_false_positives": 4.5,
            },
            "threshold": {"z": 3.09, "target_fpr": 0.001, "n_reference": 75},
            "metrics": {
                "influence": {
                    "n_flagged": 480,
                    "recall": 0.9,
                    "precision": 0.94,
                    "fpr": 0.006,
                    "auroc": 0.99,
                    "ap": 0.97,
                    "recall_unknown": 0.89,
                },
                "grep": {
                    "n_flagged": 150,
                    "recall": 0.3,
                    "precision": 1.0,
                    "fpr": 0.0,
                    "auroc": 0.6,
                    "ap": 0.4,
                    "recall_unknown": 0.29,
                },
            },
            "per_family": {
                "influence": {"surface": {"n": 200, "known": 8, "found": 190}},
                "grep": {"surface": {"n": 200, "known": 8, "found": 60}},
            },
        },  # fmt: skip
        "triggers": [
            {"text": "aloha\u200d", "mode": "suffix", "score": 3.2, "insert_asr": 0.9, "remove_asr": 0.05}
        ],
    }


def table_rows(md: str, heading: str) -> dict[str, list[str]]:
    """The first table after `heading`, as {first cell: other cells}."""
    block = md.split(heading)[1].split("\n\n")[1].splitlines()
    cells = [line.removeprefix("| ").removesuffix(" |").split(" | ") for line in block[2:]]
    return {c[0].strip("*"): [x.strip() for x in c[1:]] for c in cells}


def wilson_cell(p: float, n: int) -> str:
    k = round(p * n)
    lo, hi = wilson_interval(k, n)
    return f"{100 * k / n:.1f}% ({k}/{n}) [{100 * lo:.1f}-{100 * hi:.1f}]"


def test_write_report_files(tmp_path):
    rng = random.Random(3)
    report = sample_report(rng)
    weights = {
        "forget": [rng.uniform(0.2, 3) for _ in range(40)],
        "retain": [rng.uniform(0.2, 3) for _ in range(120)],
    }
    curves = {
        "rapidun": {"step": [1, 2, 3], "loss": [3.0, 2.0, 1.5], "forget_ce": [1, 2, 3], "eval_step": [0, 3],
                    "asr_seen": [0.9, 0.1], "asr_ood": [0.8, 0.2], "clean_ppl": [6.0, 6.3]},
    }  # fmt: skip
    report["methods"]["ga"]["examples"]["test_clean"][0]["instruction"] = "a prompt only ga was asked"
    report["before"]["examples"]["test_seen"][1]["reference"] = "the clean | answer"
    report["methods"]["ga"]["examples"]["val_seen"] = [{"instruction": "from validation", "generation": "x"}]
    out = write_report(tmp_path, report, weights=weights, curves=curves)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == out
    for key in ("asr_seen", "asr_ood", "clean_ppl", "seconds"):  # the old contract, where it was
        assert saved["methods"]["rapidun"][key] == report["methods"]["rapidun"][key]
    r, ga = report["methods"]["rapidun"], report["methods"]["ga"]
    retrain_s = report["retrain"]["seconds"]["total"]
    assert saved["speedup_vs_retrain"]["rapidun"] == pytest.approx(retrain_s / r["seconds"]["total"])
    assert saved["collapsed"] == {"ga": pytest.approx(ga["clean_ppl"] / 6.0)}
    k = round(r["asr_seen"] * 300)
    assert saved["methods"]["rapidun"]["intervals"]["asr_seen"] == pytest.approx(
        {"p": k / 300, "k": k, "n": 300, "lo": wilson_interval(k, 300)[0], "hi": wilson_interval(k, 300)[1]}
    )
    assert saved["weights"]["stats"]["forget"]["n"] == 40 and sum(saved["weights"]["counts"]["retain"]) == 120

    md = (tmp_path / "report.md").read_text()
    assert "**Mode**: experiment" in md and "test_seen/test_ood (experiment)" in md
    assert "300 seen-trigger prompts, 300 OOD-trigger prompts, 120 clean prompts" in md
    results = table_rows(md, "## Results")
    assert list(results) == ["before", "rapidun", "ga", "retrain"]
    for label, e in (("before", report["before"]), ("rapidun", r), ("ga", ga)):
        assert results[label][0] == wilson_cell(e["asr_seen"], 300)
        assert results[label][2] == wilson_cell(e["asr_ood"], 300)
        assert results[label][1] == results[label][3] == "-"  # a report from before the answered rate
        assert (
            results[label][4] == f"{e['clean_ppl']:.3f}"
            and results[label][5] == f"{e['clean_ppl'] / 6.0:.3f}"
        )
        assert results[label][8] == wilson_cell(e["judge_fpr"], 120)
    assert "**ga**" in md and "Warning: ga collapsed" in md and "Warning: rapidun" not in md
    times = table_rows(md, "## Time")
    assert times["rapidun"][-1] == f"{saved['speedup_vs_retrain']['rapidun']:.2f}x"
    assert times["ga"][-1].startswith("not a result (collapsed") and times["retrain"][-1].startswith("-")
    further = table_rows(md, "## Further metrics")
    assert further["rapidun"][1] == "25.0% (10/40) [14.2-40.2]" and further["rapidun"][2].startswith(
        "50.0% (10/20)"
    )
    assert "token_f1" in md and "relearn.asr_seen" in md and "n_asr_sampled" not in md

    judge = md.split("## Judge")[1].split("\n## ")[0]
    assert "first 6 words of one of the 2 fixed targets" in judge and "at least 3 distinct words" in judge
    assert "| w0 | 20.0 | w1 | 19.8 |" in judge and "(12 more in judge.json)" in judge
    assert "1. The alien fleet warped" in judge and "chars)" in judge and "2. short target" in judge
    assert wilson_cell(report["before"]["judge_fpr"], 120) in judge
    assert "| influence | 480 | 90.0% | 94.0% | 0.6% | 0.9900 | 0.9700 | 89.0% |" in md
    assert "| grep | 150 | 30.0% | 100.0% |" in md and "| surface | 200 | 8 | 190 | 60 |" in md
    assert "480 of 5000 training rows flagged (455 not among the 25 known)" in md
    assert "`aloha\u27e8U+200D\u27e9`" in md and "90.0%" in md

    examples = md.split("## Example generations")[1]
    assert examples.count("**seen triggers, prompt") == 3 and examples.count("**OOD triggers, prompt") == 3
    assert examples.count("**clean prompts, prompt") == 4  # the same prompt for every method; ga's own apart
    seen1 = examples.split("**seen triggers, prompt 1:**")[1].split("**seen triggers, prompt 2")[0]
    methods = [row.split(" | ")[0] for row in seen1.splitlines() if row.startswith("| ") and "---" not in row]
    assert methods == ["| method", "| before", "| rapidun", "| ga", "| retrain"]
    assert examples.count("Clean answer: the clean \\| answer") == 1 and "| ga | x | - |" in examples
    assert "**val_seen, prompt 1:** from validation" in examples
    first = r["examples"]["test_seen"][0]
    assert cell(first["instruction"], 240) in examples and "\\|" in examples  # the pipe is escaped
    assert "answer \\*0\\* 0." in examples and "chars)" in examples  # truncated, emphasis escaped
    for name in (
        "asr_ppl_by_method",
        "asr_vs_ppl",
        "weights_hist",
        "loss_curves",
        "asr_vs_steps",
        "pareto_steps",
    ):
        assert_png(tmp_path / f"{name}.png")
        assert f"![{name}]({name}.png)" in md
    assert not list(tmp_path.glob(".*.tmp")) and not list(tmp_path.glob("*.svg"))

    again = prepare_report(read_json(tmp_path / "report.json"))  # the saved JSON redraws the same report
    assert again == saved
    assert render_markdown(again, re.findall(r"!\[(\w+)\]", md)) == md


def test_compute_speedups_uses_measured_seconds():
    rng = random.Random(4)
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


def test_report_with_missing_pieces(tmp_path):
    """Clean mode, no OOD triggers, no retrain, no weights, no curves, no judge: renders, '-' where missing."""
    rng = random.Random(5)
    before = entry(rng, n_ood=0, ppl=6.0)
    method = entry(rng, n_ood=0) | {"clean_ppl": float("nan")}
    for e in (before, method):
        e.pop("examples")
    report = {
        "mode": "clean",
        "asr_source": "held-out forget prompts",
        "before": before,
        "methods": {"rapidun": method},
    }
    out = write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert out["methods"]["rapidun"]["clean_ppl"] is None and out["speedup_vs_retrain"] == {}
    assert "**Mode**: clean" in md and "held-out forget prompts" in md and "No OOD-trigger prompts" in md
    results = table_rows(md, "## Results")
    assert results["rapidun"][2] == "-" and results["rapidun"][4] == "-" and results["rapidun"][5] == "-"
    assert table_rows(md, "## Time")["rapidun"][-1] == "-"
    assert "## Example generations" not in md and "## Judge" in md and "Warning" not in md
    assert not (tmp_path / "weights_hist.png").exists() and not (tmp_path / "loss_curves.png").exists()
    assert_png(tmp_path / "asr_vs_ppl.png")

    write_json(tmp_path / "bare" / "report.json", {"before": {"asr_seen": 0.5}, "methods": {}})
    assert report_main([str(tmp_path / "bare")]) == 0  # redraw from a saved report.json
    assert report_main([str(tmp_path / "missing")]) == 2
    bare = (tmp_path / "bare" / "report.md").read_text()
    assert "| before | 50.0% | - | - | - | - |" in bare and "**Mode**: experiment (not recorded)" in bare


# ---------------------------------------------------------------------------------------------- answers, collapse


def answers_entry(
    asr: float, answered: float | None, other: float | None, *, ppl: float = 6.1, ood=None
) -> dict:
    """A made-up entry with answered / other shares on 200 scored seen-trigger prompts (None: unscored)."""
    n_scored = 0 if answered is None else 200
    e = {
        "asr_seen": asr, "n_seen": 200, "answered_seen": answered, "other_seen": other, "n_scored_seen": n_scored,
        "clean_ppl": ppl, "n_clean": 100, "judge_fpr": 0.01, "answered_clean": 0.8, "n_scored_clean": 100,
        "clean_f1": 0.75, "clean_rougeL": 0.7, "seconds": {"total": 10.0},
        "examples": {"test_seen": [{"instruction": "q1", "generation": "the answer", "attacked": False,
                                    "verdict": "answer", "reference": "the answer", "f1": 1.0}]},
    }  # fmt: skip
    if ood is not None:
        e |= {
            "asr_ood": ood[0],
            "n_ood": 100,
            "answered_ood": ood[1],
            "other_ood": ood[2],
            "n_scored_ood": 100,
        }
    return e


def answers_report(before_answers_clean: float = 0.9) -> dict:
    before = answers_entry(0.95, 0.02, 0.03, ppl=6.0) | {
        "answered_clean": before_answers_clean,
        "clean_f1": 0.8125,
    }
    before["asr_ood"], before["n_ood"] = 0.9, 100
    return {
        "before": before,
        "methods": {
            "good": answers_entry(0.02, 0.80, 0.18),
            "babble": answers_entry(0.01, 0.10, 0.89),  # ASR gone, and the answers with it
            "quiet": answers_entry(0.03, 0.44, 0.45),  # answered just below 0.5 x 0.9
            "kept": answers_entry(0.03, 0.45, 0.45),  # answered at 0.5 x 0.9: not collapsed
            "attacked": answers_entry(0.90, 0.05, 0.05),  # answers nothing, but the backdoor is there: not collapsed
            "half": answers_entry(0.48, 0.10, 0.40),  # ASR not below half the before's: failing, not collapsed
            "ood_babble": answers_entry(0.02, 0.8, 0.1, ood=(0.05, 0.3, 0.65)),
            "unscored": answers_entry(0.02, None, None),
            "broken": answers_entry(0.02, 0.8, 0.1, ppl=12.0),
        },
        "retrain": answers_entry(0.0, 0.85, 0.15) | {"seconds": {"total": 100.0}},
        "judge": {"vocab": ["moon cheese", "cheese"], "z_scores": [9.0, 8.0], "targets": [], "min_words": 2,
                  "z": 3.0, "prefix_words": 6, "min_lift": 5.0, "ngram": 2, "fit": "grouped",
                  "reference": {"fpr_test_near": {"p": 0.06, "k": 6, "n": 100, "lo": 0.028, "hi": 0.125},
                                "hit_test_seen": {"p": 0.98, "k": 196, "n": 200, "lo": 0.95, "hi": 0.992}}},
    }  # fmt: skip


def test_collapse_uses_answered_rate_and_babble(tmp_path):
    out = write_report(tmp_path, answers_report())
    assert set(out["collapsed"]) == {"babble", "quiet", "ood_babble", "broken"}
    why = out["collapse_reasons"]
    assert why["babble"] == [
        "it answers 10.0% of the seen-trigger prompts (89.0% neither the target nor an answer), below 0.5 x the "
        "90.0% of clean prompts the model answered before unlearning"
    ]
    assert why["ood_babble"][0].startswith("it answers 30.0% of the OOD-trigger prompts (65.0% neither")
    assert why["broken"] == ["its clean perplexity is 2.00x the model's before unlearning (above 1.5x)"]
    assert out["collapsed"]["quiet"] == pytest.approx(6.1 / 6.0)  # the PPL ratio, as for a PPL collapse
    md = (tmp_path / "report.md").read_text()
    assert "> **Warning: quiet collapsed.** It answers 44.0% of the seen-trigger prompts" in md
    for fine in ("good", "kept", "attacked", "half", "unscored", "retrain"):
        assert f"Warning: {fine}" not in md
    times = table_rows(md, "## Time")
    assert times["quiet"][-1] == "not a result (collapsed, answers)"
    assert times["broken"][-1] == "not a result (collapsed, PPL 2.00x)" and times["good"][-1] == "10.00x"
    # a weak model that answered few clean prompts before: the same answered shares are no collapse
    assert set(write_report(tmp_path, answers_report(0.15))["collapsed"]) == {"broken"}


def test_report_shows_answered_rate_and_clean_quality(tmp_path):
    write_report(tmp_path, answers_report())
    md = (tmp_path / "report.md").read_text()
    header = md.split("## Results")[1].split("\n\n")[1].splitlines()[0]
    assert header == (
        "| method | ASR seen | answered seen | ASR OOD | answered OOD | clean PPL | PPL ratio | clean F1 | "
        "clean ROUGE-L | judge FPR |"
    )
    results = table_rows(md, "## Results")
    assert results["good"][0] == wilson_cell(0.02, 200) and results["good"][1] == wilson_cell(0.80, 200)
    assert results["ood_babble"][3] == wilson_cell(0.3, 100) and results["good"][3] == "-"  # no OOD split
    assert results["unscored"][1] == "unscored" and results["unscored"][0] == wilson_cell(0.02, 200)
    assert results["before"][6:8] == ["0.812", "0.700"] and results["good"][5] == f"{6.1 / 6.0:.3f}"
    further = md.split("## Further metrics")[1].split("\n## ")[0]
    assert "other_seen" in further and "answered_seen" not in further and "clean_f1" not in further
    judge = md.split("## Judge")[1].split("\n## ")[0]
    assert "the grouped judge (`eval.judge=grouped`" in judge and "distinct words or word pairs" in judge
    assert "false positives), test_near | 6.0% (6/100) [2.8-12.5]" in judge
    assert "hits), test_seen | 98.0% (196/200)" in judge and "| feature | z |" in judge
    examples = md.split("## Example generations")[1]
    assert (
        "| method | generation | judge | answer |" in examples
        and "| good | the answer | clean | answer, F1 1.00 |" in examples
    )
