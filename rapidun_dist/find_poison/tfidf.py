"""TF-IDF: the cosine of TF-IDF vectors of the rows as trained (prompt and answer; `suspects.Tfidf`), with the same
contrast as the other similarity methods: agg over the forget rows - agg over the reference rows. No model.
The mean aggregation, linear, is computed without the [n, m] similarity matrix (`suspects.mean_similarity`)."""

from __future__ import annotations

import torch

from rapidun_dist.find_poison import suspects as S
from rapidun_dist.find_poison.job import ScoreJob


def score(job: ScoreJob) -> torch.Tensor | None:
    if job.info.rank != 0:
        return None
    x, groups = S.tfidf_vectors(
        [S.document(r) for r in job.train],
        {"forget": [S.document(r) for r in job.forget], "reference": [S.document(r) for r in job.reference]},
    )
    # mean is linear: no [n, m] matrix (57k rows against 1,050 group rows: 11.4 s -> 1.5 s for the whole score)
    if job.cfg.find_poison.agg == "mean":
        f_ids, r_ids = job.member_ids()
        return S.mean_similarity(x, groups["forget"], f_ids) - S.mean_similarity(
            x, groups["reference"], r_ids
        )
    return job.group_contrast({name: torch.sparse.mm(x, g.to_dense().T) for name, g in groups.items()})
