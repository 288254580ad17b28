"""A spec's results: `collect` reads its finished run directories into one JSON, `section` writes its tables.

    results = collect(spec, out)                    # OUT/<cell>/s<seed>/eval/report.json, every run complete
    write_results(results, results_path(spec))      # benchmarks/results/<spec>.json
    section(results)                                # the Markdown section of the results page

Per cell, every metric `rapidun compare` reads from a report (`evaluation.compare.entry_metrics`: ASR, PPL ratio,
judge FPR, seconds, the behaviour extras, ...) for every row (before, each method), summarised over the seeds the
way `rapidun compare` does (`compare.summarise`: mean, sd, n and the 95% t interval, clipped to the metric's range)
with the value of each seed; and the paired differences by seed (`stats.paired_differences`) of every method against
the spec's reference method and of the spec's extra pairs. Nothing here computes a statistic of its own.

JSON (format_version 1):

    {"format_version": 1, "spec": NAME, "spec_path", "title", "description", "notes", "config", "seeds",
     "reference", "columns": {metric: title}, "paired": [metrics], "rates": [metrics that are proportions],
     "measured": {"first", "last"} (UTC dates of
     the runs' evaluate stages), "versions": {...} (of the newest run), "collect_command",
     "cells": {cell: {"label", "methods", "overrides", "command" (seed=S), "seeds", "n_runs",
                      "metrics": {row: {metric: {"mean", "lo", "hi", "sd", "n", ["clipped"], "by_seed": {seed: v}}}},
                      "paired": [{"a", "b", "metrics": {metric: {"mean", "lo", "hi", "sd", "n", "seeds",
                                                                  "values", "only_a", "only_b"}}}]}}}
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

from rapidun_dist.cli.experiments.runner import cell_config, missing_stages, run_dir_of
from rapidun_dist.cli.experiments.spec import Cell, Spec
from rapidun_dist.core.errors import DataError, StageError
from rapidun_dist.core.io import read_json, write_json
from rapidun_dist.evaluation import markdown as md
from rapidun_dist.evaluation.compare import POSITIVE, entry_metrics, rate_metrics, resolve_report, summarise
from rapidun_dist.evaluation.report import prepare_report, rows
from rapidun_dist.evaluation.stats import paired_differences
from rapidun_dist.run.rundir import RunDir

FORMAT_VERSION = 1


def results_path(spec: Spec) -> Path:
    """benchmarks/results/<spec>.json for a spec in benchmarks/specs/."""
    return spec.path.resolve().parent.parent / "results" / f"{spec.name}.json"


def collect(
    spec: Spec, out: str | Path, *, cell_dirs: Mapping[str, str | Path] | None = None, command: str = ""
) -> dict:
    """The results of every (cell, seed) of `spec`, read from OUT/<cell>/s<seed> (or CELL_DIR/s<seed> for the
    cells `cell_dirs` names). Every run must be complete and current for its cell's config (StageError listing
    those that are not): a table never mixes runs of another config."""
    cell_dirs = dict(cell_dirs or {})
    unknown = [c for c in cell_dirs if c not in {cell.name for cell in spec.cells}]
    if unknown:
        raise DataError(f"{spec.path}: --cell-dir names cells {unknown} the spec does not have")
    runs: dict[str, dict[int, Path]] = {}
    problems = []
    for cell in spec.cells:
        runs[cell.name] = {}
        for seed in spec.seeds:
            run_dir = (
                Path(cell_dirs[cell.name]) / f"s{seed}"
                if cell.name in cell_dirs
                else run_dir_of(out, cell, seed)
            )
            left = missing_stages(cell_config(spec, cell, seed, run_dir))
            if left:
                problems.append(f"{run_dir} (stages not done for this cell's config: {', '.join(left)})")
            runs[cell.name][seed] = run_dir
    if problems:
        raise StageError(
            f"{spec.path}: cannot collect, {len(problems)} run(s) incomplete:\n  " + "\n  ".join(problems)
        )
    ends = {rd: _evaluate_end(rd) for per in runs.values() for rd in per.values()}
    newest = max(ends, key=ends.get)
    cells = {cell.name: _cell_results(spec, cell, runs[cell.name]) for cell in spec.cells}
    return {
        "format_version": FORMAT_VERSION,
        "spec": spec.name,
        "spec_path": _posix_rel(spec.path),
        "title": spec.title,
        "description": spec.description,
        "notes": spec.notes,
        "config": spec.config,
        "seeds": list(spec.seeds),
        "reference": spec.reference,
        "columns": spec.columns,
        "paired": list(spec.paired),
        "rates": sorted({m for c in cells.values() for m in c.pop("rates")}),
        "measured": {"first": _date(min(ends.values())), "last": _date(max(ends.values()))},
        "versions": (RunDir(newest).record("evaluate") or {}).get("versions", {}),
        "collect_command": command,
        "cells": cells,
    }


def _evaluate_end(run_dir: Path) -> float:
    rec = RunDir(run_dir).record("evaluate") or {}
    return float(rec.get("end") or 0.0)


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _posix_rel(path: Path) -> str:
    """`path` relative to the current directory when inside it (a repository path), else its name."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(path).name


def _cell_results(spec: Spec, cell: Cell, runs: dict[int, Path]) -> dict:
    by_seed: dict[str, dict[str, dict[str, float]]] = {}  # row -> metric -> seed -> value
    rates: set[str] = set()
    for seed, run_dir in runs.items():
        report = prepare_report(read_json(resolve_report(run_dir)))
        for row, entry in rows(report):
            if row != "before" and row not in cell.methods:
                continue
            rates |= rate_metrics(entry)
            for metric, value in entry_metrics(row, entry, report).items():
                by_seed.setdefault(row, {}).setdefault(metric, {})[str(seed)] = value
    missing = [m for m in cell.methods if m not in by_seed]
    if missing:
        raise DataError(f"{spec.path}: cell {cell.name}: the reports have no rows for {missing}")
    metrics = {
        row: {
            metric: _summary(values, rate=metric in rates, positive=metric in POSITIVE)
            for metric, values in per.items()
        }
        for row, per in by_seed.items()
    }
    return {
        "label": cell.label,
        "methods": list(cell.methods),
        "overrides": list(cell.overrides),
        "command": spec.command(cell),
        "seeds": [str(s) for s in runs],
        "n_runs": len(runs),
        "rates": rates,
        "metrics": metrics,
        "paired": [
            {"a": a, "b": b, "metrics": {m: paired_differences(by_seed[a][m], by_seed[b][m]) for m in spec.paired
                                          if m in by_seed[a] and m in by_seed[b]}}
            for a, b in spec.pairs_of(cell)
        ],
    }  # fmt: skip


def _summary(values: dict[str, float], *, rate: bool, positive: bool) -> dict:
    s = summarise(list(values.values()), rate=rate, positive=positive)
    del s["values"]
    return s | {"by_seed": dict(values)}


def write_results(results: dict, path: str | Path) -> Path:
    write_json(path, results, indent=1)
    return Path(path)


def load_results(path: str | Path) -> dict:
    results = read_json(path)
    if results.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{path}: results format_version {results.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    return results


# ---------------------------------------------------------------------------------------------- Markdown


def _kind(metric: str, results: dict) -> str:
    """How a metric is printed: a proportion in percent, seconds, else a plain number."""
    return "pct" if metric in results["rates"] else "s" if metric.startswith("seconds.") else "float"


def fmt_difference(d: dict | None, kind: str) -> str:
    """ "+0.4 pp [-1.7, +2.6]" (rates, in percentage points) or "+0.007 [-0.000, +0.013]"; n = 1: "(n=1)"."""
    if not d or not d.get("n"):
        return md.MISSING
    f = (lambda v: f"{100 * v:+.1f}") if kind == "pct" else (lambda v: f"{v:+.3f}")
    unit = " pp" if kind == "pct" else ""
    if d["n"] < 2:
        return f"{f(d['mean'])}{unit} (n=1)"
    return f"{f(d['mean'])}{unit} [{f(d['lo'])}, {f(d['hi'])}]"


def main_table(results: dict) -> list[str]:
    cols = results["columns"]
    header = ["case", "method", *cols.values(), "runs"]
    body = []
    for cell in results["cells"].values():
        for row in ["before", *cell["methods"]]:
            per = cell["metrics"].get(row)
            if per is None:
                continue
            cells = [md.fmt_mean_interval(per.get(m), _kind(m, results)) for m in cols]
            n = max((s["n"] for s in per.values()), default=0)
            body.append([md.cell(cell["label"], 60), row, *cells, str(n)])
    return md.table(header, body)


def paired_table(results: dict) -> list[str]:
    cols = {m: results["columns"].get(m, m) for m in results["paired"]}
    header = ["case", "difference", *cols.values(), "pairs"]
    body = []
    for cell in results["cells"].values():
        for pair in cell["paired"]:
            per = pair["metrics"]
            n = max((d["n"] for d in per.values()), default=0)
            cells = [fmt_difference(per.get(m), _kind(m, results)) for m in cols]
            body.append([md.cell(cell["label"], 60), f"{pair['a']} - {pair['b']}", *cells, str(n)])
    return md.table(header, body) if body else []


def section(results: dict) -> str:
    """The results page's section for one spec: title, commands, tables, notes."""
    seeds = results["seeds"]
    span = (
        f"{seeds[0]}-{seeds[-1]}"
        if seeds == list(range(seeds[0], seeds[-1] + 1))
        else ", ".join(map(str, seeds))
    )
    measured = results["measured"]
    when = (
        measured["last"]
        if measured["first"] == measured["last"]
        else f"{measured['first']} to {measured['last']}"
    )
    versions = ", ".join(
        f"{k} {v}" for k, v in results["versions"].items() if k in ("torch", "transformers", "deepspeed")
    )
    lines = [f"## {results['title']}", ""]
    if results["description"]:
        lines += [results["description"], ""]
    lines += [f"Per case, seeds S = {span}, one run each (`python -m rapidun_dist.cli.experiments run "
              f"{results['spec_path']} --out OUT` runs them all):", ""]  # fmt: skip
    lines += [f"    {cell['command']}    # {cell['label']}" for cell in results["cells"].values()]
    collect = (
        results.get("collect_command")
        or f"python -m rapidun_dist.cli.experiments collect {results['spec_path']} --out OUT"
    )
    lines += [
        "",
        f"Collected by `{collect}`; runs measured {when}" + (f" ({versions})" if versions else "") + ".",
        "",
    ]
    lines += [
        "Mean over seeds [95% t interval, clipped to the metric's range]:",
        "",
        *main_table(results),
        "",
    ]
    paired = paired_table(results)
    if paired:
        lines += ["Paired by seed, a minus b: mean [95% t interval] over the seeds both have (rates in percentage "
                  "points):", "", *paired, ""]  # fmt: skip
    if results["notes"]:
        lines += [results["notes"], ""]
    return "\n".join(lines).rstrip() + "\n"
