"""The embedded default over seeds: RapidUn and uniform weights against retraining, one seed at a time.

    python benchmarks/default_seeds.py OUT_DIR [--seeds 0 1 2] [--reuse 'runs/def_s{seed}'] [key=value ...]

Each seed runs `rapidun run configs/tiny_cpu.yaml run_dir=OUT_DIR/s{seed} seed={seed}
"methods=[rapidun,uniform,retrain]"` in a subprocess, one after the other (side by side they would share the cores
and skew the seconds). `--reuse PATTERN` forks an already implanted run dir per seed (`RunDir.fork` of its prepare,
implant and find_poison stages) and redoes only influence, weights, unlearn and evaluate (`--force`). Prints the table (ASR on the triggered test prompts, PPL ratio, steps and
stop reason, seconds as the speedup counts them and the influence / weights stages' wall seconds with their
one-time imports and plots, retrain seconds, both speedups) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from rapidun_dist.cli.experiments.runner import done_stages
from rapidun_dist.evaluation import markdown as md
from rapidun_dist.run.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
KEPT = ("prepare", "implant", "find_poison")  # what --reuse carries over; influence .. evaluate are redone


def run_seed(out: Path, seed: int, reuse: str | None, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "rapidun_dist.cli", "run", str(REPO / "configs" / "tiny_cpu.yaml"),
           f"run_dir={out}", f"seed={seed}", "methods=[rapidun,uniform,retrain]", *overrides]  # fmt: skip
    if reuse:
        src = RunDir(reuse.format(seed=seed))
        src.fork(out, done_stages(src, KEPT), replace=True)
        cmd += ["--stages", "influence,weights,unlearn,evaluate", "--force"]
    t0 = time.perf_counter()
    with (out.parent / f"{out.name}.log").open("w") as log:
        rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"seed {seed}: rapidun run failed (rc={rc}), see {out.parent / (out.name + '.log')}")
    return time.perf_counter() - t0


def _p(entry: dict, key: str) -> float:
    v = entry[key]
    return v["p"] if isinstance(v, dict) else v


def rows_of(run: Path, seed: int) -> list[dict]:
    report = json.loads((run / "eval" / "report.json").read_text())
    retrain, stage = report["retrain"]["seconds"]["total"], report["stage_seconds"]
    out = []
    for method in ("rapidun", "uniform"):
        e, uses = report["methods"][method], method == "rapidun"
        folder = run / "unlearn" if uses else run / "unlearn" / "baselines" / method
        summary = json.loads((folder / "summary.json").read_text())
        s = e["seconds"]
        wall = (stage["influence"] + stage["weights"] if uses else 0.0) + s["unlearn"]
        out.append({
            "seed": seed, "method": method, "asr_seen": _p(e, "asr_seen"), "asr_ood": _p(e, "asr_ood"),
            "n_seen": e.get("n_seen"), "ppl_ratio": e["ppl_ratio"], "steps": summary["steps"],
            "stop": (summary.get("stop") or {}).get("reason", "budget"), "seconds": s,
            "stage_wall": {k: stage[k] for k in ("influence", "weights")} if uses else None, "retrain_s": retrain,
            "speedup": report["speedup_vs_retrain"][method], "speedup_wall": retrain / wall,
        })  # fmt: skip
    return out


def _stage_cell(w: dict | None) -> str:
    return "-" if w is None else f"{w['influence']:.1f} + {w['weights']:.1f}"


HEADER = ["seed", "method", "ASR seen", "ASR OOD", "PPL ratio", "steps", "stop", "influence + weights + unlearn s (cost)",
          "stage wall s (influence + weights)", "retrain s", "speedup (cost)", "speedup (stage wall)"]  # fmt: skip


def _cost_cell(r: dict) -> str:
    s = r["seconds"]
    if r["stage_wall"]:
        return f"{s['influence']:.2f} + {s['weights']:.2f} + {s['unlearn']:.2f}"
    return f"{s['unlearn']:.2f} (unlearn)"


def table(rows: list[dict]) -> str:
    body = [
        [str(r["seed"]), r["method"], f"{100 * r['asr_seen']:.1f}%", f"{100 * r['asr_ood']:.1f}%",
         f"{r['ppl_ratio']:.3f}", str(r["steps"]), str(r["stop"]), _cost_cell(r), _stage_cell(r["stage_wall"]),
         f"{r['retrain_s']:.1f}", f"{r['speedup']:.1f}x", f"{r['speedup_wall']:.1f}x"]
        for r in rows
    ]  # fmt: skip
    return "\n".join(md.table(HEADER, body))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--reuse", help="implanted run dir per seed, e.g. 'runs/def_s{seed}' (influence.. redone)")
    args, overrides = p.parse_known_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, walls = [], {}
    for seed in args.seeds:
        run = args.out.resolve() / f"s{seed}"
        walls[seed] = run_seed(run, seed, args.reuse, overrides)
        rows += rows_of(run, seed)
    print(table(rows))
    print(json.dumps({"seeds": args.seeds, "wall_s": walls, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
