"""What the dense-feature methods (repsim, gradsim, graceful) share: a per-row feature function run over the rows as
they were trained, each rank on its contiguous slice, gathered to rank 0; and the group contrast of cosines in
float64, in row chunks (never an [n, m] matrix of every row at once).

A row's feature depends on its own tokens only; rows are batched by length within a rank's slice (less padding),
so a feature differs across world sizes by float rounding at most.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from rapidun_dist.core.logging import Progress
from rapidun_dist.data.prompt import pad_batch
from rapidun_dist.distributed import env as dist_env
from rapidun_dist.find_poison.job import ScoreJob
from rapidun_dist.kernels import unit_rows

ROW_CHUNK = 4096  # training rows whose similarities to the groups are held at once

BatchFn = Callable[[list[dict]], torch.Tensor]  # encoded examples (one batch) -> [B, d] features


def rank_slice(n: int, rank: int, world: int) -> tuple[int, int]:
    return rank * n // world, (rank + 1) * n // world


def device_batch(model, examples: list[dict], pad_id: int) -> tuple[dict, torch.Tensor]:
    """(the padded batch on the model's device, the CPU mask [B, T] of positions that predict an answer token)."""
    from rapidun_dist.influence.features import answer_positions, model_device

    host = pad_batch(examples, pad_id)
    dev = model_device(model)
    return {k: v.to(dev) for k, v in host.items()}, answer_positions(host["labels"])


def batch_features(examples: list[dict], fn: BatchFn, *, batch_size: int, what: str) -> torch.Tensor:
    """[len(examples), d] on the host (float32, float64 for a float64 model): `fn` over length-sorted batches, rows
    back in their order."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i]["input_ids"]), i))
    out: torch.Tensor | None = None
    progress = Progress(len(examples), what, unit="sample")
    for b in range(0, len(order), batch_size):
        rows = order[b : b + batch_size]
        feats = fn([examples[i] for i in rows]).detach()
        feats = feats.to(device="cpu", dtype=torch.promote_types(feats.dtype, torch.float32))
        if out is None:
            out = torch.zeros(len(examples), feats.shape[1], dtype=feats.dtype)
        out[rows] = feats
        progress.update(len(rows))
    return out if out is not None else torch.zeros(0, 0)


def sliced_features(job: ScoreJob, records: list[dict], fn: BatchFn, what: str) -> torch.Tensor | None:
    """[len(records), d] on rank 0 (None elsewhere): this rank encodes and runs its contiguous slice of `records`
    (as trained), rank 0 gathers the slices in order."""
    from rapidun_dist.training.finetune import encode_records

    model, tok = job.model()
    lo, hi = rank_slice(len(records), job.info.rank, job.info.world_size)
    examples = encode_records(records[lo:hi], tok, job.cfg.model.max_length)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad() if getattr(fn, "forward_only", False) else nullcontext():
        local = batch_features(examples, fn, batch_size=job.cfg.influence.batch_size, what=what)
    job.work["rows"] += len(examples)
    job.work["seconds"] += time.perf_counter() - t0
    parts = dist_env.all_gather_object(local)
    if job.info.rank != 0:
        return None
    parts = [p for p in parts if p.numel()]
    return torch.cat(parts) if parts else torch.zeros(0, 0)


def contrast_scores(job: ScoreJob, x_ND: torch.Tensor, g_MD: torch.Tensor) -> torch.Tensor:
    """[n] float64: agg over the forget rows of cos(x_i, f) - agg over the reference rows of cos(x_i, r), with the
    groups' features `g_MD` in forget-then-reference order (`ScoreJob.group_contrast`)."""
    nf = len(job.forget)
    x, g = unit_rows(x_ND.to(torch.float64)), unit_rows(g_MD.to(torch.float64))
    out = torch.empty(x.shape[0], dtype=torch.float64)
    for lo in range(0, x.shape[0], ROW_CHUNK):
        hi = min(lo + ROW_CHUNK, x.shape[0])
        sim = x[lo:hi] @ g.T
        sims = {"forget": sim[:, :nf], "reference": sim[:, nf:]}
        out[lo:hi] = job.group_contrast(sims, torch.arange(lo, hi))
    return out


def group_method_scores(job: ScoreJob, fn: BatchFn, what: str) -> torch.Tensor | None:
    """The contrast scores of a dense-feature method: features of the rows and of both groups, cosines on rank 0."""
    x = sliced_features(job, job.train, fn, f"{what} (rows)")
    g = sliced_features(job, job.forget + job.reference, fn, f"{what} (groups)")
    return None if x is None else contrast_scores(job, x, g)
