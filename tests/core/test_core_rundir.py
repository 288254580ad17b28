"""Run-directory manifest: fingerprints, skip/resume decisions, atomic writes, failure records."""

import pytest

from rapidun_dist.io import atomic_path, read_json, write_json
from rapidun_dist.rundir import RunDir


def test_stage_done_only_when_fingerprint_and_outputs_match(tmp_path):
    rd = RunDir(tmp_path)
    cfg = {"data": {"n": 1}, "seed": 0}
    fp = rd.fingerprint("prepare", cfg)
    out = tmp_path / "data" / "train.jsonl"
    out.parent.mkdir()
    out.write_text("{}\n")
    rec = rd.start("prepare", fp)
    assert not rd.is_done("prepare", fp)
    rd.finish("prepare", rec, [out])
    man = read_json(rd.manifest_path)["stages"]["prepare"]
    assert man["status"] == "done" and man["seconds"] >= 0 and "torch" in man["versions"]
    assert rd.is_done("prepare", fp)
    assert not rd.is_done("prepare", rd.fingerprint("prepare", {"data": {"n": 2}, "seed": 0}))
    out.write_text('{"changed": 1}\n')
    assert not rd.is_done("prepare", fp)


def test_downstream_fingerprint_chains_upstream_config(tmp_path):
    rd = RunDir(tmp_path)
    a = rd.fingerprint("weights", {"data": {"n": 1}, "weights": {"agg": "mean"}})
    b = rd.fingerprint("weights", {"data": {"n": 2}, "weights": {"agg": "mean"}})
    c = rd.fingerprint("prepare", {"data": {"n": 1}, "weights": {"agg": "other"}})
    d = rd.fingerprint("prepare", {"data": {"n": 1}, "weights": {"agg": "mean"}})
    assert a != b and c == d


def test_failure_is_recorded(tmp_path):
    rd = RunDir(tmp_path)
    rec = rd.start("implant", "x")
    rd.fail("implant", rec, RuntimeError("boom"))
    man = rd.record("implant")
    assert man["status"] == "failed" and "boom" in man["error"]
    assert not rd.is_done("implant", "x")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("interrupted")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_redone_upstream_invalidates_downstream(tmp_path):
    rd = RunDir(tmp_path)
    cfg = {"data": {"n": 1}}
    out = tmp_path / "data.txt"
    out.write_text("one")
    rd.finish("prepare", rd.start("prepare", rd.fingerprint("prepare", cfg)), [out])
    fp_implant = rd.fingerprint("implant", cfg)
    out.write_text("two")
    rd.finish("prepare", rd.start("prepare", rd.fingerprint("prepare", cfg)), [out])
    assert rd.fingerprint("implant", cfg) != fp_implant


def test_influence_fingerprint_follows_the_aggregation(tmp_path):
    rd = RunDir(tmp_path)
    base = {"influence": {"k_in": 16}, "weights": {"agg": "mean", "tau_f": 0.7}}
    other_agg = {"influence": {"k_in": 16}, "weights": {"agg": "median_topk", "tau_f": 0.7}}
    other_tau = {"influence": {"k_in": 16}, "weights": {"agg": "mean", "tau_f": 0.5}}
    assert rd.fingerprint("influence", base) != rd.fingerprint("influence", other_agg)
    assert rd.fingerprint("influence", base) == rd.fingerprint("influence", other_tau)
