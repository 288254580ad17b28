"""CLI: help, RapidIn import in reference mode (reproduces the shipped weights when ../shared/data is present)."""

from pathlib import Path

import pytest

from rapidun_dist.cli import main
from rapidun_dist.core.io import read_jsonl

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "reference_rapidun"


def test_help_lists_stages(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for stage in ("run", "prepare", "implant", "influence", "weights", "unlearn", "evaluate"):
        assert stage in out


@pytest.mark.skipif(not SHARED.exists(), reason="../shared/data/reference_rapidun is not available")
def test_rapidin_reference_weights_reproduced(tmp_path):
    out = tmp_path / "w"
    assert main(["weights", "--rapidin-dir", str(SHARED), "--reference", "--out", str(out)]) == 0
    for name in ("forget_weights.jsonl", "retain_weights.jsonl"):
        ours, ref = read_jsonl(out / name), read_jsonl(SHARED / name)
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref, strict=True):
            assert a["index"] == b["index"]
            assert a["weight"] == pytest.approx(b["weight"], abs=1e-9)


def test_rapidin_needs_out(tmp_path, capfd):
    assert main(["weights", "--rapidin-dir", str(tmp_path)]) == 2
    assert "--out" in capfd.readouterr().err


CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_validate_doc_of_one_key_without_a_config(capsys):
    assert main(["validate", "--doc", "unlearn.lr"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == ["unlearn.lr", "    type:    float", "    default: 6.0e-05"]
    assert "learning rate" in out and "value:" not in out


def test_validate_doc_of_a_section_with_a_config_prints_values(capsys):
    import dataclasses

    from rapidun_dist.config import UnlearnConfig

    assert main(["validate", "--doc", "unlearn", str(CONFIGS / "tiny_cpu.yaml"), "unlearn.lr=1e-4"]) == 0
    out = capsys.readouterr().out
    entries = [line for line in out.splitlines() if line.startswith("unlearn")]
    assert entries == ["unlearn"] + [f"unlearn.{f.name}" for f in dataclasses.fields(UnlearnConfig)]
    assert "    value:   0.0001" in out


def test_validate_doc_of_an_unknown_key_names_the_nearest(capfd):
    assert main(["validate", "--doc", "unlearn.lrr"]) == 2
    err = capfd.readouterr().err
    assert "unknown config key 'unlearn.lrr'" in err and "unlearn.lr," in err


def test_validate_without_doc_prints_the_resolved_config(capsys):
    from rapidun_dist.config import dump_config, load_config

    assert main(["validate", str(CONFIGS / "tiny_cpu.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith(dump_config(load_config(CONFIGS / "tiny_cpu.yaml")))
    assert out.endswith("# ok: every check passed\n")
