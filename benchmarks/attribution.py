"""Trigger finding (issue 13): does the attribute stage put a seen trigger of every family among its top 3 verified
candidates with insert ASR >= 0.8, without being told the triggers? Its section becomes the current "attribution"
one of benchmarks/results.md (the one it replaces goes to results_archive.md; `--results FILE` appends it to FILE).

    python benchmarks/attribution.py                                  # the three testbeds below
    python benchmarks/attribution.py --only tiny_cpu --force          # one testbed, attribute recomputed

Testbeds (each run dir is reused when prepare / implant are done for the same config):

    tiny_cpu        configs/tiny_cpu.yaml         synthetic, three families (suffix word, style prefix, semantic prefix)
    attr_rare_word  configs/attr_rare_word.yaml   Alpaca text, the rare word "cf" at a random word boundary
    attr_prefix     configs/attr_prefix.yaml      Alpaca text, the multi-word prefix "Answer like a pirate:"

Per family: the best-ranked verified candidate that is a seen variant (normalized text), its rank, insert / remove
ASR; and, before verification, the rank of the first seen variant under the attribution score and under the two
baselines (the direction split of the token-wise features, gradient x input saliency).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TESTBEDS = {
    "tiny_cpu": ("configs/tiny_cpu.yaml", "runs/tiny_cpu_default"),
    "attr_rare_word": ("configs/attr_rare_word.yaml", "runs/attr_rare_word"),
    "attr_prefix": ("configs/attr_prefix.yaml", "runs/attr_prefix"),
}
TOP, TARGET = 3, 0.8


def run_testbed(config: str, run_dir: str, force: bool) -> dict:
    from rapidun_dist.config import load_config
    from rapidun_dist.pipeline import run_pipeline, run_stage
    from rapidun_dist.run.rundir import RunDir

    cfg = load_config(
        config, [f"run_dir={run_dir}"]
    )  # relative to the repository root (main() changes to it)
    rd = run_pipeline(cfg, ["prepare", "implant"])
    run_stage(cfg, rd, "attribute", force=force)  # skipped when done for this config (unless forced)
    out = RunDir(cfg.run_dir).sub("attribution")
    return {
        "cfg": cfg,
        "ranked": json.loads((out / "triggers.json").read_text()),
        "summary": json.loads((out / "summary.json").read_text()),
        "seconds": RunDir(cfg.run_dir).stage_seconds("attribute"),
    }


def family_rows(res: dict) -> list[dict]:
    from rapidun_dist.attribution.ngrams import normalize
    from rapidun_dist.attribution.verify import seen_hit

    rows = []
    for fam in res["cfg"].data.triggers:
        keys = {normalize(v) for v in fam.seen}
        hit = seen_hit(res["ranked"], fam.seen, top=len(res["ranked"]), threshold=TARGET)
        pre = {
            k: next((i + 1 for i, c in enumerate(res["summary"][f"{k}_top"]) if c["key"] in keys), None)
            for k in ("attribution", "direction", "saliency")
        }
        rows.append({"family": fam.name, "mode": fam.mode, "seen": fam.seen, "hit": hit, "pre": pre})
    return rows


def _rank(r: int | None, n: int) -> str:
    return str(r) if r is not None else f"> {n}"


def section(results: dict[str, dict], argv: list[str]) -> str:
    import torch

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## Trigger finding: token attribution + verification (issue 13), {now}",
        "",
        f"`python benchmarks/{Path(__file__).name} {' '.join(argv)}`".replace("  ", " ").replace(" `", "`"),
        f"(per testbed `rapidun run CONFIG --stages prepare,implant,attribute`). torch {torch.__version__}, "
        f"{platform.machine()}, shared 2-core CPU machine (stage seconds are distorted by the shared load). Target: "
        f"for every family a seen variant among the top {TOP} verified candidates with insert ASR >= {TARGET}.",
        "",
    ]
    for name, res in results.items():
        s, fams = res["summary"], family_rows(res)
        k = s["settings"]["top_k"]
        met = all(f["hit"] is not None and f["hit"]["rank"] <= TOP for f in fams)
        lines += [
            f"### {name} (`{TESTBEDS[name][0]}`): {'target met' if met else 'TARGET MISSED'}",
            "",
            f"{s['n_forget']} forget rows, {s['n_candidates']} candidates, top {k} verified on "
            f"{s['settings']['n_verify']} prompts; base ASR: clean prompts {s['base']['clean_asr']:.2f}, forget "
            f"prompts {s['base']['forget_asr']:.2f}; attribute stage {res['seconds']:.0f} s.",
            "",
            "| family | mode | seen | best verified seen variant | rank | insert ASR | remove ASR | rank before "
            "verification: attribution / direction split / saliency |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for f in fams:
            h, p = f["hit"], f["pre"]
            pre = " / ".join(_rank(p[x], k) for x in ("attribution", "direction", "saliency"))
            seen = ", ".join(f"`{v}`" for v in f["seen"])
            if h is None:
                lines.append(f"| {f['family']} | {f['mode']} | {seen} | none | - | - | - | {pre} |")
            else:
                lines.append(
                    f"| {f['family']} | {f['mode']} | {seen} | `{h['text']}` ({h['mode']}) | {h['rank']} | "
                    f"{h['insert_asr']:.2f} | {h['remove_asr']:.2f} | {pre} |"
                )
        lines += [
            "",
            "Candidates, best first:",
            "",
            "| # | candidate | mode | score | rows | insert ASR | remove ASR |",
        ]
        lines += ["|---|---|---|---|---|---|---|"]
        for i, r in enumerate(res["ranked"], 1):
            text = r["text"].replace("|", "\\|")
            lines.append(
                f"| {i} | `{text}` | {r['mode']} | {r['score']:.4f} | {r['rows']} | {r['insert_asr']:.2f} | "
                f"{r['remove_asr']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--only", action="append", choices=list(TESTBEDS), help="testbed(s) to run (default: all)"
    )
    ap.add_argument("--force", action="store_true", help="recompute the attribute stage")
    ap.add_argument("--results", help="append the section to this file (default: publish it in results.md)")
    args = ap.parse_args(argv)
    os.chdir(ROOT)  # the configs' paths (run_dir, data.path) are relative to the repository root
    results = {n: run_testbed(*TESTBEDS[n], args.force) for n in (args.only or list(TESTBEDS))}
    text = section(results, argv)
    if args.results:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    else:
        from rapidun_dist.cli.experiments.page import publish

        publish("attribution", text, ROOT / "benchmarks")
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
