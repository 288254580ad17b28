"""Directional scores (dense oracle) against plain numpy loops, in float64, on fresh random features."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from rapidun_dist.core.errors import DataError
from rapidun_dist.influence.scores import dense_group_scores, median_with_implicit_zeros
from rapidun_dist.weights import dense_directional_scores, split_directional


def _loop_scores(g: np.ndarray, nf: int, agg: str, topk: int, trim: float, include_self: bool) -> dict:
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    s = gn @ gn.T
    n = len(g)
    groups = {"f": range(nf), "r": range(nf, n)}

    def block(rows, cols):
        out = []
        for i in rows:
            vals = []
            for j in cols:
                if i == j and not include_self:
                    continue
                if agg == "median_topk":
                    cand = sorted((r for r in rows if include_self or r != j), key=lambda r: (-s[r, j], r))[
                        :topk
                    ]
                    vals.append(s[i, j] if i in cand else 0.0)
                else:
                    vals.append(s[i, j])
            vals = np.sort(np.array(vals))
            if len(vals) == 0:
                out.append(0.0)
            elif agg == "median_topk":
                out.append(float(np.median(vals)))
            else:
                cut = int(np.floor((trim if agg == "trimmed_mean" else 0.0) * len(vals)))
                out.append(float(vals[cut : len(vals) - cut].mean()))
        return np.array(out)

    return {
        "ff": block(groups["f"], groups["f"]),
        "fr": block(groups["f"], groups["r"]),
        "rr": block(groups["r"], groups["r"]),
        "rf": block(groups["r"], groups["f"]),
    }


@pytest.mark.parametrize("agg", ["mean", "trimmed_mean", "median_topk"])
@pytest.mark.parametrize("include_self", [False, True])
def test_dense_scores_match_loops(agg, include_self):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{agg}{include_self}".encode()))
    nf, nr, k = 7, 12, 5
    f = torch.randn(nf, k, generator=gen, dtype=torch.float64) * 3.0  # not unit norm: cosines are used
    r = torch.randn(nr, k, generator=gen, dtype=torch.float64)
    got = dense_directional_scores(f, r, agg=agg, topk=4, trim=0.2, include_self=include_self)
    want = _loop_scores(torch.cat([f, r]).numpy(), nf, agg, 4, 0.2, include_self)
    for key in ("ff", "fr", "rr", "rf"):
        assert got[key].dtype == torch.float64
        np.testing.assert_allclose(got[key].numpy(), want[key], rtol=0, atol=1e-12, err_msg=key)


def test_float32_input_is_scored_in_float64():
    gen = torch.Generator().manual_seed(3)
    f, r = torch.randn(5, 6, generator=gen), torch.randn(9, 6, generator=gen)
    got = dense_directional_scores(f, r, agg="trimmed_mean")
    want = dense_directional_scores(f.double(), r.double(), agg="trimmed_mean")
    for key in got:
        assert torch.equal(got[key], want[key])


def test_median_topk_ties_go_to_lower_row_index():
    # rows 0 and 1 identical: every column ties them; with k=1 only row 0 may survive
    base = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    f = torch.cat([base[:1], base[:1], base[1:2]])
    r = base[2:]
    got = dense_directional_scores(f, r, agg="median_topk", topk=1, include_self=True)
    want = _loop_scores(torch.cat([f, r]).numpy(), 3, "median_topk", 1, 0.0, True)
    np.testing.assert_allclose(got["fr"].numpy(), want["fr"], atol=1e-12)
    assert got["fr"][1] == 0.0 and got["ff"][1] == 0.0  # row 1 loses every tie to row 0
    assert got["fr"][0] != 0.0


def test_single_forget_row_without_self_scores_zero():
    gen = torch.Generator().manual_seed(0)
    got = dense_directional_scores(
        torch.randn(1, 4, generator=gen, dtype=torch.float64),
        torch.randn(3, 4, generator=gen, dtype=torch.float64),
    )
    assert got["ff"].tolist() == [0.0]


def test_split_directional_roundtrip():
    s, c = torch.arange(5.0), -torch.arange(5.0)
    out = split_directional(s, c, 2)
    assert out["ff"].tolist() == [0, 1] and out["rf"].tolist() == [-2, -3, -4]
    with pytest.raises(DataError):
        split_directional(s, c, 5)


@pytest.mark.parametrize(
    "bad",
    [
        dict(f=torch.randn(3, 4), r=torch.randn(3, 5)),
        dict(f=torch.randn(0, 4), r=torch.randn(3, 4)),
        dict(f=torch.full((2, 4), float("nan")), r=torch.randn(3, 4)),
    ],
)
def test_bad_features_raise(bad):
    with pytest.raises(DataError):
        dense_directional_scores(bad["f"], bad["r"])


def test_bad_agg_args_raise():
    f, r = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="agg"):
        dense_directional_scores(f, r, agg="max")
    with pytest.raises(ValueError, match="trim"):
        dense_directional_scores(f, r, agg="trimmed_mean", trim=0.5)
    with pytest.raises(ValueError, match="topk"):
        dense_directional_scores(f, r, agg="median_topk", topk=0)


# ---------------------------------------------------------------------------------------------------
# rows against groups (the find_poison oracle)


def _loop_group(rows, row_ids, feats, ids, agg, topk, trim, include_self):
    """Plain loops over the definition: block (all rows, this group's columns); pairs with equal ids out."""
    rn = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cn = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    s = rn @ cn.T
    ok = lambda i, j: include_self or row_ids[i] != ids[j]  # noqa: E731
    out = []
    for i in range(len(rows)):
        cols = [j for j in range(len(feats)) if ok(i, j)]
        if agg == "topk_mean":
            best = sorted(cols, key=lambda j: (-s[i, j], ids[j]))[:topk]
            out.append(float(np.mean([s[i, j] for j in best])) if best else 0.0)
            continue
        if agg == "median_topk":
            vals = []
            for j in cols:
                cand = sorted((r for r in range(len(rows)) if ok(r, j)), key=lambda r: (-s[r, j], row_ids[r]))
                vals.append(s[i, j] if i in cand[:topk] else 0.0)
            out.append(float(np.median(vals)) if vals else 0.0)
            continue
        vals = np.sort(np.array([s[i, j] for j in cols]))
        cut = int(np.floor((trim if agg == "trimmed_mean" else 0.0) * len(vals)))
        out.append(float(vals[cut : len(vals) - cut].mean()) if len(vals) else 0.0)
    return np.array(out)


@pytest.mark.parametrize("agg", ["mean", "trimmed_mean", "median_topk", "topk_mean"])
@pytest.mark.parametrize("include_self", [False, True])
def test_dense_group_scores_match_loops(agg, include_self):
    gen = torch.Generator().manual_seed(zlib.crc32(f"group{agg}{include_self}".encode()))
    rows = torch.randn(13, 5, generator=gen, dtype=torch.float64) * 2.0
    row_ids = torch.randperm(50, generator=gen)[:13] + 10
    f = torch.cat([rows[:3], torch.randn(4, 5, generator=gen, dtype=torch.float64)])  # 3 members are rows
    f_ids = torch.cat([row_ids[:3], torch.tensor([0, 1, 2, 3])])
    ref = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    ref_ids = torch.tensor([4, 5, 6, 7, 8, int(row_ids[5])])  # one reference member is row 5 (other features)
    groups = {"F": (f, f_ids), "Ref": (ref, ref_ids)}
    got = dense_group_scores(rows, row_ids, groups, agg=agg, topk=4, trim=0.2, include_self=include_self)
    for name, (feats, ids) in groups.items():
        want = _loop_group(
            rows.numpy(), row_ids.numpy(), feats.numpy(), ids.numpy(), agg, 4, 0.2, include_self
        )
        assert got[name].dtype == torch.float64
        np.testing.assert_allclose(got[name].numpy(), want, rtol=0, atol=1e-12, err_msg=name)
    if agg == "topk_mean":
        assert got["F.topk_ids"].shape == (13, 4)


def test_topk_ids_ties_go_to_lower_id_and_pad():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)  # members 9 and 4 tie
    got = dense_group_scores(
        rows, torch.tensor([0, 1]), {"g": (feats, torch.tensor([9, 4, 1]))}, agg="topk_mean", topk=4
    )
    assert got["g.topk_ids"][0].tolist() == [4, 9, 1, -1]  # row 1 is member 1 (self): left out, padded
    assert got["g.topk_ids"][1].tolist() == [4, 9, -1, -1] and got["g"][1] == 0.0


def test_median_with_implicit_zeros_matches_dense_median():
    gen = torch.Generator().manual_seed(11)
    counts = torch.randint(0, 7, (9, 3), generator=gen)
    dense = torch.zeros(9, 3, 7, dtype=torch.float64)
    rows, grp, vals = [], [], []
    for i in range(9):
        for g in range(3):
            m = int(counts[i, g])
            for p in torch.randperm(m, generator=gen)[: torch.randint(0, m + 1, (1,), generator=gen).item()]:
                v = float(torch.randn(1, generator=gen))
                dense[i, g, p] = v
                rows.append(i), grp.append(g), vals.append(v)
    got = median_with_implicit_zeros(
        torch.tensor(rows, dtype=torch.long),
        torch.tensor(grp, dtype=torch.long),
        torch.tensor(vals, dtype=torch.float64),
        counts,
    )
    for i in range(9):
        for g in range(3):
            m = int(counts[i, g])
            want = float(np.median(dense[i, g, :m].numpy())) if m else 0.0
            assert abs(float(got[i, g]) - want) < 1e-15, (i, g)


def test_group_inputs_are_checked():
    rows, ids = torch.randn(3, 4), torch.tensor([0, 1, 2])
    with pytest.raises(DataError, match="share|expected feats"):
        dense_group_scores(rows, ids, {"g": (torch.randn(2, 5), torch.tensor([0, 1]))})
    with pytest.raises(DataError, match="distinct"):
        dense_group_scores(rows, ids, {"g": (torch.randn(2, 4), torch.tensor([7, 7]))})
    with pytest.raises(ValueError, match="agg"):
        dense_group_scores(rows, ids, {"g": (torch.randn(2, 4), torch.tensor([7, 8]))}, agg="max")
