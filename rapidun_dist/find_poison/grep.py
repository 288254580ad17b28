"""grep: how many of the known trigger strings each row's prompt holds (`suspects.grep_scores`; the strings are
`eval.triggers` and the variants the known rows carry, `suspects.known_triggers`). No model, no contrast."""

from __future__ import annotations

import torch

from rapidun_dist.find_poison import suspects as S
from rapidun_dist.find_poison.job import ScoreJob


def score(job: ScoreJob) -> torch.Tensor | None:
    if job.info.rank != 0:
        return None
    triggers = S.known_triggers(job.forget, [t.text for t in job.cfg.eval.triggers])
    return S.grep_scores(job.train, triggers)
