"""Choose the SmolLM2 unlearning recipe on validation prompts (issue 20): the clean job's unlearning under a few
candidate settings, scored on the clean job's own validation split, never on a test prompt.

    python benchmarks/real_model_tune.py OUT [--attacks rare_word,prefix] [--seeds 0] [--points shipped,lr5e-4,...]

OUT is a `bash benchmarks/real_model.sh OUT` folder. For every attack and seed whose clean job is complete
(OUT/<attack>/s<seed>_clean), each candidate is a fork of that run directory (OUT/tune/<attack>/s<seed>/<point>:
`RunDir.fork` of prepare, find_poison and influence) whose weights and unlearn stages run RapidUn alone with the
candidate's overrides. Scored on val_seen (triggered validation prompts: ASR with the clean job's judge) and val_clean
(PPL ratio and token F1 of the greedy answers against the user's reference answers), before and after. The rule,
fixed before looking: the candidates whose mean val_seen ASR over the runs is lowest (within one prompt's share of the
smallest); among them the highest mean val_clean F1; then the lowest PPL ratio. Results go to OUT/tune/tune.json and a
Markdown table on stdout (the section `real_model_tune` of benchmarks/results.md unless --no-publish).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import real_model as rm  # the sibling script (benchmarks/ is on the path when this file runs as a script)

# candidate -> unlearn overrides (shipped = configs/smollm2_135m_dolly.yaml as is)
POINTS: dict[str, list[str]] = {
    "shipped": [],
    "lr5e-4": ["unlearn.lr=5e-4"],
    "retain7": ["unlearn.retain_per_forget=7"],  # 1 forget + 7 retain rows per batch of 8
    "lr5e-4_retain7": ["unlearn.lr=5e-4", "unlearn.retain_per_forget=7"],
    "lr2e-3": ["unlearn.lr=2e-3"],
    # the retain weights' temperature: 1.2 (shipped until 2026-12-08), milder, and flat (every retain row weighs 1:
    # shipped since, chosen by this script)
    "retain_tau1.2": ["weights.tau_r=1.2"],
    "retain_tau5": ["weights.tau_r=5.0"],
    "retain_flat": ["weights.tau_r=1e6"],
}
# weights is run in the fork: a candidate may change it (seconds)
CARRIED = ("prepare", "find_poison", "influence")


def fork_point(clean: Path, dst: Path, overrides: list[str]):
    """The candidate's run directory and config (the clean job's, RapidUn only, the overrides)."""
    from rapidun_dist.config import dump_config, load_config
    from rapidun_dist.core.io import write_text
    from rapidun_dist.run.rundir import RunDir

    if not (dst / "manifest.json").exists():
        RunDir(clean).fork(dst, CARRIED, link=True, replace=True)  # hard links: the fork writes only unlearn/
        (dst / "unlearn").mkdir(parents=True, exist_ok=True)
        # reused by the unlearn stage while the basis holds
        for name in ("self_relabel.jsonl", "self_relabel.basis.json"):
            if (clean / "unlearn" / name).exists():
                shutil.copyfile(clean / "unlearn" / name, dst / "unlearn" / name)
    cfg = load_config(clean / "config.yaml", [f"run_dir={dst}", "methods=[rapidun]", *overrides])
    write_text(dst / "config.yaml", dump_config(cfg))
    return cfg


def score(cfg, root: Path, adapter: Path | None) -> dict:
    """val_seen ASR, val_clean PPL and token F1 (mean, and per prompt: "f1_rows") of the implanted model (adapter
    None) or of an adapter."""
    import torch

    from rapidun_dist.core.io import read_jsonl
    from rapidun_dist.evaluation import evaluate_model
    from rapidun_dist.models.loading import load_saved, release_memory, tokenizer_for, with_adapter
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages.judge import load_or_fit_judge

    rd = RunDir(root)
    judge = load_or_fit_judge(cfg, rd)
    splits = {
        "test_seen": read_jsonl(rd.data / "val_seen.jsonl"),
        "test_clean": read_jsonl(rd.data / "val_clean.jsonl"),
    }
    base, _ = load_saved(rd.model, cfg.model)
    model = (base if adapter is None else with_adapter(base, adapter)).eval()
    texts: dict = {}
    with torch.no_grad():
        entry = evaluate_model(
            model, tokenizer_for(cfg, rd), splits, judge, cfg.eval, cfg.model.max_length, texts_out=texts
        )
    del model, base
    release_memory()
    return {
        "asr": entry["asr_seen"],
        "n_seen": entry["n_seen"],
        "ppl": entry["clean_ppl"],
        "f1": rm.clean_f1(entry),
        "f1_rows": rm.clean_f1_rows(texts.get("test_clean", []), splits["test_clean"]),
    }


def run_point(clean: Path, dst: Path, overrides: list[str]) -> dict:
    from rapidun_dist.core.io import file_sha256, read_json
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.layout import method_dir
    from rapidun_dist.run.rundir import RunDir

    cfg = fork_point(clean, dst, overrides)
    rd = RunDir(dst)
    t0 = time.perf_counter()
    run_stage(cfg, rd, "weights")
    run_stage(cfg, rd, "unlearn")
    seconds = time.perf_counter() - t0
    mdir = method_dir(rd, "rapidun")
    summary = read_json(mdir / "summary.json")
    cache = dst / "tune_val.json"  # valid while the unlearn summary is the same
    basis = file_sha256(mdir / "summary.json")
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("basis") == basis and "f1_rows" in cached.get("after", {}):
        after = cached["after"]
    else:
        after = score(cfg, dst, mdir / "adapter")
        cache.write_text(json.dumps({"basis": basis, "after": after}))
    stop, sec = summary.get("stop") or {}, summary.get("seconds") or {}
    return {
        "after": after, "steps": summary.get("steps"), "stop": stop.get("reason"),
        "seconds": (sec.get("unlearn") or 0.0) + (sec.get("validation") or 0.0),  # RapidUn's steps and validations
        "stage_seconds": seconds,  # this invocation (0 when the stage was already done)
    }  # fmt: skip


def choose(rows: list[dict]) -> str:
    """The rule of the module docstring over the candidates' means (one prompt of one run: the ASR tolerance)."""
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r["point"], []).append(r)

    def mean(point: str, key: str) -> float:
        vals = [r["after"][key] / (r["before"][key] if key == "ppl" else 1.0) for r in by[point]]
        return sum(vals) / len(vals)

    tol = max(1.0 / (r["after"]["n_seen"] * len(by[r["point"]])) for r in rows) + 1e-9
    best_asr = min(mean(p, "asr") for p in by)
    pool = [p for p in by if mean(p, "asr") <= best_asr + tol]
    best_f1 = max(mean(p, "f1") for p in pool)
    pool = [p for p in pool if mean(p, "f1") >= best_f1 - 0.005]
    return min(pool, key=lambda p: mean(p, "ppl"))


def table(rows: list[dict], chosen: str, command: str) -> str:
    lines = [
        f"## SmolLM2 unlearning recipe chosen on validation prompts (issue 20), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"`{command}`: the clean job's RapidUn unlearning under each candidate, on forks of its completed run "
        "(find_poison and influence shared), scored on its validation split only: val_seen ASR (n "
        "triggered prompts), val_clean PPL ratio and token F1 against the references (before -> after). Rule, fixed "
        "in advance: lowest mean val ASR, then highest mean val F1 (within 0.005), then lowest PPL ratio. "
        f"Chosen: **{chosen}**.",
        "",
        "| candidate | overrides | run | val ASR before -> after (n) | val PPL ratio | val F1 before -> after | val F1 minus shipped's (paired, 95% t) | steps, stop | unlearning + validation s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        b, a = r["before"], r["after"]
        lines.append(
            f"| {r['point']} | {' '.join(POINTS[r['point']]) or '-'} | {r['attack']} s{r['seed']} | "
            f"{100 * b['asr']:.1f}% -> {100 * a['asr']:.1f}% ({a['n_seen']}) | {a['ppl'] / b['ppl']:.3f} | "
            f"{b['f1']:.3f} -> {a['f1']:.3f} | {_vs_shipped(r, rows)} | {r['steps']}, {r['stop']} | "
            f"{r.get('seconds', r['stage_seconds']):.0f} |"
        )
    return "\n".join(lines) + "\n"


def _vs_shipped(row: dict, rows: list[dict]) -> str:
    """The candidate's val F1 minus the shipped recipe's on the same run, prompt by prompt: mean [95% t] (n)."""
    ship = next((r for r in rows if r["point"] == "shipped" and (r["attack"], r["seed"]) == (row["attack"], row["seed"])), None)  # fmt: skip
    if row["point"] == "shipped" or ship is None:
        return "-"
    iv = rm.f1_delta(
        {"clean_f1_rows": row["after"].get("f1_rows")}, {"clean_f1_rows": ship["after"].get("f1_rows")}
    )
    return "-" if iv is None else f"{iv['mean']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}] ({iv['n']})"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--attacks", default="rare_word,prefix", type=lambda s: s.split(","))
    p.add_argument("--seeds", default="0", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--points", default=",".join(POINTS), type=lambda s: s.split(","))
    p.add_argument("--no-publish", action="store_true")
    args = p.parse_args(argv)
    unknown = [x for x in args.points if x not in POINTS]
    if unknown:
        p.error(f"unknown candidates {unknown}; known: {', '.join(POINTS)}")
    command = "python benchmarks/real_model_tune.py OUT " + " ".join(
        sys.argv[2:] if argv is None else argv[1:]
    )
    rows = []
    for attack in args.attacks:
        for seed in args.seeds:
            clean = args.out / attack / f"s{seed}_clean"
            if not (clean / "unlearn" / "summary.json").exists():
                rm.say(f"{clean}: no complete clean job; skipped")
                continue
            from rapidun_dist.config import load_config

            before = score(load_config(clean / "config.yaml", []), clean, None)
            for point in args.points:
                dst = args.out / "tune" / attack / f"s{seed}" / point
                rm.say(f"tune {attack} s{seed} {point}")
                rows.append({"attack": attack, "seed": seed, "point": point, "before": before}
                            | run_point(clean, dst, POINTS[point]))  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    if not rows:
        raise SystemExit("no complete clean job under OUT")
    chosen = choose(rows)
    (args.out / "tune").mkdir(parents=True, exist_ok=True)
    (args.out / "tune" / "tune.json").write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=1))
    section = table(rows, chosen, command)
    print(section)
    if not args.no_publish:
        from rapidun_dist.cli.experiments.page import publish

        publish("real_model_tune", section, rm.REPO / "benchmarks")


if __name__ == "__main__":
    main()
