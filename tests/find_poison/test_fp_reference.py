"""find_poison's reference beyond the retain pack (`data.reference_rows`), the fitted candidate count
(`find_poison.candidates_margin`) and TF-IDF's linear mean path, on a small implanted run."""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp_utils import load_cfg, read_rows  # noqa: E402

from rapidun_dist.core.io import read_json  # noqa: E402
from rapidun_dist.find_poison import suspects as S  # noqa: E402
from rapidun_dist.find_poison import tfidf, twostage  # noqa: E402
from rapidun_dist.find_poison.job import ScoreJob  # noqa: E402


def test_reference_rows_two_stage_margin_and_packs(tmp_path):
    """The stage's reference is retain + data/reference.jsonl (every row of it scored by stage 2 and read by the
    threshold); the expanded retain pack still starts from the retain pack; the margin keeps ceil(margin x the
    lowest known row's TF-IDF rank) candidates, which the stage's own TF-IDF scores reproduce."""
    from rapidun_dist.pipeline import run_pipeline

    run = tmp_path / "run"
    extra = ["data.reference_rows=60", "find_poison.two_stage=true", "find_poison.first_stage=tfidf",
             "find_poison.candidates=0.5", "find_poison.candidates_margin=1.5", "find_poison.time_epoch=false",
             "find_poison.threshold=fdr"]  # fmt: skip
    cfg = load_cfg(run, *extra)
    run_pipeline(cfg, ["prepare", "implant", "find_poison"])
    data = run / "data"
    train, forget = read_rows(data / "train.jsonl"), read_rows(data / "forget.jsonl")
    retain, added = read_rows(data / "retain.jsonl"), read_rows(data / "reference.jsonl")
    assert len(retain) + len(added) == 60 and added
    summary = read_json(run / "suspects" / "summary.json")
    assert summary["counts"]["reference"] == 60 and summary["threshold"]["n_reference"] == 60

    # stage 1 by hand: TF-IDF (mean, linear path) against the whole reference, the fitted count
    job = ScoreJob(cfg=cfg, rd=None, info=types.SimpleNamespace(rank=0), train=train, forget=forget,
                   reference=retain + added)  # fmt: skip
    first = tfidf.score(job)
    docs = {"forget": [S.document(r) for r in forget], "reference": [S.document(r) for r in retain + added]}
    generic = job.group_contrast(S.tfidf_similarity([S.document(r) for r in train], docs))
    torch.testing.assert_close(first, generic, rtol=0, atol=1e-12)
    known = torch.tensor([r["id"] in {f["id"] for f in forget} for r in train])
    lowest = int(S.rank_of(first)[known].max())
    keep = min(twostage.n_candidates(0.5, len(train)), max(lowest, math.ceil(1.5 * lowest)))
    two = summary["two_stage"]
    assert (two["candidates"], two["lowest_known_rank"]) == (keep, lowest)
    assert two["candidates_cap"] == twostage.n_candidates(0.5, len(train)) > keep  # the margin binds here
    cand = twostage.candidate_mask(first, keep)
    ref_ids = {r["id"] for r in retain + added}
    assert two["scored"] == sum(
        bool(cand[i]) or bool(known[i]) or r["id"] in ref_ids for i, r in enumerate(train)
    )

    # the expanded retain pack starts from the retain pack's unflagged rows, not from the added reference rows
    flagged = {r["id"] for r in read_rows(run / "suspects" / "suspects.jsonl") if r["flagged"]}
    kept = [r["id"] for r in retain if r["id"] not in flagged]
    expanded = [r["id"] for r in read_rows(run / "suspects" / "retain.jsonl")]
    assert expanded[: len(kept)] == kept
    assert summary["counts"]["reference_flagged"] == sum(r["id"] in flagged for r in retain + added)
