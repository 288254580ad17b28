"""The r x c process grid of the 2D block decomposition, and what each grid shape makes a rank receive.

Ranks are laid out row-major: rank p sits at (a, b) = (p // c, p % c). Row block a is the union of the
scored rows held by the c ranks of grid row a, column block b the union of the column rows held by the
r ranks of grid column b (for a symmetric problem, rows = columns, the same shards play both parts). So
rank (a, b) receives the row shards of its c - 1 row mates and the column shards of its r - 1 column
mates, and computes the tile (row block a) x (column block b):

    features received by (a, b) = K b (sum_{s in row a, s != p} n_s + sum_{s in column b, s != p} m_s)

With n rows spread evenly and a square grid that is 2 (sqrt(P) - 1) n K b / P ~ 2 n K b / sqrt(P), against
(P - 1) n K b / P for an all_gather of every row. The per-row partial results of a tile go to the owners
of the rows (the c ranks of grid row a; the r ranks of grid column b for partials keyed by columns), so

    partials received by p = (c - 1) n_p w      (keyed by rows;  w = bytes of one row's partial)
                           = (r - 1) m_p w      (keyed by columns)

`choose_grid` takes the shape with the fewest bytes for the most loaded rank (features + partials; the
median-of-top-k survivors that follow do not depend on the grid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from rapidun_dist.core.errors import ConfigError


@dataclass(frozen=True)
class Grid:
    """r x c ranks, row-major."""

    rows: int
    cols: int

    def __post_init__(self):
        if self.rows < 1 or self.cols < 1:
            raise ConfigError(f"grid: rows and cols must be >= 1; found {self.rows} x {self.cols}")

    @property
    def size(self) -> int:
        return self.rows * self.cols

    def coords(self, p: int) -> tuple[int, int]:
        return divmod(p, self.cols)

    def row_ranks(self, a: int) -> list[int]:
        """The ranks of grid row a, in rank order (their row shards make row block a)."""
        return [a * self.cols + j for j in range(self.cols)]

    def col_ranks(self, b: int) -> list[int]:
        """The ranks of grid column b, in rank order (their column shards make column block b)."""
        return [i * self.cols + b for i in range(self.rows)]

    def __str__(self) -> str:
        return f"{self.rows}x{self.cols}"


def factor_grids(world: int) -> list[Grid]:
    return [Grid(r, world // r) for r in range(1, world + 1) if world % r == 0]


def parse_grid(grid: Grid | tuple[int, int] | str | None, world: int) -> Grid | None:
    """None / "auto" -> None (choose later); (r, c), "rxc" or a Grid -> a Grid that must cover `world` ranks."""
    if grid is None or grid == "auto":
        return None
    if isinstance(grid, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", grid)
        if not m:
            raise ConfigError(f"grid: expected 'auto' or 'RxC' (e.g. '4x4'); found {grid!r}")
        grid = (int(m.group(1)), int(m.group(2)))
    g = grid if isinstance(grid, Grid) else Grid(*grid)
    if g.size != world:
        raise ConfigError(f"grid: {g} covers {g.size} ranks; the world has {world}")
    return g


@dataclass(frozen=True, kw_only=True)
class ExchangePlan:
    """What one 2D pass moves, per rank: enough to predict its received bytes for any grid shape."""

    row_counts: list[int]  # scored rows held by each rank
    col_counts: list[int] | None  # column rows held by each rank; None when the problem is symmetric
    feat_row_bytes: int  # K x element size
    partial_row_bytes: int  # bytes of one row's partial result sent to its owner (per source)
    partial_side: Literal["rows", "cols"]  # partials keyed by scored rows or by column rows

    @property
    def cols_or_rows(self) -> list[int]:
        return self.row_counts if self.col_counts is None else self.col_counts


def predict_feature_bytes(grid: Grid, plan: ExchangePlan) -> list[int]:
    """Per rank: bytes of the features the 2D redistribution sends it."""
    out = []
    cols = plan.cols_or_rows
    for p in range(grid.size):
        a, b = grid.coords(p)
        rows_in = sum(plan.row_counts[s] for s in grid.row_ranks(a) if s != p)
        cols_in = sum(cols[s] for s in grid.col_ranks(b) if s != p)
        out.append((rows_in + cols_in) * plan.feat_row_bytes)
    return out


def predict_partial_bytes(grid: Grid, plan: ExchangePlan) -> list[int]:
    """Per rank: bytes of the tile partials merged at it (one [own rows, w] slab from each other source)."""
    if plan.partial_side == "rows":
        return [(grid.cols - 1) * n * plan.partial_row_bytes for n in plan.row_counts]
    return [(grid.rows - 1) * m * plan.partial_row_bytes for m in plan.cols_or_rows]


def predict_recv_bytes(grid: Grid, plan: ExchangePlan) -> list[int]:
    feats, parts = predict_feature_bytes(grid, plan), predict_partial_bytes(grid, plan)
    return [f + q for f, q in zip(feats, parts, strict=True)]


def choose_grid(world: int, plan: ExchangePlan) -> Grid:
    """The grid whose most loaded rank receives the fewest bytes; ties: the squarer, then more grid rows."""
    return min(
        factor_grids(world),
        key=lambda g: (max(predict_recv_bytes(g, plan)), abs(g.rows - g.cols), -g.rows),
    )
