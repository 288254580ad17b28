"""Poison retrieval: how well influence on the forget set ranks the poisoned training rows first.

For a stratified subsample of train rows (every poisoned row up to half of `max_train`, then clean rows;
forget rows excluded by id) the score of train row i is its mean cosine with the forget features,

    s_i = (1/|F|) sum_{j in F} <f_i, f_j> / (||f_i|| ||f_j||)

and AUROC / AP of s against the poisoned flag say how well the estimator retrieves the poison
(`rapidun_dist.evaluation.retrieval_metrics`). Works with either estimator (tokenwise | rapidgrad).

The model runs on whatever device it is on (the evaluate stage loads it on the rank's device); features come back
to the host. `sharded=True` (a multi-rank launch, every rank calling with the same rows): the length-sorted batches
are formed as on one rank and dealt out round-robin, and every rank gets every feature back, so the scores equal the
one-rank scores exactly.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace

import torch

from rapidun_dist.config import RunConfig
from rapidun_dist.core.logging import get_logger
from rapidun_dist.evaluation.generation import merge_shards, shard_batches
from rapidun_dist.evaluation.metrics import retrieval_metrics
from rapidun_dist.influence.features import make_extractor
from rapidun_dist.training.finetune import encode_records

log = get_logger("retrieval")


def stratified_train_sample(
    train_records: list[dict], exclude_ids: set[str], *, max_train: int, seed: int = 0
) -> list[dict]:
    """Up to max_train // 2 poisoned rows, filled up to `max_train` with clean rows; rows whose id is in
    `exclude_ids` never appear. Drawn with `random.Random(seed)`, returned in their original order."""
    if max_train < 2:
        raise ValueError(f"max_train must be >= 2 (one poisoned and one clean row); found {max_train}")
    rows = [(i, r) for i, r in enumerate(train_records) if r["id"] not in exclude_ids]
    poisoned = [x for x in rows if x[1].get("is_poisoned")]
    clean = [x for x in rows if not x[1].get("is_poisoned")]
    rng = random.Random(seed)
    pick_p = rng.sample(poisoned, min(len(poisoned), max_train // 2))
    pick_c = rng.sample(clean, min(len(clean), max_train - len(pick_p)))
    return [r for _, r in sorted(pick_p + pick_c, key=lambda x: x[0])]


def compute_features(
    model, tokenizer, cfg: RunConfig, records: list[dict], *, estimator: str, sharded: bool = False
) -> torch.Tensor:
    """Features [n, K] (float32, CPU) of `records` with the given estimator, in batches of influence.batch_size
    formed over length-sorted rows (less padding; a row's feature does not depend on its batch).
    Needs autograd: do not call under `torch.no_grad()`."""
    icfg = replace(cfg.influence, estimator=estimator)
    extractor = make_extractor(model, icfg, pad_id=tokenizer.pad_token_id)
    examples = encode_records(records, tokenizer, cfg.model.max_length)
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    batches = [order[s : s + icfg.batch_size] for s in range(0, len(order), icfg.batch_size)]
    model.eval()
    mine = {}
    for b in shard_batches(len(batches), sharded):
        mine[b] = extractor([examples[i] for i in batches[b]]).detach().float().cpu()
    out = torch.zeros(len(examples), extractor.dim, device="cpu")
    for b, feats in enumerate(merge_shards(mine, len(batches), sharded)):
        out[batches[b]] = feats
    return out


def mean_cosine(rows_NK: torch.Tensor, cols_MK: torch.Tensor) -> torch.Tensor:
    """s_i = mean_j cos(rows_i, cols_j) in float64 (zero rows score 0)."""
    unit = lambda z: z / z.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return (unit(rows_NK.double()) @ unit(cols_MK.double()).T).mean(dim=1)


def poison_retrieval(
    model,
    tokenizer,
    cfg: RunConfig,
    train_records: list[dict],
    forget_records: list[dict],
    *,
    estimator: str,
    max_train: int = 600,
    seed: int = 0,
    sharded: bool = False,
) -> dict:
    """{"auroc", "ap", "n_train", "n_poisoned", "seconds"} of mean forget-cosine scores, poisoned vs clean."""
    if not forget_records:
        raise ValueError("poison_retrieval needs at least one forget record; found none")
    t0 = time.perf_counter()
    sample = stratified_train_sample(
        train_records, {r["id"] for r in forget_records}, max_train=max_train, seed=seed
    )
    labels = torch.tensor(
        [1.0 if r.get("is_poisoned") else 0.0 for r in sample], dtype=torch.float64, device="cpu"
    )
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == len(sample):
        raise ValueError(
            f"the train subsample needs poisoned and clean rows; found {n_pos} poisoned of {len(sample)}"
        )
    train_f = compute_features(model, tokenizer, cfg, sample, estimator=estimator, sharded=sharded)
    forget_f = compute_features(model, tokenizer, cfg, forget_records, estimator=estimator, sharded=sharded)
    metrics = retrieval_metrics(mean_cosine(train_f, forget_f), labels)
    out = {
        "auroc": metrics["auroc"],
        "ap": metrics["ap"],
        "n_train": len(sample),
        "n_poisoned": n_pos,
        "seconds": time.perf_counter() - t0,
    }
    log.info(
        f"poison retrieval [{estimator}]: AUROC {out['auroc']:.3f} AP {out['ap']:.3f} "
        f"({n_pos} poisoned of {len(sample)}, {out['seconds']:.1f}s)"
    )
    return out
