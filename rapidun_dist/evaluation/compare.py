"""Compare evaluation reports over seeds and protocols: mean and 95% t interval per method and metric.

    rapidun compare OUT SRC [SRC ...] [--no-plots]   (or: python -m rapidun_dist.evaluation.compare OUT SRC ...)
    compare_reports([SRC, ...], OUT, labels=[...], draw=True)

SRC is a report.json, an eval folder holding one, or a run directory (RUN/eval/report.json), optionally
prefixed by a protocol label, `LABEL=SRC` (e.g. `relabel_on=runs/s0 relabel_on=runs/s1 relabel_off=runs/t0`).
A report's protocol label is, in order: the label given with it; report["protocol"]["label"]; the other
items of report["protocol"] except the seed, as "key=value, ..."; otherwise "all". Its seed is
report["protocol"]["seed"], else report["config"]["seed"], else unknown.

For every label and every row of the reports (before, each method, retrain), every metric found is summarised
over the reports that have it as `stats.mean_interval` (mean, sd, n and mean +- t_{0.975, n-1} sd / sqrt(n);
clipped to [0, 1] for rates and clean-answer scores and at 0 for PPL, ratios, seconds and speedups, marked
"clipped"):

    asr_seen, asr_ood, judge_fpr                              (fractions of the prompts)
    answered_seen, answered_ood, answered_clean               (fractions of the prompts with a known clean answer)
    clean_ppl, ppl_ratio                                      (PPL ratio = clean PPL / before)
    clean_f1, clean_rougeL                                    (mean token F1 / ROUGE-L on clean prompts)
    seconds.influence, seconds.weights, seconds.unlearn, seconds.total
    speedup_vs_retrain                                        (only over runs that did not collapse)
    any extra numeric metric of the entries (report.extra_metrics: token F1 on triggered prompts, the
    neither-count, sampled ASR, relearn ASR, noisy-forget damage, ...; a proportion counts with its rate p)

A run that collapsed (report["collapsed"]: clean PPL ratio above 1.5, or answers turned to babble while the ASR fell;
docs/DESIGN.md section 8) is counted per method, and its speedup is left out.

Paired differences against `uniform` (the same objective without influence weights): within a label, for every
other method and every main metric (ASR and answered rate seen / OOD, PPL ratio, clean F1 / ROUGE-L, judge FPR),
d_s = method_s - uniform_s over the
seeds s both have (paired on the report's seed, so uniform's runs may sit in other reports of the label), their
mean, sd, n and 95% t interval (`stats.paired_differences`; not clipped). Seeds one of the two lacks are listed
("only_method", "only_reference"); a seed a method has twice is left out of its pairs and listed under
"repeated"; reports without a seed cannot be paired and are counted ("no_seed"). Writes into OUT:

    compare.json  {"format_version": 1, "reports": [{"path", "label", "seed"}], "metrics": [...],
                   "groups": {label: {"n_reports", "seeds",
                                      "methods": {method: {metric: {"mean", "lo", "hi", "sd", "n", "values"}}},
                                      "collapsed": {method: runs collapsed},
                                      "paired": {"reference": "uniform", "metrics": [...], "no_seed",
                                                 "repeated": {method: [seeds]},
                                                 "methods": {method: {metric: {"mean", "lo", "hi", "sd", "n",
                                                   "seeds", "values", "only_method", "only_reference"}}}}}}}
    compare.md    per label a table of the main metrics, the paired differences against uniform, and one of
                  every metric; with several labels, the main metrics side by side per label
    pareto_<label>.png   per method its runs, its own Pareto curve through them, its mean +- 95% interval
    bars_<label>.png     ASR seen / OOD and PPL ratio per method with 95% t intervals over seeds
    pareto_all.png       with several labels: every method under every label in one Pareto plot
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from rapidun_dist.core.errors import DataError, RapidUnError
from rapidun_dist.core.io import read_json, write_json, write_text
from rapidun_dist.core.logging import get_logger
from rapidun_dist.evaluation import markdown as md
from rapidun_dist.evaluation import plots
from rapidun_dist.evaluation.markdown import num as _num
from rapidun_dist.evaluation.report import (
    COLLAPSE_RATIO,
    STAGES,
    extra_metrics,
    prepare_report,
    rows,
    total_seconds,
)
from rapidun_dist.evaluation.stats import mean_interval, paired_differences

FORMAT_VERSION = 1
BASE_METRICS = (
    "asr_seen", "asr_ood", "answered_seen", "answered_ood", "answered_clean", "clean_ppl", "ppl_ratio", "clean_f1",
    "clean_rougeL", "judge_fpr",
)  # fmt: skip
RATES = ("asr_seen", "asr_ood", "answered_seen", "answered_ood", "answered_clean", "judge_fpr")
POSITIVE = (
    "clean_ppl", "ppl_ratio", "clean_f1", "clean_rougeL", "speedup_vs_retrain", *(f"seconds.{s}" for s in (*STAGES, "total"))
)  # fmt: skip
MAIN = (  # (metric, column, formatter kind) of the main table
    ("asr_seen", "ASR seen", "pct"),
    ("answered_seen", "answered seen", "pct"),
    ("asr_ood", "ASR OOD", "pct"),
    ("answered_ood", "answered OOD", "pct"),
    ("ppl_ratio", "PPL ratio", "float"),
    ("clean_f1", "clean F1", "float"),
    ("clean_rougeL", "clean ROUGE-L", "float"),
    ("judge_fpr", "judge FPR", "pct"),
    ("seconds.total", "total s", "s"),
    ("speedup_vs_retrain", "speedup vs retrain", "x"),
)
_KIND = {m: k for m, _, k in MAIN} | {
    "clean_ppl": "float",
    "answered_clean": "pct",
    **{f"seconds.{s}": "s" for s in STAGES},
}
REFERENCE = "uniform"  # what paired differences are taken against
PAIRED = (  # the main table's rates and quality numbers
    "asr_seen", "answered_seen", "asr_ood", "answered_ood", "ppl_ratio", "clean_f1", "clean_rougeL", "judge_fpr",
)  # fmt: skip
SCORES = (
    "clean_f1",
    "clean_rougeL",
)  # means of scores in [0, 1]: intervals clipped like a rate's, shown as floats
CROSS = ("asr_seen", "asr_ood", "ppl_ratio", "answered_seen", "clean_f1")  # side by side over protocols


# ---------------------------------------------------------------------------------------------- loading


def resolve_report(src: str | os.PathLike) -> Path:
    """The report.json that `src` names: the file itself, DIR/report.json or DIR/eval/report.json."""
    p = Path(src)
    for cand in (p, p / "report.json", p / "eval" / "report.json"):
        if cand.is_file():
            return cand
    raise DataError(
        f"compare: no report.json at {p} (looked for {p}, {p / 'report.json'}, {p / 'eval/report.json'})"
    )


def parse_source(arg: str) -> tuple[str | None, str]:
    """`LABEL=PATH` -> (LABEL, PATH); a plain PATH (or one whose '=' is part of an existing path) -> (None, PATH)."""
    label, sep, path = arg.partition("=")
    if not sep or Path(arg).exists() or not label or "/" in label:
        return None, arg
    return label, path


def protocol_label(report: dict, given: str | None = None) -> str:
    if given:
        return given
    proto = report.get("protocol")
    if isinstance(proto, dict):
        if proto.get("label"):
            return str(proto["label"])
        items = [f"{k}={v}" for k, v in sorted(proto.items()) if k not in ("seed", "label")]
        if items:
            return ", ".join(items)
    return "all"


def report_seed(report: dict):
    for holder in (report.get("protocol"), report.get("config")):
        if isinstance(holder, dict) and holder.get("seed") is not None:
            return holder["seed"]
    return None


# ---------------------------------------------------------------------------------------------- metrics


def family_metrics(entry: dict) -> dict[str, float]:
    """ASR per trigger family of a triggered split: {"asr_seen.<family>": value, "asr_ood.<family>": ...}."""
    return {
        f"asr_{split}.{family}": v
        for split, families in (entry.get("asr_by_family") or {}).items()
        for family, value in families.items()
        if (v := _num(value)) is not None
    }


def rate_metrics(entry: dict) -> set[str]:
    """The metrics of an entry that are proportions (bounded by [0, 1]): ASR (per family too), FPR and counted
    extras."""
    extras = {k for k, v in extra_metrics(entry).items() if isinstance(v, dict)}
    return set(RATES) | set(family_metrics(entry)) | extras


def entry_metrics(label: str, entry: dict, report: dict) -> dict[str, float]:
    """Every number of one row of a prepared report, flattened to {metric: value}."""
    out = {k: v for k in BASE_METRICS if (v := _num(entry.get(k))) is not None}
    seconds = entry.get("seconds") or {}
    out |= {f"seconds.{s}": v for s in STAGES if (v := _num(seconds.get(s))) is not None}
    if (total := total_seconds(entry)) is not None:
        out["seconds.total"] = total
    if label not in (report.get("collapsed") or {}):
        speed = _num((report.get("speedup_vs_retrain") or {}).get(label))
        out |= {"speedup_vs_retrain": speed} if speed is not None else {}
    out |= family_metrics(entry)
    for key, value in extra_metrics(entry).items():
        v = _num(value["p"]) if isinstance(value, dict) else _num(value)
        if v is not None and key not in out:
            out[key] = v
    return out


def _collect(loaded: list[tuple[str, dict]]) -> dict[str, dict]:
    """{label: {"values": {method: {metric: [values]}}, "by_seed": {method: {metric: {seed: [values]}}},
    "collapsed": {method: count}, "seeds": [...], "no_seed": reports without one}}."""
    groups: dict[str, dict] = {}
    for label, report in loaded:
        g = groups.setdefault(
            label,
            {
                "values": {},
                "by_seed": {},
                "collapsed": {},
                "seeds": [],
                "n_reports": 0,
                "rates": set(),
                "no_seed": 0,
            },
        )
        g["n_reports"] += 1
        seed = report_seed(report)
        g["seeds"].append(seed)
        g["no_seed"] += seed is None
        for method, entry in rows(report):
            per = g["values"].setdefault(method, {})
            by_seed = g["by_seed"].setdefault(method, {})
            for metric, v in entry_metrics(method, entry, report).items():
                per.setdefault(metric, []).append(v)
                if seed is not None:
                    by_seed.setdefault(metric, {}).setdefault(str(seed), []).append(v)
            g["rates"] |= rate_metrics(entry)
            if method in (report.get("collapsed") or {}):
                g["collapsed"][method] = g["collapsed"].get(method, 0) + 1
    return groups


def summarise(values: list[float], *, rate: bool = False, positive: bool = False) -> dict:
    """stats.mean_interval of `values` plus the values; the interval of a rate is clipped to [0, 1] and that of
    a positive quantity at 0 (the t interval knows no bounds; the clipped ends say `"clipped": true`)."""
    m = mean_interval(values) | {"values": list(values)}
    lo, hi = (0.0, 1.0) if rate else (0.0, math.inf) if positive else (-math.inf, math.inf)
    if m["lo"] < lo or m["hi"] > hi:
        m |= {"lo": max(m["lo"], lo), "hi": min(m["hi"], hi), "clipped": True}
    return m


def _summarise(group: dict) -> dict[str, dict[str, dict]]:
    return {
        method: {
            metric: summarise(
                vs, rate=metric in group["rates"] or metric in SCORES, positive=metric in POSITIVE
            )
            for metric, vs in metrics.items()
        }
        for method, metrics in group["values"].items()
    }


def repeated_seeds(group: dict) -> dict[str, list[str]]:
    """{method: seeds it has more than once} (not `before`, which every report of a seed split over several
    reports carries)."""
    out = {}
    for method, per in group["by_seed"].items():
        seeds = {s for by_seed in per.values() for s, vs in by_seed.items() if len(vs) > 1}
        if seeds and method != "before":
            out[method] = sorted(seeds)
    return out


def _paired(group: dict) -> dict:
    """Per method (not before, not the reference) and PAIRED metric: `stats.paired_differences` against uniform on
    the seeds both have, each once (module docstring)."""
    repeated = repeated_seeds(group)

    def once(method: str, metric: str) -> dict[str, float]:
        by_seed = group["by_seed"].get(method, {}).get(metric, {})
        return {s: vs[0] for s, vs in by_seed.items() if len(vs) == 1}

    methods: dict[str, dict] = {}
    for method in group["values"] if REFERENCE in group["values"] else ():
        if method in ("before", REFERENCE):
            continue
        has = lambda m, metric: metric in group["by_seed"].get(m, {})  # noqa: E731
        methods[method] = {}
        for metric in (m for m in PAIRED if has(method, m) or has(REFERENCE, m)):
            d = paired_differences(once(method, metric), once(REFERENCE, metric))
            methods[method][metric] = d | {"only_method": d.pop("only_a"), "only_reference": d.pop("only_b")}
    return {
        "reference": REFERENCE,
        "metrics": list(PAIRED),
        "no_seed": group["no_seed"],
        "repeated": repeated,
        "methods": methods,
    }


def _metric_order(groups: dict) -> list[str]:
    found = {m for g in groups.values() for per in g["methods"].values() for m in per}
    known = [*BASE_METRICS, *(f"seconds.{s}" for s in (*STAGES, "total")), "speedup_vs_retrain"]
    return [m for m in known if m in found] + sorted(found - set(known))


# ---------------------------------------------------------------------------------------------- Markdown


def _cell(summary: dict | None, metric: str) -> str:
    return md.fmt_mean_interval(summary, _KIND.get(metric, "auto"))


def _speedup_cell(group: dict, method: str) -> str:
    summary = group["methods"].get(method, {}).get("speedup_vs_retrain")
    collapsed = group["collapsed"].get(method, 0)
    if summary is None and collapsed:
        return f"not a result ({collapsed}/{group['n_reports']} runs collapsed)"
    cell = _cell(summary, "speedup_vs_retrain")
    return cell + (f", {collapsed} collapsed run(s) left out" if collapsed and summary else "")


def _main_table(group: dict) -> list[str]:
    header = ["method", *(col for _, col, _ in MAIN), "runs"]
    body = []
    for method, per in group["methods"].items():
        cells = [
            _speedup_cell(group, method) if m == "speedup_vs_retrain" else _cell(per.get(m), m)
            for m, _, _ in MAIN
        ]
        n = max((s["n"] for s in per.values()), default=0)
        body.append([f"**{method}**" if group["collapsed"].get(method) else method, *cells, str(n)])
    return md.table(header, body)


def _diff_cell(d: dict | None, metric: str) -> str:
    """ "-12.3 pp [-20.1, -4.5]" (rates, percentage points) or "+0.012 [-0.003, 0.027]"; n = 1: "(n=1)"."""
    if not d or d["n"] == 0:
        return md.MISSING
    f = (lambda v: f"{100 * v:+.1f}") if metric in RATES else (lambda v: f"{v:+.3f}")
    unit = " pp" if metric in RATES else ""
    if d["n"] < 2:
        return f"{f(d['mean'])}{unit} (n=1)"
    return f"{f(d['mean'])}{unit} [{f(d['lo'])}, {f(d['hi'])}]"


def _lacking(per: dict, method: str) -> str:
    """The seeds one side of the pairs lacks, over the paired metrics: "uniform lacks 3; rapidun lacks 1, 2"."""
    no_ref = sorted({s for d in per.values() for s in d["only_method"]})
    no_method = sorted({s for d in per.values() for s in d["only_reference"]})
    parts = [f"{REFERENCE} lacks {', '.join(no_ref)}"] if no_ref else []
    parts += [f"{method} lacks {', '.join(no_method)}"] if no_method else []
    return md.cell("; ".join(parts), 120) if parts else "none"


def _paired_table(paired: dict) -> list[str]:
    if not paired["methods"]:
        return [f"No `{REFERENCE}` runs in this protocol: no paired differences.", ""]
    cols = {m: col for m, col, _ in MAIN}
    header = ["method", *(f"{cols[m]} - {REFERENCE}" for m in PAIRED), "pairs", "seeds lacking"]
    body = [
        [method, *(_diff_cell(per.get(m), m) for m in PAIRED), str(max((d["n"] for d in per.values()), default=0)),
         _lacking(per, method)]
        for method, per in paired["methods"].items()
    ]  # fmt: skip
    notes = [
        f"{k}: seeds {', '.join(v)} found twice, left out of the pairs" for k, v in paired["repeated"].items()
    ]
    notes += [f"{paired['no_seed']} report(s) without a seed, left out"] if paired["no_seed"] else []
    return [
        f"Paired by seed, method minus `{REFERENCE}`: mean [95% t interval] over the seeds both have (rates in "
        "percentage points).",
        "",
        *md.table(header, body),
        "",
        *([f"Left out: {'; '.join(notes)}.", ""] if notes else []),
    ]


def _all_metrics_table(group: dict, metrics: list[str]) -> list[str]:
    body = [
        [method, metric, _cell(s, metric), str(s["n"]), ", ".join(md.fmt_auto(v) for v in s["values"])]
        for method, per in group["methods"].items()
        for metric in metrics
        if (s := per.get(metric))
    ]
    return md.table(["method", "metric", "mean [95% t interval]", "n", "values"], body)


def _cross_table(groups: dict) -> list[str]:
    labels = list(groups)
    methods = list(dict.fromkeys(m for g in groups.values() for m in g["methods"]))
    lines = ["## Protocols side by side", ""]
    for metric, col, _ in (m for m in MAIN if m[0] in CROSS):
        body = [
            [m, *(_cell(groups[lab]["methods"].get(m, {}).get(metric), metric) for lab in labels)]
            for m in methods
        ]
        lines += [f"**{col}**", "", *md.table(["method", *labels], body), ""]
    return lines


def render_markdown(result: dict, plot_names: dict[str, list[str]], cross_plots: Sequence[str] = ()) -> str:
    groups = result["groups"]
    lines = [
        "# RapidUn comparison over runs",
        "",
        f"{len(result['reports'])} reports; protocols: "
        + ", ".join(f"{lab} ({g['n_reports']} runs)" for lab, g in groups.items()),
        "",
        "Each cell: mean over runs [95% Student t interval, clipped to the metric's range] (n=1: the single "
        "value). A method in bold collapsed "
        f"(clean PPL ratio > {COLLAPSE_RATIO}, or its answers turned to babble; see each report's warnings) in at "
        "least one run; collapsed runs give no speedup.",
        "",
    ]
    if len(groups) > 1:
        lines += [*_cross_table(groups), *_plot_lines(list(cross_plots))]
    for label, group in groups.items():
        seeds = ", ".join("?" if s is None else str(s) for s in group["seeds"])
        lines += [f"## Protocol: {md.cell(label, 80)}", "", f"Runs: {group['n_reports']} (seeds {seeds})", ""]
        lines += [
            *_main_table(group),
            "",
            *_paired_table(group["paired"]),
            *_plot_lines(plot_names.get(label, [])),
        ]
        lines += ["<details><summary>every metric</summary>", "", *_all_metrics_table(group, result["metrics"]), "",
                  "</details>", ""]  # fmt: skip
    lines += ["## Reports", "", *md.table(["label", "seed", "report"], [[md.cell(r["label"], 60), str(r["seed"]), f"`{r['path']}`"] for r in result["reports"]])]  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"


def _plot_lines(names: list[str]) -> list[str]:
    return [line for n in names for line in (f"![{n}]({n}.png)", "")]


# ---------------------------------------------------------------------------------------------- plots


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_").lower() or "all"


def _estimate(summary: dict | None, scale: float = 1.0) -> plots.Estimate:
    if not summary:
        return plots.Estimate(None)
    return plots.Estimate(*(scale * summary[k] for k in ("mean", "lo", "hi")))


def _pareto_inputs(group: dict, suffix: str = "") -> tuple[dict, dict]:
    runs, means = {}, {}
    for method, per in group["methods"].items():
        if method == "before" or "ppl_ratio" not in per or "asr_ood" not in per:
            continue
        xs, ys = per["ppl_ratio"]["values"], per["asr_ood"]["values"]
        if len(xs) == len(ys):  # one pair per run (a run missing one of the two would misalign them)
            runs[method + suffix] = [(x, 100 * y) for x, y in zip(xs, ys, strict=True)]
        means[method + suffix] = plots.Point(_estimate(per["ppl_ratio"]), _estimate(per["asr_ood"], 100.0))
    return runs, means


def _group_plots(out_dir: Path, label: str, group: dict) -> list[str]:
    slug, names = _slug(label), []
    runs, means = _pareto_inputs(group)
    if runs:
        plots.pareto_curves(
            out_dir / f"pareto_{slug}.png", f"ASR OOD vs clean PPL per method ({label})", runs,
            "clean PPL / PPL before (lower is better)", "ASR OOD (%)", means=means,
        )  # fmt: skip
        names.append(f"pareto_{slug}")
    methods = list(group["methods"])
    asr = {f"ASR {s}": [_estimate(group["methods"][m].get(f"asr_{k}"), 1.0) for m in methods]
           for k, s in (("seen", "seen"), ("ood", "OOD"))}  # fmt: skip
    ratio = [_estimate(group["methods"][m].get("ppl_ratio")) for m in methods]
    plots.method_summary(out_dir / f"bars_{slug}.png", f"Mean over runs, 95% t interval ({label})", methods, asr,
                         ratio, interval_label="95% t interval over runs")  # fmt: skip
    return names + [f"bars_{slug}"]


def _all_pareto(out_dir: Path, groups: dict) -> list[str]:
    runs, means = {}, {}
    for label, group in groups.items():
        r, m = _pareto_inputs(group, f" [{label}]")
        runs, means = runs | r, means | m
    if not runs:
        return []
    plots.pareto_curves(out_dir / "pareto_all.png", "ASR OOD vs clean PPL, every protocol", runs,
                        "clean PPL / PPL before (lower is better)", "ASR OOD (%)", means=means)  # fmt: skip
    return ["pareto_all"]


# ---------------------------------------------------------------------------------------------- entry points


def compare_reports(
    report_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    labels: Sequence[str | None] | None = None,
    draw: bool = True,
) -> dict:
    """Aggregate the reports (see the module docstring); writes compare.json, compare.md and (unless `draw` is
    False, for quick scripted sweeps) the plots into `out_dir`."""
    if not report_paths:
        raise DataError("compare: expected at least one report")
    if labels is not None and len(labels) != len(report_paths):
        raise DataError(f"compare: {len(report_paths)} reports but {len(labels)} labels")
    out_dir = Path(out_dir)
    paths = [resolve_report(p) for p in report_paths]
    reports = [prepare_report(read_json(p)) for p in paths]
    given = list(labels) if labels is not None else [None] * len(paths)
    loaded = [(protocol_label(r, g), r) for r, g in zip(reports, given, strict=True)]
    groups = _collect(loaded)
    for lab, g in groups.items():  # a seed may be split over reports (rapidun in one, uniform in another)
        for method, seeds in repeated_seeds(g).items():
            get_logger("rapidun.eval").warning(
                f"compare: protocol {lab!r}: {method} has seeds {seeds} more than once (same run twice?); "
                "they are left out of its paired differences"
            )
    result = {
        "format_version": FORMAT_VERSION,
        "reports": [{"path": str(p), "label": lab, "seed": report_seed(r)} for p, (lab, r) in zip(paths, loaded, strict=True)],
        "groups": {
            lab: {"n_reports": g["n_reports"], "seeds": g["seeds"], "methods": _summarise(g), "collapsed": g["collapsed"],
                  "paired": _paired(g)}
            for lab, g in groups.items()
        },
    }  # fmt: skip
    result["metrics"] = _metric_order(result["groups"])
    plot_names = {lab: _group_plots(out_dir, lab, g) for lab, g in result["groups"].items()} if draw else {}
    cross = _all_pareto(out_dir, result["groups"]) if draw and len(result["groups"]) > 1 else []
    write_json(out_dir / "compare.json", result)
    write_text(out_dir / "compare.md", render_markdown(result, plot_names, cross))
    get_logger("rapidun.eval").info(f"comparison of {len(paths)} reports written to {out_dir / 'compare.md'}")
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rapidun compare", description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="output folder for compare.json, compare.md and the plots")
    p.add_argument("sources", nargs="+", help="report.json, eval folder or run folder, optionally LABEL=PATH")
    p.add_argument("--no-plots", action="store_true", help="write compare.json and compare.md only")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        parsed = [parse_source(s) for s in args.sources]
        compare_reports(
            [p for _, p in parsed], args.out, labels=[lab for lab, _ in parsed], draw=not args.no_plots
        )
        return 0
    except RapidUnError as e:
        get_logger("cli").error(f"error: {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
