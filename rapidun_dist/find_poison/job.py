"""What a find_poison method is given: the config, the run, this rank, the rows to score and the two groups, and the
implanted model (loaded once, when first asked for, straight onto the rank's device)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.find_poison import suspects as S
from rapidun_dist.run.rundir import RunDir


@dataclass
class ScoreJob:
    """`train`: the rows to score (every training row, or the two-stage candidates with the known and reference
    rows); `forget`: the known poisoned rows; `reference`: the retain pack (the clean null). `info` is this rank's
    `rapidun_dist.distributed.env.DistInfo`; `notes` what a method records beside its scores (rank 0; summary.json
    `method_notes`); `work` this rank's feature work (units, rows, seconds) and `comm` its communication
    statistics, gathered into the summary."""

    cfg: RunConfig
    rd: RunDir
    info: object
    train: list[dict]
    forget: list[dict]
    reference: list[dict]
    notes: dict = field(default_factory=dict)  # what a method records beside its scores (summary.json)
    work: dict = field(
        default_factory=lambda: {"units": 0, "rows": 0, "seconds": 0.0}
    )  # this rank's features
    comm: dict = field(default_factory=dict)  # this rank's communication statistics (tokenwise's scores)
    _loaded: tuple | None = field(default=None, repr=False)
    _member_ids: tuple | None = field(default=None, repr=False)

    def model(self):
        """(model, tokenizer) of the implanted model, loaded on the first call."""
        if self._loaded is None:
            from rapidun_dist.models.loading import load_saved

            self._loaded = load_saved(self.rd.model, self.cfg.model, device=self.info.device)
        return self._loaded

    def member_ids(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Group member ids in the id space of `train` (a member that is one of its rows gets that row's position,
        so the pair is left out; the others distinct ids past its rows). A known row is one of them by id or by its
        prompt as trained (`stages.find_poison.known_mask`'s rule), a reference row by id."""
        if self._member_ids is None:
            ids = [r["id"] for r in self.train]
            held = set(ids)
            matched = all(r["id"] in held for r in self.forget)  # experiment mode: always by id
            prompts = None if matched else [S.trained_prompt(r) for r in self.train]
            self._member_ids = (
                S.group_ids(ids, self.forget, train_prompts=prompts),
                S.group_ids(ids, self.reference, offset=len(self.forget)),
            )
        return self._member_ids

    def group_contrast(self, sims: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> torch.Tensor:
        """[k] agg over the forget group - agg over the reference group, from {"forget": [k, |F|], "reference":
        [k, |R|]} similarities of the rows at positions `rows` of `train` (default all; `find_poison.agg`, same-id
        pairs left out)."""
        fp = self.cfg.find_poison
        f_ids, r_ids = self.member_ids()
        rows = torch.arange(len(self.train)) if rows is None else rows
        kw = dict(agg=fp.agg, topk=fp.topk, trim=fp.trim)
        return S.aggregate_similarity(sims["forget"], rows, f_ids, **kw) - S.aggregate_similarity(
            sims["reference"], rows, r_ids, **kw
        )
