"""influence: token-wise features of the forget and retain packs, sharded over ranks, and their directional
scores (FF / FR for forget rows, RR / RF for retain rows; docs/DESIGN.md sections 5-6).

Rows are forget then retain, from the pack files `run.layout.pack_files` names (find_poison's when it expands
the forget set or, in clean mode, cleans the retain pack). `influence.contrast: trigger` turns forget rows into
trigger-contrast features (rapidun_dist/influence/features.py); `weights.shrink` also scores the two split halves
of the features (even and odd tracked layers) for the shrinkage of rapidun_dist/weights/robust.py. Shards are owned
by ranks balanced by token count and skipped when already valid for this spec, model, tokenizer, prompt format,
max_length and row ids (resume); pack rows find_poison has features of already are copied from its store (plain
features only: not with the contrast; rank 0 copies while the others wait under the init timeout). Scores: one dense computation on a single process, the distributed block
computation otherwise. Rank 0 writes shared files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.core import timing
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_jsonl, save_safetensors, write_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.influence.store import load_features, plan_shards
from rapidun_dist.run.layout import pack_files, packs_from_find_poison
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages.base import Stage, StageContext
from rapidun_dist.weights.recipe import half_columns

log = get_logger("influence")
DENSE_BLOCKS_MAX = 4096  # write blocks.safetensors only when n_forget + n_retain is at most this


def load_packs(cfg: RunConfig, rd: RunDir) -> tuple[list[dict], list[dict]]:
    """The forget and retain rows of this run (`run.layout.pack_files`: the prepared packs, or find_poison's)."""
    forget_path, retain_path = pack_files(cfg, rd)
    forget, retain = read_jsonl(forget_path), read_jsonl(retain_path)
    if not forget:
        raise DataError(f"{forget_path}: the forget set is empty")
    if not retain:
        raise DataError(f"{retain_path}: the retain set is empty")
    return forget, retain


def run(ctx: StageContext) -> list[Path]:
    cfg, rd = ctx.cfg, ctx.rd
    with timing.overhead("imports"):  # process set-up, not feature work (rapidun_dist.core.timing)
        from rapidun_dist.influence.extract import extract_features, feature_context
        from rapidun_dist.models.loading import import_model_code, load_saved
        from rapidun_dist.run.layout import model_identity
        from rapidun_dist.stages.find_poison import reuse_train_features

        import_model_code(rd.model, cfg.model)
    info = dist_env.init_distributed(config=cfg.distributed)
    forget, retain = load_packs(cfg, rd)
    model, tok = load_saved(rd.model, cfg.model, device=info.device)
    records = forget + retain
    context = feature_context(model_identity(rd), tok, cfg)
    # Pack rows find_poison has features of: copied by rank 0; the others wait in a broadcast under
    # distributed.init_timeout_s (a copy of many GB may outlast a collective timeout).
    if cfg.influence.contrast == "none":
        dist_env.run_on_rank0(
            reuse_train_features, cfg, rd, records, model, tok, context, what="copying find_poison's features"
        )
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
    halves = None
    if cfg.weights.shrink:
        halves = half_scores(
            cfg, rd, n_forget=len(forget), n_total=len(records), rank=info.rank, world_size=info.world_size,
            device=info.device,
        )  # fmt: skip
    outputs = [rd.features / "index.json", rd.influence / "scores.jsonl"]
    if info.rank == 0:
        write_jsonl(rd.influence / "scores.jsonl", score_rows(forget, retain, scores, halves))
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
    cols: torch.Tensor | None = None,
) -> dict | None:
    """{ff, fr, rr, rf} on rank 0 (None elsewhere): dense on one process, distributed across ranks otherwise;
    `cols`: only these feature columns (a split half).

    Rank r takes the contiguous rows [r n / P, (r + 1) n / P) (it loads only the shards covering them) and
    computes them in float64 on `device` (NCCL needs device tensors), so the scores do not depend on the world
    size (to ~1e-12): `mean` by the linear identity (one all_reduce of per-group sums), the pairwise aggregations by
    the 2D block decomposition (rapidun_dist.distributed). A pack-size-scaled top-k (`weights.topk_frac`) takes
    one pass per k (forget rows from the k_F pass, retain rows from the k_R pass)."""
    w = cfg.weights
    kw = dict(agg=w.agg, trim=w.trim, include_self=w.include_self)
    if world_size == 1:
        from rapidun_dist.influence.scores import dense_directional_scores

        feats, _ = load_features(rd.features)
        feats = feats if cols is None else feats[:, cols]
        return dense_directional_scores(
            feats[:n_forget], feats[n_forget:], topk=w.topk, topk_frac=w.topk_frac, **kw
        )
    from rapidun_dist.influence.scores import block_topk

    k_f, k_r = block_topk(w.topk, w.topk_frac, n_forget), block_topk(w.topk, w.topk_frac, n_total - n_forget)
    if k_f == k_r or w.agg != "median_topk":
        return _distributed_scores(cfg, rd, n_forget, n_total, rank, world_size, device, cols, topk=k_f, **kw)
    by_f = _distributed_scores(cfg, rd, n_forget, n_total, rank, world_size, device, cols, topk=k_f, **kw)
    by_r = _distributed_scores(cfg, rd, n_forget, n_total, rank, world_size, device, cols, topk=k_r, **kw)
    return None if by_f is None else {"ff": by_f["ff"], "fr": by_f["fr"], "rr": by_r["rr"], "rf": by_r["rf"]}


def _distributed_scores(cfg, rd, n_forget, n_total, rank, world_size, device, cols, **kw) -> dict | None:
    from rapidun_dist.influence.gram import (
        comm_summary,
        distributed_directional_scores,
        gather_scores_to_rank0,
    )
    from rapidun_dist.influence.scores import split_directional

    lo, hi = (
        rank * n_total // world_size,
        (rank + 1) * n_total // world_size,
    )  # contiguous: few shards to load
    rows = torch.arange(lo, hi, dtype=torch.long, device="cpu")
    feats, _ = load_features(rd.features, rows.tolist())
    feats = (feats if cols is None else feats[:, cols]).to(device=device, dtype=torch.float64)
    local = distributed_directional_scores(
        feats, rows.to(device), n_forget, n_total, tile_size=cfg.influence.tile_size, backend=cfg.influence.backend,
        **kw,
    )  # fmt: skip
    log.info(f"blocks: {comm_summary(local['stats'])}")
    full = gather_scores_to_rank0(local, rows, n_total)
    return None if full is None else split_directional(full["self_score"], full["cross_score"], n_forget)


def half_scores(cfg: RunConfig, rd: RunDir, **kw) -> tuple[dict, dict] | None:
    """The directional scores of the two split halves (`weights.shrink`), on rank 0 (None elsewhere). The halves'
    columns come from rank 0's reading of the index (broadcast), so every rank scores the same columns."""
    from rapidun_dist.core.io import read_json

    spec = dist_env.broadcast_object(
        read_json(rd.features / "index.json")["spec"] if dist_env.rank() == 0 else None
    )
    a, b = (directional_scores(cfg, rd, cols=c, **kw) for c in half_columns(spec))
    return None if a is None else (a, b)


def score_rows(
    forget: list[dict], retain: list[dict], scores: dict, halves: tuple | None = None
) -> list[dict]:
    """scores.jsonl rows; with `halves` also the split-half scores (self_a, cross_a, self_b, cross_b)."""
    rows = []
    for pack, recs, sk, ck in (("forget", forget, "ff", "fr"), ("retain", retain, "rr", "rf")):
        for i, r in enumerate(recs):
            row = {
                "pack": pack,
                "index": i,
                "id": r["id"],
                "self": float(scores[sk][i]),
                "cross": float(scores[ck][i]),
            }
            for tag, h in zip("ab", halves or (), strict=False):
                row[f"self_{tag}"], row[f"cross_{tag}"] = float(h[sk][i]), float(h[ck][i])
            rows.append(row)
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
        "weights.topk_frac",
        "weights.shrink",
        "model.max_length",
        "model.dtype",
        "find_poison.expand",
    ),
    reads=(
        "data/forget.jsonl",
        "data/retain.jsonl",
        "or suspects/*.jsonl (run.layout.pack_files)",
        "model/",
    ),
    writes=("features/", "influence/scores.jsonl", "influence/blocks.safetensors"),
    requires=lambda cfg: ("prepare", "implant") + (("find_poison",) if packs_from_find_poison(cfg) else ()),
    run=run,
    collective=True,
)
