"""Grid shapes and the received-bytes prediction (no processes), and the byte-counting collective wrappers at
world size 1."""

from __future__ import annotations

import pytest
import torch

from rapidun_dist.core.errors import ConfigError
from rapidun_dist.distributed import env as denv
from rapidun_dist.influence.gram.grid import (
    ExchangePlan,
    Grid,
    choose_grid,
    factor_grids,
    parse_grid,
    predict_feature_bytes,
    predict_recv_bytes,
)


def _even(n: int, p: int) -> list[int]:
    return [(r + 1) * n // p - r * n // p for r in range(p)]


def test_grid_coords_and_mates():
    g = Grid(3, 4)
    assert g.size == 12 and g.coords(7) == (1, 3)
    assert g.row_ranks(1) == [4, 5, 6, 7] and g.col_ranks(3) == [3, 7, 11]
    assert [str(x) for x in factor_grids(12)] == ["1x12", "2x6", "3x4", "4x3", "6x2", "12x1"]


def test_parse_grid():
    assert parse_grid(None, 4) is None and parse_grid("auto", 4) is None
    assert parse_grid("2x3", 6) == Grid(2, 3) and parse_grid((4, 1), 4) == Grid(4, 1)
    with pytest.raises(ConfigError, match="covers 6 ranks"):
        parse_grid("2x3", 4)
    with pytest.raises(ConfigError, match="RxC"):
        parse_grid("two by two", 4)


@pytest.mark.parametrize("p", [4, 9, 16, 64])
def test_square_grid_receives_2_over_sqrt_p(p):
    """Symmetric problem, even shards: the square grid receives 2 (sqrt(P) - 1) n K b / P per rank, the
    all_gather (P x 1) (P - 1) n K b / P; the auto choice is the square grid."""
    n, kb = 64 * p, 3584 * 8
    plan = ExchangePlan(
        row_counts=_even(n, p),
        col_counts=None,
        feat_row_bytes=kb,
        partial_row_bytes=8 * 164,
        partial_side="rows",
    )
    s = int(round(p**0.5))
    square, gather = Grid(s, s), Grid(p, 1)
    assert max(predict_feature_bytes(square, plan)) == 2 * (s - 1) * (n // p) * kb
    assert max(predict_feature_bytes(gather, plan)) == (p - 1) * (n // p) * kb
    assert max(predict_recv_bytes(gather, plan)) == (p - 1) * (n // p) * kb  # c = 1: partials stay local
    assert choose_grid(p, plan) == square
    ratio = max(predict_recv_bytes(square, plan)) / max(predict_recv_bytes(gather, plan))
    assert ratio <= 2 / (s + 1) + (s - 1) * 164 * 8 / ((p - 1) * kb) + 1e-12
    if p >= 16:
        assert ratio <= 0.6


def test_large_rows_against_small_groups_pick_p_by_1():
    """57k rows against 2k group rows on 16 ranks: gathering the groups (16 x 1) is cheapest."""
    plan = ExchangePlan(
        row_counts=_even(57_000, 16),
        col_counts=_even(2_000, 16),
        feat_row_bytes=229_376 * 4,
        partial_row_bytes=8 * 2,
        partial_side="rows",
    )
    g = choose_grid(16, plan)
    assert g == Grid(16, 1)
    assert max(predict_recv_bytes(g, plan)) == max(2_000 - c for c in _even(2_000, 16)) * 229_376 * 4


def test_uneven_shards_follow_the_formula():
    counts = [5, 0, 9, 2, 7, 1]
    plan = ExchangePlan(
        row_counts=counts, col_counts=None, feat_row_bytes=10, partial_row_bytes=3, partial_side="rows"
    )
    g = Grid(2, 3)  # rows {0,1,2} {3,4,5}; columns {0,3} {1,4} {2,5}
    assert predict_feature_bytes(g, plan) == [10 * (0 + 9 + 2), 10 * (5 + 9 + 7), 10 * (5 + 0 + 1)] + [
        10 * (7 + 1 + 5),
        10 * (2 + 1 + 0),
        10 * (2 + 7 + 9),
    ]
    assert predict_recv_bytes(g, plan)[2] == 10 * 6 + 2 * 9 * 3


def test_collective_wrappers_count_nothing_at_world_size_1():
    stats: dict = {}
    t = torch.arange(6.0).reshape(3, 2)
    assert denv.all_to_all_tensors([t], [3], stats=stats, phase="x")[0] is t
    assert torch.equal(denv.all_to_all_varsize([t], stats=stats, phase="x")[0], t)
    u = torch.ones(2, 3, dtype=torch.float64)
    assert denv.all_reduce_sum_(u, stats=stats, phase="y") is u and torch.equal(u, torch.ones(2, 3))
    assert stats["all_to_all"]["calls"] == 3 and stats["all_reduce"]["calls"] == 1
    assert denv.total_recv_bytes(stats) == 0 and stats["phase_bytes_recv"] == {"x": 0, "y": 0}
    with pytest.raises(RuntimeError, match="expect 2 rows"):
        denv.all_to_all_tensors([t], [2])
    with pytest.raises(RuntimeError, match="one send tensor per rank"):
        denv.all_to_all_tensors([t, t], [3, 3])
