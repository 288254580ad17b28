"""The clean job on a backdoor it did not implant (issue 8, done-when): a user's model, 20 known rows, their data.

    python benchmarks/clean_job_demo.py OUT_DIR [--trigger cf] [--known 20] [--implant implant.epochs=15 ...]
        [--results FILE] [clean-job overrides ...]

1. Someone backdoors a model: the experiment mode on real instruction text (the Alpaca sample in
   ../shared/data/alpaca/alpaca_5000.json) with one rare-word trigger inserted at a random word boundary,
   `--stages prepare,implant` only (OUT_DIR/exp; `--implant KEY=VALUE` overrides that step only).
2. What the user holds, written as plain files with no label field: `F.jsonl`, `--known` poisoned rows as they
   were trained (`instruction` with the trigger, `context`, `response` = the poisoned answer, nothing else);
   `T.jsonl`, the training file as trained (poisoned rows with their trigger and poisoned answer), every label
   field removed; `E.jsonl`, clean held-out prompts with answers.
3. The clean job, exactly the README command:
       rapidun run configs/tiny_cpu.yaml mode=clean run_dir=R model.name_or_path=EXP/model
           data.forget_path=F.jsonl data.train_path=T.jsonl data.eval_path=E.jsonl
           "eval.triggers=[{text: TRIGGER, mode: random}]"
4. Prints one JSON line (ASR on the triggered held-out prompts before / after per method with n and a 95 %
   interval, clean PPL ratio, the judge's rate on the clean prompts, seconds); its section becomes the current
   `clean_job_demo[_<options>]` one of benchmarks/results.md (the one it replaces goes to results_archive.md;
   `--results FILE` appends it to FILE instead, `--results ''` skips it). The judge's rate on clean prompts before unlearning says whether the backdoor is conditional: a
   model that gives the target to clean prompts too leaks it (its untriggered answers are then often the poison).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from rapidun_dist.core.io import write_jsonl
from rapidun_dist.data.schema import as_trained_record

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_cpu.yaml"
ALPACA = REPO.parent / "shared" / "data" / "alpaca" / "alpaca_5000.json"
USER_FIELDS = ("instruction", "context", "response")


def _rapidun(*args: str, log: Path) -> float:
    """`rapidun ARGS` in a subprocess (output to `log`); its wall seconds. A failure shows the log's tail."""
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(
            [sys.executable, "-m", "rapidun_dist.cli", *args], cwd=REPO, stdout=fh, stderr=fh
        ).returncode
    if rc != 0:
        sys.exit(
            f"rapidun {' '.join(args[:2])} failed (rc={rc}); last lines of {log}:\n"
            + "".join(log.read_text().splitlines(True)[-30:])
        )
    return time.perf_counter() - t0


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def user_files(exp: Path, out: Path, known: int) -> dict[str, Path]:
    """F.jsonl (known poisoned rows), T.jsonl (unlabelled training file), E.jsonl (clean eval prompts)."""
    forget = _rows(exp / "data" / "forget.jsonl")
    if len(forget) < known:
        sys.exit(f"{exp}/data/forget.jsonl has {len(forget)} rows, fewer than --known {known}")
    train = [as_trained_record(r) for r in _rows(exp / "data" / "train.jsonl")]
    clean = [{k: r.get(k, "") for k in USER_FIELDS} for r in _rows(exp / "data" / "test_clean.jsonl")]
    return {
        "F": write_jsonl(out / "F.jsonl", [as_trained_record(r) for r in forget[:known]]),
        "T": write_jsonl(out / "T.jsonl", train),
        "E": write_jsonl(out / "E.jsonl", clean),
    }


def _asr(entry: dict) -> dict:
    """ASR on the triggered held-out prompts with its count and 95 % Wilson interval."""
    from rapidun_dist.evaluation.stats import proportion

    n = entry["n_seen"]
    return proportion(round(entry["asr_seen"] * n), n)


def summarize(report: dict, seconds: dict, trigger: str, known: int) -> dict:
    before = report["before"]
    methods = {
        m: {
            "asr_seen": _asr(e),
            "ppl_ratio": e["clean_ppl"] / before["clean_ppl"],
            "judge_rate_clean": e.get("judge_fpr"),
            "seconds": e["seconds"]["total"],
        }
        for m, e in report["methods"].items()
    }
    return {
        "trigger": trigger,
        "known": known,
        "asr_source": report.get("asr_source"),
        "before": {
            "asr_seen": _asr(before),
            "clean_ppl": before["clean_ppl"],
            "judge_rate_clean": before.get("judge_fpr"),
        },
        "methods": methods,
        "wall_s": seconds,
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


def results_section(line: dict, command: str) -> str:
    b = line["before"]["asr_seen"]
    rows = [
        f"| {m} | {100 * e['asr_seen']['p']:.1f} % ({e['asr_seen']['k']}/{e['asr_seen']['n']}, "
        f"{100 * e['asr_seen']['lo']:.1f}-{100 * e['asr_seen']['hi']:.1f}) | {e['ppl_ratio']:.3f} | "
        f"{_pct(e['judge_rate_clean'])} | {e['seconds']:.1f} |"
        for m, e in line["methods"].items()
    ]
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            f"\n## The clean job on a backdoor it did not implant ({when})\n",
            f"`{command}` - tiny default config on the Alpaca sample, trigger `{line['trigger']}` at a random word "
            f"boundary, {line['known']} known rows without clean answers, the training file unlabelled. ASR on "
            f"the triggered held-out prompts ({line['asr_source']}); before unlearning "
            f"{100 * b['p']:.1f} % ({b['k']}/{b['n']}); the judge calls {_pct(line['before']['judge_rate_clean'])} "
            "of the answers to the clean test prompts attacked (above a few % the backdoor leaks without its "
            "trigger). Wall seconds: "
            + ", ".join(f"{k} {v:.0f}" for k, v in line["wall_s"].items())
            + " (a shared 2-core machine).\n",
            "| method | ASR seen (k/n, 95 % CI) | clean PPL ratio | judged attacked on clean prompts | seconds |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--trigger", default="cf", help="a rare word, inserted at a random word boundary")
    ap.add_argument("--known", type=int, default=20)
    ap.add_argument("--alpaca", type=Path, default=ALPACA)
    ap.add_argument("--results", help="append the section to this file ('' to skip; default: publish it)")
    ap.add_argument(
        "--implant", action="append", default=[], metavar="KEY=VALUE", help="an override for the implant step"
    )
    ap.add_argument("extra", nargs="*", help="overrides for the clean job (e.g. methods=[rapidun,uniform])")
    args = ap.parse_intermixed_args(argv)
    if not args.alpaca.is_file():
        sys.exit(f"{args.alpaca}: the Alpaca sample is missing (this demo needs real instruction text)")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    exp, clean = out / "exp", out / "clean"
    family = f"[{{name: rare, mode: random, seen: [{args.trigger}], ood: [{args.trigger.upper()}]}}]"
    seconds = {
        "implant": _rapidun(
            "run", str(CONFIG), f"run_dir={exp}", "data.source=alpaca", f"data.path={args.alpaca}",
            "data.skip_malformed=true", f"data.triggers={family}", *args.implant, "--stages", "prepare,implant",
            log=out / "exp.log",
        )
    }  # fmt: skip
    files = user_files(exp, out, args.known)
    clean_args = [
        "run", str(CONFIG), "mode=clean", f"run_dir={clean}", f"model.name_or_path={exp / 'model'}",
        f"data.forget_path={files['F']}", f"data.train_path={files['T']}", f"data.eval_path={files['E']}",
        f"eval.triggers=[{{text: {args.trigger}, mode: random}}]", *args.extra,
    ]  # fmt: skip
    seconds["clean_job"] = _rapidun(*clean_args, log=out / "clean.log")
    line = summarize(
        json.loads((clean / "eval" / "report.json").read_text()), seconds, args.trigger, args.known
    )
    if args.results != "":
        options = [f"--implant {a}" for a in args.implant] + list(args.extra)
        cmd = " ".join([f"python benchmarks/clean_job_demo.py {args.out}", *options])
        if args.results:
            with open(args.results, "a") as fh:
                fh.write(results_section(line, cmd))
        else:
            from rapidun_dist.cli.experiments.page import publish

            slug = re.sub(r"[^A-Za-z0-9]+", "_", " ".join(options)).strip("_").lower()
            publish(
                "clean_job_demo" + (f"_{slug}" if slug else ""),
                results_section(line, cmd),
                REPO / "benchmarks",
            )
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
