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
