"""A fair method comparison's rules (issue 11 section 2; driven by benchmarks/fair_compare.py): a learning rate per
method chosen on validation only, and one report per (setting, seed) merged from the runs of several rates.

The choice (`choose`): the lowest validation ASR (val_seen: triggered prompts from the training distribution) among
the rates whose validation clean-PPL ratio is <= the limit, ties to the lower PPL ratio; when no rate is within the
limit, the rate with the lowest PPL ratio. Each rate's point (`val_point`) is where its run ended (after any
damage-stop restore). Nothing here reads a test split.
"""

from __future__ import annotations

from pathlib import Path

from rapidun_dist.core.io import read_json
from rapidun_dist.run.layout import method_dir
from rapidun_dist.run.rundir import RunDir

MERGE_DROPS = ("methods", "curves", "collapsed", "speedup_vs_retrain")
"""Report keys not taken from the first run of a merge (recomputed or merged per method)."""


def val_point(summary: dict) -> dict:
    """Validation ASR and PPL ratio the run ended with (after a damage-stop restore), its steps and stop reason."""
    final = summary.get("final") or {}
    points = (summary.get("validation") or {}).get("points") or []
    last = points[-1] if points else {}
    asr = final.get("val_asr", last.get("asr"))
    ratio = final.get("val_ppl_ratio", last.get("ppl_ratio"))
    stop = summary.get("stop") or {}
    return {"val_asr": asr, "val_ppl_ratio": ratio, "steps": summary.get("steps"), "stop": stop.get("reason")}


def choose(points: dict[str, dict], max_ratio: float) -> str:
    """The rate (a key of `points`) the module docstring's rule picks."""
    ok = {
        lr: p
        for lr, p in points.items()
        if p["val_ppl_ratio"] is not None and p["val_ppl_ratio"] <= max_ratio
    }
    inf = float("inf")
    if ok:
        return min(ok, key=lambda lr: (ok[lr]["val_asr"] if ok[lr]["val_asr"] is not None else inf,
                                       ok[lr]["val_ppl_ratio"]))  # fmt: skip
    return min(
        points, key=lambda lr: points[lr]["val_ppl_ratio"] if points[lr]["val_ppl_ratio"] is not None else inf
    )


def method_summary(run: str | Path, method: str) -> dict:
    """The unlearn stage's summary.json of `method` in run directory `run`."""
    return read_json(method_dir(RunDir(run), method) / "summary.json")


def tuning_markdown(tuning: dict, max_val_ppl: float, tune_seed: int) -> str:
    """The tuning table: per relabel setting, method and rate its validation point, the chosen rate marked."""
    lines = [
        "# Learning rate per method, chosen on validation", "",
        f"Rule: lowest val_seen ASR among the rates with val_clean PPL ratio <= {max_val_ppl} (ties: lower "
        "ratio); none within the limit: the lowest ratio. Seed "
        f"{tune_seed}; validation rows: unlearn.val_rows of val_seen / val_clean.", "",
        "| relabel | method | lr | val ASR | val PPL ratio | steps | stop | chosen |", "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for setting, per in tuning.items():
        for method, t in per.items():
            for lr, p in t["points"].items():
                asr = "-" if p["val_asr"] is None else f"{100 * p['val_asr']:.1f}%"
                ratio = "-" if p["val_ppl_ratio"] is None else f"{p['val_ppl_ratio']:.3f}"
                mark = "**yes**" if lr == t["chosen"] else ""
                lines.append(
                    f"| {setting} | {method} | {lr} | {asr} | {ratio} | {p['steps']} | {p['stop']} | {mark} |"
                )
    return "\n".join(lines) + "\n"


def merge_reports(parts: list[tuple[Path, list[str], str]], dst: str | Path, label: str, seed: int) -> Path:
    """One report at DST/eval/report.json from the per-rate runs `parts` = [(run dir, its methods, its rate)]:
    every method's row from the run of its rate (with `tuned_lr`), everything else from the first run; protocol
    label = `label`, seed = `seed` (what `rapidun compare` groups and pairs by)."""
    from rapidun_dist.evaluation.report import write_report

    merged: dict | None = None
    for run, methods, lr in parts:
        rep = read_json(Path(run) / "eval" / "report.json")
        if merged is None:
            merged = {k: v for k, v in rep.items() if k not in MERGE_DROPS}
            merged["methods"], merged["curves"] = {}, {}
        for m in methods:
            merged["methods"][m] = rep["methods"][m] | {"tuned_lr": float(lr)}
            if m in (rep.get("curves") or {}):
                merged["curves"][m] = rep["curves"][m]
    merged["protocol"] = {"label": label, "seed": seed}
    merged["config"] = merged.get("config", {}) | {"methods": [m for _, ms, _ in parts for m in ms]}
    curves = merged.pop("curves")
    dst = Path(dst)
    write_report(dst / "eval", merged, curves=curves)
    return dst / "eval" / "report.json"
