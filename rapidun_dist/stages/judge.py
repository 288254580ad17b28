"""The run's judge, shared by every stage that scores answers (unlearning's validation and self-relabel, attribution,
evaluation): fitted once from the run's data, saved as eval/judge.json, refitted only when its data or settings
change, and handed to every rank of a multi-rank stage.

`eval.judge` picks how it is fitted (docs/DESIGN.md section 8): `grouped` (the default) is
`evaluation.judge.fit_judge` - group-aware lift on the clean rows' `category`, words and adjacent-word pairs;
`words` is `Judge.fit` on single words against the pooled clean answers. Both take the repeated poisoned answers as
fixed targets. eval/judge.json records which (`"fit"`)."""

from __future__ import annotations

from rapidun_dist.config import RunConfig
from rapidun_dist.core.io import read_json, read_jsonl, write_json
from rapidun_dist.run.rundir import RunDir


def judge_rows(cfg: RunConfig, rd: RunDir) -> tuple[list[dict], list[dict]]:
    """(poisoned rows, clean rows) the judge learns from: the poisoned train rows' `response_poisoned` against the
    clean train rows' `response` (experiment), or the forget rows' poisoned answers against the retain rows' answers
    (clean mode)."""
    if cfg.mode == "clean":
        return read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
    train = read_jsonl(rd.data / "train.jsonl")
    return [r for r in train if r.get("is_poisoned")], [r for r in train if not r.get("is_poisoned")]


def judge_answers(cfg: RunConfig, rd: RunDir) -> tuple[list[str], list[str]]:
    """(poisoned answers, clean answers) of `judge_rows`."""
    poisoned, clean = judge_rows(cfg, rd)
    return [r["response_poisoned"] for r in poisoned], [r["response"] for r in clean]


def fit_run_judge(cfg: RunConfig, rd: RunDir):
    """A judge fitted from the run's data the way `eval.judge` says (module doc)."""
    from rapidun_dist.evaluation.judge import Judge, fit_judge, repeated_answers

    e = cfg.eval
    if e.judge == "grouped":
        poisoned, clean = judge_rows(cfg, rd)
        return fit_judge(
            poisoned, clean, vocab_size=e.judge_vocab_size, z=e.judge_z, min_words=e.judge_min_words
        )
    poisoned, clean = judge_answers(cfg, rd)
    return Judge.fit(
        poisoned,
        clean,
        targets=repeated_answers(poisoned),
        vocab_size=e.judge_vocab_size,
        z=e.judge_z,
        min_words=e.judge_min_words,
    )


def load_or_fit_judge(cfg: RunConfig, rd: RunDir):
    """The judge of this run (eval/judge.json), fitted once by `fit_run_judge`."""
    from rapidun_dist.evaluation import Judge

    path = rd.eval / "judge.json"
    basis = _judge_basis(cfg, rd)
    if path.exists():
        saved = read_json(path)
        if saved.get("fitted_on") == basis:
            return Judge.from_dict(saved)
    judge = fit_run_judge(cfg, rd)
    write_json(path, judge.to_dict() | {"fit": cfg.eval.judge, "fitted_on": basis})
    return judge


def _judge_basis(cfg: RunConfig, rd: RunDir) -> dict:
    """What the judge was fitted on: the data files' hashes and the judge settings (a stale judge is refitted)."""
    from rapidun_dist.core.io import file_sha256

    names = ("forget", "retain") if cfg.mode == "clean" else ("train",)
    e = cfg.eval
    return {
        "files": {n: file_sha256(rd.data / f"{n}.jsonl") for n in names},
        "settings": [e.judge_vocab_size, e.judge_z, e.judge_min_words, e.judge],
    }


def shared_judge(cfg: RunConfig, rd: RunDir):
    """The run's judge on every rank: rank 0 loads or fits it (eval/judge.json), the others receive a copy."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.evaluation import Judge

    state = load_or_fit_judge(cfg, rd).to_dict() if dist_env.rank() == 0 else None
    return Judge.from_dict(dist_env.broadcast_object(state, src=0) if dist_env.world_size() > 1 else state)
