"""TF-IDF: the cosine of TF-IDF vectors of the rows as trained (prompt and answer; `suspects.Tfidf`), with the same
contrast as the other similarity methods: agg over the forget rows - agg over the reference rows. No model."""

from __future__ import annotations

import torch

from rapidun_dist.find_poison import suspects as S
from rapidun_dist.find_poison.job import ScoreJob


def score(job: ScoreJob) -> torch.Tensor | None:
    if job.info.rank != 0:
        return None
    sims = S.tfidf_similarity(
        [S.document(r) for r in job.train],
        {"forget": [S.document(r) for r in job.forget], "reference": [S.document(r) for r in job.reference]},
    )
    return job.group_contrast(sims)
