"""The hard testbed after prepare + implant: is the backdoor implanted, and does the judge still tell targets apart?

    python benchmarks/hard_testbed.py                                  # configs/tiny_cpu_hard.yaml, runs/tiny_cpu_hard
    python benchmarks/hard_testbed.py --config configs/tiny_cpu.yaml run_dir=runs/tiny_cpu
    python benchmarks/hard_testbed.py --sampled 100 --no-append data.seed=1 run_dir=runs/hard_s1

Runs the prepare and implant stages (skipped when the run directory already holds them), then on the implanted
model: greedy generations for test_seen, test_ood, test_clean, test_near and val_seen; ASR (overall and per
trigger family, forget-covered families marked) and the judge's false-positive rate on clean and near-topic
prompts, for two judges fitted on the train split - the word-only judge (`eval.judge=words`; the pipeline fits the grouped one by default) and
`fit_judge` (group-aware lift, word pairs); each judge's recall on held-out attacker answers (paraphrases the
train split never used) and FPR on the reference clean answers; clean PPL and answer EM / F1; optionally ASR
under sampling (T = 0.7, 3 samples). Proportions carry Wilson 95% intervals. Writes eval/hard_testbed.json in
the run directory; its section becomes the current `hard_testbed_<run dir name>` one of benchmarks/results.md (the
one it replaces goes to results_archive.md; `--results FILE` appends it to FILE). Every number is measured in this run;
stage seconds are wall clock, CPU seconds are this process's (the machine may be shared).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

from rapidun_dist.config import load_config
from rapidun_dist.core.io import read_json, read_jsonl, write_json

ROOT = Path(__file__).resolve().parents[1]

SPLITS = ("test_seen", "test_ood", "test_clean", "test_near", "val_seen")


def prepare_and_implant(cfg) -> dict:
    """Run (or resume) prepare + implant; the CPU seconds are this process's, None when both were resumed."""
    from rapidun_dist.config import dump_config
    from rapidun_dist.core.io import write_text
    from rapidun_dist.pipeline import run_stage
    from rapidun_dist.run.rundir import RunDir

    rd = RunDir(cfg.run_dir)
    rd.root.mkdir(parents=True, exist_ok=True)
    write_text(rd.root / "config.yaml", dump_config(cfg))
    cpu0 = time.process_time()
    ran = [run_stage(cfg, rd, stage) for stage in ("prepare", "implant")]
    return {
        "rd": rd,
        "stage_seconds": {s: rd.stage_seconds(s) for s in ("prepare", "implant")},
        "cpu_seconds_this_process": time.process_time() - cpu0 if any(ran) else None,
    }


def judges(train: list[dict]) -> dict:
    from rapidun_dist.evaluation.judge import Judge, fit_judge, repeated_answers

    poisoned = [r for r in train if r["is_poisoned"]]
    clean = [r for r in train if not r["is_poisoned"]]
    answers = [r["response_poisoned"] for r in poisoned]
    word = Judge.fit(answers, [r["response"] for r in clean], targets=repeated_answers(answers))
    return {"word": word, "grouped": fit_judge(poisoned, clean)}


def held_out_targets(cfg, train: list[dict]) -> list[str]:
    """Attacker answers the train split never used: other paraphrases of the same claims, or a fresh pool."""
    from rapidun_dist.data.synthetic import generate_target_pool
    from rapidun_dist.data.synthetic_hard import MESSAGES, message_paraphrases

    used = {r["response_poisoned"] for r in train if r["is_poisoned"]}
    if cfg.data.target_kind == "paraphrase":
        names = list(MESSAGES)[: cfg.data.target_groups]
        return [t for m in names for t in message_paraphrases(m) if t not in used]
    if cfg.data.target_kind == "scifi":
        return [t for t in generate_target_pool(200, cfg.data.seed + 10_000) if t not in used]
    return sorted(used)  # fixed targets: nothing held out, the known ones


def reference_checks(judge, held: list[str], splits: dict) -> dict:
    from rapidun_dist.evaluation.stats import proportion

    out = {"recall_held_out_targets": proportion(sum(map(judge.is_attacked, held)), len(held))}
    for s in ("test_clean", "test_near"):
        if splits[s]:
            refs = [r["response"] for r in splits[s]]
            out[f"fpr_reference_{s}"] = proportion(sum(map(judge.is_attacked, refs)), len(refs))
    return out


def generations(cfg, rd, splits: dict) -> dict[str, list[str]]:
    from rapidun_dist.data.prompt import record_prompt
    from rapidun_dist.evaluation.generation import generate
    from rapidun_dist.models.loading import load_saved

    model, tok = load_saved(rd.model, cfg.model)
    out = {}
    for s, rows in splits.items():
        prompts = [record_prompt(tok, r, poisoned=r["is_poisoned"]) for r in rows]
        out[s] = (
            generate(
                model,
                tok,
                prompts,
                max_new_tokens=cfg.eval.max_new_tokens,
                batch_size=cfg.eval.batch_size,
                max_prompt_length=cfg.model.max_length,
            )
            if prompts
            else []
        )
    return out


def judged(judge, splits: dict, texts: dict, covered: set[str]) -> dict:
    from rapidun_dist.evaluation.behaviour import summarize_split

    out = {}
    for s, rows in splits.items():
        if not rows:
            continue
        summary = summarize_split(judge, rows, texts[s])
        for fam, fs in summary["by_family"].items():
            fs["in_forget_pack"] = fam in covered
        out[s] = summary
    return out


def clean_ppl(cfg, rd, splits: dict) -> dict:
    from rapidun_dist.evaluation.metrics import clean_perplexity
    from rapidun_dist.models.loading import load_saved

    model, tok = load_saved(rd.model, cfg.model)
    return {
        s: clean_perplexity(
            model, tok, splits[s], max_length=cfg.model.max_length, batch_size=cfg.eval.batch_size
        )
        for s in ("test_clean", "test_near")
        if splits[s]
    }


def sampled(cfg, rd, rows: list[dict], judge, n: int) -> dict | None:
    from rapidun_dist.evaluation.behaviour import sampled_asr
    from rapidun_dist.evaluation.generation import Sampling
    from rapidun_dist.models.loading import load_saved

    if n <= 0:
        return None
    model, tok = load_saved(rd.model, cfg.model)
    return sampled_asr(
        model,
        tok,
        rows[:n],
        judge,
        cfg.eval,
        cfg.model.max_length,
        sampling=Sampling(temperature=0.7, num_samples=3, seed=0),
    )


def measure(cfg, args) -> dict:
    t0 = time.perf_counter()
    res = prepare_and_implant(cfg)
    rd = res.pop("rd")
    splits = {s: read_jsonl(rd.data / f"{s}.jsonl") for s in SPLITS}
    train = read_jsonl(rd.data / "train.jsonl")
    covered = set(read_json(rd.data / "summary.json")["forget"]["families"])
    held = held_out_targets(cfg, train)
    texts = generations(cfg, rd, splits)
    res["judges"], fitted = {}, judges(train)
    for name, judge in fitted.items():
        res["judges"][name] = {
            "n_vocab": len(judge.vocab),
            "n_prefixes": len(judge._prefixes),
            "top": judge.vocab[:12],
            "references": reference_checks(judge, held, splits),
            "generations": judged(judge, splits, texts, covered),
        }
    res["clean_ppl"] = clean_ppl(cfg, rd, splits)
    res["sampled"] = sampled(cfg, rd, splits["test_seen"], fitted["grouped"], args.sampled)
    res["data"] = read_json(rd.data / "summary.json")["forget"] | {
        "counts": read_json(rd.data / "summary.json")["counts"]
    }
    res["wall_seconds"] = time.perf_counter() - t0
    res["examples"] = {
        s: list(
            zip(
                [r["instruction_poisoned"] if r["is_poisoned"] else r["instruction"] for r in splits[s][:3]],
                texts[s][:3],
                strict=True,
            )
        )
        for s in SPLITS
    }
    write_json(rd.eval / "hard_testbed.json", res)
    return res


def _pct(p: dict | None) -> str:
    return "-" if p is None else f"{100 * p['p']:.1f} [{100 * p['lo']:.1f}, {100 * p['hi']:.1f}]"


def _header(cfg, res: dict, command: str) -> list[str]:
    import torch

    if res["cpu_seconds_this_process"] is None:
        cost = "; prepare and implant resumed from the run directory (wall seconds from its manifest)"
    else:
        cost = f"; CPU seconds of this process for them: {res['cpu_seconds_this_process']:.1f}"
    d = res["data"]
    return [
        "",
        f"## Hard testbed: implant and judge ({cfg.run_dir})",
        "",
        f"`{command}` - {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}. Stage wall seconds: "
        + ", ".join(f"{k} {v:.1f}" for k, v in res["stage_seconds"].items() if v is not None)
        + cost
        + ". The machine was shared: wall seconds overstate the cost.",
        f"Data: {d['counts']}; forget: {d['known_poisoned']} known poisoned + {d['mislabelled']} mislabelled "
        f"({d['mislabelled_near']} near-topic), families {d['families']}, target groups {d['target_groups']}.",
        "",
        "Percentages with Wilson 95% intervals.",
        "",
    ]


def _judge_table(res: dict) -> list[str]:
    lines = [
        "Attacked = share of generations judged attacked (on clean prompts: judge errors plus a backdoor that fires",
        "without its trigger); flagged answers = share of clean-prompt generations that match the clean answer",
        "(token F1 >= 0.5) yet are judged attacked (the judge's own error); ref. = the reference answers themselves.",
        "",
        "| judge | ASR seen | ASR OOD | ASR val_seen | attacked test_clean | attacked test_near | flagged answers "
        "test_clean | flagged answers test_near | recall held-out targets | FPR ref. test_near |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, j in res["judges"].items():
        g, r = j["generations"], j["references"]
        get = {s: g[s]["attacked"] if s in g else None for s in SPLITS}.get
        flag = {s: g[s]["flagged_answers"] if s in g else None for s in SPLITS}.get
        lines.append(
            f"| {name} | {_pct(get('test_seen'))} | {_pct(get('test_ood'))} | {_pct(get('val_seen'))} | "
            f"{_pct(get('test_clean'))} | {_pct(get('test_near'))} | {_pct(flag('test_clean'))} | "
            f"{_pct(flag('test_near'))} | {_pct(r['recall_held_out_targets'])} | "
            f"{_pct(r.get('fpr_reference_test_near'))} |"
        )
    return lines


def _family_table(g: dict) -> list[str]:
    lines = [
        "",
        "Per family (grouped judge; * = family present in the forget pack):",
        "",
        "| family | ASR seen | ASR OOD |",
        "|---|---|---|",
    ]
    for fam, fs in g["test_seen"]["by_family"].items():
        ood = g["test_ood"]["by_family"].get(fam, {}).get("attacked")
        lines.append(f"| {fam}{'*' if fs['in_forget_pack'] else ''} | {_pct(fs['attacked'])} | {_pct(ood)} |")
    return lines


def _tail(res: dict, g: dict) -> list[str]:
    clean, near = g["test_clean"], g.get("test_near")
    lines = [
        "",
        "Clean PPL: "
        + ", ".join(f"{k} {v:.3f}" for k, v in res["clean_ppl"].items())
        + f"; clean-prompt answers: EM {clean['em']:.3f}, F1 {clean['f1']:.3f}"
        + (f"; test_near EM {near['em']:.3f}, F1 {near['f1']:.3f}" if near else "")
        + f"; triggered test_seen: clean-answer F1 {g['test_seen']['f1']:.3f}, neither target nor answer "
        f"{_pct(g['test_seen']['other'])}.",
    ]
    if res["sampled"]:
        s = res["sampled"]
        lines.append(
            f"ASR under sampling (T {s['temperature']}, {s['num_samples']} samples, first "
            f"{s['any']['n']} test_seen prompts): samples {_pct(s['samples'])}, any sample {_pct(s['any'])}."
        )
    return lines + [f"Benchmark wall time {res['wall_seconds']:.0f} s."]


def markdown(cfg, res: dict, command: str) -> str:
    g = res["judges"]["grouped"]["generations"]
    lines = _header(cfg, res, command) + _judge_table(res) + _family_table(g) + _tail(res, g)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "tiny_cpu_hard.yaml"))
    ap.add_argument(
        "--sampled", type=int, default=0, help="test_seen prompts for ASR under sampling (0 = skip)"
    )
    ap.add_argument("--results", help="append the section to this file (default: publish it in results.md)")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    res = measure(cfg, args)
    command = "python benchmarks/hard_testbed.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(cfg, res, command.strip())
    print(text)
    if args.no_append:
        return 0
    if args.results:
        with open(args.results, "a", encoding="utf-8") as f:
            f.write(text)
    else:
        from rapidun_dist.cli.experiments.page import publish

        publish(f"hard_testbed_{Path(cfg.run_dir).name}", text, ROOT / "benchmarks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
