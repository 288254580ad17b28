"""Token-wise influence (the default method): the influence stage's token-wise features (docs/DESIGN.md section 5) of
every row as it was trained, in work units of `find_poison.unit_size` rows that ranks claim as they become free
(`rapidun_dist.distributed.workqueue`), in `suspects/features/train/` (rows in length order, `store_order`: less
padding; the index lists their ids); the forget and reference rows likewise in
`suspects/features/groups/` (the ones that are training rows copied from the training store, `find_poison.reuse`:
in experiment mode all of them). The feature store is the influence stage's: a unit is valid only for this extractor
spec, model weights, tokenizer, prompt format, max_length and row ids, so a killed run recomputes only its missing
units and a changed model recomputes everything.

Scores: rank r loads the contiguous rows [r n / P, (r + 1) n / P) of the store and its slice of the groups; the
similarities to the forget set and to the reference set come from `distributed_group_scores` in float64 (the same for
any world size) and are gathered to rank 0 by position: score = agg over the forget rows - agg over the reference
rows.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rapidun_dist.core.logging import get_logger
from rapidun_dist.find_poison import suspects as S
from rapidun_dist.find_poison.dense import rank_slice
from rapidun_dist.find_poison.job import ScoreJob
from rapidun_dist.run.layout import suspects_dir
from rapidun_dist.run.rundir import RunDir

log = get_logger("find_poison")


def feature_dirs(rd: RunDir) -> tuple[Path, Path]:
    root = suspects_dir(rd) / "features"
    return root / "train", root / "groups"


def store_order(rows: list[dict]) -> list[int]:
    """Positions of `rows` in the order the training store holds them: by the length of their text as trained
    (characters; ties by position). A unit then holds rows of about one length, so its batches carry little padding
    (rows in training order: about 10% of the padded tokens on the Alpaca-57k candidates). Readers locate a row by
    the store index's ids, or by this same order."""
    size = [sum(len(part) for part in S.as_trained(r)) for r in rows]
    return sorted(range(len(rows)), key=lambda i: (size[i], i))


def score(job: ScoreJob) -> torch.Tensor | None:
    """Features (both stores), then the distributed contrast; [n] float64 on rank 0, None elsewhere."""
    t0 = time.perf_counter()
    order = store_order(job.train)  # the training store's row order, for writing it and for reading it back
    job.work |= extract_all(job, order)
    job.notes["seconds_features"] = time.perf_counter() - t0
    scores, job.comm = influence_scores(job, order)
    return None if scores is None else scores["forget"] - scores["reference"]


def extract_all(job: ScoreJob, order: list[int] | None = None) -> dict:
    """Both feature stores, units claimed dynamically; this rank's share of the work ({units, rows, seconds})."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.distributed.workqueue import WorkQueue
    from rapidun_dist.influence.extract import extract_features, feature_context
    from rapidun_dist.influence.store import plan_shards
    from rapidun_dist.run.layout import model_identity

    cfg, rd, info = job.cfg, job.rd, job.info
    model, tok = job.model()
    context = feature_context(model_identity(rd), tok, cfg)
    size = cfg.find_poison.unit_size
    mine = {"units": 0, "rows": 0, "seconds": 0.0}
    order = store_order(job.train) if order is None else order
    sets = ([job.train[i] for i in order], job.forget + job.reference)
    for name, rows, root in zip(("train", "groups"), sets, feature_dirs(rd), strict=True):
        if name == "groups":  # known and reference rows that are training rows: copied, not computed again
            t0 = time.perf_counter()
            copied, computed = dist_env.run_on_rank0(
                _copy_groups, job, model, tok, context, rows, root, what="copying the groups' features"
            )
            mine["seconds"] += time.perf_counter() - t0
            mine["rows"] += computed if info.rank == 0 else 0
            job.notes["group_rows_copied"] = copied
        queues: list[WorkQueue] = []

        def claim(todo, name=name, queues=queues) -> WorkQueue:
            # The last rank decides what is missing, so it starts at once: rank 0 comes later when it ran rank-0
            # work first (a TF-IDF first stage; the groups' copy). Units go out in reverse store order: the
            # training store is in length order, so the longest units go first and the last ones are short,
            # which leaves the ranks less uneven at the end.
            queues.append(WorkQueue(f"find_poison-{name}", lambda: todo()[::-1], src=info.world_size - 1))
            return queues[-1]

        t0 = time.perf_counter()
        store = extract_features(
            cfg, model, tok, rows, root, context=context, rank=info.rank, world_size=info.world_size,
            shard_size=size, claim=claim, contrast=False,
        )  # fmt: skip
        mine["seconds"] += time.perf_counter() - t0
        shards = plan_shards(len(rows), size)
        claimed = queues[0].claimed if queues else []
        mine["units"] += len(claimed)
        mine["rows"] += sum(shards[i][1] - shards[i][0] for i in claimed)
        dist_env.barrier()
        if info.rank == 0:
            store.write_index([r["id"] for r in rows], 0, shards)
        dist_env.barrier()
    return mine


def _copy_groups(job: ScoreJob, model, tok, context: dict, rows: list[dict], root: Path) -> tuple[int, int]:
    """Rank 0: the groups store's shards whose rows the training store holds (`find_poison.reuse`)."""
    import dataclasses

    from rapidun_dist.find_poison.reuse import copy_held_features
    from rapidun_dist.influence.features import make_extractor

    cfg = job.cfg
    plain = dataclasses.replace(cfg.influence, contrast="none")  # find_poison's features have no contrast
    extractor = make_extractor(model, plain, pad_id=tok.pad_token_id)
    train_root = feature_dirs(job.rd)[0]
    copied, computed = copy_held_features(
        cfg, extractor, tok, context, [(train_root, job.train)], rows, root, cfg.find_poison.unit_size
    )
    if copied:
        log.info(
            f"find_poison: {copied} of {len(rows)} known and reference rows' features copied from the training store"
        )
    return copied, computed


def influence_scores(job: ScoreJob, order: list[int] | None = None) -> tuple[dict | None, dict]:
    """{"forget": [n], "reference": [n]} float64 on rank 0 (None elsewhere), and this rank's comm stats."""
    from rapidun_dist.influence.gram import (
        GroupShard,
        comm_summary,
        distributed_group_scores,
        gather_scores_to_rank0,
    )
    from rapidun_dist.influence.store import load_features

    cfg, info = job.cfg, job.info
    fp, n, nf = cfg.find_poison, len(job.train), len(job.forget)
    train_dir, groups_dir = feature_dirs(job.rd)
    lo, hi = rank_slice(n, info.rank, info.world_size)  # this rank's rows of the store, in its order
    x = load_features(train_dir, list(range(lo, hi)))[0].to(device=info.device, dtype=torch.float64)
    order = store_order(job.train) if order is None else order
    rows = torch.tensor(order[lo:hi], dtype=torch.long)  # their positions in job.train
    glo, ghi = rank_slice(nf + len(job.reference), info.rank, info.world_size)
    g = load_features(groups_dir, list(range(glo, ghi)))[0].to(device=info.device, dtype=torch.float64)
    f_ids, r_ids = job.member_ids()
    g_ids = torch.cat([f_ids, r_ids])[glo:ghi].to(info.device)
    cut = max(0, min(ghi, nf) - glo)  # this rank's group rows: forget ones first
    groups = [GroupShard("forget", g[:cut], g_ids[:cut]), GroupShard("reference", g[cut:], g_ids[cut:])]
    res = distributed_group_scores(
        x, rows.to(info.device), groups=groups, agg=fp.agg, topk=fp.topk, trim=fp.trim, include_self=False,
        backend=cfg.influence.backend,
    )  # fmt: skip
    log.info(f"find_poison scores: {comm_summary(res['stats'])}")
    full = gather_scores_to_rank0(res["scores"], rows.to(info.device), n)
    full = None if full is None else {k: v.cpu() for k, v in full.items()}
    return full, res["stats"]
