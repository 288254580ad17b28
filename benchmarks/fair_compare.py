"""A fair method comparison (issue 11 section 2): learning rate chosen per method on validation only, then every
method at its chosen rate over several seeds, relabel on and off, aggregated by `rapidun compare`.

    python benchmarks/fair_compare.py --config configs/tiny_cpu_hard.yaml --out runs/fair_hard \\
        --seeds 0,1,2 --lrs 7.5e-4,1.5e-3,3e-3 --base 0=runs/tiny_cpu_hard [key=value ...]
    python benchmarks/fair_compare.py ... --phase tune          # only the validation grid (prints the choice)
    python benchmarks/fair_compare.py ... --phase table         # reuse OUT/fair_compare.json's choices, run the table
    python benchmarks/fair_compare.py ... --phase table --seeds 1 --no-compare   # one seed (run seeds side by side)
    python benchmarks/fair_compare.py ... --phase compare       # rapidun compare over every merged table report

Any `key=value` after the options is a config override applied to every run (e.g. `weights.agg=mean
influence.k_in=64`: the weights ablation runs the same harness with its variant as an override).

Phases, all in this process, on the stage machinery (a run dir per piece; the readiness check keeps upstream
outputs whose fingerprint matches, so nothing upstream is recomputed):

1. base, per seed: prepare, implant, influence, weights in OUT/s<seed>/base (`seed=<seed>` shifts every component
   seed). `--base SEED=DIR` forks an existing run dir of the same config instead (`RunDir.fork`: its completed
   upstream stages copied; the fingerprints check it).
2. tune, on seed `--tune-seed` only: per method and learning rate, a fork of the base runs the unlearn stage alone
   (methods=[m], unlearn.lr=lr, no ASR curve on test prompts). From its summary: the validation ASR (val_seen,
   triggered prompts from the training distribution) and val_clean PPL ratio at the end of the run (after any
   damage-stop restore). Rule, documented in OUT/tuning.md: the lowest validation ASR among the rates whose
   validation PPL ratio is <= --max-val-ppl (default 1.05); ties to the lower PPL ratio; when no rate is within
   the limit, the rate with the lowest PPL ratio (`rapidun_dist.cli.experiments.fair`). Nothing here reads a test split.
3. table, per seed and relabel setting (on for every method; off for `--relabel-off`): methods that chose the same
   rate share one run dir (unlearn + evaluate with the eval config's extras); the per-rate reports are merged into
   one report per (setting, seed) at OUT/table/<setting>/s<seed>/eval/report.json (before from the first; protocol
   label = the setting, seed = the seed; each method's chosen lr in `tuned_lr`), then `rapidun compare` writes
   OUT/compare/compare.md, compare.json and the Pareto plots.

OUT/fair_compare.json records the command, the grid, the choices, the wall seconds per phase, and the reports.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rapidun_dist.cli.experiments.fair import (
    choose,
    merge_reports,
    method_summary,
    tuning_markdown,
    val_point,
)
from rapidun_dist.cli.experiments.runner import done_stages
from rapidun_dist.config import load_config
from rapidun_dist.config.methods import ENGINE_METHODS, METHOD_SPECS
from rapidun_dist.core.io import read_json, write_json, write_text
from rapidun_dist.core.logging import get_logger
from rapidun_dist.run.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
log = get_logger("fair")
ALL = ENGINE_METHODS  # the engine methods, one file each (the registry)
# the methods with an ascent term (registry), less the placebo control: the relabel-off sweep is about methods
ASCENT = tuple(m for m in ENGINE_METHODS if METHOD_SPECS[m].ascent and m != "rapidun_placebo")
UPSTREAM = ("prepare", "implant", "influence", "weights")
FORKED = ("prepare", "implant", "find_poison", "influence", "weights")  # what a base run dir may hold done


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def run_stages(config: str, overrides: list[str], stages: list[str]) -> Path:
    from rapidun_dist.pipeline import run_pipeline

    cfg = load_config(config, overrides)
    return run_pipeline(cfg, stages).root


def copy_base(base: Path, dst: Path, *, link: bool = False) -> Path:
    """A fresh run dir holding the base's completed upstream stages only (no unlearn/ or eval/): RunDir.fork.
    `link`: the files hard-linked, for the tune / table runs, which only run unlearn and evaluate on them."""
    src = RunDir(base)
    return src.fork(dst, done_stages(src, FORKED), link=link, replace=True).root


def base_dir(args, seed: int, given: dict[int, str]) -> Path:
    dst = Path(args.out) / f"s{seed}" / "base"
    if seed in given and not (dst / "manifest.json").exists():
        copy_base(Path(given[seed]), dst)
    run_stages(args.config, [*args.overrides, f"seed={seed}", f"run_dir={dst}"], list(UPSTREAM))
    return dst


def tune(args, base: Path, methods: list[str], lrs: list[str], relabel: bool) -> dict:
    setting = "on" if relabel else "off"
    out: dict = {}
    for method in methods:
        points = {}
        for lr in lrs:
            run = copy_base(
                base, Path(args.out) / "tune" / f"relabel_{setting}" / method / f"lr{lr}", link=True
            )
            over = ["unlearn.eval_every=0", *args.overrides, f"seed={args.tune_seed}", f"run_dir={run}",
                    f"methods=[{method}]", f"unlearn.lr={lr}", f"unlearn.relabel={str(relabel).lower()}"]  # fmt: skip
            run_stages(args.config, over, ["unlearn"])
            points[lr] = val_point(method_summary(run, method))
            log.info(f"tune relabel {setting} {method} lr {lr}: {points[lr]}")
        out[method] = {"points": points, "chosen": choose(points, args.max_val_ppl)}
    return out


def table(args, bases: dict[int, Path], chosen: dict[str, dict[str, str]]) -> list[tuple[str, Path]]:
    reports = []
    for setting, per in chosen.items():
        groups: dict[str, list[str]] = {}
        for method, lr in per.items():
            groups.setdefault(lr, []).append(method)
        for seed, base in bases.items():
            parts = []
            for lr, methods in groups.items():
                run = copy_base(
                    base, Path(args.out) / "table" / f"relabel_{setting}" / f"s{seed}" / f"lr{lr}", link=True
                )
                over = ["eval.retrieval_rows=0", "unlearn.eval_every=0", *args.overrides, f"seed={seed}",
                        f"run_dir={run}", f"methods=[{','.join(methods)}]",
                        f"unlearn.lr={lr}", f"unlearn.relabel={'true' if setting == 'on' else 'false'}"]  # fmt: skip
                run_stages(args.config, over, ["unlearn", "evaluate"])
                parts.append((run, methods, lr))
            dst = Path(args.out) / "table" / f"relabel_{setting}" / f"s{seed}" / "merged"
            reports.append((f"relabel_{setting}", merge_reports(parts, dst, f"relabel_{setting}", seed)))
    return reports


def merged_reports(out: Path) -> list[tuple[str, Path]]:
    """Every merged table report under OUT (seeds run by separate `--phase table --seeds N --no-compare`)."""
    found = sorted((out / "table").glob("relabel_*/s*/merged/eval/report.json"))
    return [(p.parents[3].name, p) for p in found]


def compare_all(out: Path, reports: list[tuple[str, Path]]) -> None:
    from rapidun_dist.evaluation.compare import compare_reports

    compare_reports([p for _, p in reports], out / "compare", labels=[lab for lab, _ in reports])


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny_cpu_hard.yaml"))
    ap.add_argument("--out", default="runs/fair_hard")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tune-seed", type=int, default=0)
    ap.add_argument("--methods", default=",".join(ALL))
    ap.add_argument(
        "--relabel-off", default=",".join(ASCENT), help="methods also run with unlearn.relabel=false"
    )
    ap.add_argument(
        "--tune-off", action="store_true", help="tune relabel-off separately (default: reuse on's lr)"
    )
    ap.add_argument("--lrs", default="7.5e-4,1.5e-3,3e-3")
    ap.add_argument("--max-val-ppl", type=float, default=1.05)
    ap.add_argument("--base", action="append", default=[], help="SEED=RUN_DIR: an implanted run dir to copy")
    ap.add_argument("--phase", choices=("all", "tune", "table", "compare"), default="all")
    ap.add_argument("--no-compare", action="store_true", help="table: skip rapidun compare (seeds run apart)")
    ap.add_argument("overrides", nargs="*")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out, t0, seconds = Path(args.out), time.perf_counter(), {}
    given = {int(k): v for k, v in (b.split("=", 1) for b in args.base)}
    seeds, methods, lrs = [int(s) for s in _csv(args.seeds)], _csv(args.methods), _csv(args.lrs)
    off = [m for m in _csv(args.relabel_off) if m in methods]
    record_path = out / "fair_compare.json"
    record = read_json(record_path) if record_path.exists() else {}
    record |= {"command": "python benchmarks/fair_compare.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "seeds": seeds, "methods": methods, "lrs": lrs, "relabel_off": off, "max_val_ppl": args.max_val_ppl}  # fmt: skip
    if args.phase in ("all", "tune"):
        base = base_dir(args, args.tune_seed, given)
        tuning = {"on": tune(args, base, methods, lrs, True)}
        if args.tune_off and off:
            tuning["off"] = tune(args, base, off, lrs, False)
        record["tuning"], seconds["tune"] = tuning, time.perf_counter() - t0
        write_text(out / "tuning.md", tuning_markdown(tuning, args.max_val_ppl, args.tune_seed))
        write_json(record_path, record)
    if args.phase in ("all", "table"):
        t1 = time.perf_counter()
        tuning = record["tuning"]
        chosen = {"on": {m: tuning["on"][m]["chosen"] for m in methods}}
        if off:
            chosen["off"] = {m: (tuning.get("off") or tuning["on"])[m]["chosen"] for m in off}
        bases = {s: base_dir(args, s, given) for s in seeds}
        reports = table(args, bases, chosen)
        if not args.no_compare:
            compare_all(out, reports)
        record["chosen"], record["reports"] = chosen, [str(p) for _, p in reports]
        seconds["table"] = time.perf_counter() - t1
    if args.phase == "compare":
        compare_all(out, merged_reports(out))
    record["wall_seconds"] = record.get("wall_seconds", {}) | seconds
    write_json(record_path, record)
    log.info(f"fair comparison written to {out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
