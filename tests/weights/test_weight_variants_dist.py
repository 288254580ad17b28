"""The influence stage's variant paths across ranks: the pack-scaled top-k (one pass per k) and the split-half
scores of `weights.shrink` give the single-process dense result at world sizes 1, 2 and 4 (float64 features)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dist_utils import run_distributed  # noqa: E402

from rapidun_dist.config import RunConfig, WeightsConfig  # noqa: E402

pytestmark = pytest.mark.dist
NF, N, LAYERS, WIDTH = 9, 30, 4, 6


def _store(root: Path, seed: int) -> torch.Tensor:
    from rapidun_dist.influence.store import FeatureStore, plan_shards

    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(N, LAYERS, WIDTH, generator=gen)
    feats = (torch.nn.functional.normalize(raw, dim=2) / LAYERS**0.5).flatten(1)
    spec = {"estimator": "tokenwise", "dim": LAYERS * WIDTH, "layers": [f"l{i}" for i in range(LAYERS)]}
    store = FeatureStore(root, spec)
    root.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(N, 7)
    for i, (s, e) in enumerate(shards):
        store.write_shard(i, (s, e), feats[s:e])
    store.write_index([f"id{i}" for i in range(N)], NF, shards)
    return feats


def _cfg() -> RunConfig:
    return RunConfig(weights=WeightsConfig(agg="median_topk", topk_frac=0.4, shrink=True))


def _scores(rank: int, world_size: int, run: str) -> dict | None:
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages.influence import directional_scores, half_scores

    rd, kw = RunDir(run), dict(n_forget=NF, n_total=N, rank=rank, world_size=world_size)
    full = directional_scores(_cfg(), rd, **kw)
    halves = half_scores(_cfg(), rd, **kw)
    if full is None:
        return None
    return {
        "full": {k: v.tolist() for k, v in full.items()},
        "halves": [{k: v.tolist() for k, v in h.items()} for h in halves],
    }


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_pack_scaled_topk_and_halves_match_dense(tmp_path, world_size):
    from rapidun_dist.weights import dense_directional_scores
    from rapidun_dist.weights.recipe import half_columns

    run = tmp_path / "run"
    feats = _store(run / "features", int(torch.randint(0, 10_000, (1,)))).double()
    got = (run_distributed(_scores, world_size, str(run)) if world_size > 1 else [_scores(0, 1, str(run))])[0]
    kw = dict(agg="median_topk", topk=40, topk_frac=0.4)
    want = dense_directional_scores(feats[:NF], feats[NF:], **kw)
    cols = half_columns({"estimator": "tokenwise", "dim": LAYERS * WIDTH, "layers": list(range(LAYERS))})
    want_halves = [dense_directional_scores(feats[:NF, c], feats[NF:, c], **kw) for c in cols]
    for k in ("ff", "fr", "rr", "rf"):
        torch.testing.assert_close(
            torch.tensor(got["full"][k], dtype=torch.float64), want[k], rtol=0, atol=1e-6
        )
        for g, w in zip(got["halves"], want_halves, strict=True):
            torch.testing.assert_close(torch.tensor(g[k], dtype=torch.float64), w[k], rtol=0, atol=1e-6)
