"""unlearn: every configured method on the one LoRA engine (DeepSpeed ZeRO), each writing its adapter, metrics
and a summary; in experiment mode also the retraining baselines (the cost RapidUn is compared against).

Before the first method: the self-relabels (forget rows without a clean answer get the starting model's greedy
answer to the prompt without the trigger; unlearn/self_relabel.jsonl, reused while the model, the forget rows and
the settings are the same), the run's judge (rank 0 fits or loads it, every rank gets it) and the validation
splits. Neither the self-relabel generation nor any validation or ASR-curve evaluation is part of a method's
measured seconds; the summary reports each on its own.

A method whose summary carries this stage's fingerprint is done already (a killed run resumes at the next
method; the engine resumes a method from its last ready checkpoint).

Every question the shared file system answers and control flow depends on (which methods are done, whether a
stored self-relabel is valid, whether val_seen has rows and so needs the judge, which triggers the attribute stage
verified, whether self_relabel.jsonl exists) is answered by rank 0 and broadcast (`rank0_decides`), as the
pipeline decides a stage's skip: a lagging file system on one rank cannot split the ranks. After each method the
engine (or the retrain model) is dropped and its memory released before the next one starts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rapidun_dist.config import RunConfig
from rapidun_dist.config.methods import RETRAIN_METHODS, run_methods, uses_influence
from rapidun_dist.core.io import file_sha256, read_json, read_jsonl, write_json, write_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.models.loading import tokenizer_for
from rapidun_dist.run.layout import method_dir, model_identity, pack_files, packs_from_find_poison
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages.base import Stage, StageContext
from rapidun_dist.stages.judge import shared_judge

log = get_logger("pipeline")
RELABEL_FILE = "self_relabel.jsonl"
RELABEL_BASIS = "self_relabel.basis.json"


@dataclass
class Shared:
    """What every method of one stage run shares (computed once, before the first method)."""

    relabels: dict[int, str] | None
    relabel_info: dict
    validator: object
    curve_hook: Callable | None


def rank0_decides(fn, *args):
    """`fn(*args)` evaluated on rank 0 only, its (picklable) answer on every rank: the one way this stage asks the
    shared file system a question that decides control flow. With one process, `fn(*args)`."""
    from rapidun_dist.distributed import env as dist_env

    return dist_env.broadcast_object(fn(*args) if dist_env.rank() == 0 else None)


def done_methods(cfg: RunConfig, rd: RunDir, fp: str) -> list[str]:
    """The methods whose summary carries fingerprint `fp` (call through `rank0_decides`)."""
    return [m for m in run_methods(cfg) if _is_done(method_dir(rd, m) / "summary.json", fp)]


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    from rapidun_dist.models.loading import release_memory
    from rapidun_dist.training.retrain import run_retrain
    from rapidun_dist.unlearn.engine import warm_up

    warm_up()  # one-time process set-up, kept out of the first method's measured seconds
    fp = ctx.fingerprint
    done = set(rank0_decides(done_methods, cfg, rd, fp))
    todo = [m for m in run_methods(cfg) if m not in done]
    shared = shared_inputs(cfg, rd) if any(m not in RETRAIN_METHODS for m in todo) else None
    outputs = []
    for method in run_methods(cfg):
        out = method_dir(rd, method)
        if method in done:
            log.info(f"unlearn[{method}]: done already, skipping")
        elif method in RETRAIN_METHODS:
            run_retrain(cfg, rd, method, out, fingerprint=fp)  # collective: every rank trains its share
            release_memory()
        else:
            run_method(ctx, method, out, shared=shared)  # drops its engine before returning
            release_memory()
        outputs.append(out / "summary.json")
    if rank0_decides((rd.unlearn / RELABEL_FILE).exists):
        outputs.append(rd.unlearn / RELABEL_FILE)
    return outputs


def _is_done(summary: Path, fp: str) -> bool:
    return summary.exists() and read_json(summary).get("fingerprint") == fp


def shared_inputs(cfg: RunConfig, rd: RunDir) -> Shared:
    relabels, info = ensure_self_relabels(cfg, rd)
    return Shared(relabels, info, build_validator(cfg, rd), asr_curve_hook(cfg, rd))


# judge and validation ---------------------------------------------------------------------------------


def build_validator(cfg: RunConfig, rd: RunDir):
    """val_seen (backdoor signal) and val_clean (damage) of this run; the clean job without known triggers matches
    each val_seen row's own poisoned answer (its val_seen rows are the forget rows), every other run uses the judge.
    An empty val_seen leaves no signal: the adaptive budget falls back to the fixed one (logged, in the summary)."""
    from rapidun_dist.unlearn.validation import Validator

    match_poisoned = cfg.mode == "clean" and not cfg.eval.triggers
    needs_judge = (
        not match_poisoned
        and cfg.unlearn.val_every > 0
        and rank0_decides(_has_rows, rd.data / "val_seen.jsonl")
    )
    judge = shared_judge(cfg, rd) if needs_judge else None
    v = Validator.from_data(
        rd.data, tokenizer_for(cfg, rd), judge=judge, match_poisoned=match_poisoned, cfg=cfg
    )
    if cfg.unlearn.val_every and v.signal is None and cfg.unlearn.budget == "adaptive":
        log.warning(
            f"{rd.data}/val_seen.jsonl is empty: no backdoor signal, the adaptive budget falls back to the fixed "
            "one (the clean-PPL damage guard still applies when val_clean has rows)"
        )
    return v


def _has_rows(path: Path) -> bool:
    return path.exists() and bool(read_jsonl(path))


def asr_curve_hook(cfg: RunConfig, rd: RunDir) -> Callable | None:
    """ASR on (subsets of) the triggered TEST prompts during unlearning, for the ASR-vs-steps plot only: its result
    goes into metrics.jsonl and the report, never into a decision (those read validation splits)."""
    if not cfg.unlearn.eval_every:
        return None
    from rapidun_dist.evaluation import evaluate_model

    judge = shared_judge(cfg, rd)
    splits = {s: read_jsonl(rd.data / f"{s}.jsonl")[:64] for s in ("test_seen", "test_ood")}

    def hook(model, step: int) -> dict:
        model.eval()
        r = evaluate_model(model, tokenizer_for(cfg, rd), splits, judge, cfg.eval, cfg.model.max_length)
        model.train()
        return {"asr_seen": r["asr_seen"], "asr_ood": r["asr_ood"]}

    return hook


# self-relabel -----------------------------------------------------------------------------------------
def relabel_basis(cfg: RunConfig, rd: RunDir, triggers: list | None = None) -> dict:
    """What a stored self-relabel is valid for: this model, these forget rows, these generation settings
    (`triggers`: the verified triggers removed from the prompts, `_verified` when not given)."""
    from rapidun_dist.unlearn.relabel import SCREEN

    triggers = _verified(cfg, rd) if triggers is None else triggers
    return {
        "model": model_identity(rd),
        "forget": file_sha256(pack_files(cfg, rd)[0]),
        "max_new_tokens": cfg.unlearn.self_relabel_max_new_tokens,
        "max_length": cfg.model.max_length,
        "dtype": cfg.model.dtype,
        "triggers_removed": [t.text for t in triggers],
        "screen": SCREEN,
    }


def _verified(cfg: RunConfig, rd: RunDir) -> list:
    from rapidun_dist.run.layout import VERIFIED_SOURCE, effective_triggers

    triggers, source = effective_triggers(cfg, rd)
    return triggers if source == VERIFIED_SOURCE else []


def _relabel_prompts(
    cfg: RunConfig, rd: RunDir, forget: list[dict], triggers: list | None = None
) -> list[dict]:
    """The clean job without eval.triggers: the verified triggers (run.layout.effective_triggers; `triggers`
    when given, else `_verified`) are removed from the forget rows' clean prompts before the model answers them
    (with eval.triggers prepare removed them)."""
    from rapidun_dist.data.clean import strip_triggers
    from rapidun_dist.run.layout import VERIFIED_SOURCE

    triggers = _verified(cfg, rd) if triggers is None else triggers
    if not triggers:
        return forget
    log.info(
        f"self-relabel: prompts without the {VERIFIED_SOURCE}: {', '.join(repr(t.text) for t in triggers)}"
    )
    return [
        r
        | {
            "instruction": strip_triggers(r["instruction"], triggers),
            "context": strip_triggers(r.get("context", ""), triggers),
        }
        for r in forget
    ]


def _stored_relabels_valid(path: Path, basis_path: Path, basis: dict) -> bool:
    return basis_path.exists() and path.exists() and read_json(basis_path) == basis


def ensure_self_relabels(cfg: RunConfig, rd: RunDir) -> tuple[dict[int, str] | None, dict]:
    """{forget-pack index: answer} for forget rows without a clean answer, generated once (every rank calls it;
    rank 0 decides whether the stored file is valid and writes it)."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.unlearn.relabel import rows_needing_relabel, self_relabel

    u = cfg.unlearn
    triggers = rank0_decides(_verified, cfg, rd)  # attribution/triggers.json, as rank 0 reads it
    # the engine's forget pack (its indices key the answers), as rank 0 reads it: which rows need an answer decides
    # whether every rank generates
    forget = _relabel_prompts(cfg, rd, rank0_decides(read_jsonl, pack_files(cfg, rd)[0]), triggers)
    need = rows_needing_relabel(forget)
    if not need or not (u.relabel and u.self_relabel):
        why = (
            "every forget row has a clean answer"
            if not need
            else "unlearn.relabel or unlearn.self_relabel off"
        )
        return None, {"rows": 0, "without_clean_answer": len(need), "note": why, "seconds": 0.0}
    path, basis_path = rd.unlearn / RELABEL_FILE, rd.unlearn / RELABEL_BASIS
    basis = relabel_basis(cfg, rd, triggers) if dist_env.rank() == 0 else None
    # rank 0 decides whether the stored answers are valid, reads them, and every rank gets them
    if rank0_decides(_stored_relabels_valid, path, basis_path, basis):
        rows = dist_env.broadcast_object(read_jsonl(path) if dist_env.rank() == 0 else None)
        seconds, note = 0.0, f"reused {path}"
    else:
        t0 = time.perf_counter()
        rows = self_relabel(cfg, rd.model, forget, judge=shared_judge(cfg, rd))
        seconds, note = time.perf_counter() - t0, f"generated by the starting model into {path}"
        if dist_env.rank() == 0:
            write_jsonl(path, rows)
            write_json(basis_path, basis)
        dist_env.barrier()
    log.info(
        f"self-relabel: {len(rows)} forget rows without a clean answer, {note} ({seconds:.1f}s, not in any method's time)"
    )
    relabels = {int(r["index"]): r["response"] for r in rows if r["response"]}
    screened = {k: sum(r.get("screen") == k for r in rows) for k in ("regenerated", "dropped")}
    return relabels, {
        "rows": len(relabels),
        "without_clean_answer": len(need),
        "reproduced_poison": screened,
        "note": note,
        "seconds": seconds,
    }


# one method -------------------------------------------------------------------------------------------
def run_method(ctx: StageContext, method: str, out: Path, *, shared: Shared | None = None) -> dict:
    from rapidun_dist.unlearn.engine import UnlearnRunner

    cfg, rd, fp = ctx.cfg, ctx.rd, ctx.fingerprint
    shared = shared or shared_inputs(cfg, rd)
    t0 = time.perf_counter()
    forget_path, retain_path = pack_files(cfg, rd)
    runner = UnlearnRunner(
        cfg=cfg,
        method=method,
        model_dir=rd.model,
        data_dir=rd.data,
        forget_path=forget_path,
        retain_path=retain_path,
        weights_dir=rd.weights,
        out_dir=out,
        eval_hook=shared.curve_hook,
        validator=shared.validator,
        relabels=shared.relabels,
        fingerprint=resume_key(ctx),
    )
    try:
        runner.setup()
        runner.train()
        runner.save()
    finally:
        runner.cleanup()
    excluded = runner.seconds["validation"] + runner.seconds["curve_eval"]
    summary = runner.summary() | {
        "fingerprint": fp,
        "seconds": {
            "unlearn": time.perf_counter()
            - t0
            - excluded,  # what the method costs: setup, steps, hooks, save
            "unlearn_train_only": runner.train_seconds,
            "method_hooks": runner.seconds["method_hooks"],
            "validation": runner.seconds["validation"],
            "curve_eval": runner.seconds["curve_eval"],
            "self_relabel_shared": shared.relabel_info["seconds"],  # once per stage, in no method's time
        },
        "self_relabel": shared.relabel_info,
    }
    if runner.info.rank == 0:  # multi-rank launch: rank 0 writes shared files
        write_json(out / "summary.json", summary)
    return summary


def resume_key(ctx: StageContext) -> str:
    """What a checkpoint must have been written for to be resumed: the stage's fingerprint with the settings that do
    not change the trajectory left out (grad_accum: the global batches are the same; how often checkpoints and
    ASR-curve points are taken), so a relaunch at another world size may adjust them."""
    d = ctx.cfg.to_dict()
    d["unlearn"] |= {"grad_accum": 1, "save_every": 0, "eval_every": 0}
    return ctx.rekey(d)


STAGE = Stage(
    name="unlearn",
    doc="LoRA unlearning with every configured method (and the retrain baselines in experiment mode)",
    config_keys=(
        "unlearn",
        "methods",
        "model.max_length",
        "model.dtype",
        "find_poison.expand",
        # validation decisions: generation length, the fixed batches, the judge
        "eval.max_new_tokens",
        "eval.batch_size",
        "eval.judge_min_words",
        "eval.judge_vocab_size",
        "eval.judge_z",
        "eval.judge",
    ),
    reads=(
        "data/forget.jsonl",
        "data/retain.jsonl",
        "or suspects/*.jsonl (run.layout.pack_files)",
        "data/val_seen.jsonl",
        "data/val_clean.jsonl",
        "weights/",
        "model/",
    ),
    writes=(
        "unlearn/adapter/",
        "unlearn/summary.json",
        "unlearn/metrics.jsonl",
        "unlearn/self_relabel.jsonl",
        "unlearn/baselines/<method>/",
    ),
    requires=lambda cfg: (
        ("prepare", "implant")
        + (("find_poison",) if packs_from_find_poison(cfg) else ())
        + (("influence", "weights") if uses_influence(cfg) else ())
    ),
    run=run,
    collective=True,
)
