"""find_poison resumed on unchanged feature units reads none of their bytes for checking (a stat per unit against
its sidecar and index entry); a unit whose size or mtime changed is checked, found changed and recomputed alone,
and the suspects come out the same."""

from __future__ import annotations

import os

from fp_utils import fresh_copy, load_cfg, read_rows


def _counting(monkeypatch):
    import rapidun_dist.influence.store as store_module

    hashed, written = [], []
    real_hash, real_write = store_module.file_sha256, store_module.FeatureStore.write_shard
    monkeypatch.setattr(
        store_module, "file_sha256", lambda p, *a: hashed.append(os.path.basename(p)) or real_hash(p, *a)
    )

    def write_shard(self, i, *a, **kw):
        written.append((self.root.name, i))
        return real_write(self, i, *a, **kw)

    monkeypatch.setattr(store_module.FeatureStore, "write_shard", write_shard)
    monkeypatch.delenv(store_module.VERIFY_ENV, raising=False)
    return hashed, written


def test_resume_trusts_unchanged_units_and_recomputes_a_changed_one(reference_run, tmp_path, monkeypatch):
    from rapidun_dist.run.rundir import RunDir
    from rapidun_dist.stages import find_poison as fp
    from rapidun_dist.stages import stage_context

    run = fresh_copy(reference_run, tmp_path / "run")
    cfg, rd = load_cfg(run), RunDir(run)
    want = read_rows(run / "suspects" / "suspects.jsonl")
    hashed, written = _counting(monkeypatch)
    fp.run(stage_context(cfg, rd, "find_poison"))
    assert written == [] and hashed == []  # every unit trusted on its stat: no feature byte read to check it
    assert read_rows(run / "suspects" / "suspects.jsonl") == want

    unit = run / "suspects" / "features" / "train" / "shard-00002.safetensors"
    data = bytearray(unit.read_bytes())
    data[-3] ^= 0xFF  # same size, other bytes
    unit.write_bytes(bytes(data))
    st = unit.stat()
    os.utime(unit, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a distinct mtime on any clock resolution
    fp.run(stage_context(cfg, rd, "find_poison"))
    assert written == [("train", 2)]  # found by its mtime, hashed, recomputed alone
    assert unit.name in hashed
    assert read_rows(run / "suspects" / "suspects.jsonl") == want
