"""The linear and 2D block paths on 1, 2 and 4 gloo ranks, every grid shape, uneven random shards: scores
equal the dense float64 oracle at 1e-10, and every rank's received bytes equal the formula, phase by phase."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for dist_utils (no conftest here)
from dist_utils import run_distributed  # noqa: E402

from rapidun_dist.influence.gram import (  # noqa: E402
    GroupShard,
    distributed_directional_scores,
    distributed_group_scores,
    gather_scores_to_rank0,
)
from rapidun_dist.influence.scores import dense_directional_scores, dense_group_scores  # noqa: E402

pytestmark = pytest.mark.dist

K = 10
NF, NR = 9, 26  # directional: Gm = [F; R]
N_ROWS, N_F, N_REF = 37, 8, 11  # rows vs groups; some F members are rows (shared ids), some are not
TRIM = 0.2
GRIDS = {1: ["1x1"], 2: ["1x2", "2x1"], 4: ["1x4", "2x2", "4x1"], 6: ["2x3", "3x2"], 9: ["3x3"]}


def _feats(seed: int, n: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(3, K, generator=gen, dtype=torch.float64)
    x = centers[torch.arange(n) % 3] + 0.9 * torch.randn(n, K, generator=gen, dtype=torch.float64)
    x[n // 2] = 0.0  # a zero row: cosine 0 with everything
    return x.to(dtype)


def _split(n: int, world: int, seed: int) -> list[torch.Tensor]:
    """Random, uneven (some empty), non-contiguous positions 0..n-1 per rank."""
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    cuts = torch.sort(torch.randint(0, n + 1, (world - 1,), generator=gen)).values.tolist()
    bounds = [0, *cuts, n]
    return [perm[bounds[r] : bounds[r + 1]] for r in range(world)]


def group_problem(seed: int):
    """Rows with arbitrary ids; F = 5 of the rows (same ids, same features) + 3 outsiders; Ref = 2 rows + 9."""
    gen = torch.Generator().manual_seed(seed)
    rows = _feats(seed, N_ROWS)
    row_ids = torch.randperm(1000, generator=gen)[:N_ROWS] + 5000
    f = torch.cat([rows[:5], _feats(seed + 1, 3)])
    f_ids = torch.cat([row_ids[:5], torch.tensor([11, 12, 13])])
    ref = torch.cat([rows[5:7], _feats(seed + 2, N_REF - 2)])
    ref_ids = torch.cat([row_ids[5:7], torch.arange(100, 100 + N_REF - 2)])
    return rows, row_ids, {"F": (f, f_ids), "Ref": (ref, ref_ids)}


DIR_CASES = [
    dict(agg="mean", include_self=False, topk=4, dtype="float64"),
    dict(agg="mean", include_self=True, topk=4, dtype="float64"),
    dict(agg="trimmed_mean", include_self=False, topk=4, dtype="float64"),
    dict(agg="trimmed_mean", include_self=True, topk=4, dtype="float32"),
    dict(agg="median_topk", include_self=False, topk=6, dtype="float64"),
    dict(agg="median_topk", include_self=True, topk=40, dtype="float64"),
    dict(agg="median_topk", include_self=False, topk=3, dtype="float32"),
]
GROUP_CASES = [
    dict(agg=agg, include_self=inc, topk=topk, dtype="float64")
    for agg, inc, topk in [
        ("mean", False, 4),
        ("mean", True, 4),
        ("trimmed_mean", False, 4),
        ("median_topk", False, 7),
        ("median_topk", True, 30),
        ("topk_mean", False, 5),
        ("topk_mean", True, 3),  # the zero row ties every column at 0: ids by lowest id
        ("topk_mean", True, 50),
    ]
]


def _methods(agg: str, world: int) -> list[tuple[str, str | None]]:
    out = [("auto", None), ("allgather", None)] + [("alltoall2d", g) for g in GRIDS[world]]
    return out + ([("linear", None)] if agg == "mean" else [])


def _dir_runs(rank: int, world: int) -> list[dict]:
    out = []
    for ci, case in enumerate(DIR_CASES):
        g = _feats(100 + ci, NF + NR, getattr(torch, case["dtype"]))
        mine = _split(NF + NR, world, 200 + ci)[rank]
        for method, grid in _methods(case["agg"], world):
            kw = {k: case[k] for k in ("agg", "include_self", "topk")}
            res = distributed_directional_scores(
                g[mine],
                mine,
                NF,
                NF + NR,
                trim=TRIM,
                method=method,
                grid=grid,
                tile_size=6,
                backend="torch",
                **kw,
            )
            out.append(
                dict(
                    case=ci,
                    method=method,
                    grid=grid,
                    ids=mine.tolist(),
                    self=res["self_score"].tolist(),
                    cross=res["cross_score"].tolist(),
                    stats=res["stats"],
                )
            )
    return out


def _group_shards(world: int, rank: int, seed: int):
    rows, row_ids, groups = group_problem(seed)
    mine = _split(N_ROWS, world, seed + 1)[rank]
    shards = []
    for gi, (name, (f, ids)) in enumerate(groups.items()):
        part = _split(ids.numel(), world, seed + 10 + gi)[rank]
        shards.append(GroupShard(name, f[part], ids[part]))
    return rows[mine], row_ids[mine], shards


def _group_runs(rank: int, world: int) -> list[dict]:
    out = []
    for ci, case in enumerate(GROUP_CASES):
        feats, ids, shards = _group_shards(world, rank, 300 + ci)
        for method, grid in _methods(case["agg"], world):
            kw = {k: case[k] for k in ("agg", "include_self", "topk")}
            res = distributed_group_scores(
                feats, ids, groups=shards, trim=TRIM, method=method, grid=grid, backend="torch", **kw
            )
            rec = dict(case=ci, method=method, grid=grid, ids=ids.tolist(), stats=res["stats"])
            rec["scores"] = {k: v.tolist() for k, v in res["scores"].items()}
            if "topk_ids" in res:
                rec["topk_ids"] = {k: v.tolist() for k, v in res["topk_ids"].items()}
            out.append(rec)
    return out


def _bad_input(rank: int, world: int) -> list[str]:
    """Rank 0 holds a NaN row: every rank must raise (the flag travels with the layout), none may hang."""
    msgs = []
    for agg in ("mean", "median_topk"):
        feats, ids, shards = _group_shards(world, rank, 300)
        if rank == 0:
            feats = torch.cat([feats, torch.full((1, K), float("nan"), dtype=feats.dtype)])
            ids = torch.cat([ids, torch.tensor([99_999])])
        try:
            distributed_group_scores(feats, ids, groups=shards, agg=agg)
            msgs.append("no error")
        except ValueError as e:
            msgs.append(str(e))
        g = _feats(5, NF + NR)
        mine = _split(NF + NR, world, 5)[rank]
        if rank == world - 1:
            g[mine[:1]] = float("inf")
        try:
            distributed_directional_scores(g[mine], mine, NF, NF + NR, agg=agg, method="allgather")
            msgs.append("no error")
        except ValueError as e:
            msgs.append(str(e))
    return msgs


def _gathered(rank: int, world: int) -> dict | None:
    """gather_scores_to_rank0 of a vector and an [n_local, 3] id matrix over uneven shards of 0..n-1."""
    n = 23
    mine = _split(n, world, 77)[rank]
    got = gather_scores_to_rank0(
        {"v": mine.double() * 0.5, "m": torch.stack([mine, -mine, 2 * mine], 1)}, mine, n
    )
    return None if got is None else {k: v.tolist() for k, v in got.items()}


def _runs(rank: int, world: int) -> dict:
    out = {"dir": _dir_runs(rank, world), "group": _group_runs(rank, world), "bad": _bad_input(rank, world)}
    return out | {"gathered": _gathered(rank, world)}


def _check_gathered(results: list[dict]) -> None:
    i = torch.arange(23)
    assert results[0]["gathered"] == {"v": (i * 0.5).tolist(), "m": torch.stack([i, -i, 2 * i], 1).tolist()}
    assert all(r["gathered"] is None for r in results[1:])


def _check_bad(results: list[dict], world: int) -> None:
    for rank, res in enumerate(results):
        for i, msg in enumerate(res["bad"]):
            culprit = 0 if i % 2 == 0 else world - 1
            assert (
                ("NaN or inf" in msg) if rank == culprit else (f"invalid input on rank(s) [{culprit}]" in msg)
            ), msg


# ---------------------------------------------------------------------------------------------------
# the byte formulas, written out independently of the library's own prediction


def _grid_of(rec: dict, world: int) -> tuple[int, int]:
    r, c = map(int, rec["stats"]["grid"].split("x"))
    assert r * c == world
    if rec["grid"] is not None:
        assert rec["stats"]["grid"] == rec["grid"]
    return r, c


def _layout_bytes(counts: list[int], world: int) -> int:
    """Two all_gathers per row set: [count, K, groups, error flag] int64, then [max count, 2] int64."""
    return (world - 1) * (4 * 8 + (max(counts) * 2 * 8 if max(counts) else 0))


def _mates(p: int, r: int, c: int) -> tuple[list[int], list[int]]:
    a, b = divmod(p, c)
    return [a * c + j for j in range(c) if a * c + j != p], [i * c + b for i in range(r) if i * c + b != p]


def _partial_width(agg: str, topk: int, col_sizes: list[int], row_groups: int) -> int:
    if agg == "mean":
        return len(col_sizes)
    if agg == "trimmed_mean":
        return sum(1 + 2 * math.floor(TRIM * m) for m in col_sizes)
    if agg == "topk_mean":
        return len(col_sizes) * 2 * topk
    return row_groups * 2 * topk  # median_topk: per row group, top-k values and ids


def _survivor_counts(
    s_RC, row_ids, row_grp, col_ids, col_grp, topk, include_self, row_owner, col_owner, world
):
    """[world] survivor entries each rank receives from other ranks (from the dense matrix)."""
    recv = [0] * world
    for j in range(s_RC.shape[1]):
        for h in row_grp.unique().tolist():
            cand = [
                i
                for i in range(s_RC.shape[0])
                if row_grp[i] == h and (include_self or row_ids[i] != col_ids[j])
            ]
            cand.sort(key=lambda i: (-float(s_RC[i, j]), int(row_ids[i])))
            for i in cand[:topk]:
                if row_owner[i] != col_owner[j]:
                    recv[row_owner[i]] += 1
    return recv


def _expected_phases(case, rec_by_rank, world, *, symmetric, dense_s, meta) -> list[dict]:
    """Per rank: {phase: bytes received} for this run."""
    method = rec_by_rank[0]["method"]
    q_counts = [len(r["ids"]) for r in rec_by_rank]
    c_counts = q_counts if symmetric else meta["col_counts"]
    eb = 8 if case["dtype"] == "float64" else 4
    out = []
    for p in range(world):
        ph = {"layout": _layout_bytes(q_counts, world) + (0 if symmetric else _layout_bytes(c_counts, world))}
        if method == "linear" or (method == "auto" and case["agg"] == "mean"):
            g = meta["num_groups"]
            ph["group_sums"] = 2 * (world - 1) * g * K * 8 // world
            if not symmetric and not case["include_self"]:
                ph["self_pairs"] = K * eb * meta["self_pairs_from_others"][p]
        else:
            r, c = _grid_of(rec_by_rank[p], world)
            rm, cm = _mates(p, r, c)
            ph["features"] = K * eb * (sum(q_counts[s] for s in rm) + sum(c_counts[s] for s in cm))
            w = _partial_width(case["agg"], case["topk"], meta["col_sizes"], meta["row_groups"])
            col_side = case["agg"] == "median_topk" and not symmetric
            ph["partials"] = 8 * w * ((r - 1) * c_counts[p] if col_side else (c - 1) * q_counts[p])
            if case["agg"] == "median_topk":
                ph["survivors"] = 8 * (world - 1) + 24 * meta["survivors"][p]
        out.append({k: v for k, v in ph.items() if v or k in ("layout",)})
    return out


def _check_bytes(rec_by_rank, expected):
    for p, (rec, want) in enumerate(zip(rec_by_rank, expected, strict=True)):
        got = {k: v for k, v in rec["stats"].get("phase_bytes_recv", {}).items() if v}
        want = {k: v for k, v in want.items() if v}
        assert got == want, f"rank {p} {rec['method']} {rec['grid']} case {rec['case']}: {got} != {want}"
        assert rec["stats"]["recv_bytes"] == sum(want.values())


# ---------------------------------------------------------------------------------------------------
# checks


def _assemble(recs, key, n, index):
    full = torch.full((n,), float("nan"), dtype=torch.float64)
    for r in recs:
        full[[index[i] for i in r["ids"]]] = torch.tensor(r[key], dtype=torch.float64)
    return full


def _check_directional(results: list[dict], world: int) -> None:
    n = NF + NR
    ident = {i: i for i in range(n)}
    per_run = list(zip(*[r["dir"] for r in results], strict=True))
    for recs in per_run:
        case = DIR_CASES[recs[0]["case"]]
        g = _feats(100 + recs[0]["case"], n, getattr(torch, case["dtype"])).double()
        kw = {k: case[k] for k in ("agg", "include_self", "topk")}
        want = dense_directional_scores(g[:NF], g[NF:], trim=TRIM, **kw)
        self_s, cross_s = _assemble(recs, "self", n, ident), _assemble(recs, "cross", n, ident)
        have = {"ff": self_s[:NF], "fr": cross_s[:NF], "rr": self_s[NF:], "rf": cross_s[NF:]}
        tol = 1e-10 if case["dtype"] == "float64" else 2e-6
        what = f"{case} {recs[0]['method']} {recs[0]['grid']} world {world}"
        for k in want:
            torch.testing.assert_close(have[k], want[k], rtol=0, atol=tol, msg=f"{k}: {what}")
        if recs[0]["method"] == "allgather":
            continue
        owner = {i: p for p, r in enumerate(recs) for i in r["ids"]}
        meta = dict(num_groups=2, col_sizes=[NF, NR], row_groups=2)
        if case["agg"] == "median_topk":
            gn = torch.nn.functional.normalize(g, dim=1)
            ids = torch.arange(n)
            grp = (ids >= NF).long()
            own = [owner[i] for i in range(n)]
            meta["survivors"] = _survivor_counts(
                gn @ gn.T, ids, grp, ids, grp, case["topk"], case["include_self"], own, own, world
            )
        _check_bytes(recs, _expected_phases(case, recs, world, symmetric=True, dense_s=None, meta=meta))


def _group_meta(case, ci, world, recs):
    rows, row_ids, groups = group_problem(300 + ci)
    q_owner = {int(i): p for p, r in enumerate(recs) for i in r["ids"]}
    col_counts, col_owner, self_from_others = [0] * world, [], [0] * world
    for gi, (_, (_, ids)) in enumerate(groups.items()):
        parts = _split(ids.numel(), world, 300 + ci + 10 + gi)
        owner = torch.empty(ids.numel(), dtype=torch.long)
        for p, part in enumerate(parts):
            col_counts[p] += part.numel()
            owner[part] = p
            for i in ids[part].tolist():
                if i in q_owner and q_owner[i] != p:
                    self_from_others[q_owner[i]] += 1
        col_owner.append(owner)
    meta = dict(num_groups=2, col_sizes=[g[1].numel() for g in groups.values()], row_groups=1)
    meta.update(col_counts=col_counts, self_pairs_from_others=self_from_others)
    if case["agg"] == "median_topk":
        cols = torch.cat([f for f, _ in groups.values()])
        c_ids = torch.cat([i for _, i in groups.values()])
        s = torch.nn.functional.normalize(rows.double(), dim=1) @ torch.nn.functional.normalize(cols, dim=1).T
        r_own = [q_owner[int(i)] for i in row_ids]
        meta["survivors"] = _survivor_counts(
            s,
            row_ids,
            torch.zeros(N_ROWS, dtype=torch.long),
            c_ids,
            None,
            case["topk"],
            case["include_self"],
            r_own,
            torch.cat(col_owner).tolist(),
            world,
        )
    return meta


def _check_groups(results: list[dict], world: int) -> None:
    per_run = list(zip(*[r["group"] for r in results], strict=True))
    for recs in per_run:
        ci = recs[0]["case"]
        case = GROUP_CASES[ci]
        rows, row_ids, groups = group_problem(300 + ci)
        kw = {k: case[k] for k in ("agg", "include_self", "topk")}
        want = dense_group_scores(rows, row_ids, groups, trim=TRIM, **kw)
        index = {int(i): p for p, i in enumerate(row_ids.tolist())}
        what = f"{case} {recs[0]['method']} {recs[0]['grid']} world {world}"
        for name in groups:
            have = torch.full((N_ROWS,), float("nan"), dtype=torch.float64)
            for r in recs:
                have[[index[i] for i in r["ids"]]] = torch.tensor(r["scores"][name], dtype=torch.float64)
            torch.testing.assert_close(have, want[name], rtol=0, atol=1e-10, msg=f"{name}: {what}")
            if case["agg"] == "topk_mean":
                got_ids = torch.full((N_ROWS, case["topk"]), -7, dtype=torch.long)
                for r in recs:
                    if r["ids"]:
                        got_ids[[index[i] for i in r["ids"]]] = torch.tensor(r["topk_ids"][name])
                assert torch.equal(got_ids, want[f"{name}.topk_ids"]), what
        meta = _group_meta(case, ci, world, recs)
        _check_bytes(recs, _expected_phases(case, recs, world, symmetric=False, dense_s=None, meta=meta))


def test_world_size_1_in_process():
    res = _runs(0, 1)
    _check_directional([res], 1)
    _check_groups([res], 1)
    _check_bad([res], 1)
    _check_gathered([res])


@pytest.mark.parametrize("world", [2, 4])
def test_world_sizes_and_grids_match_dense(world):
    results = run_distributed(_runs, world)
    _check_directional(results, world)
    _check_groups(results, world)
    _check_bad(results, world)
    _check_gathered(results)


@pytest.mark.slow
@pytest.mark.parametrize("world", [6, 9])
def test_non_square_and_3x3_grids_match_dense(world):
    """2 x 3 / 3 x 2 (neither degenerate nor square) and 3 x 3; slow: 6 and 9 processes."""
    results = run_distributed(_runs, world)
    _check_directional(results, world)
    _check_groups(results, world)


DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_results_stay_on_the_features_device(device, dtype):
    """Every result tensor lives where the features are (NCCL needs device tensors end to end)."""
    g = _feats(7, NF + NR, dtype).to(device)
    ids = torch.arange(NF + NR, device=device)
    for method in ("linear", "alltoall2d", "allgather"):
        res = distributed_directional_scores(g, ids, NF, NF + NR, method=method, backend="torch")
        assert res["self_score"].device.type == device and res["cross_score"].device.type == device
    rows, row_ids, groups = group_problem(3)
    shards = [GroupShard(k, f.to(device, dtype), i.to(device)) for k, (f, i) in groups.items()]
    for agg in ("mean", "median_topk", "topk_mean", "trimmed_mean"):
        res = distributed_group_scores(
            rows.to(device, dtype), row_ids.to(device), groups=shards, agg=agg, topk=3
        )
        assert all(v.device.type == device for v in res["scores"].values())
        if agg == "topk_mean":
            assert all(v.device.type == device for v in res["topk_ids"].values())


def test_bad_arguments_raise():
    g = _feats(1, NF + NR)
    ids = torch.arange(NF + NR)
    with pytest.raises(ValueError, match="method must be one of"):
        distributed_directional_scores(g, ids, NF, NF + NR, method="ring")
    with pytest.raises(ValueError, match="linear"):
        distributed_directional_scores(g, ids, NF, NF + NR, agg="median_topk", method="linear")
    with pytest.raises(ValueError, match="covers 4 ranks"):
        distributed_directional_scores(g, ids, NF, NF + NR, agg="median_topk", grid="2x2")
    with pytest.raises(ValueError, match="permutation"):
        distributed_directional_scores(g[1:], ids[1:], NF, NF + NR, agg="median_topk")
    rows, row_ids, groups = group_problem(3)
    shards = [GroupShard(k, f, i) for k, (f, i) in groups.items()]
    with pytest.raises(ValueError, match="held twice"):
        distributed_group_scores(rows[:2], torch.tensor([4, 4]), groups=shards)
    with pytest.raises(ValueError, match=">= 0"):
        distributed_group_scores(rows[:2], torch.tensor([-3, 4]), groups=shards, agg="median_topk")
    with pytest.raises(ValueError, match="float32"):
        distributed_group_scores(rows.float(), row_ids, groups=shards)
    with pytest.raises(ValueError, match="agg"):
        distributed_group_scores(rows, row_ids, groups=shards, agg="max")
