"""Sharded Gram-block scores on 1, 2 and 4 gloo ranks equal the dense single-process oracle, and the weights
fused from them equal the dense weights, for the default methods and the tiled all_gather cross-check."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for dist_utils (no conftest here)
from dist_utils import run_distributed  # noqa: E402

from rapidun_dist.config import WeightsConfig  # noqa: E402
from rapidun_dist.influence.gram import distributed_directional_scores, gather_scores_to_rank0  # noqa: E402
from rapidun_dist.weights import dense_directional_scores, fuse_and_weight, split_directional  # noqa: E402

pytestmark = pytest.mark.dist

NF, NR, K = 11, 30, 12
N = NF + NR


def make_features(seed: int, dtype: torch.dtype) -> torch.Tensor:
    """[F; R] rows: forget rows around three 'trigger' directions, retain rows diffuse."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, K, generator=gen, dtype=torch.float64)
    f = centers[torch.arange(NF) % 3] + 0.8 * torch.randn(NF, K, generator=gen, dtype=torch.float64)
    r = torch.randn(NR, K, generator=gen, dtype=torch.float64) + 0.5 * centers[0] * torch.rand(
        NR, 1, generator=gen, dtype=torch.float64
    )
    return torch.cat([f, r]).to(dtype)


def shard(seed: int, world: int, rank: int) -> torch.Tensor:
    """Random, uneven (possibly empty), non-contiguous global row ids of `rank`."""
    gen = torch.Generator().manual_seed(1000 + seed)
    perm = torch.randperm(N, generator=gen)
    cuts = torch.sort(torch.randint(0, N + 1, (world - 1,), generator=gen)).values.tolist()
    bounds = [0, *cuts, N]
    return perm[bounds[rank] : bounds[rank + 1]]


CASES = [
    dict(seed=s, agg=agg, tile=tile, include_self=inc, topk=topk, dtype=dt, budget=budget, method=method)
    for method in ("auto", "allgather")  # auto: linear for means, the 2D grid otherwise; allgather: tiled
    for s, (agg, tile, inc, topk, dt, budget) in enumerate(
        [
            ("mean", 2, False, 4, "float64", 1 << 28),
            ("mean", 5, True, 4, "float64", 1 << 28),
            ("mean", 64, False, 4, "float64", 1 << 28),
            ("mean", 5, False, 4, "float64", 2000),  # linear path in chunks of 10 rows
            ("mean", 5, False, 4, "float32", 1 << 28),
            ("trimmed_mean", 3, False, 4, "float64", 1 << 28),
            ("trimmed_mean", 7, True, 4, "float64", 1 << 28),
            ("trimmed_mean", 64, False, 4, "float64", 2000),
            ("trimmed_mean", 5, False, 4, "float32", 1 << 28),
            ("median_topk", 2, True, 4, "float64", 1 << 28),
            ("median_topk", 6, False, 4, "float64", 1 << 28),
            ("median_topk", 64, True, 40, "float64", 1 << 28),
            ("median_topk", 5, False, 3, "float32", 1 << 28),
        ]
    )
]


def _run_cases(rank: int, world: int, cases: list) -> list | None:
    out = []
    for case in cases:
        feats = make_features(case["seed"], getattr(torch, case["dtype"]))
        ids = shard(case["seed"], world, rank)
        res = distributed_directional_scores(
            feats[ids],
            ids,
            NF,
            N,
            agg=case["agg"],
            topk=case["topk"],
            trim=0.2,
            include_self=case["include_self"],
            tile_size=case["tile"],
            mem_budget_bytes=case["budget"],
            method=case["method"],
            backend="torch",
        )
        full = gather_scores_to_rank0({k: res[k] for k in ("self_score", "cross_score")}, ids, N)
        if full is not None:
            out.append(
                {
                    "self": full["self_score"].tolist(),
                    "cross": full["cross_score"].tolist(),
                    "stats": res["stats"],
                }
            )
    bad = _bad_ids(rank, world)
    return {"cases": out, "bad_ids": bad} if rank == 0 else {"bad_ids": bad}


def _check(result: dict, world: int) -> None:
    for case, got in zip(CASES, result["cases"], strict=True):
        feats = make_features(case["seed"], getattr(torch, case["dtype"])).double()
        kw = dict(agg=case["agg"], topk=case["topk"], trim=0.2, include_self=case["include_self"])
        want = dense_directional_scores(feats[:NF], feats[NF:], **kw)
        have = split_directional(
            torch.tensor(got["self"], dtype=torch.float64),
            torch.tensor(got["cross"], dtype=torch.float64),
            NF,
        )
        if case["dtype"] == "float64":
            for k in want:
                torch.testing.assert_close(
                    have[k], want[k], rtol=0, atol=1e-10, msg=f"{k} {case} world {world}"
                )
        cfg = WeightsConfig(agg=case["agg"], topk=case["topk"], trim=0.2, include_self=case["include_self"])
        for w_have, w_want in zip(
            fuse_and_weight(have, cfg)[:2], fuse_and_weight(want, cfg)[:2], strict=True
        ):
            torch.testing.assert_close(w_have, w_want, rtol=0, atol=1e-6, msg=f"weights {case} world {world}")
        if world > 1:
            assert got["stats"]["all_gather"]["bytes_recv"] > 0
        if case["budget"] < 1 << 20 and case["agg"] == "trimmed_mean" and case["method"] == "allgather":
            assert got["stats"]["row_passes"] > 1  # the memory budget really forced row chunks


def test_world_size_1_in_process():
    result = _run_cases(0, 1, CASES)
    _check(result, 1)
    assert "permutation" in result["bad_ids"]


@pytest.mark.parametrize("world", [2, 4])
def test_world_sizes_match_dense(world):
    results = run_distributed(_run_cases, world, CASES)
    _check(results[0], world)
    assert all("cases" not in r for r in results[1:])
    assert all("permutation" in r["bad_ids"] for r in results), "a missing row must fail on every rank"


def _bad_ids(rank: int, world: int) -> str:
    """Rows missing from the shards: every rank must raise (the check runs on gathered ids), none may hang."""
    feats = make_features(0, torch.float64)
    ids = torch.arange(rank, N, world)
    ids = ids[1:] if rank == 0 else ids  # rank 0 drops row 0: not a permutation any more
    try:
        distributed_directional_scores(feats[ids], ids, NF, N, tile_size=8)
    except ValueError as e:
        return str(e)
    return "no error"
