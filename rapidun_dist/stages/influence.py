"""influence: token-wise features of the forget and retain packs, sharded over ranks, and their directional
scores (FF / FR for forget rows, RR / RF for retain rows; DESIGN sections 5-6).

Rows are forget then retain, from the pack files `stages.common.pack_files` names (find_poison's when it expands
the forget set or, in clean mode, cleans the retain pack). Shards are owned by ranks balanced by token count and
skipped when already valid for this spec, model, tokenizer, prompt format, max_length and row ids (resume); pack
rows find_poison has features of already are copied from its store. Scores: one dense computation on a single
process, the distributed block computation otherwise. Rank 0 writes shared files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.errors import DataError
from rapidun_dist.influence.store import load_features, plan_shards
from rapidun_dist.io import read_jsonl, save_safetensors, write_jsonl
from rapidun_dist.logging import get_logger
from rapidun_dist.rundir import RunDir
from rapidun_dist.stages.base import Stage
from rapidun_dist.stages.common import pack_files, packs_from_find_poison

log = get_logger("influence")
DENSE_BLOCKS_MAX = 4096  # write blocks.safetensors only when n_forget + n_retain is at most this


def load_packs(cfg: RunConfig, rd: RunDir) -> tuple[list[dict], list[dict]]:
    """The forget and retain rows of this run (`stages.common.pack_files`: the prepared packs, or find_poison's)."""
    forget_path, retain_path = pack_files(cfg, rd)
    forget, retain = read_jsonl(forget_path), read_jsonl(retain_path)
    if not forget:
        raise DataError(f"{forget_path}: the forget set is empty")
    if not retain:
        raise DataError(f"{retain_path}: the retain set is empty")
    return forget, retain


def run(cfg: RunConfig, rd: RunDir) -> list[Path]:
    from rapidun_dist.influence.extract import extract_features, feature_context
    from rapidun_dist.models.loading import load_saved
    from rapidun_dist.stages.common import model_identity
    from rapidun_dist.stages.find_poison import reuse_train_features

    info = dist_env.init_distributed(config=cfg.distributed)
    forget, retain = load_packs(cfg, rd)
    model, tok = load_saved(rd.model, cfg.model, device=info.device)
    records = forget + retain
    context = feature_context(model_identity(rd), tok, cfg)
    if info.rank == 0:  # pack rows find_poison has features of already (the same rows, as trained): copied
        reuse_train_features(cfg, rd, records, model, tok, context)
    dist_env.barrier()
    store = extract_features(
        cfg, model, tok, records, rd.features, context=context, rank=info.rank, world_size=info.world_size
    )
    dist_env.barrier()
    shards = plan_shards(len(records), cfg.influence.shard_size)
    if info.rank == 0:
        store.write_index([r["id"] for r in records], len(forget), shards)
    dist_env.barrier()
    scores = directional_scores(
        cfg, rd, n_forget=len(forget), n_total=len(records), rank=info.rank, world_size=info.world_size,
        device=info.device,
    )  # fmt: skip
    outputs = [rd.features / "index.json", rd.influence / "scores.jsonl"]
    if info.rank == 0:
        write_jsonl(rd.influence / "scores.jsonl", score_rows(forget, retain, scores))
        if len(records) <= DENSE_BLOCKS_MAX:
            outputs.append(_write_blocks(rd, len(forget)))
    dist_env.barrier()
    return outputs


def _write_blocks(rd: RunDir, nf: int) -> Path:
    feats, _ = load_features(rd.features)
    gram = feats.double() @ feats.double().T
    blocks = {"FF": gram[:nf, :nf], "FR": gram[:nf, nf:], "RF": gram[nf:, :nf], "RR": gram[nf:, nf:]}
    path = rd.influence / "blocks.safetensors"
    save_safetensors(path, {k: v.float() for k, v in blocks.items()})
    return path


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
    """{ff, fr, rr, rf} on rank 0 (None elsewhere): dense on one process, distributed across ranks otherwise.

    Rank r takes the contiguous rows [r n / P, (r + 1) n / P) (it loads only the shards covering them) and
    computes them in float64 on `device` (NCCL needs device tensors), so the scores do not depend on the world
    size (to ~1e-12): `mean` by the linear identity (one all_reduce of per-group sums), the pairwise aggregations by
    the 2D block decomposition (rapidun_dist.distributed)."""
    w = cfg.weights
    kw = dict(agg=w.agg, topk=w.topk, trim=w.trim, include_self=w.include_self)
    if world_size == 1:
        from rapidun_dist.weights.scores import dense_directional_scores

        feats, _ = load_features(rd.features)
        return dense_directional_scores(feats[:n_forget], feats[n_forget:], **kw)
    from rapidun_dist.distributed import comm_summary, distributed_directional_scores, gather_scores_to_rank0
    from rapidun_dist.weights.scores import split_directional

    lo, hi = (
        rank * n_total // world_size,
        (rank + 1) * n_total // world_size,
    )  # contiguous: few shards to load
    rows = torch.arange(lo, hi, dtype=torch.long, device="cpu")
    feats, _ = load_features(rd.features, rows.tolist())
    feats = feats.to(device=device, dtype=torch.float64)
    local = distributed_directional_scores(
        feats, rows.to(device), n_forget, n_total, tile_size=cfg.influence.tile_size, backend=cfg.influence.backend,
        **kw,
    )  # fmt: skip
    log.info(f"blocks: {comm_summary(local['stats'])}")
    full = gather_scores_to_rank0(local, rows, n_total)
    return None if full is None else split_directional(full["self_score"], full["cross_score"], n_forget)


def score_rows(forget: list[dict], retain: list[dict], scores: dict) -> list[dict]:
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


STAGE = Stage(
    name="influence",
    doc="token-wise gradient features of the forget and retain packs, and their directional scores",
    config_keys=(
        "influence",
        "weights.agg",
        "weights.topk",
        "weights.trim",
        "weights.include_self",
        "model.max_length",
        "model.dtype",
        "find_poison.expand",
    ),
    reads=(
        "data/forget.jsonl",
        "data/retain.jsonl",
        "or suspects/*.jsonl (stages.common.pack_files)",
        "model/",
    ),
    writes=("features/", "influence/scores.jsonl", "influence/blocks.safetensors"),
    requires=lambda cfg: ("prepare", "implant") + (("find_poison",) if packs_from_find_poison(cfg) else ()),
    run=run,
    collective=True,
)
