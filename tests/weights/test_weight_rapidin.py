"""RapidIn result import: synthetic result folders against a direct computation, and the reference files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rapidun_dist.config import WeightsConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_jsonl
from rapidun_dist.weights import main_weights_from_rapidin, reference_config, weights_from_rapidin_dir

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
REFERENCE = SHARED_DATA / "reference_rapidun"


def _write_result(path: Path, block: np.ndarray, n_helpful: int | None = None) -> None:
    """RapidIn-style file for block[train, test]: per test, helpful (desc) and harmful (asc) lists."""
    out = {"config": "{synthetic}"}
    for j in range(block.shape[1]):
        order = np.argsort(-block[:, j], kind="stable")[: n_helpful or block.shape[0]]
        asc = np.argsort(block[:, j], kind="stable")[: n_helpful or block.shape[0]]
        out[str(j)] = {
            "test_data": {},
            "helpful": order.tolist(),
            "helpful_infl": block[order, j].tolist(),
            "harmful": asc.tolist(),
            "harmful_infl": block[asc, j].tolist(),
        }
    out["finished_cnt"] = "done"
    path.write_text(json.dumps(out))


def _make_dir(tmp_path: Path, nf=6, nr=14, seed=0, n_helpful=None) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    blocks = {
        "FTF": rng.normal(size=(nf, nf)),
        "FTR": rng.normal(size=(nf, nr)),
        "RTF": rng.normal(size=(nr, nf)),
        "RTR": rng.normal(size=(nr, nr)),
    }
    for tag, b in blocks.items():
        n = nf if tag[0] == "F" else nr
        _write_result(tmp_path / f"influence_results_{n}_{tag}.json", b, n_helpful)
    return blocks


def _median_topk(block, k):
    masked = np.zeros_like(block)
    for j in range(block.shape[1]):
        top = np.argsort(-block[:, j], kind="stable")[:k]
        masked[top, j] = block[top, j]
    return np.median(masked, axis=1)


def _weights(s, tau):
    med = np.median(s)
    z = (s - med) / max(1.4826 * np.median(np.abs(s - med)), 1e-3)
    w = np.exp(np.clip(z / tau, np.log(0.2), np.log(3.0)))
    return w / w.mean()


def test_reference_mode_on_synthetic_results(tmp_path):
    b = _make_dir(tmp_path)
    f_rows, r_rows = weights_from_rapidin_dir(
        tmp_path, WeightsConfig(agg="mean"), reference=True, forget_ids=list("abcdef")
    )
    s_f = _median_topk(b["FTF"], 40) - _median_topk(b["FTR"], 40)
    s_r = _median_topk(b["RTR"], 40) - _median_topk(b["RTF"], 40)
    np.testing.assert_allclose([r["weight"] for r in f_rows], _weights(s_f, 0.7), atol=1e-12)
    np.testing.assert_allclose([r["weight"] for r in r_rows], _weights(s_r, 1.2), atol=1e-12)
    assert [r["id"] for r in f_rows] == list("abcdef") and r_rows[0]["id"] is None
    # reference topk (40) exceeds these packs; the same recipe with k = 4, through the config path
    cfg = WeightsConfig(**{**reference_config().__dict__, "topk": 4})
    f_rows, _ = weights_from_rapidin_dir(tmp_path, cfg, reference=False)
    s_f = _median_topk(b["FTF"], 4) - _median_topk(b["FTR"], 4)
    np.testing.assert_allclose([r["weight"] for r in f_rows], _weights(s_f, 0.7), atol=1e-12)


def test_mean_mode_excludes_self_pairs(tmp_path):
    b = _make_dir(tmp_path, seed=1)
    cfg = WeightsConfig(agg="mean", tau_f=0.9)
    f_rows, _ = weights_from_rapidin_dir(tmp_path, cfg, reference=False)
    ff = (b["FTF"].sum(1) - np.diag(b["FTF"])) / (b["FTF"].shape[1] - 1)
    np.testing.assert_allclose(
        [r["weight"] for r in f_rows], _weights(ff - b["FTR"].mean(1), 0.9), atol=1e-12
    )


def test_partial_lists_ok_for_topk_but_not_for_mean(tmp_path):
    b = _make_dir(tmp_path, seed=2, n_helpful=5)
    cfg = WeightsConfig(agg="median_topk", topk=3, include_self=True)
    f_rows, _ = weights_from_rapidin_dir(tmp_path, cfg, reference=False)
    s_f = _median_topk(b["FTF"], 3) - _median_topk(b["FTR"], 3)
    np.testing.assert_allclose([r["weight"] for r in f_rows], _weights(s_f, 0.7), atol=1e-12)
    with pytest.raises(DataError, match="missing"):
        weights_from_rapidin_dir(tmp_path, WeightsConfig(agg="mean"), reference=False)


def test_missing_file_and_bad_index_raise(tmp_path):
    _make_dir(tmp_path)
    (tmp_path / "influence_results_14_RTF.json").unlink()
    with pytest.raises(DataError, match="RTF"):
        weights_from_rapidin_dir(tmp_path, WeightsConfig(), reference=True)
    bad = {"0": {"helpful": [99], "helpful_infl": [1.0]}}
    (tmp_path / "influence_results_14_RTF.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="train index 99"):
        weights_from_rapidin_dir(tmp_path, WeightsConfig(), reference=True)


def test_write_outputs(tmp_path):
    _make_dir(tmp_path / "in")
    main_weights_from_rapidin(tmp_path / "in", tmp_path / "out", True, WeightsConfig())
    rows = read_jsonl(tmp_path / "out" / "forget_weights.jsonl")
    assert [set(r) for r in rows] == [{"index", "id", "weight"}] * 6
    scores = read_jsonl(tmp_path / "out" / "scores.jsonl")
    assert len(scores) == 20 and {s["pack"] for s in scores} == {"forget", "retain"}
    assert scores[0]["weight"] == rows[0]["weight"]


@pytest.mark.skipif(not REFERENCE.is_dir(), reason=f"reference RapidUn data not present at {REFERENCE}")
def test_reference_weights_reproduced(tmp_path):
    f_rows, r_rows = main_weights_from_rapidin(REFERENCE, tmp_path, True, WeightsConfig())
    for ours, name in ((f_rows, "forget_weights.jsonl"), (r_rows, "retain_weights.jsonl")):
        theirs = read_jsonl(REFERENCE / name)
        assert [r["index"] for r in ours] == [r["index"] for r in theirs]
        np.testing.assert_allclose(
            [r["weight"] for r in ours], [r["weight"] for r in theirs], rtol=0, atol=1e-9
        )
    assert len({round(r["weight"], 9) for r in r_rows}) == 3  # the collapse the data README describes
