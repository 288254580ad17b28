"""Run-directory manifest: fingerprints, skip/resume decisions, atomic writes, failure records."""

import pytest

from rapidun_dist.core.io import atomic_path, read_json, write_json
from rapidun_dist.run.rundir import RunDir
from rapidun_dist.stages import fingerprint


def fp_of(rd: RunDir, stage: str, cfg: dict) -> str:
    """The registry's fingerprint of `stage` for `cfg` against what `rd`'s manifest records upstream."""
    return fingerprint(stage, cfg, rd.manifest()["stages"])


def test_stage_done_only_when_fingerprint_and_outputs_match(tmp_path):
    rd = RunDir(tmp_path)
    cfg = {"data": {"n": 1}, "seed": 0}
    fp = fp_of(rd, "prepare", cfg)
    out = tmp_path / "data" / "train.jsonl"
    out.parent.mkdir()
    out.write_text("{}\n")
    rec = rd.start("prepare", fp)
    assert not rd.is_done("prepare", fp)
    rd.finish("prepare", rec, [out])
    man = read_json(rd.manifest_path)["stages"]["prepare"]
    assert man["status"] == "done" and man["seconds"] >= 0 and "torch" in man["versions"]
    assert rd.is_done("prepare", fp)
    assert not rd.is_done("prepare", fp_of(rd, "prepare", {"data": {"n": 2}, "seed": 0}))
    out.write_text('{"changed": 1}\n')
    assert not rd.is_done("prepare", fp)


def test_downstream_fingerprint_chains_upstream_config(tmp_path):
    rd = RunDir(tmp_path)
    a = fp_of(rd, "weights", {"data": {"n": 1}, "weights": {"agg": "mean"}})
    b = fp_of(rd, "weights", {"data": {"n": 2}, "weights": {"agg": "mean"}})
    c = fp_of(rd, "prepare", {"data": {"n": 1}, "weights": {"agg": "other"}})
    d = fp_of(rd, "prepare", {"data": {"n": 1}, "weights": {"agg": "mean"}})
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
    rd.finish("prepare", rd.start("prepare", fp_of(rd, "prepare", cfg)), [out])
    fp_implant = fp_of(rd, "implant", cfg)
    out.write_text("two")
    rd.finish("prepare", rd.start("prepare", fp_of(rd, "prepare", cfg)), [out])
    assert fp_of(rd, "implant", cfg) != fp_implant


def test_influence_fingerprint_follows_the_aggregation(tmp_path):
    rd = RunDir(tmp_path)
    base = {"influence": {"k_in": 16}, "weights": {"agg": "mean", "tau_f": 0.7}}
    other_agg = {"influence": {"k_in": 16}, "weights": {"agg": "median_topk", "tau_f": 0.7}}
    other_tau = {"influence": {"k_in": 16}, "weights": {"agg": "mean", "tau_f": 0.5}}
    assert fp_of(rd, "influence", base) != fp_of(rd, "influence", other_agg)
    assert fp_of(rd, "influence", base) == fp_of(rd, "influence", other_tau)


def test_a_key_added_at_its_neutral_value_leaves_fingerprints_unchanged(tmp_path):
    """FINGERPRINT_NEUTRAL: a run made before a key existed stays current while the key holds the value that behaves
    as before; any other value is a new fingerprint, in the stage that reads it and downstream."""
    from rapidun_dist.config import RunConfig
    from rapidun_dist.stages import FINGERPRINT_NEUTRAL, STAGE_NAMES

    rd = RunDir(tmp_path)
    cfg = RunConfig().to_dict()
    for key, neutral in FINGERPRINT_NEUTRAL.items():
        section, name = key.rsplit(".", 1)
        node = cfg
        for part in section.split("."):
            node = node[part]
        assert node[name] == neutral, f"{key}: the default must be the neutral value"
        before = {s: fp_of(rd, s, cfg) for s in STAGE_NAMES if s != "attribute"}
        node.pop(name)  # the config as it was before the key existed
        assert {s: fp_of(rd, s, cfg) for s in before} == before
        node[name] = neutral + 1 if isinstance(neutral, int) else None
        changed = {s for s in before if fp_of(rd, s, cfg) != before[s]}
        assert changed, key  # the stages that read it, and downstream
        node[name] = neutral


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_keep_the_umask_permissions(tmp_path, umask, file_mode, dir_mode):
    """Atomic writes (temp file + rename) give what a plain open() / mkdir() would: readable by the group under
    umask 022 (teammates read run directories on shared file systems), private under 077."""
    import os
    import stat

    import torch

    from rapidun_dist.config import TinyModelConfig
    from rapidun_dist.core.io import save_safetensors, write_jsonl
    from rapidun_dist.models.loading import build_tiny_model, save_model, train_tokenizer

    old = os.umask(umask)
    try:
        write_json(tmp_path / "manifest.json", {"a": 1})
        write_jsonl(tmp_path / "data" / "train.jsonl", [{"a": 1}])
        save_safetensors(tmp_path / "f.safetensors", {"x": torch.zeros(2)})
        tok = train_tokenizer(["hello world"] * 10, 270)
        model = build_tiny_model(
            TinyModelConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1), vocab_size=len(tok), max_length=16, tokenizer=tok,
        )  # fmt: skip
        save_model(model, tok, tmp_path / "model")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    for p in (tmp_path / "manifest.json", tmp_path / "data" / "train.jsonl", tmp_path / "f.safetensors"):
        assert mode(p) == file_mode, p
    assert mode(tmp_path / "model") == dir_mode
    assert all(mode(p) == file_mode for p in (tmp_path / "model").iterdir())
