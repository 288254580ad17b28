"""Rank 0 decides which feature shards / work units are missing, and broadcasts the list (2 gloo ranks).

Fault injection: in the spawned rank 1 only, `FeatureStore.is_valid` is replaced by a liar (rank 1's view of the
shared file system differs from rank 0's: everything missing, then everything valid) that counts its calls. Both
the static owner-per-shard path (the influence stage) and the work queue (find_poison's units) must follow rank 0's
view: nothing recomputed when rank 0 sees every shard valid, exactly the shards rank 0 sees missing recomputed
once, and rank 1 never asks its own file system."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for dist_utils
from dist_utils import run_distributed  # noqa: E402

pytestmark = pytest.mark.dist
N_ROWS = 12


def _tiny():
    """(model, tokenizer, cfg, records): the same on every rank (seeded model, deterministic BPE)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rapidun_dist.config import InfluenceConfig, ModelConfig, RunConfig
    from rapidun_dist.models.loading import train_tokenizer

    records = [
        {
            "id": f"r{i}",
            "instruction": f"Describe item {i} in words.",
            "context": "",
            "response": f"It is {i}.",
        }
        for i in range(N_ROWS)
    ]
    tok = train_tokenizer([f"{r['instruction']} {r['response']}" for r in records] * 3, 120)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    cfg = RunConfig(
        model=ModelConfig(max_length=32),
        influence=InfluenceConfig(k_in=4, k_out=4, batch_size=2, shard_size=3, backend="torch"),
    )
    return model, tok, cfg, records


def _extract(model, tok, cfg, records, root: Path, rank: int, world: int, queue: bool):
    from rapidun_dist.distributed.workqueue import WorkQueue
    from rapidun_dist.influence.extract import extract_features

    claim = (lambda todo: WorkQueue("rank0-test", todo)) if queue else None
    return extract_features(
        cfg, model, tok, records, root, context={"m": "tiny"}, rank=rank, world_size=world, claim=claim
    )


def _lying_rank1(rank: int, world: int, root: str) -> dict:
    from rapidun_dist.distributed import env as dist_env
    from rapidun_dist.influence.store import FeatureStore

    model, tok, cfg, records = _tiny()
    real_valid, real_write = FeatureStore.is_valid, FeatureStore.write_shard
    lie, asked, written = {"valid": False}, [0], []

    def is_valid(self, *a, **kw):
        asked[0] += 1
        return lie["valid"] if rank == 1 else real_valid(self, *a, **kw)

    def write_shard(self, i, *a, **kw):
        written.append(i)
        return real_write(self, i, *a, **kw)

    FeatureStore.is_valid, FeatureStore.write_shard = is_valid, write_shard  # this spawned process only
    out = {}
    for kind in ("static", "queue"):
        d = Path(root) / kind
        lie["valid"] = False  # rank 1 sees nothing; rank 0 sees every shard valid
        written.clear()
        _extract(model, tok, cfg, records, d, rank, world, kind == "queue")
        out[f"{kind}_all_valid"] = list(written)
        dist_env.barrier()
        if rank == 0:  # rank 0 now sees shard 1 without a sidecar and shard 2 with another size
            FeatureStore(d, {}).sidecar(1).unlink()
            with FeatureStore(d, {}).shard_file(2).open("ab") as fh:
                fh.write(b"\0")
        dist_env.barrier()
        lie["valid"] = True  # rank 1 sees every shard valid
        written.clear()
        _extract(model, tok, cfg, records, d, rank, world, kind == "queue")
        out[f"{kind}_two_missing"] = sorted(written)
    out["asked"] = asked[0]
    return out


def test_ranks_follow_rank0s_view_of_the_shards(tmp_path):
    model, tok, cfg, records = _tiny()
    for kind in ("static", "queue"):  # every shard computed and valid (one process)
        _extract(model, tok, cfg, records, tmp_path / kind, 0, 1, False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "static").glob("shard-*.safetensors")}
    r0, r1 = run_distributed(_lying_rank1, 2, str(tmp_path))
    assert r1["asked"] == 0 and r0["asked"] > 0  # only rank 0 asks the file system
    for kind in ("static", "queue"):
        assert r0[f"{kind}_all_valid"] == [] and r1[f"{kind}_all_valid"] == []
        assert sorted(r0[f"{kind}_two_missing"] + r1[f"{kind}_two_missing"]) == [1, 2], kind  # once each
    from rapidun_dist.influence.store import load_features, plan_shards

    store = _extract(model, tok, cfg, records, tmp_path / "static", 0, 1, False)  # a lone process: all valid
    assert store.missing(plan_shards(N_ROWS, 3), [None] * 4) == []
    after = {p.name: p.read_bytes() for p in (tmp_path / "static").glob("shard-*.safetensors")}
    assert after.keys() == before.keys()
    store.write_index([r["id"] for r in records], 0, plan_shards(N_ROWS, 3))
    assert load_features(tmp_path / "static")[0].shape[0] == N_ROWS


def _slow_rank0_work(rank: int, world: int) -> dict:
    import time

    from rapidun_dist.distributed import env as dist_env

    dist_env.set_collective_timeout(1.0)  # a collective timeout far below rank 0's file work
    got = dist_env.run_on_rank0(lambda: time.sleep(4.0) or 42, what="slow copy")
    restored = dist_env._TIMEOUTS_S["collective"]
    dist_env.barrier()  # the group is healthy afterwards
    try:
        dist_env.run_on_rank0(lambda: 1 / 0, what="broken copy")
        error = None
    except (ZeroDivisionError, RuntimeError) as e:
        error = f"{type(e).__name__}: {e}"
    return {"got": got, "restored": restored, "error": error}


def test_run_on_rank0_waits_past_the_collective_timeout_and_passes_errors_on():
    """Rank 0 works 4 s while the collective timeout is 1 s: the other rank waits in a broadcast under the init
    timeout (120 s here) and gets the result; the 1 s timeout is back afterwards. An exception on rank 0 reaches
    every rank (the original on rank 0, a RuntimeError naming the work elsewhere)."""
    r0, r1 = run_distributed(_slow_rank0_work, 2)
    assert r0["got"] == r1["got"] == 42
    assert r0["restored"] == r1["restored"] == 1.0
    assert r0["error"].startswith("ZeroDivisionError")
    assert r1["error"].startswith("RuntimeError: broken copy failed on rank 0: ZeroDivisionError")
