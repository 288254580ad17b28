"""The stages, called in-process in order: prepare, implant, influence, weights, unlearn, evaluate.

Each stage reads and writes the run directory (rundir.py) and is skipped when the manifest says its
outputs are complete and consistent with the config (unless forced).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from rapidun_dist.config import RunConfig, dump_config
from rapidun_dist.errors import StageError
from rapidun_dist.io import read_json, read_jsonl, write_json, write_text
from rapidun_dist.logging import get_logger
from rapidun_dist.rundir import STAGES, RunDir

log = get_logger("pipeline")


# --------------------------------------------------------------------------------------------------
# prepare / implant


def stage_prepare(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.data.prepare import prepare_data

    prepare_data(cfg.data, rd.data)
    return sorted(p for p in rd.data.glob("*.json*"))


def base_model_and_tokenizer(cfg: RunConfig, rd: RunDir):
    """The model before fine-tuning: a tiny Llama + a BPE trained on the corpus, or a pretrained one."""
    from rapidun_dist.models.loading import build_tiny_model, load_pretrained, load_tokenizer, train_tokenizer

    if cfg.model.name_or_path is None:
        train = read_jsonl(rd.data / "train.jsonl")
        texts = [
            f"{r['instruction']} {r.get('context', '')} {r['response']} {r.get('response_poisoned', '')}"
            for r in train
        ]
        texts += ["### Instruction:\n### Response:\n"] * 50
        tok = train_tokenizer(texts, cfg.model.tiny.vocab_size)
        model = build_tiny_model(
            cfg.model.tiny,
            vocab_size=len(tok),
            max_length=cfg.model.max_length,
            tokenizer=tok,
            seed=cfg.implant.seed,
        )
        return model, tok
    return load_pretrained(cfg.model), load_tokenizer(cfg.model)


def stage_implant(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.models.loading import save_model
    from rapidun_dist.train import finetune

    model, tok = base_model_and_tokenizer(cfg, rd)
    stats = finetune(
        model,
        tok,
        read_jsonl(rd.data / "train.jsonl"),
        cfg.implant,
        max_length=cfg.model.max_length,
        desc="implant",
    )
    save_model(model, tok, rd.model)
    write_json(
        rd.model / "train_stats.json",
        {k: v for k, v in stats.items() if k != "losses"} | {"losses": stats["losses"]},
    )
    return sorted(rd.model.glob("*.safetensors")) + [rd.model / "config.json"]


# --------------------------------------------------------------------------------------------------
# influence / weights


def stage_influence(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.influence.stage import run_influence

    return run_influence(cfg, rd)


def stage_weights(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.influence.stage import run_weights

    return run_weights(cfg, rd)


# --------------------------------------------------------------------------------------------------
# unlearn


def method_dir(rd: RunDir, method: str) -> Path:
    """`rapidun` writes to unlearn/ itself (adapter/, metrics.jsonl); baselines to unlearn/baselines/<m>/."""
    return rd.unlearn if method == "rapidun" else rd.unlearn / "baselines" / method


def stage_unlearn(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.unlearn.engine import warm_up

    warm_up()  # one-time process set-up, kept out of the first method's measured seconds
    outputs = []
    for method in cfg.methods:
        out = method_dir(rd, method)
        summary = out / "summary.json"
        if summary.exists() and read_json(summary).get("fingerprint") == rd.fingerprint(
            "unlearn", cfg.to_dict()
        ):
            log.info(f"unlearn[{method}]: done already, skipping")
        elif method in ("retrain", "retrain_oracle"):
            from rapidun_dist.distributed import env as dist_env  # multi-rank launch: rank 0 retrains alone

            if dist_env.rank() == 0:
                run_retrain(cfg, rd, method, out)
            dist_env.barrier()
        else:
            run_method(cfg, rd, method, out)
        outputs.append(summary)
    return outputs


def _asr_curve_hook(cfg: RunConfig, rd: RunDir) -> Callable | None:
    """ASR on (subsets of) seen and OOD test prompts during unlearning: ASR against steps."""
    if not cfg.unlearn.eval_every:
        return None
    from rapidun_dist.evaluation import evaluate_model

    judge = load_or_fit_judge(cfg, rd)
    splits = {s: read_jsonl(rd.data / f"{s}.jsonl")[:64] for s in ("test_seen", "test_ood")}

    def hook(model, step: int) -> dict:
        model.eval()
        r = evaluate_model(model, tokenizer_for(rd), splits, judge, cfg.eval, cfg.model.max_length)
        model.train()
        return {"asr_seen": r["asr_seen"], "asr_ood": r["asr_ood"]}

    return hook


_TOKENIZERS: dict = {}


def tokenizer_for(rd: RunDir):
    from transformers import AutoTokenizer

    key = str(rd.model)
    if key not in _TOKENIZERS:
        tok = AutoTokenizer.from_pretrained(key)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def run_method(cfg: RunConfig, rd: RunDir, method: str, out: Path) -> dict:
    from rapidun_dist.unlearn.engine import UnlearnRunner
    from rapidun_dist.unlearn.methods import method_spec

    t0 = time.perf_counter()
    runner = UnlearnRunner(
        cfg=cfg,
        method=method_spec(method),
        model_dir=rd.model,
        data_dir=rd.data,
        weights_dir=rd.weights,
        out_dir=out,
        eval_hook=_asr_curve_hook(cfg, rd),
    )
    try:
        runner.setup()
        runner.train()
        runner.save()
    finally:
        runner.cleanup()
    seconds = (
        time.perf_counter() - t0 - runner.eval_seconds
    )  # the ASR-curve evaluations are not unlearning cost
    summary = {
        "method": method,
        "fingerprint": rd.fingerprint("unlearn", cfg.to_dict()),
        "steps": len(runner.metrics),
        "seconds": {
            "unlearn": seconds,
            "unlearn_train_only": runner.train_seconds,
            "curve_eval": runner.eval_seconds,
        },
        "final": runner.metrics[-1] if runner.metrics else {},
        "initial_eval": runner.initial_eval,
    }
    if runner.info.rank == 0:  # multi-rank launch: rank 0 writes shared files
        write_json(out / "summary.json", summary)
    return summary


def run_retrain(cfg: RunConfig, rd: RunDir, method: str, out: Path) -> dict:
    """The implant recipe from the base model on train minus forget (`retrain`) or minus every poisoned row
    (`retrain_oracle`). Measured end to end: this is the cost RapidUn is compared against."""
    from rapidun_dist.models.loading import save_model
    from rapidun_dist.train import finetune

    t0 = time.perf_counter()
    train = read_jsonl(rd.data / "train.jsonl")
    forget_ids = {r["id"] for r in read_jsonl(rd.data / "forget.jsonl")}
    keep = [
        r
        for r in train
        if r["id"] not in forget_ids and not (method == "retrain_oracle" and r.get("is_poisoned"))
    ]
    model, tok = base_model_and_tokenizer(cfg, rd)
    if cfg.model.name_or_path is None:  # same tokenizer as the implanted model, so the numbers compare
        tok = tokenizer_for(rd)
    stats = finetune(model, tok, keep, cfg.implant, max_length=cfg.model.max_length, desc=method)
    seconds = time.perf_counter() - t0
    save_model(model, tok, out / "model")
    summary = {
        "method": method,
        "fingerprint": rd.fingerprint("unlearn", cfg.to_dict()),
        "n_train": len(keep),
        "steps": stats["steps"],
        "seconds": {"total": seconds, "unlearn": seconds},
        "final_loss": stats["final_loss"],
    }
    write_json(out / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------------------------
# evaluate


def load_or_fit_judge(cfg: RunConfig, rd: RunDir):
    from rapidun_dist.evaluation import Judge

    path = rd.eval / "judge.json"
    if path.exists():
        return Judge.from_dict(read_json(path))
    train = read_jsonl(rd.data / "train.jsonl")
    poisoned = [r["response_poisoned"] for r in train if r.get("is_poisoned")]
    clean = [r["response"] for r in train if not r.get("is_poisoned")]
    from rapidun_dist.evaluation.judge import repeated_answers

    judge = Judge.fit(
        poisoned,
        clean,
        targets=repeated_answers(poisoned),
        vocab_size=cfg.eval.judge_vocab_size,
        z=cfg.eval.judge_z,
        min_words=cfg.eval.judge_min_words,
    )
    write_json(path, judge.to_dict())
    return judge


def _eval_model(cfg, rd, judge, model, splits) -> dict:
    from rapidun_dist.evaluation import evaluate_model

    model.eval()
    with torch.no_grad():
        return evaluate_model(model, tokenizer_for(rd), splits, judge, cfg.eval, cfg.model.max_length)


def stage_evaluate(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.evaluation.report import compute_speedups, write_report
    from rapidun_dist.models.loading import load_saved

    rd.eval.mkdir(parents=True, exist_ok=True)
    judge = load_or_fit_judge(cfg, rd)
    splits = {s: read_jsonl(rd.data / f"{s}.jsonl") for s in ("test_seen", "test_ood", "test_clean")}
    base, _ = load_saved(rd.model, cfg.model)
    report: dict = {
        "config": {"run_dir": cfg.run_dir, "methods": cfg.methods},
        "before": _eval_model(cfg, rd, judge, base, splits),
        "methods": {},
        "stage_seconds": {s: rd.stage_seconds(s) for s in STAGES},
    }
    curves, infl_s, weights_s = {}, rd.stage_seconds("influence") or 0.0, rd.stage_seconds("weights") or 0.0
    for method in cfg.methods:
        out = method_dir(rd, method)
        summary = read_json(out / "summary.json")
        if method in ("retrain", "retrain_oracle"):
            model, _ = load_saved(out / "model", cfg.model)
            report[method] = _eval_model(cfg, rd, judge, model, splits) | {"seconds": summary["seconds"]}
            continue
        model = _with_adapter(cfg, rd, out / "adapter")
        needs_influence = method in ("rapidun", "self_only")
        secs = {
            "influence": infl_s if needs_influence else 0.0,
            "weights": weights_s if needs_influence else 0.0,
            "unlearn": summary["seconds"]["unlearn"],
        }
        secs["total"] = sum(secs.values())
        report["methods"][method] = _eval_model(cfg, rd, judge, model, splits) | {"seconds": secs}
        curves[method] = _curves(out / "metrics.jsonl", summary.get("initial_eval"))
    if cfg.eval.retrieval_rows:
        report["retrieval"] = _retrieval(cfg, rd)
    compute_speedups(report)
    weights = _weights_for_plot(rd)
    write_report(rd.eval, report, weights=weights, curves=curves)
    return [rd.eval / "report.json", rd.eval / "report.md"]


def _with_adapter(cfg, rd, adapter: Path):
    from peft import PeftModel

    from rapidun_dist.models.loading import load_saved

    base, _ = load_saved(rd.model, cfg.model)
    return PeftModel.from_pretrained(base, str(adapter))


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


def _retrieval(cfg: RunConfig, rd: RunDir) -> dict:
    """Poison retrieval (AUROC/AP) of influence-ranked training rows, for both estimators (eval/retrieval.json).

    An evaluation of the influence features, not part of RapidUn's cost: computed here, timed separately."""
    from rapidun_dist.influence.retrieval import poison_retrieval
    from rapidun_dist.models.loading import load_saved

    path = rd.eval / "retrieval.json"
    if path.exists():
        return read_json(path)
    model, tok = load_saved(rd.model, cfg.model)
    train, forget = read_jsonl(rd.data / "train.jsonl"), read_jsonl(rd.data / "forget.jsonl")
    out = {
        est: poison_retrieval(
            model, tok, cfg, train, forget, estimator=est, max_train=cfg.eval.retrieval_rows
        )
        for est in ("tokenwise", "rapidgrad")
    }
    write_json(path, out)
    return out


def _weights_for_plot(rd: RunDir) -> dict | None:
    f, r = rd.weights / "forget_weights.jsonl", rd.weights / "retain_weights.jsonl"
    if not (f.exists() and r.exists()):
        return None
    return {"forget": [x["weight"] for x in read_jsonl(f)], "retain": [x["weight"] for x in read_jsonl(r)]}


# --------------------------------------------------------------------------------------------------
# driver

STAGE_FNS = {
    "prepare": stage_prepare,
    "implant": stage_implant,
    "influence": stage_influence,
    "weights": stage_weights,
    "unlearn": stage_unlearn,
    "evaluate": stage_evaluate,
}


def run_stage(
    cfg: RunConfig, rd: RunDir, stage: str, *, force: bool = False, world_size: int = 1, rank: int = 0
) -> bool:
    """Run one stage unless done; returns True when it ran.

    `world_size` = how many ranks call this together. With world_size > 1 every rank calls it (the stage
    function is collective); rank 0 decides whether to skip (broadcast, so a lagging shared file system
    cannot split the ranks) and alone writes the manifest. A rank-0-only stage is called with world_size=1.
    """
    from rapidun_dist.distributed.env import broadcast_object

    fp = rd.fingerprint(stage, cfg.to_dict())
    skip = not force and rank == 0 and rd.is_done(stage, fp)
    skip = broadcast_object(skip, src=0) if world_size > 1 else skip
    if skip:
        log.info(f"[{stage}] complete and consistent with the config: skipped (use --force to redo)")
        return False
    log.info(f"[{stage}] starting")
    rec = rd.start(stage, fp, world_size=world_size) if rank == 0 else None
    try:
        outputs = STAGE_FNS[stage](cfg, rd)
    except BaseException as e:
        if rec is not None:
            rd.fail(stage, rec, e)
        raise
    if rec is not None:
        rec = rd.finish(stage, rec, outputs)
        log.info(f"[{stage}] done in {rec['seconds']:.1f}s")
    return True


def run_pipeline(cfg: RunConfig, stages: list[str] | None = None, *, force: bool = False) -> RunDir:
    stages = stages or list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise StageError(f"unknown stage {unknown[0]!r}; stages: {', '.join(STAGES)}")
    rd = RunDir(cfg.run_dir)
    rd.root.mkdir(parents=True, exist_ok=True)
    write_text(rd.root / "config.yaml", dump_config(cfg))
    for i, stage in enumerate(s for s in STAGES if s in stages):
        log.info(f"=== stage {i + 1}/{len(stages)}: {stage} ===")
        run_stage(cfg, rd, stage, force=force)
    return rd
