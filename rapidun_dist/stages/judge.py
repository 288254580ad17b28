"""The run's judge, shared by every stage that scores answers (unlearning's validation, attribution, evaluation):
fitted once from the run's data, saved as eval/judge.json, refitted only when its data or settings change, and
handed to every rank of a multi-rank stage."""

from __future__ import annotations

from rapidun_dist.config import RunConfig
from rapidun_dist.core.io import read_json, read_jsonl, write_json
from rapidun_dist.run.rundir import RunDir


def judge_answers(cfg: RunConfig, rd: RunDir) -> tuple[list[str], list[str]]:
    """(poisoned answers, clean answers) the judge learns its vocabulary from: the poisoned train rows against the
    clean ones (experiment), or the forget rows' poisoned answers against the retain answers (clean mode)."""
    if cfg.mode == "clean":
        forget, retain = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
        return [r["response_poisoned"] for r in forget], [r["response"] for r in retain]
    train = read_jsonl(rd.data / "train.jsonl")
    return (
        [r["response_poisoned"] for r in train if r.get("is_poisoned")],
        [r["response"] for r in train if not r.get("is_poisoned")],
    )


def load_or_fit_judge(cfg: RunConfig, rd: RunDir):
    """The judge of this run (eval/judge.json), fitted once from `judge_answers`."""
    from rapidun_dist.evaluation import Judge
    from rapidun_dist.evaluation.judge import repeated_answers

    path = rd.eval / "judge.json"
    basis = _judge_basis(cfg, rd)
    if path.exists():
        saved = read_json(path)
        if saved.get("fitted_on") == basis:
            return Judge.from_dict(saved)
    poisoned, clean = judge_answers(cfg, rd)
    judge = Judge.fit(
        poisoned,
        clean,
        targets=repeated_answers(poisoned),
        vocab_size=cfg.eval.judge_vocab_size,
        z=cfg.eval.judge_z,
        min_words=cfg.eval.judge_min_words,
    )
    write_json(path, judge.to_dict() | {"fitted_on": basis})
    return judge


def _judge_basis(cfg: RunConfig, rd: RunDir) -> dict:
    """What the judge was fitted on: the data files' hashes and the judge settings (a stale judge is refitted)."""
    from rapidun_dist.core.io import file_sha256

    names = ("forget", "retain") if cfg.mode == "clean" else ("train",)
    e = cfg.eval
    return {
        "files": {n: file_sha256(rd.data / f"{n}.jsonl") for n in names},
        "settings": [e.judge_vocab_size, e.judge_z, e.judge_min_words],
    }


def shared_judge(cfg: RunConfig, rd: RunDir):
    """The run's judge on every rank: rank 0 loads or fits it (eval/judge.json), the others receive a copy."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.evaluation import Judge

    state = load_or_fit_judge(cfg, rd).to_dict() if dist_env.rank() == 0 else None
    return Judge.from_dict(dist_env.broadcast_object(state, src=0) if dist_env.world_size() > 1 else state)
