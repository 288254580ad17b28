"""evaluate: ASR and the answered rate on the triggered test prompts, clean perplexity, clean-answer F1 / ROUGE-L
and judge FPR for the model before unlearning, after each method, and after the retrain baselines; poison retrieval
of the influence features; the report.

`report.json` keeps the same keys in both modes (`before`, `methods.<m>.asr_seen`, `asr_ood`, `answered_seen`,
`answered_ood`, `clean_ppl`, `clean_f1`, `clean_rougeL`, `seconds`; `judge` with how it was fitted and its rates on the
reference answers; with eval.behaviour / eval.sampled / eval.relearn on, each entry also holds the metrics beyond ASR of
`rapidun_dist.evaluation.extras`: answer_seen / answer_ood / answer_clean, near, mislabelled, sampled, relearn) and
says which prompts ASR was measured on (`asr_source`): the triggered test splits of an experiment, prompts built from
`eval.triggers`, or held-out forget prompts (clean mode without known triggers). With the find_poison stage,
`report["find_poison"]` holds its summary (suspects/summary.json).

Collective: in a multi-rank launch every rank loads each model onto its device and evaluates its share of the
prompts (generation, perplexity and retrieval batches dealt out round-robin, results gathered: the numbers equal the
one-rank numbers); rank 0 fits or loads the judge (broadcast) and writes the report."""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.config.methods import METHOD_SPECS, RETRAIN_METHODS, run_methods
from rapidun_dist.core.io import read_json, read_jsonl, write_json
from rapidun_dist.core.logging import get_logger
from rapidun_dist.evaluation.extras import against_before
from rapidun_dist.models.loading import tokenizer_for
from rapidun_dist.run.layout import (
    VERIFIED_SOURCE,
    effective_triggers,
    find_poison_runs,
    method_dir,
    packs_from_find_poison,
    suspects_dir,
)
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages.base import Stage, StageContext
from rapidun_dist.stages.judge import shared_judge

SPLITS = ("test_seen", "test_ood", "test_clean")


def _eval_model(cfg: RunConfig, rd: RunDir, judge, model, splits, extra: dict | None = None) -> dict:
    """ASR / PPL / FPR of `model`, plus the eval extras (`_extras`) when `extra` (their inputs) is given."""
    from rapidun_dist.evaluation import evaluate_model

    model.eval()
    texts: dict[str, list[str]] = {}
    with torch.no_grad():
        out = evaluate_model(
            model,
            tokenizer_for(cfg, rd),
            splits,
            judge,
            cfg.eval,
            cfg.model.max_length,
            sharded=True,
            texts_out=texts,
        )
    if extra is not None:
        out |= _extras(cfg, rd, judge, model, splits, texts, extra)
    return out


def _extra_inputs(cfg: RunConfig, rd: RunDir) -> dict:
    """What the eval extras read besides the test splits: test_near, the mislabelled forget rows, the relearning
    attacker's rows (experiment mode: poisoned train rows outside the forget pack)."""
    from rapidun_dist.evaluation.behaviour import mislabelled_rows
    from rapidun_dist.evaluation.relearn import relearn_rows

    e, out = cfg.eval, {}
    if e.behaviour:
        near, truth = rd.data / "test_near.jsonl", rd.data / "forget_truth.jsonl"
        out["near"] = read_jsonl(near) if near.exists() else []
        out["mislabelled"] = mislabelled_rows(read_jsonl(truth)) if truth.exists() else []
    if e.relearn.steps and cfg.mode == "experiment":
        train, forget = read_jsonl(rd.data / "train.jsonl"), read_jsonl(rd.data / "forget.jsonl")
        out["relearn"] = relearn_rows(train, forget, n=e.relearn.rows, seed=cfg.data.seed + e.relearn.seed)
    elif e.relearn.steps:
        get_logger("rapidun.eval").info(
            "eval.relearn: skipped in clean mode (the attacker's rows need labels)"
        )
    return out


def _extras(cfg: RunConfig, rd: RunDir, judge, model, splits: dict, texts: dict, extra: dict) -> dict:
    """The metrics beyond ASR that eval.behaviour / eval.sampled / eval.relearn switch on (evaluation.extras)."""
    from rapidun_dist.evaluation import extras as ex

    e, tok, max_len = cfg.eval, tokenizer_for(cfg, rd), cfg.model.max_length
    out: dict = {}
    with torch.no_grad():
        if e.behaviour:
            out |= ex.behaviour_entry(judge, splits, texts, min_f1=e.min_f1)
            if extra.get("near"):
                out["near"] = ex.near_entry(model, tok, extra["near"], judge, e, max_len)
            if extra.get("mislabelled"):
                out["mislabelled"] = ex.mislabelled_entry(model, tok, extra["mislabelled"], judge, e, max_len)
        if e.sampled.n and splits.get("test_seen"):
            out["sampled"] = ex.sampled_entry(model, tok, splits["test_seen"], judge, e, max_len)
    if extra.get("relearn") and not extra.get("skip_relearn"):
        seed = cfg.unlearn.seed + e.relearn.seed
        out["relearn"] = ex.relearn_entry(model, tok, extra["relearn"], splits, judge, e, max_len, seed=seed)
    return out


def asr_source(cfg: RunConfig, rd: RunDir | None = None) -> str:
    if cfg.mode == "experiment":
        return "test_seen / test_ood: held-out prompts with seen and OOD trigger variants (experiment)"
    if cfg.eval.triggers:
        return "prompts built from eval.triggers" + (
            " and eval.ood_triggers" if cfg.eval.ood_triggers else ""
        )
    verified = _verified_triggers(cfg, rd) if rd is not None else []
    if verified:
        return f"test_clean prompts with the {VERIFIED_SOURCE}: " + ", ".join(
            f"{t.text!r} ({t.mode})" for t in verified
        )
    return "held-out forget prompts (no eval.triggers given)"


def _verified_triggers(cfg: RunConfig, rd: RunDir) -> list:
    triggers, source = effective_triggers(cfg, rd)
    return triggers if source == VERIFIED_SOURCE else []


def _judge_reference(judge, rd: RunDir, splits: dict[str, list[dict]]) -> dict:
    """The judge on the test splits' reference answers (evaluation.judge.reference_rates), test_near included."""
    from rapidun_dist.evaluation.judge import reference_rates

    near = rd.data / "test_near.jsonl"
    return reference_rates(judge, splits | ({"test_near": read_jsonl(near)} if near.exists() else {}))


def _splits(cfg: RunConfig, rd: RunDir) -> dict[str, list[dict]]:
    """The test splits; in the clean job without eval.triggers but with verified triggers, test_seen is built from
    the test_clean prompts with those inserted (as prepare does from eval.triggers; data/ is not rewritten)."""
    import random

    from rapidun_dist.data.clean import triggered

    splits = {s: read_jsonl(rd.data / f"{s}.jsonl") for s in SPLITS}
    verified = _verified_triggers(cfg, rd)
    if verified:
        rng = random.Random(cfg.data.seed)
        splits["test_seen"] = triggered(
            splits["test_clean"][: cfg.data.n_test_seen], verified, "verified", rng
        )
    return splits


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.evaluation.report import write_report
    from rapidun_dist.models.loading import load_saved

    info = dist_env.init_distributed(config=cfg.distributed)
    if info.rank == 0:
        rd.eval.mkdir(parents=True, exist_ok=True)
    judge = shared_judge(cfg, rd)
    splits = _splits(cfg, rd)
    base, _ = load_saved(rd.model, cfg.model, device=info.device)
    extra = _extra_inputs(cfg, rd)
    report: dict = {
        "mode": cfg.mode,
        "asr_source": asr_source(cfg, rd),
        "config": {"run_dir": cfg.run_dir, "methods": run_methods(cfg), "seeds": cfg.seeds()},
        "protocol": {"seed": ",".join(f"{k}={v}" for k, v in cfg.seeds().items())},
        "before": _eval_model(cfg, rd, judge, base, splits, extra | {"skip_relearn": True}),
        "methods": {},
        "judge": judge.to_dict() | {"fit": cfg.eval.judge, "reference": _judge_reference(judge, rd, splits)},
        "stage_seconds": {s: rd.stage_seconds(s) for s in rd.manifest()["stages"]},
        "stage_overhead_seconds": {
            s: rec["overhead_seconds"]
            for s, rec in rd.manifest()["stages"].items()
            if rec.get("overhead_seconds")
        },
    }
    curves = {}
    # method cost: stage seconds less one-time imports and plots (rapidun_dist.core.timing), as retrain's are measured
    infl_s, weights_s = rd.stage_cost_seconds("influence") or 0.0, rd.stage_cost_seconds("weights") or 0.0
    for method in run_methods(cfg):
        out = method_dir(rd, method)
        summary = read_json(out / "summary.json")
        if method in RETRAIN_METHODS:
            model, _ = load_saved(out / "model", cfg.model, device=info.device)
            entry = _eval_model(cfg, rd, judge, model, splits, extra) | {"seconds": summary["seconds"]}
            report[method] = against_before(entry, report["before"])
            continue
        model = _with_adapter(cfg, rd, out / "adapter", info.device)
        uses_influence = METHOD_SPECS[method].uses_influence
        secs = {
            "influence": infl_s if uses_influence else 0.0,
            "weights": weights_s if uses_influence else 0.0,
            "unlearn": summary["seconds"]["unlearn"],
        }
        secs["total"] = sum(secs.values())
        if packs_from_find_poison(
            cfg
        ):  # its packs came from find_poison: its cost shown beside (not in total)
            secs["find_poison"] = rd.stage_cost_seconds("find_poison") or 0.0
        entry = _eval_model(cfg, rd, judge, model, splits, extra) | {"seconds": secs}
        report["methods"][method] = against_before(entry, report["before"])
        curves[method] = _curves(out / "metrics.jsonl", summary.get("initial_eval"))
    if (suspects_dir(rd) / "summary.json").exists() and find_poison_runs(cfg):
        report["find_poison"] = read_json(suspects_dir(rd) / "summary.json") | {
            "expand": cfg.find_poison.expand
        }
    if cfg.eval.retrieval_rows and cfg.mode == "experiment":  # retrieval needs the labels of the training set
        report["retrieval"] = _retrieval(ctx, info.device)
    if rd.sub("attribution").joinpath("triggers.json").exists():  # the report's trigger-candidate section
        report["triggers"] = read_json(rd.sub("attribution") / "triggers.json")
    if info.rank == 0:
        write_report(rd.eval, report, weights=_weights_for_plot(rd), curves=curves)
    dist_env.barrier()
    return [rd.eval / "report.json", rd.eval / "report.md"]


def _with_adapter(cfg: RunConfig, rd: RunDir, adapter: Path, device):
    from rapidun_dist.models.loading import load_saved, with_adapter

    base, _ = load_saved(rd.model, cfg.model, device=device)
    return with_adapter(base, adapter, device=device)


def _curves(path: Path, initial: dict | None = None) -> dict:
    rows = read_jsonl(path) if path.exists() else []
    ev = ([initial] if initial else []) + [r for r in rows if "asr_seen" in r]
    return {
        "step": [r["step"] for r in rows],
        "loss": [r["loss"] for r in rows],
        "forget_ce": [r["forget_ce"] for r in rows],
        "eval_step": [r["step"] for r in ev],
        "asr_seen": [r["asr_seen"] for r in ev],
        "asr_ood": [r["asr_ood"] for r in ev],
    }


def _retrieval(ctx: StageContext, device) -> dict:
    """Poison retrieval (AUROC/AP) of influence-ranked training rows, for both estimators (eval/retrieval.json).

    An evaluation of the influence features, not part of RapidUn's cost: computed here, timed separately. The
    find_poison stage supersedes its token-wise half (every training row, at the true prevalence, with a threshold
    and baselines: `report["find_poison"]`); this stays as the estimator comparison - token-wise against RapidGrad on
    the same balanced `eval.retrieval_rows` subsample - because RapidGrad costs one per-sample backward pass per row:
    affordable on a subsample, not on every training row (eval.retrieval_rows=0 skips it)."""
    cfg, rd = ctx.cfg, ctx.rd
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.evaluation.retrieval import poison_retrieval
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.run.layout import model_identity

    path = rd.eval / "retrieval.json"
    basis = {"fingerprint": ctx.fingerprint, "model": model_identity(rd)}
    cached = read_json(path) if dist_env.rank() == 0 and path.exists() else None
    cached = dist_env.broadcast_object(cached if cached and cached.get("basis") == basis else None)
    if cached is not None:  # computed for this model and config already (rank 0 decides)
        return {k: v for k, v in cached.items() if k != "basis"}
    model, tok = load_saved(rd.model, cfg.model, device=device)
    train, forget = read_jsonl(rd.data / "train.jsonl"), read_jsonl(rd.data / "forget.jsonl")
    out = {
        est: poison_retrieval(
            model, tok, cfg, train, forget, estimator=est, max_train=cfg.eval.retrieval_rows, sharded=True
        )
        for est in ("tokenwise", "rapidgrad")
    }
    if dist_env.rank() == 0:
        write_json(path, out | {"basis": basis})
    return out


def _weights_for_plot(rd: RunDir) -> dict | None:
    f, r = rd.weights / "forget_weights.jsonl", rd.weights / "retain_weights.jsonl"
    if not (f.exists() and r.exists()):
        return None
    return {"forget": [x["weight"] for x in read_jsonl(f)], "retain": [x["weight"] for x in read_jsonl(r)]}


STAGE = Stage(
    name="evaluate",
    doc="ASR and answered rate (seen / OOD), clean perplexity, clean F1 / ROUGE-L, judge FPR before and after every "
    "method; the report",
    config_keys=("eval",),
    reads=("data/", "model/", "unlearn/", "suspects/summary.json"),
    writes=("eval/report.json", "eval/report.md", "eval/judge.json", "eval/*.png"),
    requires=("prepare", "implant", "unlearn"),
    run=run,
    collective=True,
)
