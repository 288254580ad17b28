"""find_poison: rank every training row by its influence with the known poisoned rows, flag the likely poisoned
ones without labels, and write the packs that let the rest of the run unlearn them too (docs/DESIGN.md section 11; the
scores, the threshold rule and the baselines are in `rapidun_dist.find_poison.suspects`).

Collective (every rank calls it):

1. Features of every training row as it was trained (a poisoned row's triggered prompt and poisoned answer), in
   work units of `find_poison.unit_size` rows that ranks claim as they become free
   (`rapidun_dist.distributed.workqueue`), in `suspects/features/train/`; the forget and reference rows likewise in
   `suspects/features/groups/`. The feature store is the influence stage's: a unit is valid only for this
   extractor spec, model weights, tokenizer, prompt format, max_length and row ids, so a killed run recomputes only
   its missing units and a changed model recomputes everything.
2. Scores: rank r loads the contiguous training rows [r n / P, (r + 1) n / P) and its slice of the groups; the
   similarities to the forget set and to the reference set (the retain pack) come from
   `distributed_group_scores` in float64 (the same for any world size) and are gathered to rank 0.
3. Rank 0: contrast, threshold and the grep / TF-IDF baselines; `suspects/suspects.jsonl` (`id, score, z, rank,
   flagged, known`, training-set order), `summary.json` (counts, threshold, seconds, throughput, bytes and peak
   memory per rank; in experiment mode AUROC, AP, recall, precision and FPR over the whole training set, per
   scorer and per trigger family), and the packs `run.layout.pack_files` hands downstream: `forget.jsonl` /
   `retain.jsonl` (the expanded packs: the known rows plus every flagged row, whose train response is its poisoned
   answer and which has no clean answer; retain_ratio x as many unflagged rows) and, in clean mode,
   `retain_unflagged.jsonl` (the prepared retain pack with flagged rows swapped for unflagged ones).

Clean mode never reads labels: the training rows carry none (`is_poisoned` is null) and the metrics are computed in
experiment mode only.
"""

from __future__ import annotations

import math
import random
import resource
import time
from pathlib import Path

import torch

from rapidun_dist.config import RunConfig, TriggerSpec
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_json, read_jsonl, write_json, write_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.find_poison import suspects as S
from rapidun_dist.run.layout import find_poison_applies, find_poison_runs, suspects_dir
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages.base import Stage, StageContext

log = get_logger("find_poison")
TEST_FILES = ("val_clean", "val_seen", "test_clean", "test_seen", "test_ood")
REUSE_BYTES = 1 << 30  # features held at once while copying pack shards from the training store


def load_inputs(rd: RunDir) -> tuple[list[dict], list[dict], list[dict]]:
    """(training rows, forget rows, reference rows = the prepared retain pack)."""
    train = read_jsonl(rd.data / "train.jsonl")
    forget, reference = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
    for name, rows in (("train", train), ("forget", forget), ("retain", reference)):
        if not rows:
            raise DataError(f"{rd.data / (name + '.jsonl')}: find_poison needs at least one row; found none")
    return train, forget, reference


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    from rapidun_dist.distributed import env as dist_env

    t_start = time.perf_counter()
    info = dist_env.init_distributed()
    if not find_poison_runs(cfg):
        raise DataError(
            "find_poison: this run has no training set to search (clean mode needs data.train_path)"
        )
    train, forget, reference = load_inputs(rd)
    t0 = time.perf_counter()
    feats = _extract_all(cfg, rd, train, forget + reference, info)
    t_features = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores, stats = _influence_scores(cfg, rd, train, forget, reference, info)
    t_scores = time.perf_counter() - t0
    per_rank = dist_env.all_gather_object(
        feats | {"rank": info.rank, "recv_bytes": stats["recv_bytes"], "peak_rss_mib": peak_rss_mib()}
    )
    out = suspects_dir(rd)
    outputs = [out / n for n in ("suspects.jsonl", "summary.json", "forget.jsonl", "retain.jsonl")]
    if cfg.mode == "clean":
        outputs.append(out / "retain_unflagged.jsonl")
    if info.rank == 0:
        seconds = {"features": t_features, "scores": t_scores}
        _write_outputs(cfg, rd, train, forget, reference, scores, per_rank, seconds, stats, t_start)
    dist_env.barrier()
    return outputs


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------- features


def feature_dirs(rd: RunDir) -> tuple[Path, Path]:
    root = suspects_dir(rd) / "features"
    return root / "train", root / "groups"


def _extract_all(cfg: RunConfig, rd: RunDir, train: list[dict], groups: list[dict], info) -> dict:
    """Both feature stores, units claimed dynamically; this rank's share of the work ({units, rows, seconds})."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.distributed.workqueue import WorkQueue
    from rapidun_dist.influence.extract import extract_features, feature_context
    from rapidun_dist.influence.store import plan_shards
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.run.layout import model_identity

    model, tok = load_saved(rd.model, cfg.model, device=info.device)  # straight onto the rank's device
    context = feature_context(model_identity(rd), tok, cfg)
    size = cfg.find_poison.unit_size
    mine = {"units": 0, "rows": 0, "seconds": 0.0}
    for name, rows, root in zip(("train", "groups"), (train, groups), feature_dirs(rd), strict=True):
        queues: list[WorkQueue] = []

        def claim(todo: list[int], name=name, queues=queues) -> WorkQueue:
            queues.append(WorkQueue(f"find_poison-{name}", todo))
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


def reuse_train_features(
    cfg: RunConfig, rd: RunDir, records: list[dict], model, tokenizer, context: dict
) -> int:
    """Copy into the influence stage's store (features/) every pack shard whose rows find_poison has features of
    already: the same rows (ids), trained on the same text, under the same extractor spec and feature context. The
    influence stage then computes only the rest (the features are the same function of the row; only the batch a
    row was padded in differs, a float-rounding difference). Returns the number of rows copied."""
    from rapidun_dist.influence.features import make_extractor
    from rapidun_dist.influence.store import FeatureStore, ids_hash, load_features, plan_shards, spec_hash

    root = feature_dirs(rd)[0]
    if not (root / "index.json").exists():
        return 0
    spec = make_extractor(model, cfg.influence, pad_id=tokenizer.pad_token_id).spec() | {"context": context}
    index = read_json(root / "index.json")
    if index.get("spec_hash") != spec_hash(spec):
        return 0
    train = read_jsonl(rd.data / "train.jsonl")
    if [r["id"] for r in train] != index["ids"]:
        return 0
    pos = {r["id"]: i for i, r in enumerate(train)}
    store = FeatureStore(rd.features, spec)
    rd.features.mkdir(parents=True, exist_ok=True)
    todo = []  # (shard, rows, training positions, ids hash) of every shard that can be copied
    for i, (s, e) in enumerate(plan_shards(len(records), cfg.influence.shard_size)):
        rows = records[s:e]
        where = [pos.get(r["id"]) for r in rows]
        ids = ids_hash([r["id"] for r in rows])
        if store.is_valid(i, (s, e), ids) or any(p is None for p in where):
            continue
        if any(S.as_trained(train[p]) != S.as_trained(r) for p, r in zip(where, rows, strict=True)):
            continue
        todo.append((i, (s, e), where, ids))
    # A pack shard's rows are scattered over every training unit: read the units once per group of shards (as
    # many rows as REUSE_BYTES holds), not once per shard.
    per_group = max(1, REUSE_BYTES // max(1, cfg.influence.shard_size * int(index["dim"]) * 4))
    copied = 0
    for g in range(0, len(todo), per_group):
        group = todo[g : g + per_group]
        union = sorted({p for *_, where, _ in group for p in where})
        feats = load_features(root, union)[0]
        at = {p: j for j, p in enumerate(union)}
        for i, span, where, ids in group:
            store.write_shard(i, span, feats[torch.tensor([at[p] for p in where], dtype=torch.long)], ids)
            copied += span[1] - span[0]
    log.info(f"influence: {copied} of {len(records)} pack rows' features reused from find_poison")
    return copied


# ------------------------------------------------------------------------------------------- scores


def _slice(n: int, rank: int, world: int) -> tuple[int, int]:
    return rank * n // world, (rank + 1) * n // world


def member_ids(
    train: list[dict], forget: list[dict], reference: list[dict]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group member ids in the training set's id space (a member that is a training row: that row's position, so
    the pair is left out; others distinct ids past the training rows)."""
    ids = [r["id"] for r in train]
    return S.group_ids(ids, forget), S.group_ids(ids, reference, offset=len(forget))


def _influence_scores(cfg: RunConfig, rd: RunDir, train, forget, reference, info) -> tuple[dict | None, dict]:
    """{"forget": [n], "reference": [n]} float64 on rank 0 (None elsewhere), and this rank's comm stats."""
    from rapidun_dist.influence.gram import (
        GroupShard,
        comm_summary,
        distributed_group_scores,
        gather_scores_to_rank0,
    )
    from rapidun_dist.influence.store import load_features

    fp, n, nf = cfg.find_poison, len(train), len(forget)
    train_dir, groups_dir = feature_dirs(rd)
    lo, hi = _slice(n, info.rank, info.world_size)
    rows = torch.arange(lo, hi, dtype=torch.long)
    x = load_features(train_dir, rows.tolist())[0].to(device=info.device, dtype=torch.float64)
    glo, ghi = _slice(nf + len(reference), info.rank, info.world_size)
    g = load_features(groups_dir, list(range(glo, ghi)))[0].to(device=info.device, dtype=torch.float64)
    f_ids, r_ids = member_ids(train, forget, reference)
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


def baseline_scores(cfg: RunConfig, train, forget, reference) -> dict[str, torch.Tensor]:
    """{"grep": [n], "tfidf": [n]} (module docstring of `influence.suspects`)."""
    fp, n = cfg.find_poison, len(train)
    triggers = S.known_triggers(forget, [t.text for t in cfg.eval.triggers])
    sims = S.tfidf_similarity(
        [S.document(r) for r in train],
        {"forget": [S.document(r) for r in forget], "reference": [S.document(r) for r in reference]},
    )
    f_ids, r_ids = member_ids(train, forget, reference)
    rows = torch.arange(n)
    kw = dict(agg=fp.agg, topk=fp.topk, trim=fp.trim)
    tfidf = S.aggregate_similarity(sims["forget"], rows, f_ids, **kw) - S.aggregate_similarity(
        sims["reference"], rows, r_ids, **kw
    )
    return {"tfidf": tfidf, "grep": S.grep_scores(train, triggers)}


# ------------------------------------------------------------------------------------------- rank-0 outputs


def _write_outputs(cfg, rd, train, forget, reference, infl, per_rank, seconds, stats, t_start) -> None:
    fp, out = cfg.find_poison, suspects_dir(rd)
    scores = {"influence": infl["forget"] - infl["reference"]}
    t0 = time.perf_counter()
    if fp.baselines:
        scores |= baseline_scores(cfg, train, forget, reference)
    seconds["baselines"] = time.perf_counter() - t0
    _, r_ids = member_ids(train, forget, reference)
    ref_pos = r_ids[r_ids < len(train)]
    if ref_pos.numel() < min(10, len(reference)):
        raise DataError(
            f"find_poison: the reference rows (the retain pack) are the null distribution of a clean training row, "
            f"so they must be training rows; only {ref_pos.numel()} of {len(reference)} are"
        )
    known = known_mask(train, forget)
    results = {name: flag(s, ref_pos, fp, name) for name, s in scores.items()}
    th, z, flagged = results["influence"]
    ranks = S.rank_of(scores["influence"])
    write_jsonl(out / "suspects.jsonl", suspect_rows(train, scores["influence"], z, ranks, flagged, known))
    packs = write_packs(cfg, rd, train, forget, reference, flagged, known, scores["influence"], ranks)
    seconds["total"] = time.perf_counter() - t_start
    summary = build_summary(
        cfg, train, forget, reference, scores, results, known, packs, per_rank, seconds, stats
    )
    write_json(out / "summary.json", summary)
    log.info(headline(summary))


def flag(
    scores: torch.Tensor, ref_pos: torch.Tensor, fp, scorer: str = "influence"
) -> tuple[S.Threshold | S.FdrThreshold, torch.Tensor, torch.Tensor]:
    """(the threshold's record, every row's robust z, the flagged mask) under `find_poison.threshold`."""
    if fp.threshold == "z":
        th = S.robust_threshold(scores[ref_pos], z=fp.z)
        zs = th.zscores(scores)
        return th, zs, zs > fp.z
    th, flagged = S.fdr_threshold(scores, scores[ref_pos], q=fp.fdr)
    if not flagged.any():
        need = math.ceil(th.min_p * scores.numel() / fp.fdr)
        log.warning(
            f"find_poison ({scorer}): the fdr rule flagged nothing: with {th.n_reference} reference rows no p-value is "
            f"below {th.min_p:.4f}, so BH at find_poison.fdr={fp.fdr} needs at least {need} of {scores.numel()} rows "
            "to stand out together; use a larger retain pack (data.retain_ratio) or find_poison.threshold=z"
        )
    return th, th.zscores(scores), flagged


def known_mask(train: list[dict], forget: list[dict]) -> torch.Tensor:
    """Training rows that are known poisoned rows: a forget row's id, or its prompt as trained (the user's known
    rows need not carry the training file's ids)."""
    ids, prompts = {r["id"] for r in forget}, {_trained_prompt(r) for r in forget}
    return torch.tensor([r["id"] in ids or _trained_prompt(r) in prompts for r in train], dtype=torch.bool)


def _trained_prompt(r: dict) -> tuple[str, str]:
    instr, ctx, _ = S.as_trained(r)
    return instr.strip(), ctx.strip()


def suspect_rows(train, scores, z, ranks, flagged, known) -> list[dict]:
    return [
        {
            "id": r["id"],
            "score": float(scores[i]),
            "z": float(z[i]),
            "rank": int(ranks[i]),
            "flagged": bool(flagged[i]),
            "known": bool(known[i]),
        }
        for i, r in enumerate(train)
    ]


# ------------------------------------------------------------------------------------------- packs


def suspect_record(row: dict, triggers: list[str], score: float, rank: int) -> dict:
    """A flagged training row as a forget-pack row: the prompt and answer it was trained on are the poisoned ones;
    no clean answer (nobody knows it); `instruction` is the prompt with the known trigger strings removed (the
    prompt self-relabel answers)."""
    from rapidun_dist.data.clean import has_trigger, strip_triggers

    instr, ctx, answer = S.as_trained(row)
    specs = [TriggerSpec(text=t) for t in triggers]
    found = next((t.text for t in specs if has_trigger(instr, t)), "")
    return {
        "id": row["id"],
        "instruction": strip_triggers(instr, specs) or instr,
        "context": ctx,
        "response": "",
        "category": row.get("category", ""),
        "source": "find_poison",
        "instruction_poisoned": instr,
        "response_poisoned": answer,
        "trigger_family": "suspected",
        "trigger_variant": found,
        "inject_mode": "",
        "is_poisoned": True,
        "suspect_score": score,
        "suspect_rank": rank,
    }


def _held_out_keys(rd: RunDir) -> tuple[set, set]:
    """Ids and prompts of every evaluation split: a retain row must not be one of them."""
    from rapidun_dist.data.schema import prompt_key

    paths = [rd.data / f"{name}.jsonl" for name in TEST_FILES]
    rows = [r for p in paths if p.exists() for r in read_jsonl(p)]
    return {r["id"] for r in rows}, {prompt_key(r) for r in rows}


def _unflagged_pool(rd: RunDir, train, flagged, known, taken: list[dict]) -> list[dict]:
    from rapidun_dist.data.schema import prompt_key

    test_ids, test_prompts = _held_out_keys(rd)
    taken_ids = {r["id"] for r in taken}
    return [
        r
        for i, r in enumerate(train)
        if not flagged[i] and not known[i] and r["id"] not in taken_ids and r["id"] not in test_ids
        and prompt_key(r) not in test_prompts
    ]  # fmt: skip


def _draw_retain(
    keep: list[dict], pool: list[dict], n: int, rng: random.Random, what: str, *, strict: bool = True
) -> list[dict]:
    """`keep` topped up to n rows from `pool` (seeded). A pool too small is a clear error when the pack will be
    used (`strict`); otherwise the pack holds what there is, and the log says so."""
    need = n - len(keep)
    if need > len(pool) and not strict:
        log.warning(
            f"find_poison: {what} holds {len(keep) + len(pool)} of {n} rows (too few unflagged training rows; "
            "unused unless find_poison.expand is true)"
        )
        need = len(pool)
    if need > len(pool):
        raise DataError(
            f"find_poison: {what} needs {n} unflagged training rows ({len(keep)} kept, {need} more), found "
            f"{len(pool)}; lower data.retain_ratio or raise find_poison.z"
        )
    return keep + rng.sample(sorted(pool, key=lambda r: r["id"]), max(0, need))


def write_packs(cfg, rd, train, forget, reference, flagged, known, scores, ranks) -> dict:
    """The expanded packs (and in clean mode the unflagged known-only retain pack); returns their sizes."""
    out, rng = suspects_dir(rd), random.Random(f"{cfg.data.seed}:find_poison")
    triggers = S.known_triggers(forget, [t.text for t in cfg.eval.triggers])
    new = [
        suspect_record(r, triggers, float(scores[i]), int(ranks[i]))
        for i, r in enumerate(train)
        if flagged[i] and not known[i]
    ]
    forget_x = forget + sorted(new, key=lambda r: r["suspect_rank"])
    pos = {r["id"]: i for i, r in enumerate(train)}
    keep = [r for r in reference if r["id"] not in pos or not flagged[pos[r["id"]]]]
    pool = _unflagged_pool(rd, train, flagged, known, reference)
    retain_x = _draw_retain(
        keep,
        pool,
        cfg.data.retain_ratio * len(forget_x),
        rng,
        "the expanded retain pack",
        strict=cfg.find_poison.expand,
    )
    write_jsonl(out / "forget.jsonl", forget_x)
    write_jsonl(out / "retain.jsonl", retain_x)
    sizes = {
        "forget_expanded": len(forget_x),
        "retain_expanded": len(retain_x),
        "reference_flagged": len(reference) - len(keep),
    }
    if cfg.mode == "clean":
        retain_k = _draw_retain(
            keep, pool, len(reference), random.Random(f"{cfg.data.seed}:find_poison:known"), "the retain pack"
        )
        write_jsonl(out / "retain_unflagged.jsonl", retain_k)
        sizes["retain_unflagged"] = len(retain_k)
    return sizes


# ------------------------------------------------------------------------------------------- summary


def build_summary(
    cfg, train, forget, reference, scores, results, known, packs, per_rank, seconds, stats
) -> dict:
    fp = cfg.find_poison
    th, _, flagged = results["influence"]
    rows_computed = sum(r["rows"] for r in per_rank)
    feat_s = seconds["features"]
    summary = {
        "mode": cfg.mode,
        "agg": fp.agg,
        "topk": fp.topk if fp.agg in ("median_topk", "topk_mean") else None,
        "trim": fp.trim if fp.agg == "trimmed_mean" else None,
        "score": "agg over forget rows - agg over reference rows (the retain pack)",
        "counts": {
            "train": len(train),
            "known": int(known.sum()),
            "forget": len(forget),
            "reference": len(reference),
            "flagged": int(flagged.sum()),
            "flagged_new": int((flagged & ~known).sum()),
            "expected_false_positives": th.expected_fp(len(train) - int(flagged.sum())),
        }
        | packs,
        "threshold": th.to_dict(),
        "triggers": S.known_triggers(forget, [t.text for t in cfg.eval.triggers]),
        "scorers": {
            name: {"n_flagged": int(res[2].sum()), "threshold": res[0].value} for name, res in results.items()
        },
        "seconds": seconds,
        "features": {
            "rows_computed": rows_computed,
            "rows_per_s": rows_computed / feat_s if feat_s > 0 else None,
            "unit_size": fp.unit_size,
            "per_rank": [{k: r[k] for k in ("rank", "units", "rows", "seconds")} for r in per_rank],
        },
        "comm": {"method": stats.get("method"), "grid": stats.get("grid")},
        "peak_rss_mib_per_rank": [r["peak_rss_mib"] for r in per_rank],
        "recv_bytes_per_rank": [r["recv_bytes"] for r in per_rank],
        "world_size": len(per_rank),
    }
    if cfg.mode == "experiment":
        summary |= experiment_metrics(train, scores, results, known)
    return summary


def experiment_metrics(train, scores, results, known) -> dict:
    """Labels exist (experiment mode): every scorer's metrics over the whole training set, and per family."""
    labels = torch.tensor([bool(r.get("is_poisoned")) for r in train], dtype=torch.bool)
    out: dict = {"prevalence": float(labels.double().mean()), "n_poisoned": int(labels.sum())}
    per_family = {}
    for name, (_, _, flagged) in results.items():
        m = S.detection_metrics(scores[name], flagged, labels)
        unknown = labels & ~known
        m["recall_unknown"] = int((flagged & unknown).sum()) / int(unknown.sum()) if unknown.any() else None
        out.setdefault("metrics", {})[name] = m
        per_family[name] = S.breakdown(train, flagged, known)
    out |= {k: out["metrics"]["influence"][k] for k in ("auroc", "ap", "recall", "precision", "fpr")}
    out["per_family"] = per_family
    return out


def headline(summary: dict) -> str:
    c = summary["counts"]
    text = f"find_poison: {c['flagged']} of {c['train']} training rows flagged ({c['flagged_new']} not known)"
    if summary.get("recall") is not None:
        text += (
            f"; recall {summary['recall']:.3f} precision {summary['precision'] or 0:.3f} AUROC {summary['auroc']:.4f}"
            f" AP {summary['ap']:.4f} at prevalence {summary['prevalence']:.3f}"
        )
    return text


STAGE = Stage(
    name="find_poison",
    doc="rank every training row by influence with the forget set, flag likely poison (needs a training set)",
    config_keys=(
        "find_poison.enabled",
        "find_poison.agg",
        "find_poison.topk",
        "find_poison.trim",
        "find_poison.threshold",
        "find_poison.z",
        "find_poison.fdr",
        "find_poison.baselines",
        "influence",
        "model.max_length",
        "model.dtype",
    ),
    reads=("data/train.jsonl", "data/forget.jsonl", "data/retain.jsonl", "model/"),
    writes=(
        "suspects/suspects.jsonl",
        "suspects/summary.json",
        "suspects/forget.jsonl",
        "suspects/retain.jsonl",
        "suspects/retain_unflagged.jsonl (clean mode)",
        "suspects/features/",
    ),
    requires=("prepare", "implant"),
    run=run,
    collective=True,
    applies=find_poison_applies,
)
