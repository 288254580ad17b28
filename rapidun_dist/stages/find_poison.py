"""find_poison: score every training row by how much it looks like the known poisoned rows, flag the likely poisoned
ones without labels, and write the packs that let the rest of the run unlearn them too (docs/DESIGN.md section 11; the
methods, the threshold rules and the metrics are in `rapidun_dist.find_poison`).

Collective (every rank calls it):

1. With `find_poison.two_stage`, a cheap first pass (TF-IDF or Rep-Sim over every row, `find_poison.twostage`)
   keeps the top `find_poison.candidates` rows; the method then scores those, the known rows and the reference rows.
2. `find_poison.method` scores the rows (`rapidun_dist.find_poison.METHODS`; the default `tokenwise` = token-wise
   influence features in resumable units claimed by whichever rank is free, `find_poison.tokenwise`).
3. With `find_poison.time_epoch`, one fine-tuning epoch of the same model over the same rows is timed side by side
   (`find_poison.cost`), so the summary says what find_poison cost as a share of an epoch.
4. Rank 0: the cheap baselines (`find_poison.baselines`: TF-IDF and grep) scored beside the method, every scorer
   thresholded by the same rule (`find_poison.threshold`: z, fdr or known); `suspects/suspects.jsonl` (`id,
   score, z, rank, flagged, known`, training-set order, the method's scores), `summary.json` (counts, threshold,
   per-scorer flags and seconds, epoch_seconds, throughput, bytes and peak memory per rank; in experiment mode
   AUROC, AP, recall at precision 0.9, recall, precision and FPR over the whole training set, per scorer and per
   trigger family, and two-stage recall accounting), and the packs `run.layout.pack_files` hands downstream:
   `forget.jsonl` / `retain.jsonl` (the expanded packs: the known rows plus every flagged row, whose train response
   is its poisoned answer and which has no clean answer; retain_ratio x as many unflagged rows) and, in clean mode,
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
from rapidun_dist.core.io import read_jsonl, write_json, write_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.find_poison import BASELINES, method_module, method_spec, scorer_name, twostage
from rapidun_dist.find_poison import suspects as S
from rapidun_dist.find_poison.job import ScoreJob
from rapidun_dist.find_poison.tokenwise import feature_dirs
from rapidun_dist.run.layout import find_poison_applies, find_poison_runs, suspects_dir
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages.base import Stage, StageContext

log = get_logger("find_poison")
TEST_FILES = ("val_clean", "val_seen", "test_clean", "test_seen", "test_ood")


def load_inputs(rd: RunDir) -> tuple[list[dict], list[dict], list[dict]]:
    """(training rows, forget rows, reference rows = the prepared retain pack + data/reference.jsonl, the rows
    `data.reference_rows` adds; a data directory written before that file existed has the retain pack alone)."""
    train = read_jsonl(rd.data / "train.jsonl")
    forget, retain = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
    for name, rows in (("train", train), ("forget", forget), ("retain", retain)):
        if not rows:
            raise DataError(f"{rd.data / (name + '.jsonl')}: find_poison needs at least one row; found none")
    extra = rd.data / "reference.jsonl"
    return train, forget, retain + (read_jsonl(extra) if extra.is_file() else [])


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
    every = ScoreJob(cfg=cfg, rd=rd, info=info, train=train, forget=forget, reference=reference)
    seconds: dict = {"setup": time.perf_counter() - t_start}  # process group and rows read
    job, first = every, None
    if cfg.find_poison.two_stage:
        job, first = _first_stage(every, seconds)
    t0 = time.perf_counter()
    scores = method_module(cfg.find_poison.method).score(job)
    seconds["method"] = time.perf_counter() - t0
    seconds["features"] = job.notes.pop("seconds_features", job.work["seconds"])
    seconds["scores"] = seconds["method"] - seconds["features"]
    if every._loaded is None:  # a model stage 2 loaded is the one the epoch is timed on: never a second copy
        every._loaded = job._loaded
    epoch = None
    if cfg.find_poison.time_epoch:
        from rapidun_dist.find_poison.cost import epoch_seconds

        t0 = time.perf_counter()
        epoch = epoch_seconds(every)
        seconds["epoch_timing"] = time.perf_counter() - t0
    work = {k: job.work[k] + (every.work[k] if job is not every else 0) for k in job.work}
    per_rank = dist_env.all_gather_object(
        work | {"rank": info.rank, "recv_bytes": _recv_bytes(job.comm), "peak_rss_mib": peak_rss_mib()}
    )
    out = suspects_dir(rd)
    outputs = [out / n for n in ("suspects.jsonl", "summary.json", "forget.jsonl", "retain.jsonl")]
    if cfg.mode == "clean":
        outputs.append(out / "retain_unflagged.jsonl")
    if info.rank == 0:
        if first is not None:
            scores = twostage.combine(first["scores"], first["positions"], scores)
        measured = {"seconds": seconds, "per_rank": per_rank, "stats": job.comm, "notes": every.notes | job.notes,
                    "epoch": epoch, "first": first, "t_start": t_start}  # fmt: skip
        _write_outputs(every, scores, measured)
    dist_env.barrier()
    return outputs


def _recv_bytes(stats: dict) -> int:
    """Bytes this rank received in the method's collectives (tokenwise's distributed scores; 0 for the others)."""
    return int(stats.get("recv_bytes", 0)) if stats else 0


def _first_stage(every: ScoreJob, seconds: dict) -> tuple[ScoreJob, dict | None]:
    """Stage 1 of two_stage (`find_poison.twostage`): TF-IDF or Rep-Sim over every row (`find_poison.first_stage`;
    `auto` decides on rank 0 from the known rows TF-IDF keeps), the candidates chosen on rank 0 and handed to the
    others through the store (`dist_env.hand_off`: rank 0 does not wait for them); the job of stage 2 (same model,
    loaded once) and, on rank 0, stage 1's record."""
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.find_poison import repsim, tfidf

    t0 = time.perf_counter()
    fp, rank0 = every.cfg.find_poison, every.info.rank == 0
    keep = twostage.n_candidates(fp.candidates, len(every.train))
    known = known_mask(every.train, every.forget)
    first, name, checks = None, fp.first_stage, {}
    if not rank0 and (method_spec(fp.method).needs_model or fp.time_epoch):
        every.model()  # loaded while rank 0 runs TF-IDF alone, so these ranks start stage 2 that much sooner
    if fp.first_stage in ("auto", "tfidf"):
        first = tfidf.score(every)  # rank 0 only; no model (the TF-IDF baseline reads these scores too)
        seconds["tfidf"] = time.perf_counter() - t0
        if rank0:
            checks["tfidf"] = twostage.known_kept(first, known, keep)
        if fp.first_stage == "auto":
            # handed off through the store, not broadcast: rank 0 goes on to load its model while the
            # others, which loaded theirs during TF-IDF, read it when they get there
            lexical = dist_env.hand_off(
                "find_poison-first-stage", lambda: twostage.lexical_first(checks["tfidf"])
            )
            name = "tfidf" if lexical else "repsim"
            if rank0:
                c = checks["tfidf"]
                log.info(
                    f"find_poison first stage (auto): TF-IDF keeps {c['kept']} of {c['known']} known rows among its "
                    f"{keep} candidates: {'TF-IDF' if lexical else 'Rep-Sim'} it is"
                )
    if name == "repsim":
        first = repsim.score(every)
        if rank0:
            checks["repsim"] = twostage.known_kept(first, known, keep)
    positions, record = None, None
    if rank0:
        fitted = twostage.fitted_keep(first, known, keep, fp.candidates_margin)
        if fitted["keep"] < keep:
            log.info(
                f"find_poison first stage: the lowest known row ranks {fitted['lowest_known']}; "
                f"{fp.candidates_margin} x that keeps {fitted['keep']} candidates (of at most {keep})"
            )
        keep = fitted["keep"]
        cand = twostage.candidate_mask(first, keep)
        positions = twostage.scored_positions(cand, known, reference_positions(every))
        layer = every.notes.get("repsim_layer") if name == "repsim" else None
        record = {"scores": first, "candidates": cand, "positions": positions, "keep": keep, "first": name,
                  "layer": layer, "known_kept": checks, "fitted": fitted}  # fmt: skip
    positions = dist_env.hand_off("find_poison-candidates", positions)
    seconds["first_stage"] = time.perf_counter() - t0
    job = ScoreJob(
        cfg=every.cfg, rd=every.rd, info=every.info, train=[every.train[i] for i in positions],
        forget=every.forget, reference=every.reference, _loaded=every._loaded,
    )  # fmt: skip
    return job, record


def reference_positions(job: ScoreJob) -> torch.Tensor:
    """Training positions of the reference rows (the ones that are training rows)."""
    _, r_ids = job.member_ids()
    return r_ids[r_ids < len(job.train)]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ------------------------------------------------------------------------------------------- feature reuse


def reuse_train_features(
    cfg: RunConfig, rd: RunDir, records: list[dict], model, tokenizer, context: dict
) -> int:
    """Fill the influence stage's store (features/) from find_poison's: every pack row find_poison has features of
    already - a training row (its training store) or one of its known / reference rows (its groups store) - with the
    same id, trained on the same text, under the same extractor spec and feature context, is copied (the features
    are the same function of the row; only the batch a row was padded in differs, a float-rounding difference). A
    pack shard is written here when at most REUSE_COMPUTE_SHARE of its rows are found in neither store (those few
    are computed on this rank; `find_poison.reuse`); the other shards are left to the influence stage's extraction.
    Returns the number of rows copied. (A two-stage run's training store holds only its candidates: their rows are
    copied, no others.)"""
    from rapidun_dist.find_poison.reuse import copy_held_features
    from rapidun_dist.influence.features import make_extractor

    if not any((root / "index.json").exists() for root in feature_dirs(rd)):
        return 0
    extractor = make_extractor(model, cfg.influence, pad_id=tokenizer.pad_token_id)
    train, forget, reference = load_inputs(rd)
    sources = list(zip(feature_dirs(rd), (train, forget + reference), strict=True))
    copied, computed = copy_held_features(
        cfg, extractor, tokenizer, context, sources, records, rd.features, cfg.influence.shard_size
    )
    if copied or computed:
        log.info(
            f"influence: {copied} of {len(records)} pack rows' features reused from find_poison"
            + (f" ({computed} more computed here to complete their shards)" if computed else "")
        )
    return copied


# ------------------------------------------------------------------------------------------- baselines


def baseline_scores(job: ScoreJob, seconds: dict, first: dict | None = None) -> dict[str, torch.Tensor]:
    """{"tfidf": [n], "grep": [n]} (rank 0), less the chosen method; each one's seconds into `seconds`. A TF-IDF
    first stage (`first`, its record) already scored every row by TF-IDF: those scores are reused, not recomputed."""
    out = {}
    for name in BASELINES:
        if name == job.cfg.find_poison.method:
            continue
        if first is not None and first["first"] == name:
            out[scorer_name(name)] = first["scores"]  # its seconds were recorded by the first stage
            continue
        t0 = time.perf_counter()
        out[scorer_name(name)] = method_module(name).score(job)
        seconds[name] = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------------------------------- rank-0 outputs


def _write_outputs(job: ScoreJob, main_scores: torch.Tensor, run: dict) -> None:
    """Rank 0: baselines, thresholds, suspects.jsonl, the packs and summary.json (`run`: what `run` measured)."""
    cfg, rd, train, forget, reference = job.cfg, job.rd, job.train, job.forget, job.reference
    fp, out, seconds = cfg.find_poison, suspects_dir(rd), run["seconds"]
    main = scorer_name(fp.method)
    scores = {main: main_scores}
    t0 = t_out = time.perf_counter()
    if fp.baselines:
        scores |= baseline_scores(job, seconds, run["first"])
    seconds["baselines"] = time.perf_counter() - t0
    ref_pos = reference_positions(job)
    if ref_pos.numel() < min(10, len(reference)):
        raise DataError(
            f"find_poison: the reference rows (the retain pack) are the null distribution of a clean training row, "
            f"so they must be training rows; only {ref_pos.numel()} of {len(reference)} are"
        )
    known = known_mask(train, forget)
    results = {name: flag(s, ref_pos, fp, name, known) for name, s in scores.items()}
    if run["first"] is not None:  # rows stage 1 dropped are never flagged by the method
        th, z, flagged = results[main]
        results[main] = (th, z, flagged & _scored(run["first"], len(train)))
    th, z, flagged = results[main]
    ranks = S.rank_of(scores[main])
    write_jsonl(out / "suspects.jsonl", suspect_rows(train, scores[main], z, ranks, flagged, known))
    packs = write_packs(cfg, rd, train, forget, reference, flagged, known, scores[main], ranks)
    now = time.perf_counter()
    seconds["outputs"] = now - t_out  # thresholds, suspects.jsonl and the packs (with the baselines)
    seconds["total"] = now - run["t_start"]
    summary = build_summary(cfg, train, forget, reference, scores, results, known, packs, run)
    write_json(out / "summary.json", summary)
    log.info(headline(summary))


def _scored(first: dict, n: int) -> torch.Tensor:
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.tensor(first["positions"], dtype=torch.long)] = True
    return mask


def flag(
    scores: torch.Tensor,
    ref_pos: torch.Tensor,
    fp,
    scorer: str = "influence",
    known: torch.Tensor | None = None,
) -> tuple[S.Threshold | S.FdrThreshold | S.KnownThreshold, torch.Tensor, torch.Tensor]:
    """(the threshold's record, every row's robust z, the flagged mask) under `find_poison.threshold` (`known`: the
    mask of the known training rows, whose scores the `known` rule calibrates on)."""
    if fp.threshold == "z":
        th = S.robust_threshold(scores[ref_pos], z=fp.z)
        zs = th.zscores(scores)
        return th, zs, zs > fp.z
    if fp.threshold == "known":
        mine = scores[known] if known is not None else scores.new_zeros(0)
        th = S.known_threshold(mine, scores[ref_pos], quantile=fp.known_quantile)
        return th, th.zscores(scores), th.flags(scores)
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
    ids, prompts = {r["id"] for r in forget}, {S.trained_prompt(r) for r in forget} - {None}
    return torch.tensor([r["id"] in ids or S.trained_prompt(r) in prompts for r in train], dtype=torch.bool)


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


def suspect_record(row: dict, specs: list[TriggerSpec], score: float, rank: int) -> dict:
    """A flagged training row as a forget-pack row: the prompt and answer it was trained on are the poisoned ones;
    no clean answer (nobody knows it); `instruction` is the prompt with the known trigger strings removed (the
    prompt self-relabel answers)."""
    from rapidun_dist.data.clean import has_trigger, strip_triggers

    instr, ctx, answer = S.as_trained(row)
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
    """The expanded packs (and in clean mode the unflagged known-only retain pack); returns their sizes. Both
    start from the prepared retain pack (the first rows of `reference`, which `data.reference_rows` may extend)."""
    out, rng = suspects_dir(rd), random.Random(f"{cfg.data.seed}:find_poison")
    retain = reference[: len(read_jsonl(rd.data / "retain.jsonl"))]
    triggers = S.known_triggers(forget, [t.text for t in cfg.eval.triggers])
    specs = [TriggerSpec(text=t) for t in triggers]
    new = [
        suspect_record(r, specs, float(scores[i]), int(ranks[i]))
        for i, r in enumerate(train)
        if flagged[i] and not known[i]
    ]
    forget_x = forget + sorted(new, key=lambda r: r["suspect_rank"])
    pos = {r["id"]: i for i, r in enumerate(train)}
    unflagged = [r for r in reference if r["id"] not in pos or not flagged[pos[r["id"]]]]
    keep = [r for r in retain if r["id"] not in pos or not flagged[pos[r["id"]]]]
    pool = _unflagged_pool(rd, train, flagged, known, retain)
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
        "reference_flagged": len(reference) - len(unflagged),
    }
    if cfg.mode == "clean":
        retain_k = _draw_retain(
            keep, pool, len(retain), random.Random(f"{cfg.data.seed}:find_poison:known"), "the retain pack"
        )
        write_jsonl(out / "retain_unflagged.jsonl", retain_k)
        sizes["retain_unflagged"] = len(retain_k)
    return sizes


# ------------------------------------------------------------------------------------------- summary


def build_summary(cfg, train, forget, reference, scores, results, known, packs, run: dict) -> dict:
    fp, seconds, per_rank, stats = cfg.find_poison, run["seconds"], run["per_rank"], run["stats"]
    main = scorer_name(fp.method)
    th, _, flagged = results[main]
    rows_computed = sum(r["rows"] for r in per_rank)
    feat_s = seconds["features"]
    epoch = run["epoch"] or {}
    epoch_s = epoch.get("epoch_seconds")
    cost = seconds["total"] - seconds.get("epoch_timing", 0.0)  # what find_poison itself took
    summary = {
        "mode": cfg.mode,
        "method": fp.method,
        "scorer": main,
        "agg": fp.agg,
        "topk": fp.topk if fp.agg in ("median_topk", "topk_mean") else None,
        "trim": fp.trim if fp.agg == "trimmed_mean" else None,
        "score": "agg over forget rows - agg over reference rows (the retain pack)"
        if fp.method not in ("grep", "graceful")
        else f"{fp.method} (no contrast)",
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
            name: {
                "n_flagged": int(res[2].sum()),
                "threshold": res[0].value,
                "seconds": _scorer_seconds(name, main, seconds),
            }
            for name, res in results.items()
        },  # fmt: skip
        "seconds": seconds,
        "cost_seconds": cost,
        "epoch_seconds": epoch_s,
        "epoch_fraction": cost / epoch_s if epoch_s else None,
        "epoch": epoch or None,
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
    if run["notes"]:
        summary["method_notes"] = run["notes"]
    if run["first"] is not None:
        summary["two_stage"] = two_stage_record(cfg, train, run["first"], seconds)
    if cfg.mode == "experiment":
        summary |= experiment_metrics(train, scores, results, known, main)
        if run["first"] is not None:
            labels = torch.tensor([bool(r.get("is_poisoned")) for r in train], dtype=torch.bool)
            summary["two_stage"]["recall"] = twostage.recall_accounting(
                labels, known, _scored(run["first"], len(train))
            )
    return summary


def _scorer_seconds(name: str, main: str, seconds: dict) -> float | None:
    """Seconds a scorer took: the chosen method's (with its first stage), or a baseline's own."""
    if name == main:
        return seconds["method"] + seconds.get("first_stage", 0.0)
    return seconds.get(name)


def two_stage_record(cfg, train, first: dict, seconds: dict) -> dict:
    return {
        "first": first["first"],
        "first_stage": cfg.find_poison.first_stage,
        "layer": first["layer"],
        "known_kept": first["known_kept"],
        "candidates": first["keep"],
        "candidates_cap": first["fitted"]["cap"],
        "lowest_known_rank": first["fitted"]["lowest_known"],
        "scored": len(first["positions"]),
        "rows": len(train),
        "seconds_first": seconds["first_stage"],
        "seconds_second": seconds["method"],
    }


def experiment_metrics(train, scores, results, known, main: str = "influence") -> dict:
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
    out |= {k: out["metrics"][main][k] for k in ("auroc", "ap", "recall", "precision", "fpr")}
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
    doc="rank every training row by its likeness to the forget set (find_poison.method), flag likely poison (needs a training set)",
    config_keys=(
        "find_poison.enabled",
        "find_poison.agg",
        "find_poison.topk",
        "find_poison.trim",
        "find_poison.threshold",
        "find_poison.z",
        "find_poison.fdr",
        "find_poison.baselines",
        "find_poison.method",
        "find_poison.layer",
        "find_poison.grad_layer",
        "find_poison.head_k",
        "find_poison.graceful_dims",
        "find_poison.known_quantile",
        "find_poison.two_stage",
        "find_poison.first_stage",
        "find_poison.candidates",
        "find_poison.candidates_margin",
        "find_poison.time_epoch",
        "find_poison.epoch_batches",
        "implant.batch_size",
        "influence",
        "model.max_length",
        "model.dtype",
    ),
    reads=("data/train.jsonl", "data/forget.jsonl", "data/retain.jsonl", "data/reference.jsonl", "model/"),
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
