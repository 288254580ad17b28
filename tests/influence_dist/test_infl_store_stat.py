"""Feature shards on resume: a stat, not a read. A shard whose size and mtime match its sidecar is trusted without
hashing its bytes; a changed size is invalid at once; a changed mtime is hashed (same bytes pass, others are
recomputed); RAPIDUN_VERIFY_FEATURES=1 hashes every shard; `load_features` applies the same rule to the index."""

from __future__ import annotations

import os

import pytest
import torch

import rapidun_dist.influence.store as store_module
from rapidun_dist.core.errors import StageError
from rapidun_dist.influence.store import VERIFY_ENV, FeatureStore, load_features, plan_shards

N, SHARD, DIM = 10, 4, 6


@pytest.fixture
def hashes(monkeypatch):
    """Paths the store hashes (every full read of a shard for its checksum goes through file_sha256)."""
    seen: list[str] = []
    real = store_module.file_sha256
    monkeypatch.setattr(
        store_module, "file_sha256", lambda p, *a: seen.append(os.path.basename(p)) or real(p, *a)
    )
    monkeypatch.delenv(VERIFY_ENV, raising=False)
    return seen


def _written(tmp_path):
    feats, shards = torch.randn(N, DIM), plan_shards(N, SHARD)
    store = FeatureStore(tmp_path, {"dim": DIM})
    for i, (s, e) in enumerate(shards):
        store.write_shard(i, (s, e), feats[s:e], f"ids{i}")
    store.write_index([f"r{i}" for i in range(N)], 0, shards)
    return store, shards, feats


def _ids(shards):
    return [f"ids{i}" for i in range(len(shards))]


def _rewrite_same_size(path, *, mtime_ns: int) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # a byte inside the tensor data
    path.write_bytes(bytes(data))
    os.utime(path, ns=(mtime_ns, mtime_ns))  # a distinct mtime, whatever the file system's clock resolution


def test_unchanged_shards_are_trusted_without_reading_them(tmp_path, hashes):
    store, shards, feats = _written(tmp_path)
    hashes.clear()
    assert store.missing(shards, _ids(shards)) == []
    got, _ = load_features(tmp_path)
    assert hashes == [] and torch.equal(got, feats)  # checked and loaded, never hashed


def test_full_verify_on_request_hashes_every_shard(tmp_path, hashes, monkeypatch):
    store, shards, _ = _written(tmp_path)
    hashes.clear()
    monkeypatch.setenv(VERIFY_ENV, "1")
    assert store.missing(shards, _ids(shards)) == []
    assert sorted(hashes) == [store.shard_file(i).name for i in range(len(shards))]


def test_changed_size_or_mtime_is_detected_and_recomputed(tmp_path, hashes):
    store, shards, _ = _written(tmp_path)
    f0, f1, f2 = (store.shard_file(i) for i in range(3))
    with f0.open("ab") as fh:  # size differs: invalid without a read
        fh.write(b"\0")
    _rewrite_same_size(f1, mtime_ns=f1.stat().st_mtime_ns + 10**9)  # same size, other bytes, other mtime
    st = f2.stat()
    os.utime(f2, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched only: the same bytes
    hashes.clear()
    assert store.missing(shards, _ids(shards)) == [0, 1]
    assert sorted(hashes) == [f1.name, f2.name]  # the size change needed no hash
    with pytest.raises(StageError, match="checksum"):
        load_features(tmp_path, [4])  # shard 1 no longer matches the index
    torch.manual_seed(1)
    for i in (0, 1):  # what a resume does with them: recompute, and the new sidecar is trusted again
        s, e = shards[i]
        store.write_shard(i, (s, e), torch.randn(e - s, DIM), f"ids{i}")
    hashes.clear()  # f2's sidecar keeps its old mtime: hashed again (and valid)
    assert store.missing(shards, _ids(shards)) == [] and hashes == [f2.name]


def test_sidecars_without_a_stamp_fall_back_to_the_hash(tmp_path, hashes):
    """Shards written before size and mtime were recorded are still checked (by their sha256)."""
    from rapidun_dist.core.io import read_json, write_json

    store, shards, _ = _written(tmp_path)
    for i in range(len(shards)):
        meta = read_json(store.sidecar(i))
        write_json(store.sidecar(i), {k: v for k, v in meta.items() if k not in ("size", "mtime_ns")})
    hashes.clear()
    assert store.missing(shards, _ids(shards)) == [] and len(hashes) == len(shards)
