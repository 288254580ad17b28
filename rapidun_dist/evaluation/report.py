"""The evaluation report: report.json (machine), report.md (a person) and SVG plots, in `run/eval/`.

report.json holds at least

    {"before":  {"asr_seen", "asr_ood", "clean_ppl"},
     "methods": {"<method>": {"asr_seen", "asr_ood", "clean_ppl",
                              "seconds": {"influence", "weights", "unlearn", "total"}}},
     "retrain": {... same as a method ...},            (optional; also "retrain_oracle")
     "speedup_vs_retrain": {"<method>": retrain_total / method_total}}

and may add "judge_fpr" per entry, "asr_by_family", "judge" (fitted judge summary) and "retrieval"
({"auroc", "ap"}, or {name: {"auroc", "ap"}}). Speedups are always recomputed from the measured
seconds in the report. A missing number is shown as "-" in the Markdown.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

from rapidun_dist.evaluation import plots
from rapidun_dist.io import write_json, write_text
from rapidun_dist.logging import get_logger

STAGES = ("influence", "weights", "unlearn")
BASELINE_ROWS = ("retrain", "retrain_oracle")
COLUMNS = (
    "method",
    "ASR seen",
    "ASR OOD",
    "clean PPL",
    "PPL ratio vs before",
    "influence s",
    "weights s",
    "unlearn s",
    "total s",
    "speedup vs retrain",
)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def total_seconds(entry: dict | None) -> float | None:
    """seconds.total when measured, else the sum of the measured stage seconds (None when there are none)."""
    seconds = (entry or {}).get("seconds") or {}
    if _num(seconds.get("total")) is not None:
        return _num(seconds["total"])
    parts = [_num(seconds.get(s)) for s in STAGES]
    parts = [p for p in parts if p is not None]
    return sum(parts) if parts else None


def _retrain_entry(report: dict) -> dict | None:
    return report.get("retrain") or (report.get("methods") or {}).get("retrain")


def compute_speedups(report: dict) -> dict:
    """Fill report["speedup_vs_retrain"][method] = retrain seconds / method total seconds (in place; returned)."""
    retrain_s = total_seconds(_retrain_entry(report))
    speedups = {}
    for name, entry in (report.get("methods") or {}).items():
        method_s = total_seconds(entry)
        if name not in BASELINE_ROWS and retrain_s is not None and method_s is not None and method_s > 0:
            speedups[name] = retrain_s / method_s
    report["speedup_vs_retrain"] = speedups
    return report


def _rows(report: dict) -> list[tuple[str, dict]]:
    """(label, entry) for the before row, each method, then the retrain baselines present."""
    rows = [("before", report["before"])] if report.get("before") else []
    methods = report.get("methods") or {}
    rows += [(name, entry) for name, entry in methods.items() if name not in BASELINE_ROWS]
    rows += [
        (name, report.get(name) or methods.get(name))
        for name in BASELINE_ROWS
        if report.get(name) or methods.get(name)
    ]
    return rows


def _fmt(v, kind: str = "float") -> str:
    v = _num(v)
    if v is None:
        return "-"
    return {"pct": f"{100 * v:.1f}%", "s": f"{v:.1f}", "x": f"{v:.2f}x", "ratio": f"{v:.3f}"}.get(
        kind, f"{v:.3f}"
    )


def _table_row(label: str, entry: dict, report: dict) -> str:
    before_ppl = _num((report.get("before") or {}).get("clean_ppl"))
    ppl = _num(entry.get("clean_ppl"))
    ratio = ppl / before_ppl if ppl is not None and before_ppl else None
    seconds = entry.get("seconds") or {}
    total = total_seconds(entry) if label != "before" else None
    cells = [
        label,
        _fmt(entry.get("asr_seen"), "pct"),
        _fmt(entry.get("asr_ood"), "pct"),
        _fmt(ppl),
        _fmt(ratio, "ratio"),
        *(_fmt(seconds.get(s), "s") for s in STAGES),
        _fmt(total, "s"),
        _fmt((report.get("speedup_vs_retrain") or {}).get(label), "x"),
    ]
    return "| " + " | ".join(cells) + " |"


def _main_table(report: dict) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return lines + [_table_row(label, entry, report) for label, entry in _rows(report)]


def _judge_section(report: dict) -> list[str]:
    fprs = [(label, _num(entry.get("judge_fpr"))) for label, entry in _rows(report)]
    fprs = [(label, v) for label, v in fprs if v is not None]
    if _num(report.get("judge_fpr")) is not None:
        fprs.insert(0, ("overall", _num(report["judge_fpr"])))
    lines = ["## Judge", ""]
    judge = report.get("judge") or {}
    if judge.get("vocab"):
        lines.append(
            f"Target vocabulary ({len(judge['vocab'])} words, z >= {judge.get('z', '-')}, "
            f"min words {judge.get('min_words', '-')}): {', '.join(judge['vocab'][:20])}"
        )
        lines.append("")
    text = ", ".join(f"{label} {_fmt(v, 'pct')}" for label, v in fprs) or "-"
    return lines + [f"False-positive rate on clean test prompts: {text}", ""]


def _family_section(report: dict) -> list[str]:
    rows = [(label, entry.get("asr_by_family") or {}) for label, entry in _rows(report)]
    rows = [(label, fam) for label, fam in rows if fam]
    families = sorted({f for _, fam in rows for split in fam.values() for f in split})
    if not families:
        return []
    cols = [f"{f} {split}" for f in families for split in ("seen", "ood")]
    lines = [
        "## ASR by trigger family",
        "",
        "| method | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for label, fam in rows:
        cells = [_fmt((fam.get(split) or {}).get(f), "pct") for f in families for split in ("seen", "ood")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def _retrieval_section(report: dict) -> list[str]:
    retrieval = report.get("retrieval")
    if not retrieval:
        return []
    named = {"influence": retrieval} if "auroc" in retrieval else retrieval
    lines = [
        "## Poison retrieval (influence-ranked training samples)",
        "",
        "| scores | AUROC | AP |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {_fmt(m.get('auroc'), 'ratio')} | {_fmt(m.get('ap'), 'ratio')} |"
        for name, m in named.items()
    ]
    return lines + [""]


SCATTER_MAX_RATIO = 3.0  # methods that wreck clean PPL beyond this are named in the title, not plotted


def _plots(eval_dir: Path, report: dict, weights: dict | None, curves: dict | None) -> list[str]:
    """Write the SVG plots; returns the Markdown lines that show them."""
    rows = _rows(report)
    before_ppl = _num((report.get("before") or {}).get("clean_ppl"))
    ratio = [
        (_num(e.get("clean_ppl")) / before_ppl) if before_ppl and _num(e.get("clean_ppl")) else None
        for _, e in rows
    ]
    plots.bar_chart(
        eval_dir / "asr_ppl_by_method.svg",
        "ASR and clean PPL ratio by method",
        [lab for lab, _ in rows],
        {
            "ASR seen": [_num(e.get("asr_seen")) for _, e in rows],
            "ASR OOD": [_num(e.get("asr_ood")) for _, e in rows],
            "PPL / PPL before": ratio,
        },
        "ASR (fraction) / PPL ratio",
    )
    on_scale = {
        lab: (r, _num(e.get("asr_ood")))
        for (lab, e), r in zip(rows, ratio, strict=True)
        if r is not None and r <= SCATTER_MAX_RATIO
    }
    off_scale = [
        f"{lab} {r:.3g}x"
        for (lab, _), r in zip(rows, ratio, strict=True)
        if r is not None and r > SCATTER_MAX_RATIO
    ]
    plots.scatter(
        eval_dir / "asr_vs_ppl.svg",
        "OOD attack success vs clean perplexity"
        + (f" (off scale: {', '.join(off_scale)})" if off_scale else ""),
        on_scale,
        "clean PPL / PPL before (lower is better)",
        "ASR on OOD triggers (lower is better)",
    )
    names = ["asr_ppl_by_method", "asr_vs_ppl"]
    if weights:
        plots.histogram(
            eval_dir / "weights_hist.svg", "Per-sample unlearning weights", weights, xlabel="weight"
        )
        names.append("weights_hist")
    if curves:
        _curve_plots(eval_dir, curves)
        names += ["loss_curves", "asr_seen_vs_steps", "asr_ood_vs_steps"]
    return ["## Plots", ""] + [line for n in names for line in (f"![{n}]({n}.svg)", "")]


def _curve_plots(eval_dir: Path, curves: dict) -> None:
    plots.line_chart(
        eval_dir / "loss_curves.svg",
        "Unlearning loss",
        {m: (c.get("step", []), c.get("loss", [])) for m, c in curves.items()},
        "step",
        "loss",
    )
    for key, label in (("asr_seen", "seen"), ("asr_ood", "OOD")):
        series = {m: (c.get("eval_step", []), c.get(key, [])) for m, c in curves.items()}
        plots.line_chart(
            eval_dir / f"{key}_vs_steps.svg",
            f"ASR ({label} triggers) during unlearning",
            series,
            "step",
            "ASR",
        )


def _json_safe(obj):
    """NaN/inf become null, so report.json stays valid JSON."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def render_markdown(report: dict, plot_lines: list[str] | None = None) -> str:
    lines = [
        "# RapidUn evaluation report",
        "",
        "## Results",
        "",
        *_main_table(report),
        "",
        "ASR = fraction of triggered test prompts judged attacked; PPL ratio = clean PPL / clean PPL before "
        "unlearning; speedup = retrain seconds / (influence + weights + unlearn) seconds, all measured.",
        "",
    ]
    lines += (
        _judge_section(report) + _family_section(report) + _retrieval_section(report) + (plot_lines or [])
    )
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    eval_dir: str | os.PathLike, report: dict, *, weights: dict | None = None, curves: dict | None = None
) -> dict:
    """Write report.json, report.md and the plots into `eval_dir`; returns the report with speedups filled."""
    eval_dir = Path(eval_dir)
    report = compute_speedups(_json_safe(copy.deepcopy(report)))
    plot_lines = _plots(eval_dir, report, weights, curves)
    write_json(eval_dir / "report.json", report)
    write_text(eval_dir / "report.md", render_markdown(report, plot_lines))
    get_logger("rapidun.eval").info(f"report written to {eval_dir / 'report.md'}")
    return report
