"""rapidun compare: paired per-seed differences against uniform, on hand-made report.json files whose answers are
computed by hand below (mean, sd, 95% t interval of the differences; seeds one side lacks; repeated seeds)."""

from __future__ import annotations

import math

import pytest

from rapidun_dist.core.io import read_json, write_json
from rapidun_dist.evaluation import compare
from rapidun_dist.evaluation.stats import paired_differences

T975_DF2, T975_DF1 = 4.3026527, 12.7062047  # Student t 97.5% quantiles, 2 and 1 degrees of freedom
S = [
    f"data={s},implant={s},influence={1234 + s},unlearn={s}" for s in range(5)
]  # seeds as evaluate writes them


def entry(asr_seen: float, asr_ood: float, clean_ppl: float, judge_fpr: float) -> dict:
    return {
        "asr_seen": asr_seen, "asr_ood": asr_ood, "clean_ppl": clean_ppl, "judge_fpr": judge_fpr,
        "n_seen": 200, "n_ood": 200, "n_clean": 100,
    }  # fmt: skip


# per seed index: (asr_seen, asr_ood, clean_ppl, judge_fpr); the model before has clean PPL 10
UNIFORM = {
    0: (0.30, 0.40, 10.5, 0.02),
    1: (0.20, 0.35, 10.2, 0.03),
    2: (0.25, 0.50, 10.3, 0.01),
    4: (0.5, 0.6, 11.0, 0.0),
}
RAPIDUN = {
    0: (0.10, 0.10, 10.4, 0.02),
    1: (0.15, 0.20, 10.2, 0.01),
    2: (0.05, 0.15, 10.1, 0.01),
    3: (0.2, 0.2, 10.0, 0.0),
}
GA = {0: (0.00, 0.05, 12.0, 0.10), 2: (0.10, 0.25, 13.0, 0.20)}


def report(seed: int, methods: dict, label: str | None = None) -> dict:
    proto = {"seed": S[seed]} | ({"label": label} if label else {})
    return {
        "protocol": proto,
        "before": entry(0.95, 0.9, 10.0, 0.0),
        "methods": {m: entry(*v) for m, v in methods.items()},
    }


@pytest.fixture
def paths(tmp_path):
    """Label "main": seed 1's uniform run in a report of its own (pairs cross reports), seed 3 without uniform,
    seed 4 with uniform alone; label "nouni": no uniform; label "twice": seed 0 twice."""
    plan = {
        "r0": report(0, {"rapidun": RAPIDUN[0], "uniform": UNIFORM[0], "ga": GA[0]}),
        "r1a": report(1, {"rapidun": RAPIDUN[1]}),
        "r1b": report(1, {"uniform": UNIFORM[1]}),
        "r2": report(2, {"rapidun": RAPIDUN[2], "uniform": UNIFORM[2], "ga": GA[2]}),
        "r3": report(3, {"rapidun": RAPIDUN[3]}),
        "r4": report(4, {"uniform": UNIFORM[4]}),
        "n0": report(0, {"rapidun": RAPIDUN[0]}, "nouni"),
        "t0": report(0, {"rapidun": RAPIDUN[0], "uniform": UNIFORM[0]}, "twice"),
        "t1": report(0, {"rapidun": RAPIDUN[1], "uniform": UNIFORM[1]}, "twice"),
    }
    out = []
    for name, rep in plan.items():
        write_json(tmp_path / f"{name}.json", rep)
        out.append((("main" if name[0] == "r" else None), tmp_path / f"{name}.json"))
    return out


def test_paired_differences_by_hand():
    d = paired_differences(
        {"a": 0.10, "b": 0.15, "c": 0.05, "x": 0.2}, {"a": 0.30, "b": 0.20, "c": 0.25, "y": 0.5}
    )
    # differences -0.20, -0.05, -0.20: mean -0.15, sd sqrt(0.015 / 2) = 0.0866, sd / sqrt(3) = 0.05 exactly
    assert d["seeds"] == ["a", "b", "c"] and d["values"] == pytest.approx([-0.20, -0.05, -0.20])
    assert (d["only_a"], d["only_b"]) == (["x"], ["y"])
    assert d["n"] == 3 and d["mean"] == pytest.approx(-0.15) and d["sd"] == pytest.approx(math.sqrt(0.0075))
    assert (d["lo"], d["hi"]) == pytest.approx((-0.15 - T975_DF2 * 0.05, -0.15 + T975_DF2 * 0.05), rel=1e-7)
    none = paired_differences({"a": 1.0}, {"b": 2.0})
    assert none["n"] == 0 and none["mean"] is None and (none["only_a"], none["only_b"]) == (["a"], ["b"])


def test_compare_pairs_by_seed_across_reports(tmp_path, paths):
    out = compare.compare_reports(
        [p for _, p in paths], tmp_path / "cmp", labels=[lab for lab, _ in paths], draw=False
    )
    assert read_json(tmp_path / "cmp" / "compare.json") == out
    paired = out["groups"]["main"]["paired"]
    assert paired["reference"] == "uniform" and paired["no_seed"] == 0 and paired["repeated"] == {}
    assert set(paired["methods"]) == {"rapidun", "ga"}  # not before, not uniform itself
    rap = paired["methods"]["rapidun"]
    assert set(rap) == {"asr_seen", "asr_ood", "ppl_ratio", "judge_fpr"}
    for metric in rap.values():
        assert (
            metric["seeds"] == S[:3]
            and metric["only_method"] == [S[3]]
            and metric["only_reference"] == [S[4]]
        )
    # ASR seen: -0.20, -0.05, -0.20 (above); PPL ratio: 1.04 - 1.05, 1.02 - 1.02, 1.01 - 1.03 = -0.01, 0, -0.02,
    # mean -0.01, sd 0.01
    assert rap["asr_seen"]["mean"] == pytest.approx(-0.15)
    assert rap["asr_seen"]["hi"] == pytest.approx(-0.15 + T975_DF2 * 0.05, rel=1e-7)
    ppl = rap["ppl_ratio"]
    assert ppl["values"] == pytest.approx([-0.01, 0.0, -0.02]) and ppl["sd"] == pytest.approx(0.01)
    assert (ppl["lo"], ppl["hi"]) == pytest.approx(
        (-0.01 - T975_DF2 * 0.01 / math.sqrt(3), -0.01 + T975_DF2 * 0.01 / math.sqrt(3))
    )
    # ASR OOD: -0.30, -0.15, -0.35 -> mean -0.8 / 3; judge FPR: 0, -0.02, 0 -> mean -0.02 / 3
    assert rap["asr_ood"]["mean"] == pytest.approx(-0.8 / 3) and rap["judge_fpr"]["mean"] == pytest.approx(
        -0.02 / 3
    )
    # ga has seeds 0 and 2: ASR OOD 0.05 - 0.40, 0.25 - 0.50 = -0.35, -0.25; sd 0.1 / sqrt(2), t_1 x 0.05
    ga = paired["methods"]["ga"]["asr_ood"]
    assert ga["n"] == 2 and ga["mean"] == pytest.approx(-0.30) and ga["only_method"] == []
    assert ga["only_reference"] == [S[1], S[4]]
    assert (ga["lo"], ga["hi"]) == pytest.approx((-0.30 - T975_DF1 * 0.05, -0.30 + T975_DF1 * 0.05), rel=1e-7)
    # no uniform: nothing paired; the same seed twice: left out of the pairs and named
    assert out["groups"]["nouni"]["paired"]["methods"] == {}
    twice = out["groups"]["twice"]["paired"]
    assert twice["repeated"] == {"rapidun": [S[0]], "uniform": [S[0]]}
    assert twice["methods"]["rapidun"]["asr_seen"]["n"] == 0


def test_markdown_shows_the_pairs_next_to_the_intervals(tmp_path, paths):
    compare.compare_reports(
        [p for _, p in paths], tmp_path / "cmp", labels=[lab for lab, _ in paths], draw=False
    )
    text = (tmp_path / "cmp" / "compare.md").read_text()
    main = text.split("## Protocol: main")[1].split("## Protocol:")[0]
    assert main.index("| method | ASR seen |") < main.index("Paired by seed, method minus `uniform`")
    half = T975_DF2 * 0.05
    row = next(line for line in main.splitlines() if line.startswith("| rapidun |") and " pp " in line)
    assert (
        f"{-15.0:+.1f} pp [{100 * (-0.15 - half):+.1f}, {100 * (-0.15 + half):+.1f}]" in row
    )  # -15.0 pp [-36.5, +6.5]
    ppl_half = T975_DF2 * 0.01 / math.sqrt(3)
    assert f"-0.010 [{-0.01 - ppl_half:+.3f}, {-0.01 + ppl_half:+.3f}]" in row
    assert f"| 3 | uniform lacks {S[3]}; rapidun lacks {S[4]} |" in row
    ga_row = next(line for line in main.splitlines() if line.startswith("| ga |") and " pp " in line)
    assert f"ga lacks {S[1]}, {S[4]}" in ga_row and "| 2 |" in ga_row
    assert "No `uniform` runs in this protocol" in text.split("## Protocol: nouni")[1]
    assert f"rapidun: seeds {S[0]} found twice" in text.split("## Protocol: twice")[1]


def test_answered_rates_and_clean_quality_are_compared_and_paired(tmp_path):
    """answered_seen / answered_ood / clean_f1 / clean_rougeL: summarised per method and paired against uniform."""
    # per seed: (answered_seen, answered_ood, clean_f1, clean_rougeL)
    rap = {0: (0.80, 0.70, 0.60, 0.55), 1: (0.70, 0.60, 0.62, 0.50), 2: (0.90, 0.65, 0.58, 0.45)}
    uni = {0: (0.60, 0.50, 0.61, 0.50), 1: (0.65, 0.55, 0.60, 0.50), 2: (0.70, 0.60, 0.61, 0.50)}

    def quality(v: tuple) -> dict:
        return {"answered_seen": v[0], "answered_ood": v[1], "clean_f1": v[2], "clean_rougeL": v[3],
                "n_scored_seen": 200, "n_scored_ood": 200}  # fmt: skip

    paths = []
    for s in range(3):
        rep = report(s, {"rapidun": RAPIDUN[s], "uniform": UNIFORM[s]})
        rep["methods"]["rapidun"] |= quality(rap[s])
        rep["methods"]["uniform"] |= quality(uni[s])
        write_json(tmp_path / f"q{s}.json", rep)
        paths.append(tmp_path / f"q{s}.json")
    out = compare.compare_reports(paths, tmp_path / "cmp", draw=False)
    group = out["groups"]["all"]
    assert group["methods"]["rapidun"]["answered_seen"]["mean"] == pytest.approx(0.8)
    assert group["methods"]["uniform"]["clean_rougeL"]["values"] == pytest.approx([0.5, 0.5, 0.5])
    paired = group["paired"]["methods"]["rapidun"]
    # answered seen: 0.20, 0.05, 0.20 -> mean 0.15, sd / sqrt(3) = 0.05 (as the ASR example above, sign flipped)
    assert paired["answered_seen"]["mean"] == pytest.approx(0.15)
    assert paired["answered_seen"]["hi"] == pytest.approx(0.15 + T975_DF2 * 0.05, rel=1e-7)
    assert paired["answered_ood"]["values"] == pytest.approx([0.20, 0.05, 0.05])
    assert paired["clean_f1"]["values"] == pytest.approx([-0.01, 0.02, -0.03])
    assert paired["clean_rougeL"]["mean"] == pytest.approx(0.0)
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert (
        "| method | ASR seen | answered seen | ASR OOD | answered OOD | PPL ratio | clean F1 | clean ROUGE-L |"
        in text
    )
    row = next(line for line in text.splitlines() if line.startswith("| rapidun |") and " pp " in line)
    assert f"+15.0 pp [{100 * (0.15 - T975_DF2 * 0.05):+.1f}, {100 * (0.15 + T975_DF2 * 0.05):+.1f}]" in row
    assert "answered seen - uniform" in text and "clean F1 - uniform" in text
