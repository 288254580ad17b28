"""find_poison's scorers side by side on one implanted run (issue 22): the table of the results page.

    python benchmarks/find_poison_methods.py BASE OUT [--methods tokenwise,repsim,...] [--ranks 2]
        [--title TEXT] [--publish KEY | --no-publish] [key=value ...]

BASE is a run directory whose prepare and implant stages are done (any mode, any model; e.g. `rapidun run CONFIG
run_dir=BASE --stages prepare,implant,find_poison`). Each method is a fork of it (`OUT/<method>`, the two stages
hard-linked, `python -m rapidun_dist.cli.experiments fork BASE OUT/M --stages prepare,implant --link`) that runs
find_poison alone with the method's overrides plus the `key=value` ones given here, on `--ranks` ranks of
launch/run.py (one thread each). When BASE's own find_poison is done with the default scorer, the `tokenwise`
row reads it instead of running it again. Every method gets the same known rows, the same reference rows (the
retain pack) and the same threshold rule (the config's `find_poison.threshold`); its seconds are the stage's
`cost_seconds`, and its share of an epoch divides them by one fine-tuning epoch of the same model over the same
rows timed inside the same stage (`find_poison.time_epoch`). TF-IDF and trigger grep come free with every run;
their rows are read from the first method's summary. `--thresholds` adds the rows the default (`tokenwise`) method's
same scores give under the other threshold rules (`z`, `fdr`, `known`: recomputed here from suspects.jsonl with the
stage's own `flag`, nothing run again; ranking metrics and seconds are the method's).

Writes OUT/find_poison_methods.json (every row) and OUT/results_section.md, prints one JSON line
`{"rows": {...}, "prevalence", "n_train", "n_poisoned", "n_known", "n_reference", "wall_s"}`; `--publish KEY`
makes the section the current section KEY of benchmarks/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

METHODS: dict[str, tuple[str, list[str]]] = {
    "tokenwise": ("tokenwise (default)", []),
    "repsim": ("repsim (middle layer)", ["find_poison.method=repsim"]),
    "gradsim": ("gradsim (lm_head)", ["find_poison.method=gradsim"]),
    "gradsim_last": (
        "gradsim (last_block)",
        ["find_poison.method=gradsim", "find_poison.grad_layer=last_block"],
    ),
    "graceful": ("graceful (no known row)", ["find_poison.method=graceful"]),
    "two_stage": (
        "tokenwise, two-stage (repsim first, candidates 0.1)",
        ["find_poison.two_stage=true", "find_poison.first_stage=repsim", "find_poison.candidates=0.1"],
    ),
    "two_stage_l8": (
        "tokenwise, two-stage (repsim at layer 8, candidates 0.1)",
        [
            "find_poison.two_stage=true",
            "find_poison.first_stage=repsim",
            "find_poison.candidates=0.1",
            "find_poison.layer=8",
        ],
    ),  # fmt: skip
    "two_stage_auto": (
        "tokenwise, two-stage (first stage auto: tfidf if it keeps every known row, else repsim; candidates 0.1)",
        ["find_poison.two_stage=true", "find_poison.first_stage=auto", "find_poison.candidates=0.1"],
    ),
}
BASELINES = ("tfidf", "grep")
DEFAULT_METHODS = ("tokenwise", "repsim", "gradsim", "graceful", "two_stage")


def _log(msg: str) -> None:
    print(f"[find_poison_methods {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def summary_path(run_dir: Path) -> Path:
    return run_dir / "suspects" / "summary.json"


def base_is_default(base: Path) -> bool:
    """BASE's own find_poison ran the default scorer (tokenwise, one stage)."""
    path = summary_path(base)
    if not path.is_file():
        return False
    s = json.loads(path.read_text(encoding="utf-8"))
    return s.get("method") == "tokenwise" and "two_stage" not in s


def run_method(base: Path, out: Path, name: str, extra: list[str], ranks: int) -> Path:
    """The run dir holding method `name`'s find_poison (forked and run unless already there)."""
    if name == "tokenwise" and not extra and base_is_default(base):
        return base
    dst = out / name
    if summary_path(dst).is_file():
        _log(f"{name}: done before, read from {dst}")
        return dst
    py = sys.executable
    subprocess.run(
        [py, "-m", "rapidun_dist.cli.experiments", "fork", str(base), str(dst), "--stages", "prepare,implant",
         "--link", "--replace"],
        check=True, cwd=REPO,
    )  # fmt: skip
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env |= {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": env.get("DS_ACCELERATOR", "cpu")}
    cmd = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
           str(REPO / "launch" / "run.py"), "--config", str(base / "config.yaml"), f"run_dir={dst}",
           "--stages", "find_poison", *METHODS[name][1], *extra]  # fmt: skip
    _log(f"{name}: find_poison on {ranks} ranks (log {dst / 'find_poison.log'})")
    t0 = time.time()
    with (dst / "find_poison.log").open("w", encoding="utf-8") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode
    if rc != 0 or not summary_path(dst).is_file():
        raise SystemExit(f"{name}: find_poison failed (rc {rc}); see {dst / 'find_poison.log'}")
    _log(f"{name}: {time.time() - t0:.0f} s")
    return dst


def row_of(summary: dict, m: dict, label: str, seconds: float | None) -> dict:
    """One table row: the detection metrics `m` (a summary's `metrics[scorer]`) and the run's cost."""
    epoch = summary.get("epoch_seconds")
    return {
        "label": label,
        "flagged": m["n_flagged"],
        "recall": m["recall"],
        "precision": m["precision"],
        "recall_unknown": m.get("recall_unknown"),
        "auroc": m["auroc"],
        "auprc": m["ap"],
        "recall_at_p90": m.get("recall_at_p90"),
        "seconds": seconds,
        "epoch_seconds": epoch,
        "epoch_share": seconds / epoch if seconds is not None and epoch else None,
        "first_stage_lost": (summary.get("two_stage") or {}).get("recall", {}).get("lost"),
    }


def rethreshold(run_dir: Path, summary: dict, rule: str) -> dict:
    """The metrics the run's scores give under threshold `rule` (the stage's `flag` on suspects.jsonl, the run's
    own known rows and reference rows)."""
    import dataclasses

    import torch

    from rapidun_dist.config import load_config
    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.stages.find_poison import experiment_metrics, flag

    fp = dataclasses.replace(load_config(run_dir / "config.yaml").find_poison, threshold=rule)
    train = read_jsonl(run_dir / "data" / "train.jsonl")
    by_id = {r["id"]: r for r in read_jsonl(run_dir / "suspects" / "suspects.jsonl")}
    scores = torch.tensor([by_id[r["id"]]["score"] for r in train], dtype=torch.float64)
    known = torch.tensor([by_id[r["id"]]["known"] for r in train], dtype=torch.bool)
    pos = {r["id"]: i for i, r in enumerate(train)}
    ref = [pos[r["id"]] for r in read_jsonl(run_dir / "data" / "retain.jsonl") if r["id"] in pos]
    result = flag(scores, torch.tensor(ref, dtype=torch.long), fp, summary["scorer"], known)
    return experiment_metrics(train, {"x": scores}, {"x": result}, known, "x")["metrics"]["x"]


def load_rule(run_dir: Path) -> str:
    from rapidun_dist.config import load_config

    return load_config(run_dir / "config.yaml").find_poison.threshold


def collect(
    base: Path, out: Path, methods: list[str], extra: list[str], ranks: int, rules: list[str] = ()
) -> tuple[dict, dict]:
    rows, first = {}, None
    for name in methods:
        run_dir = run_method(base, out, name, extra, ranks)
        summary = json.loads(summary_path(run_dir).read_text(encoding="utf-8"))
        first = first or summary
        label, cost = METHODS[name][0], summary.get("cost_seconds")
        rows[name] = row_of(summary, summary["metrics"][summary["scorer"]], label, cost)
        own = load_rule(run_dir)
        for rule in rules:
            if rule != own and name == "tokenwise":
                m = rethreshold(run_dir, summary, rule)
                rows[f"{name}@{rule}"] = row_of(summary, m, f"{label}, threshold {rule} (same scores)", cost)
    for name in BASELINES:
        if name in first["metrics"]:
            rows[name] = row_of(first, first["metrics"][name], name, first["seconds"].get(name))
    return rows, first


def _f(x, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def render(rows: dict, first: dict, command: str, title: str) -> str:
    c = first["counts"]
    lines = [
        f"## {title}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"{c['train']} training rows, {first['n_poisoned']} poisoned (prevalence {first['prevalence']:.3f}), "
        f"{c['known']} known, {c['reference']} reference rows (the retain pack); threshold "
        f"`{first['threshold']['rule']}` for every scorer; one seed. Seconds are find_poison's whole cost; the "
        "share divides them by one fine-tuning epoch of the same model over the same rows, timed inside the same "
        "stage (forward + backward on sampled batches). Machine: "
        f"{os.cpu_count()} CPU cores, shared.",
        "",
        f"    {command}",
        "",
        "| scorer | flagged | recall | precision | recall (unknown rows) | AUROC | AUPRC | recall at P0.9 | "
        "seconds | share of an epoch (epoch s) | poisoned rows lost by stage 1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.values():
        share = "-" if r["epoch_share"] is None else f"{r['epoch_share']:.2f} ({r['epoch_seconds']:.0f})"
        lost = "-" if r["first_stage_lost"] is None else str(r["first_stage_lost"])
        lines.append(
            f"| {r['label']} | {r['flagged']} | {_f(r['recall'])} | {_f(r['precision'])} | "
            f"{_f(r['recall_unknown'])} | {_f(r['auroc'])} | {_f(r['auprc'])} | {_f(r['recall_at_p90'])} | "
            f"{_f(r['seconds'], 1)} | {share} | {lost} |"
        )
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base", type=Path, help="a run dir whose prepare and implant stages are done")
    p.add_argument("out", type=Path, help="where the forks go")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"of {', '.join(METHODS)}")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--title", default="find_poison methods side by side")
    p.add_argument(
        "--thresholds",
        default="z,fdr,known",
        help="rules re-applied to the tokenwise row's scores ('' = none)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--publish", metavar="KEY", help="make the section the current section KEY of the page"
    )
    where.add_argument(
        "--no-publish", action="store_true", help="write OUT/results_section.md only (default)"
    )
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides for every method's find_poison")
    args = p.parse_intermixed_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    args.thresholds = [t for t in args.thresholds.split(",") if t]
    if set(args.thresholds) - {"z", "fdr", "known"}:
        p.error(f"--thresholds: expected some of z, fdr, known; found {args.thresholds}")
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown or not args.methods:
        p.error(f"--methods: unknown {unknown}; expected some of {', '.join(METHODS)}")
    if not (args.base / "config.yaml").is_file():
        p.error(f"{args.base}: not a run dir (no config.yaml)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    t0 = time.time()
    base, out = args.base.resolve(), args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    rows, first = collect(base, out, args.methods, args.overrides, args.ranks, args.thresholds)
    from rapidun_dist.cli.experiments.page import shown_command

    given = sys.argv[1:] if argv is None else argv
    places = {str(args.base): "BASE", str(base): "BASE", str(args.out): "OUT", str(out): "OUT"}
    text = render(
        rows, first, shown_command("python benchmarks/find_poison_methods.py", given, places), args.title
    )
    c = first["counts"]
    line = {
        "rows": rows, "prevalence": first["prevalence"], "n_train": c["train"], "n_poisoned": first["n_poisoned"],
        "n_known": c["known"], "n_reference": c["reference"], "wall_s": round(time.time() - t0, 1),
    }  # fmt: skip
    (out / "find_poison_methods.json").write_text(json.dumps(line, indent=1), encoding="utf-8")
    (out / "results_section.md").write_text(text, encoding="utf-8")
    if args.publish:
        from rapidun_dist.cli.experiments.page import publish

        publish(args.publish, text, REPO / "benchmarks")
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
