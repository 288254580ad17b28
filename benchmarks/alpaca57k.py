"""Helpers of `benchmarks/alpaca57k.sh` (the Alpaca-57k stress test through the real stages, issue 10):

python benchmarks/alpaca57k.py corpus OUT_DIR --config CFG [--real PATH] [key=value ...]
    prints the data overrides for the run: with the real Alpaca sample at PATH (default
    ../shared/data/alpaca/alpaca_5000.json, "" = none) writes OUT_DIR/corpus.jsonl (its rows plus generated ones,
    as many as the config's synthetic corpus would hold) and prints `data.source=json data.path=...`; without it
    prints nothing (the config's generated corpus).
python benchmarks/alpaca57k.py fork SRC DST
    a second run directory sharing SRC's prepare, implant and find_poison stages (`RunDir.fork`: files
    hard-linked, their manifest records carried): the expanded run reuses them instead of implanting again.
    Valid because find_poison.expand is not one of those stages' config keys (their fingerprints do not change).
python benchmarks/alpaca57k.py summarize OUT_DIR --wall-start T [--publish | --results FILE] [--command CMD]
    reads both runs (OUT_DIR/known, OUT_DIR/expanded) and the per-step timings the script recorded, writes the
    results section to OUT_DIR/results_section.md and prints the one JSON line the issue asks for; `--publish`
    makes the section the current "alpaca57k" one of benchmarks/results.md (the one it replaces goes to
    benchmarks/results_archive.md), `--results FILE` appends it to FILE instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REAL = REPO.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"
SHARED_STAGES = ("prepare", "implant", "find_poison")
TARGETS = {
    "recall": 0.95,
    "precision": 0.90,
    "asr_seen": 0.02,
    "asr_ood": 0.05,
    "ppl_ratio": 1.05,
    "speedup": 50.0,
    "epoch_share": 0.25,  # issue 22: find_poison at most a quarter of one fine-tuning epoch over the same rows
}


# ------------------------------------------------------------------------------------------- corpus


def _held_out(cfg) -> int:
    """Rows the splits take from the pool before the training set (every data.n_* split size)."""
    d = cfg.data
    return sum(
        getattr(d, k) for k in vars(d) if k.startswith("n_") and k not in ("n_synthetic", "n_retain_pool")
    )


def build_corpus(cfg, real: Path, out: Path) -> int:
    """Real Alpaca rows (prompt-deduplicated, non-empty) + generated rows up to data.n_synthetic in all."""
    from rapidun_dist.data.loaders import load_alpaca
    from rapidun_dist.data.schema import prompt_key
    from rapidun_dist.data.synthetic import generate_corpus

    total = cfg.data.n_synthetic
    seen, rows = set(), []
    for r in load_alpaca(real, skip_malformed=True):
        if len(rows) == total:
            break
        if r["instruction"].strip() and r["response"].strip() and prompt_key(r) not in seen:
            seen.add(prompt_key(r))
            rows.append(r)
    for r in generate_corpus(total + 1000, cfg.data.seed):
        if len(rows) == total:
            break
        if prompt_key(r) not in seen:
            seen.add(prompt_key(r))
            rows.append(r)
    if len(rows) < total:
        raise SystemExit(f"corpus: only {len(rows)} unique prompts, need {total}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return sum(r["source"] == "alpaca" for r in rows)


def cmd_corpus(args) -> int:
    from rapidun_dist.config import load_config

    cfg = load_config(args.config, args.overrides)
    real = Path(args.real) if args.real else None
    if real is None or not real.is_file():
        sys.stderr.write(
            f"corpus: no real Alpaca sample ({args.real or 'none given'}): the generated corpus\n"
        )
        return 0
    out = Path(args.out_dir) / "corpus.jsonl"
    n_real = build_corpus(cfg, real, out)
    sys.stderr.write(
        f"corpus: {out}: {n_real} real Alpaca rows + {cfg.data.n_synthetic - n_real} generated\n"
    )
    print(f"data.source=json data.path={out}")
    return 0


# ------------------------------------------------------------------------------------------- fork


def cmd_fork(args) -> int:
    """OUT/expanded from OUT/known: `RunDir.fork` of the shared stages, files hard-linked (the expanded run reruns
    none of them), their manifest records carried; an earlier fork at DST is replaced."""
    from rapidun_dist.core.errors import StageError
    from rapidun_dist.run.rundir import RunDir

    try:
        RunDir(args.src).fork(args.dst, SHARED_STAGES, link=True, replace=True)
    except StageError as e:
        raise SystemExit(f"fork: {e}") from None
    sys.stderr.write(f"fork: {args.dst} shares {', '.join(SHARED_STAGES)} with {args.src}\n")
    return 0


# ------------------------------------------------------------------------------------------- summary


def _read(path: Path):
    return json.loads(path.read_text())


def _timings(out: Path) -> list[dict]:
    path = out / "timings.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _method_row(report: dict, name: str) -> dict:
    e = report["methods"].get(name) or report.get(name) or {}
    s = e.get("seconds") or {}
    total = s.get("total") if "total" in s else s.get("unlearn")
    return {
        "asr_seen": e.get("asr_seen"),
        "asr_ood": e.get("asr_ood"),
        "ppl_ratio": e.get("ppl_ratio"),
        "seconds": total,
        "seconds_detail": s,
    }


def collect(out: Path, wall_start: float) -> dict:
    known, expanded = (
        _read(out / "known" / "eval" / "report.json"),
        _read(out / "expanded" / "eval" / "report.json"),
    )
    fp = _read(out / "known" / "suspects" / "summary.json")
    methods = {
        "before": _method_row(known, "before") | {k: known["before"].get(k) for k in ("asr_seen", "asr_ood")},
        "rapidun_known": _method_row(known, "rapidun"),
        "rapidun_expanded": _method_row(expanded, "rapidun"),
        "retrain_minus_flagged": _method_row(expanded, "retrain"),
    }
    methods["before"]["ppl_ratio"] = 1.0
    retrain_s = methods["retrain_minus_flagged"]["seconds"]
    speedup = {
        m: retrain_s / methods[m]["seconds"] for m in ("rapidun_known", "rapidun_expanded") if retrain_s
    }
    fp_s = fp.get("cost_seconds") or fp["seconds"]["total"]  # without the epoch timed beside it
    with_fp = retrain_s / (methods["rapidun_expanded"]["seconds"] + fp_s) if retrain_s else None
    implant = implant_epoch(out, fp_s, fp.get("world_size") or 1)
    line = {
        "rows": fp["counts"]["train"],
        "known": fp["counts"]["known"],
        "find_poison": {k: fp.get(k) for k in ("recall", "precision", "auroc", "ap")}
        | {"seconds": fp_s, "epoch_seconds": fp.get("epoch_seconds")},
        "methods": {m: {k: v[k] for k in ("asr_seen", "asr_ood", "ppl_ratio", "seconds")} for m, v in methods.items() if m != "before"},
        "speedup_vs_retrain": speedup,
        "peak_rss_mib_per_rank": fp["peak_rss_mib_per_rank"],
        "recv_bytes_per_rank": fp["recv_bytes_per_rank"],
        "wall_s": time.time() - wall_start,
    }  # fmt: skip
    return {
        "line": line,
        "fp": fp,
        "methods": methods,
        "known": known,
        "expanded": expanded,
        "with_fp": with_fp,
        "implant": implant,
    }


def implant_epoch(out: Path, fp_seconds: float, fp_ranks: int) -> dict | None:
    """The implant's own fine-tuning (the manifest's implant stage: `implant.epochs` epochs over the same rows, with
    optimizer steps, data loading and checkpoints) against find_poison, both in rank-seconds (seconds x ranks):
    {"epochs", "ranks", "seconds", "epoch_rank_seconds", "share"}; None without an implant record."""
    from rapidun_dist.config import load_config

    rec = _read(out / "known" / "manifest.json")["stages"].get("implant") or {}
    if not rec.get("seconds"):
        return None
    epochs = load_config(out / "known" / "config.yaml").implant.epochs
    per_epoch = rec["seconds"] * rec.get("world_size", 1) / epochs
    return {"epochs": epochs, "ranks": rec.get("world_size", 1), "seconds": rec["seconds"],
            "epoch_rank_seconds": per_epoch, "share": fp_seconds * fp_ranks / per_epoch}  # fmt: skip


def _stage_table(out: Path) -> list[str]:
    rows = []
    for t in _timings(out):
        rows.append(f"| {t['step']} | {t['ranks']} | {t['wall_s']:.1f} | {t.get('max_rss_mib') or '-'} |")
    for run in ("known", "expanded"):
        man = _read(out / run / "manifest.json")["stages"]
        for s, rec in man.items():
            if run == "expanded" and s in SHARED_STAGES:
                continue
            rows.append(
                f"| {run}: stage {s} (manifest) | {rec.get('world_size', 1)} | {rec.get('seconds', 0):.1f} | |"
            )
    head = ["| step | ranks | seconds | peak RSS of the largest process (MiB) |", "|---|---|---|---|"]
    return head + rows


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _f(v, d=3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


COST_PARTS = (  # find_poison's summary seconds, in the order they run (rank 0's clock)
    ("setup", "setup (process group, rows read)"),
    ("first_stage", "first stage"),
    ("features", "features (this rank's model load included)"),
    ("scores", "scores"),
    ("outputs", "outputs (baselines, thresholds, suspects.jsonl, packs)"),
)


def cost_line(fp: dict) -> list[str]:
    """Where find_poison's seconds went (rank 0's clock; the parts the summary records, the rest as other)."""
    s = fp.get("seconds") or {}
    total = fp.get("cost_seconds")
    if total is None or not any(k in s for k, _ in COST_PARTS):
        return []
    parts = [f"{label} {s[k]:.1f}" for k, label in COST_PARTS if k in s]
    if "tfidf" in s and "first_stage" in s:
        parts[[k for k, _ in COST_PARTS if k in s].index("first_stage")] += f" (TF-IDF {s['tfidf']:.1f})"
    other = total - sum(s[k] for k, _ in COST_PARTS if k in s)
    return [f"Where find_poison's {total:.1f} s went (seconds): {'; '.join(parts)}; other {other:.1f}."]


def _implant_line(imp: dict | None, fp: dict) -> list[str]:
    if not imp:
        return []
    return [
        f"The timed epoch is forward + backward only (no optimizer step, no data loading, no gradient exchange): a "
        f"lower bound. The implant's real fine-tuning over the same rows, in this run: {imp['epochs']:g} epoch(s) on "
        f"{imp['ranks']} rank(s) in {imp['seconds']:.1f} s, {imp['epoch_rank_seconds']:.1f} rank-seconds per epoch; "
        f"find_poison's {fp.get('world_size') or 1} x {_f(fp.get('cost_seconds'), 1)} rank-seconds are "
        f"{_f(imp['share'])} of it."
    ]


def render(res: dict, out: Path, command: str) -> str:
    line, fp, methods = res["line"], res["fp"], res["methods"]
    m = fp.get("metrics", {})
    c = fp["counts"]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    import torch

    from rapidun_dist.find_poison.suspects import describe_threshold

    lines = [
        f"## Alpaca-57k stress run through the real stages (CPU, 2 ranks), {now}",
        "",
        f"`{command}` on {platform.machine()} ({os.cpu_count()} cores, shared with other jobs: absolute seconds are "
        f"inflated, ratios measured side by side), torch {torch.__version__}, one thread per rank. Training set "
        f"{c['train']} rows ({fp.get('n_poisoned')} poisoned, prevalence {_pct(fp.get('prevalence'))}), {c['known']} "
        f"known; find_poison's reference: {c['reference']} clean rows (the retain pack, and those data.reference_rows "
        "adds).",
        "",
        "Per step (wall seconds of each command; the manifest's stage seconds below it):",
        "",
        *_stage_table(out),
        "",
        f"find_poison: features of {fp['features']['rows_computed']} rows at {_f(fp['features']['rows_per_s'], 1)} rows/s "
        f"over {fp['world_size']} ranks (units of {fp['features']['unit_size']} rows, claimed per rank: "
        f"{[r['units'] for r in fp['features']['per_rank']]}); peak RSS per rank {[round(x) for x in fp['peak_rss_mib_per_rank']]} MiB; "
        f"bytes received per rank {fp['recv_bytes_per_rank']} (scores: {fp['comm']['method']}).",
        "",
        "| scorer | flagged | recall | precision | FPR | AUROC | AUPRC (AP) | recall of unknown rows | recall at precision 0.9 | seconds | share of an epoch |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {name} | {x['n_flagged']} | {_pct(x['recall'])} | {_pct(x['precision'])} | {_pct(x['fpr'])} | "
            f"{_f(x['auroc'], 4)} | {_f(x['ap'], 4)} | {_pct(x['recall_unknown'])} | {_pct(x.get('recall_at_p90'))} | "
            f"{_f(_scorer_seconds(fp, name), 1)} | {_f(_share(_scorer_seconds(fp, name), fp.get('epoch_seconds')))} |"
            for name, x in m.items()
        ),
        "",
        f"One fine-tuning epoch of the same model over the same rows, timed in the find_poison stage: "
        f"{_f(fp.get('epoch_seconds'), 1)} s; find_poison's {_f(line['find_poison']['seconds'], 1)} s are "
        f"{_f(_share(line['find_poison']['seconds'], fp.get('epoch_seconds')))} of it (target <= {TARGETS['epoch_share']}).",
        *_implant_line(res.get("implant"), fp),
        *cost_line(fp),
        "",
        f"Threshold: {describe_threshold(fp['threshold'], c['expected_false_positives'])}; measured false "
        f"positives {m.get(fp.get('scorer', 'influence'), {}).get('fp')}.",
        "",
        *_family_table(fp),
        "| method | ASR seen | ASR OOD | PPL ratio | seconds (influence + weights + unlearn) | speedup vs retrain |",
        "|---|---|---|---|---|---|",
        *(
            f"| {name} | {_pct(v['asr_seen'])} | {_pct(v['asr_ood'])} | {_f(v['ppl_ratio'])} | {_f(v['seconds'], 1)} | "
            f"{_f(line['speedup_vs_retrain'].get(name), 1)}{'x' if name in line['speedup_vs_retrain'] else ''} |"
            for name, v in methods.items()
        ),
        "",
        f"rapidun_expanded including find_poison's {_f(line['find_poison']['seconds'], 1)} s: {_f(res['with_fp'], 1)}x cheaper "
        "than the retrain. Targets (issues 10 and 22): " + _verdict(line, methods),
        "",
        "```json",
        json.dumps(line),
        "```",
        "",
    ]
    return "\n".join(lines)


def _family_table(fp: dict) -> list[str]:
    per = fp.get("per_family") or {}
    if not per:
        return []
    names = list(per)
    keys = [k for k in per[names[0]] if ":" not in k]
    rows = [
        f"| {k} | {per[names[0]][k]['n']} | {per[names[0]][k]['known']} | "
        + " | ".join(f"{per[n][k]['found']} ({_pct(per[n][k]['recall'])})" for n in names)
        + " |"
        for k in keys
    ]
    unseen = _unseen_variant_rows(fp)
    return [
        "| family | poisoned | known | " + " | ".join(f"found by {n}" for n in names) + " |",
        "|---|---|---|" + "---|" * len(names),
        *rows,
        "",
        *unseen,
    ]


def _unseen_variant_rows(fp: dict) -> list[str]:
    """Rows whose trigger variant no known row carries: where grep cannot find anything."""
    per = fp.get("per_family") or {}
    if not per:
        return []
    names = list(per)
    variants = [k for k in per[names[0]] if ":" in k and per[names[0]][k]["known"] == 0]
    n = sum(per[names[0]][k]["n"] for k in variants)
    if not n:
        return ["Every trigger variant of the training set is carried by some known row.", ""]
    found = {s: sum(per[s][k]["found"] for k in variants) for s in names}
    return [
        f"Poisoned rows whose trigger variant no known row carries: {n} ({len(variants)} variants); found: "
        + ", ".join(f"{s} {found[s]} ({_pct(found[s] / n)})" for s in names)
        + ".",
        "",
    ]


def _scorer_seconds(fp: dict, name: str) -> float | None:
    return ((fp.get("scorers") or {}).get(name) or {}).get("seconds")


def _share(seconds: float | None, epoch: float | None) -> float | None:
    return seconds / epoch if seconds is not None and epoch else None


def _verdict(line: dict, methods: dict) -> str:
    fp, x = line["find_poison"], methods["rapidun_expanded"]
    checks = [
        (
            "find_poison share of an epoch",
            _share(fp.get("seconds"), fp.get("epoch_seconds")),
            "<=",
            TARGETS["epoch_share"],
        ),
        ("recall", fp["recall"], ">=", TARGETS["recall"]),
        ("precision", fp["precision"], ">=", TARGETS["precision"]),
        ("expanded ASR seen", x["asr_seen"], "<=", TARGETS["asr_seen"]),
        ("expanded ASR OOD", x["asr_ood"], "<=", TARGETS["asr_ood"]),
        ("expanded PPL ratio", x["ppl_ratio"], "<=", TARGETS["ppl_ratio"]),
        ("speedup (known)", line["speedup_vs_retrain"].get("rapidun_known"), ">=", TARGETS["speedup"]),
        ("speedup (expanded)", line["speedup_vs_retrain"].get("rapidun_expanded"), ">=", TARGETS["speedup"]),
    ]
    parts = [f"{name} {_f(v)} {op} {t}: {'met' if _met(v, op, t) else 'MISSED'}" for name, v, op, t in checks]
    return "; ".join(parts) + "."


def _met(value, op: str, target: float) -> bool:
    """A measured value against its target (">=" or "<="); a value not measured is not met."""
    return value is not None and (value >= target if op == ">=" else value <= target)


def cmd_summarize(args) -> int:
    out = Path(args.out_dir)
    res = collect(out, args.wall_start)
    text = render(res, out, args.command)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    if args.publish:
        from rapidun_dist.cli.experiments.page import publish

        publish("alpaca57k", text, REPO / "benchmarks")
    (out / "results_section.md").write_text(text)
    print(json.dumps(res["line"]))
    return 0


def seed_rows(outs: list[Path]) -> list[dict]:
    """One row per run directory (a seed of the whole run): find_poison's cost, recall and precision and the three
    routes' ASR (with their prompt counts) and PPL ratio, read from the runs' own outputs."""
    from rapidun_dist.config import load_config

    rows = []
    for out in outs:
        res = collect(out, time.time())
        fp, known, expanded = res["fp"], res["known"], res["expanded"]
        row = {"run": out.name, "seed": load_config(out / "known" / "config.yaml").data.seed,
               "fp_share": fp.get("epoch_fraction"), "fp_seconds": fp.get("cost_seconds"),
               "fp_implant_share": (res.get("implant") or {}).get("share"),
               "recall": fp.get("recall"), "precision": fp.get("precision"),
               "first_stage": (fp.get("two_stage") or {}).get("first")}  # fmt: skip
        for route, report, name in (("known", known, "rapidun"), ("expanded", expanded, "rapidun"),
                                    ("retrain", expanded, "retrain")):  # fmt: skip
            e = report["methods"].get(name) or report.get(name) or {}  # retrain sits beside the methods
            row[route] = {k: e.get(k) for k in ("asr_seen", "asr_ood", "ppl_ratio", "n_seen", "n_ood")}
        rows.append(row)
    return rows


def render_seeds(rows: list[dict], commands: list[str]) -> str:
    """The seeds section: one row per seed, the targets' verdict per seed, means with t intervals over seeds."""
    from rapidun_dist.evaluation.stats import mean_interval, proportion

    def asr(r: dict, k: str) -> str:
        n = r.get(f"n_{k.split('_')[1]}")
        if r.get(k) is None or not n:
            return "-"
        p = proportion(round(r[k] * n), n)
        return f"{100 * p['p']:.1f}% [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}]"

    lines = [
        "## Alpaca-57k over seeds",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in commands)}. Each seed is the whole run (its own corpus draw, "
        "implant, find_poison, unlearning and retraining). ASR: share of 300 triggered test prompts with the attack's "
        "answer, Wilson 95% interval; PPL ratio: clean test perplexity / the backdoored model's; find_poison's share "
        "of one fine-tuning epoch timed beside it in the same stage.",
        "",
        "| seed | find_poison share of an epoch | recall | precision | known rows: ASR seen | OOD | PPL | "
        "expanded: ASR seen | OOD | PPL | retrain: PPL |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        k, x, t = r["known"], r["expanded"], r["retrain"]
        lines.append(
            f"| {r['seed']} | {_f(r['fp_share'])} ({_f(r['fp_seconds'], 1)} s, first stage {r['first_stage']}; "
            f"{_f(r.get('fp_implant_share'))} of the implant's epoch in rank-seconds) | "
            f"{_f(r['recall'])} | {_f(r['precision'])} | {asr(k, 'asr_seen')} | {asr(k, 'asr_ood')} | "
            f"{_f(k['ppl_ratio'])} | {asr(x, 'asr_seen')} | {asr(x, 'asr_ood')} | {_f(x['ppl_ratio'])} | "
            f"{_f(t['ppl_ratio'])} |"
        )
    lines += ["", f"Means over the {len(rows)} seeds (t 95% interval):", ""]
    series = {
        "find_poison share of an epoch": [r["fp_share"] for r in rows],
        "find_poison share of the implant's epoch (rank-seconds)": [r.get("fp_implant_share") for r in rows],
        "precision": [r["precision"] for r in rows],
        "known rows: ASR seen": [r["known"]["asr_seen"] for r in rows],
        "known rows: PPL ratio": [r["known"]["ppl_ratio"] for r in rows],
        "expanded: ASR seen": [r["expanded"]["asr_seen"] for r in rows],
        "expanded: PPL ratio": [r["expanded"]["ppl_ratio"] for r in rows],
    }
    for name, values in series.items():
        if all(v is not None for v in values):
            m = mean_interval(values)
            lines.append(f"- {name}: {_f(m['mean'])} [{_f(m['lo'])}, {_f(m['hi'])}] (n = {m['n']})")
    met = []
    for r in rows:
        x, k = r["expanded"], r["known"]
        checks = {
            f"find_poison <= {TARGETS['epoch_share']} epoch": _met(
                r["fp_share"], "<=", TARGETS["epoch_share"]
            ),
            f"recall >= {TARGETS['recall']}": _met(r["recall"], ">=", TARGETS["recall"]),
            f"precision >= {TARGETS['precision']:.2f}": _met(r["precision"], ">=", TARGETS["precision"]),
            f"expanded seen <= {TARGETS['asr_seen']:.0%}": _met(x["asr_seen"], "<=", TARGETS["asr_seen"]),
            f"expanded OOD <= {TARGETS['asr_ood']:.0%}": _met(x["asr_ood"], "<=", TARGETS["asr_ood"]),
            f"expanded PPL <= {TARGETS['ppl_ratio']}": _met(x["ppl_ratio"], "<=", TARGETS["ppl_ratio"]),
            f"known PPL <= {TARGETS['ppl_ratio']}": _met(k["ppl_ratio"], "<=", TARGETS["ppl_ratio"]),
        }
        met.append(
            f"seed {r['seed']}: " + ", ".join(f"{n} {'met' if ok else 'MISSED'}" for n, ok in checks.items())
        )
    return "\n".join([*lines, "", "Targets per seed:", "", *(f"- {m}" for m in met), ""])


def cmd_seeds(args) -> int:
    outs = [Path(o) for o in args.out_dirs]
    rows = seed_rows(outs)
    commands = [
        *args.command,
        f"python benchmarks/alpaca57k.py seeds {' '.join(args.names or args.out_dirs)}",
    ]
    text = render_seeds(rows, commands)
    if args.publish:
        from rapidun_dist.cli.experiments.page import publish

        publish("alpaca57k_seeds", text, REPO / "benchmarks")
    print(json.dumps({"seeds": rows}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/alpaca57k.py", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus")
    c.add_argument("out_dir")
    c.add_argument("--config", required=True)
    c.add_argument("--real", default=str(DEFAULT_REAL))
    f = sub.add_parser("fork")
    f.add_argument("src")
    f.add_argument("dst")
    s = sub.add_parser("summarize")
    s.add_argument("out_dir")
    s.add_argument("--wall-start", type=float, required=True)
    where = s.add_mutually_exclusive_group()
    where.add_argument("--results", default=None, help="append the section to this file")
    where.add_argument("--publish", action="store_true", help="make it the current section of results.md")
    s.add_argument("--command", default="bash benchmarks/alpaca57k.sh OUT_DIR")
    m = sub.add_parser(
        "seeds", help="one table over several whole runs (seeds); --publish: section alpaca57k_seeds"
    )
    m.add_argument("out_dirs", nargs="+")
    m.add_argument("--publish", action="store_true")
    m.add_argument("--command", action="append", default=[], help="a command that made the runs (repeatable)")
    m.add_argument("--names", nargs="+", help="the run directories as the published command shows them")
    args, extra = p.parse_known_args(argv)
    if args.cmd == "corpus":
        args.overrides = extra  # key=value overrides of the config (the corpus size)
    elif extra:
        p.error(f"unrecognized arguments: {' '.join(extra)}")
    return {"corpus": cmd_corpus, "fork": cmd_fork, "summarize": cmd_summarize, "seeds": cmd_seeds}[args.cmd](
        args
    )


if __name__ == "__main__":
    sys.exit(main())
