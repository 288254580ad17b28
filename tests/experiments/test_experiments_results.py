"""collect: finished run dirs -> the results JSON (every number through compare.summarise and
stats.paired_differences, checked against a naive recomputation); the committed contamination results."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from exp_helpers import complete_spec

from rapidun_dist.cli.experiments.results import collect, load_results, results_path, section, write_results
from rapidun_dist.core.errors import DataError, StageError
from rapidun_dist.evaluation.stats import paired_differences, t_quantile_975

REPO = Path(__file__).resolve().parents[2]


def _naive_interval(values: list[float]) -> tuple[float, float, float]:
    m = statistics.fmean(values)
    half = t_quantile_975(len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return m, m - half, m + half


def test_collect_summarises_every_cell_and_pairs_by_seed(spec, tmp_path, rng):
    out = tmp_path / "out"
    reports = complete_spec(spec, out, rng)
    res = collect(spec, out, command="python -m rapidun_dist.cli.experiments collect mini.yaml --out OUT")
    assert res["format_version"] == 1 and list(res["cells"]) == ["a", "b"] and res["reference"] == "uniform"
    assert (
        "answer_seen.answered" in res["rates"]
        and "asr_seen" in res["rates"]
        and "ppl_ratio" not in res["rates"]
    )
    b = res["cells"]["b"]
    assert (
        b["seeds"] == ["0", "1", "2"]
        and b["n_runs"] == 3
        and set(b["metrics"]) == {"before", *spec.cell("b").methods}
    )
    seen = [reports[("b", s)]["methods"]["rapidun"]["asr_seen"] for s in spec.seeds]
    summary = b["metrics"]["rapidun"]["asr_seen"]
    assert summary["by_seed"] == dict(zip(["0", "1", "2"], seen, strict=True)) and summary["n"] == 3
    mean, lo, hi = _naive_interval(seen)
    assert summary["mean"] == pytest.approx(mean) and summary["hi"] == pytest.approx(min(hi, 1.0))
    assert summary["lo"] == pytest.approx(max(lo, 0.0))
    ratio = [reports[("b", s)]["methods"]["uniform"]["clean_ppl"] / 2.0 for s in spec.seeds]
    assert b["metrics"]["uniform"]["ppl_ratio"]["mean"] == pytest.approx(statistics.fmean(ratio))
    pairs = {(p["a"], p["b"]): p["metrics"] for p in b["paired"]}
    assert list(pairs) == [
        ("rapidun", "uniform"),
        ("rapidun_placebo", "uniform"),
        ("rapidun_placebo", "rapidun"),
    ]
    d = pairs[("rapidun_placebo", "rapidun")]["asr_seen"]
    diffs = [
        reports[("b", s)]["methods"]["rapidun_placebo"]["asr_seen"] - x
        for s, x in zip(spec.seeds, seen, strict=True)
    ]
    assert d["values"] == pytest.approx(diffs) and d["mean"] == pytest.approx(statistics.fmean(diffs))
    assert set(pairs[("rapidun", "uniform")]) == {"asr_seen", "ppl_ratio"}  # the spec's paired metrics
    assert [(p["a"], p["b"]) for p in res["cells"]["a"]["paired"]] == [("rapidun", "uniform")]
    path = write_results(res, results_path(spec))
    assert path == spec.path.resolve().parent.parent / "results" / "mini.json" and load_results(path) == res
    text = section(res)
    assert text.startswith("## A small study\n") and "The reading." in text
    assert f"    {spec.command(spec.cell('b'))}    # case B" in text
    assert "| case B | rapidun_placebo - rapidun |" in text and "| case A | before |" in text


def test_collect_refuses_incomplete_runs_and_reads_cells_elsewhere(spec, tmp_path, rng):
    out = tmp_path / "out"
    complete_spec(spec, out, rng, cells=["a"])
    with pytest.raises(StageError, match=r"3 run\(s\) incomplete:\n  .*b/s0 \(stages not done"):
        collect(spec, out)
    complete_spec(spec, tmp_path / "elsewhere", rng, cells=["b"])
    res = collect(spec, out, cell_dirs={"b": tmp_path / "elsewhere" / "b"})
    assert res["cells"]["b"]["n_runs"] == 3
    with pytest.raises(DataError, match=r"cells \['c'\]"):
        collect(spec, out, cell_dirs={"c": tmp_path})
    assert "/" not in json.dumps(res["cells"]["b"]["seeds"])  # no machine path stored: seeds, not run dirs
    assert str(tmp_path) not in json.dumps({k: v for k, v in res.items() if k != "spec_path"})


CONTAMINATION = REPO / "benchmarks" / "results" / "contamination.json"


def test_committed_contamination_results_hold_the_issue_numbers():
    """The table collected from the 24 runs of issue 21 (seeds 0-7): its pairs follow from its per-seed values,
    and the section shows the numbers the study reported."""
    res = load_results(CONTAMINATION)
    assert set(res["cells"]) == {"clean", "contam10", "contam30"}
    for cell in res["cells"].values():
        assert cell["n_runs"] == 8
        for pair in cell["paired"]:
            for metric, d in pair["metrics"].items():
                a, b = (cell["metrics"][m][metric]["by_seed"] for m in (pair["a"], pair["b"]))
                assert d == paired_differences(a, b), (pair["a"], pair["b"], metric)
    text = section(res)
    for row in (
        "| clean default | rapidun - uniform | -0.3 pp [-1.0, +0.5] |",
        "| 10% contaminated | rapidun - uniform | +0.4 pp [-1.7, +2.6] |",
        "| 30% contaminated | rapidun - uniform | -1.2 pp [-3.6, +1.2] |",
        "| 30% contaminated | rapidun_placebo - rapidun | +4.9 pp [+0.3, +9.5] |",
    ):
        assert row in text, row
