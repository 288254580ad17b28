"""Influence and weights stages: sharded features -> directional scores -> robust weights.

Runs on one process or on P ranks (launch/influence.py). Features: rows are forget then retain; shards
are owned by ranks balanced by token count and skipped when already valid (resume). Scores: one dense
computation on a single process, the tiled distributed computation otherwise. Rank 0 writes shared files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.errors import DataError
from rapidun_dist.influence.features import make_extractor
from rapidun_dist.influence.store import FeatureStore, assign_shards, load_features, plan_shards
from rapidun_dist.io import read_jsonl, save_safetensors, write_jsonl
from rapidun_dist.logging import Progress, get_logger
from rapidun_dist.rundir import RunDir
from rapidun_dist.train import encode_records

log = get_logger("influence")
DENSE_BLOCKS_MAX = 4096  # write blocks.safetensors only when n_forget + n_retain is at most this


def load_packs(rd: RunDir) -> tuple[list[dict], list[dict]]:
    forget, retain = read_jsonl(rd.data / "forget.jsonl"), read_jsonl(rd.data / "retain.jsonl")
    if not forget:
        raise DataError(f"{rd.data / 'forget.jsonl'}: the forget set is empty")
    if not retain:
        raise DataError(f"{rd.data / 'retain.jsonl'}: the retain set is empty")
    return forget, retain


def extract_features(
    cfg: RunConfig,
    model,
    tokenizer,
    records: list[dict],
    store_dir: Path,
    *,
    rank: int = 0,
    world_size: int = 1,
) -> FeatureStore:
    """Compute (only) this rank's missing shards of features for `records` (global row order)."""
    examples = encode_records(records, tokenizer, cfg.model.max_length)
    extractor = make_extractor(model, cfg.influence, pad_id=tokenizer.pad_token_id)
    store = FeatureStore(store_dir, extractor.spec())
    store_dir.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(len(examples), cfg.influence.shard_size)
    owners = assign_shards(shards, [len(e["input_ids"]) for e in examples], world_size)
    mine = [i for i, o in enumerate(owners) if o == rank and not store.is_valid(i, shards[i])]
    n_rows = sum(shards[i][1] - shards[i][0] for i in mine)
    skipped = sum(1 for i, o in enumerate(owners) if o == rank) - len(mine)
    log.info(f"features: {len(shards)} shards, {len(mine)} to compute on this rank ({skipped} valid already)")
    progress = Progress(n_rows, "features", unit="sample")
    model.eval()
    for i in mine:
        s, e = shards[i]
        order = sorted(
            range(s, e), key=lambda r: (len(examples[r]["input_ids"]), r)
        )  # less padding per batch
        feats = torch.zeros(e - s, extractor.dim)
        for b in range(0, len(order), cfg.influence.batch_size):
            rows = order[b : b + cfg.influence.batch_size]
            feats[[r - s for r in rows]] = extractor([examples[r] for r in rows]).detach().float().cpu()
            progress.update(len(rows))
        store.write_shard(i, shards[i], feats)
    return store


def run_influence(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.models.loading import load_saved

    info = dist_env.init_distributed()
    forget, retain = load_packs(rd)
    model, tok = load_saved(rd.model, cfg.model)
    model.to(info.device)
    records = forget + retain
    store = extract_features(
        cfg, model, tok, records, rd.features, rank=info.rank, world_size=info.world_size
    )
    dist_env.barrier()
    shards = plan_shards(len(records), cfg.influence.shard_size)
    if info.rank == 0:
        store.write_index([r["id"] for r in records], len(forget), shards)
    dist_env.barrier()
    scores = directional_scores(
        cfg,
        rd,
        n_forget=len(forget),
        n_total=len(records),
        rank=info.rank,
        world_size=info.world_size,
        device=info.device,
    )
    outputs = [rd.features / "index.json", rd.influence / "scores.jsonl"]
    if info.rank == 0:
        write_jsonl(rd.influence / "scores.jsonl", _score_rows(forget, retain, scores))
        if len(records) <= DENSE_BLOCKS_MAX:
            feats, _ = load_features(rd.features)
            gram = feats.double() @ feats.double().T
            nf = len(forget)
            save_safetensors(
                rd.influence / "blocks.safetensors",
                {
                    "FF": gram[:nf, :nf].float(),
                    "FR": gram[:nf, nf:].float(),
                    "RF": gram[nf:, :nf].float(),
                    "RR": gram[nf:, nf:].float(),
                },
            )
            outputs.append(rd.influence / "blocks.safetensors")
    dist_env.barrier()
    return outputs


def directional_scores(
    cfg: RunConfig,
    rd: RunDir,
    *,
    n_forget: int,
    n_total: int,
    rank: int,
    world_size: int,
    device: torch.device | str = "cpu",
) -> dict | None:
    """{ff, fr, rr, rf} on rank 0 (None elsewhere): dense on one process, tiled across ranks otherwise.

    Rank r takes the contiguous rows [r n / P, (r + 1) n / P) (it loads only the shards covering them) and
    computes them in float64 on `device` (NCCL needs device tensors): the stored float32 features are then
    multiplied exactly as the dense path does, so the scores do not depend on the world size (to ~1e-12).
    The float64 GEMM costs 2 n^2 K / P flops per rank: seconds on a GPU, small next to feature extraction
    (docs/scaling.md); the float32 Triton path stays available to direct callers of the block code."""
    w = cfg.weights
    kw = dict(agg=w.agg, topk=w.topk, trim=w.trim, include_self=w.include_self)
    if world_size == 1:
        from rapidun_dist.weights.scores import dense_directional_scores

        feats, _ = load_features(rd.features)
        return dense_directional_scores(feats[:n_forget], feats[n_forget:], **kw)
    from rapidun_dist.distributed.blocks import distributed_directional_scores, gather_scores_to_rank0
    from rapidun_dist.weights.scores import split_directional

    lo, hi = (
        rank * n_total // world_size,
        (rank + 1) * n_total // world_size,
    )  # contiguous: few shards to load
    rows = torch.arange(lo, hi, dtype=torch.long)
    feats, _ = load_features(rd.features, rows.tolist())
    feats = feats.to(device=device, dtype=torch.float64)
    local = distributed_directional_scores(
        feats, rows.to(device), n_forget, n_total, tile_size=cfg.influence.tile_size, **kw
    )
    log.info(f"blocks: {_comm_summary(local['stats'])}")
    full = gather_scores_to_rank0(local, rows, n_total)
    return None if full is None else split_directional(full["self_score"], full["cross_score"], n_forget)


def _comm_summary(stats: dict) -> str:
    ag = stats.get("all_gather", {})
    return (
        f"{stats.get('rounds', 0)} tile rounds, {ag.get('calls', 0)} all_gathers, "
        f"{ag.get('bytes_recv', 0) / 2**20:.1f} MiB received on this rank"
    )


def _score_rows(forget, retain, scores) -> list[dict]:
    rows = []
    for pack, recs, sk, ck in (("forget", forget, "ff", "fr"), ("retain", retain, "rr", "rf")):
        for i, r in enumerate(recs):
            rows.append(
                {
                    "pack": pack,
                    "index": i,
                    "id": r["id"],
                    "self": float(scores[sk][i]),
                    "cross": float(scores[ck][i]),
                }
            )
    return rows


def read_scores(path: Path) -> tuple[dict, list[str], list[str]]:
    rows = read_jsonl(path)
    f = [r for r in rows if r["pack"] == "forget"]
    r_ = [r for r in rows if r["pack"] == "retain"]
    t = lambda rs, k: torch.tensor([x[k] for x in rs], dtype=torch.float64)
    return (
        {"ff": t(f, "self"), "fr": t(f, "cross"), "rr": t(r_, "self"), "rf": t(r_, "cross")},
        [x["id"] for x in f],
        [x["id"] for x in r_],
    )


def run_weights(cfg: RunConfig, rd: RunDir) -> list[Path]:
    """rapidun weights (the config's fusion) and the self-only ablation (beta = delta = 0)."""
    from dataclasses import replace

    from rapidun_dist.evaluation.plots import histogram
    from rapidun_dist.weights.rapidin import score_rows, weight_rows, write_weights
    from rapidun_dist.weights.robust import fuse_and_weight

    scores, f_ids, r_ids = read_scores(rd.influence / "scores.jsonl")
    outputs = []
    for out_dir, wcfg in (
        (rd.weights, cfg.weights),
        (rd.weights / "self_only", replace(cfg.weights, beta=0.0, delta=0.0)),
    ):
        fw, rw, fused = fuse_and_weight(scores, wcfg)
        f_rows, r_rows = weight_rows(fw, f_ids), weight_rows(rw, r_ids)
        write_weights(out_dir, f_rows, r_rows, scores_rows=score_rows(scores, fused, f_rows, r_rows))
        outputs += [out_dir / "forget_weights.jsonl", out_dir / "retain_weights.jsonl"]
    fw, rw = (
        torch.tensor([r["weight"] for r in read_jsonl(rd.weights / n)])
        for n in ("forget_weights.jsonl", "retain_weights.jsonl")
    )
    histogram(
        rd.weights / "weights.svg",
        "RapidUn per-sample weights",
        {"forget": fw.tolist(), "retain": rw.tolist()},
        bins=30,
    )
    log.info(_weight_summary(fw, rw))
    return outputs


def _weight_summary(fw: torch.Tensor, rw: torch.Tensor) -> str:
    q = lambda w: (
        f"min {w.min():.3f} median {w.median():.3f} max {w.max():.3f} distinct {len(set(w.tolist()))}"
    )
    return f"weights: forget {q(fw)}; retain {q(rw)}"
