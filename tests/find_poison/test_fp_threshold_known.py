"""The `known` threshold rule: its record against its definition, hand-made score distributions where the robust z
against a small reference fails and the known rule keeps precision while recovering recall, its fallback when the
known rows do not stand out, and the stage flagging exactly what the rule says on the tiny run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fp_utils import fresh_copy, load_cfg, read_rows  # noqa: E402

from rapidun_dist.core.errors import DataError  # noqa: E402
from rapidun_dist.core.io import read_json  # noqa: E402
from rapidun_dist.find_poison import suspects as S  # noqa: E402


def test_known_threshold_is_a_known_quantile_and_the_reference_maximum():
    known = torch.tensor([4.0, 1.0, 3.0, 2.0, 5.0], dtype=torch.float64)
    ref = torch.tensor([0.0, -1.0, 2.5, 0.5], dtype=torch.float64)
    th = S.known_threshold(known, ref, quantile=0.25)
    assert th.known_value == pytest.approx(2.0) and th.reference_value == 2.5 and th.value == 2.5
    assert (th.n_known, th.n_reference) == (5, 4)
    s = torch.tensor([2.0, 2.5, 2.6, 1.0, 9.0], dtype=torch.float64)
    assert th.flags(s).tolist() == [
        False,
        False,
        True,
        False,
        True,
    ]  # >= known quantile and > every reference
    assert th.expected_fp(20) == pytest.approx(20 / 5)
    low = S.known_threshold(known, torch.tensor([0.0, 0.1]), quantile=0.0)
    assert low.value == 1.0 and low.flags(torch.tensor([1.0, 0.99])).tolist() == [True, False]
    with pytest.raises(DataError, match="no known row is a training row"):
        S.known_threshold(torch.zeros(0), ref, quantile=0.1)
    assert "known rows' leave-one-out scores" in S.describe_threshold(th.to_dict(), 3.0)


def _flat_null_scores(seed: int):
    """A light-tailed clean null (uniform on [-1, 1]: the scores of templated clean rows are bounded and flat) and
    poison just above its edge (1.3 +- 0.08; 40 of 4040 rows, 8 of them known), with a 24-row reference: its
    scaled MAD (about 0.74, so a z = 3.09 line near 2.3 on average) says little about a null that ends at 1."""
    gen = torch.Generator().manual_seed(seed)
    clean = 2 * torch.rand(4000, generator=gen) - 1
    poison = 1.3 + 0.08 * torch.randn(40, generator=gen)
    scores = torch.cat([clean, poison]).double()
    labels = torch.cat([torch.zeros(4000, dtype=torch.bool), torch.ones(40, dtype=torch.bool)])
    ref = torch.randperm(4000, generator=gen)[:24]
    known = 4000 + torch.arange(8)
    return scores, labels, ref, known


def test_known_rule_recovers_recall_where_the_z_rule_fails():
    """Over 20 draws of the reference and the poison: the z rule misses the poison in most draws (its line moves
    with 24 reference rows: measured mean recall 0.2), fdr flags nothing (no p-value below 1/25), the known rule
    finds most of it (measured mean recall 0.8) and never flags a clean row here."""
    z_recall, k_recall, k_precision = [], [], []
    for seed in range(20):
        scores, labels, ref, known = _flat_null_scores(seed)
        z = S.robust_threshold(scores[ref], z=3.09)
        z_recall.append(S.detection_metrics(scores, z.zscores(scores) > 3.09, labels)["recall"])
        assert not S.fdr_threshold(scores, scores[ref], q=0.1)[1].any()
        m = S.detection_metrics(
            scores, S.known_threshold(scores[known], scores[ref], quantile=0.1).flags(scores), labels
        )
        k_recall.append(m["recall"])
        k_precision.append(m["precision"])
    assert sum(z_recall) / 20 < 0.4 and sum(k_recall) / 20 >= 0.7
    assert min(k_recall) >= 0.5 and min(k_precision) == 1.0


def test_known_rule_falls_back_to_the_reference_maximum_when_the_known_rows_do_not_stand_out():
    """Known rows that look clean: the rule is then "above every reference row", whose false positives are, in
    expectation over the draws, the unflagged rows / (reference rows + 1) (`expected_fp`)."""
    flagged, expected = [], []
    for seed in range(40):
        gen = torch.Generator().manual_seed(seed)
        scores = torch.randn(5000, generator=gen, dtype=torch.float64)
        ref, known = torch.arange(50), torch.arange(50, 58)  # the "known" rows are clean rows too
        th = S.known_threshold(scores[known], scores[ref], quantile=0.1)
        flags = th.flags(scores)
        assert th.value == th.reference_value == float(scores[ref].max())
        assert torch.equal(flags, scores > scores[ref].max())
        flagged.append(int(flags.sum()))
        expected.append(th.expected_fp(5000 - int(flags.sum())))
    assert sum(flagged) / 40 == pytest.approx(sum(expected) / 40, rel=0.3)


def test_stage_flags_what_the_known_rule_says(reference_run, tmp_path):
    from rapidun_dist.pipeline import run_pipeline

    run = fresh_copy(reference_run, tmp_path / "run")
    run_pipeline(
        load_cfg(run, "find_poison.threshold=known", "find_poison.time_epoch=false"), ["find_poison"]
    )
    rows = read_rows(run / "suspects" / "suspects.jsonl")
    summary = read_json(run / "suspects" / "summary.json")
    th = summary["threshold"]
    assert th["n_known"] == sum(r["known"] for r in rows) and th["quantile"] == 0.1
    known_scores = torch.tensor([r["score"] for r in rows if r["known"]], dtype=torch.float64)
    assert th["known_value"] == pytest.approx(float(torch.quantile(known_scores, 0.1)), abs=1e-12)
    assert all(
        r["flagged"] == (r["score"] >= th["known_value"] and r["score"] > th["reference_value"]) for r in rows
    )
    base = read_json(reference_run / "suspects" / "summary.json")  # the z rule on the same scores
    m, m_z = summary["metrics"]["influence"], base["metrics"]["influence"]
    assert (
        m["recall"] > m_z["recall"] and m["precision"] >= 0.9
    )  # measured: 0.824 / 0.966 against z's 0.706 / 1.0
