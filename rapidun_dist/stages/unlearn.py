"""unlearn: every configured method on the one LoRA engine (DeepSpeed ZeRO), each writing its adapter, metrics
and a summary; in experiment mode also the retraining baselines (the cost RapidUn is compared against).

A method whose summary carries this stage's fingerprint is done already (a killed run resumes at the next
method; the engine resumes a method from its last checkpoint)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.io import read_json, read_jsonl, write_json
from rapidun_dist.logging import get_logger
from rapidun_dist.rundir import RunDir
from rapidun_dist.stages.base import Stage
from rapidun_dist.stages.common import (
    RETRAIN_METHODS,
    load_or_fit_judge,
    method_dir,
    run_methods,
    tokenizer_for,
)

log = get_logger("pipeline")


def run(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.retrain import run_retrain
    from rapidun_dist.unlearn.engine import warm_up

    warm_up()  # one-time process set-up, kept out of the first method's measured seconds
    fp = rd.fingerprint("unlearn", cfg.to_dict())
    outputs = []
    for method in run_methods(cfg):
        out = method_dir(rd, method)
        summary = out / "summary.json"
        if summary.exists() and read_json(summary).get("fingerprint") == fp:
            log.info(f"unlearn[{method}]: done already, skipping")
        elif method in RETRAIN_METHODS:
            run_retrain(cfg, rd, method, out, fingerprint=fp)  # collective: every rank trains its share
        else:
            run_method(cfg, rd, method, out)
        outputs.append(summary)
    return outputs


def asr_curve_hook(cfg: RunConfig, rd: RunDir) -> Callable | None:
    """ASR on (subsets of) the triggered test prompts during unlearning: ASR against steps (not timed)."""
    if not cfg.unlearn.eval_every:
        return None
    from rapidun_dist.evaluation import evaluate_model

    judge = load_or_fit_judge(cfg, rd)
    splits = {s: read_jsonl(rd.data / f"{s}.jsonl")[:64] for s in ("test_seen", "test_ood")}

    def hook(model, step: int) -> dict:
        model.eval()
        r = evaluate_model(model, tokenizer_for(cfg, rd), splits, judge, cfg.eval, cfg.model.max_length)
        model.train()
        return {"asr_seen": r["asr_seen"], "asr_ood": r["asr_ood"]}

    return hook


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
        eval_hook=asr_curve_hook(cfg, rd),
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


def needs_weights(cfg: RunConfig) -> bool:
    return bool({"rapidun", "self_only"} & set(cfg.methods))


STAGE = Stage(
    name="unlearn",
    doc="LoRA unlearning with every configured method (and the retrain baselines in experiment mode)",
    config_keys=("unlearn", "methods", "model.max_length", "model.dtype"),
    reads=("data/forget.jsonl", "data/retain.jsonl", "weights/", "model/"),
    writes=("unlearn/adapter/", "unlearn/metrics.jsonl", "unlearn/baselines/<method>/"),
    requires=lambda cfg: ("prepare", "implant") + (("influence", "weights") if needs_weights(cfg) else ()),
    run=run,
    collective=True,
)
