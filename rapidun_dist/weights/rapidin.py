"""Import RapidIn influence result files and turn them into RapidUn weights.

A RapidIn run over the packs writes four files, `influence_results_{n}_{XTY}.json` with X the train
pack and Y the test pack (F = forget, R = retain): `_FTF`, `_FTR`, `_RTF`, `_RTR`. Each maps a test
index to `helpful` (train indices, most influential first) and `helpful_infl` (their values), and
the same for `harmful`. Entry [i, j] of a block is the influence of train sample i on test j, so the
blocks are FF = FTF, FR = FTR (forget rows, retain columns), RF = RTF, RR = RTR, and the
directional scores follow `rapidun_dist.influence.scores` column by column (a test is a column).

Reference mode reproduces the RapidUn reference weights: top 40 per test, median across tests,
self pairs included, S_f = FF - FR, S_r = RR - RF, tau 0.7 / 1.2, clip [0.2, 3], mean one.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from rapidun_dist.config import WeightsConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import read_json, write_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.influence.scores import block_scores, block_topk, check_agg_args
from rapidun_dist.weights.robust import fuse_and_weight

RELABEL_WEIGHTS = (
    "forget_relabel_weights.jsonl"  # the relabel term's own forget weights (weights.relabel_weights)
)
BLOCK_FILES = {"ff": "FTF", "fr": "FTR", "rf": "RTF", "rr": "RTR"}


def reference_config() -> WeightsConfig:
    """The reference RapidUn weight recipe (what its shipped weights were made with)."""
    return WeightsConfig(
        agg="median_topk",
        topk=40,
        include_self=True,
        alpha=1.0,
        beta=1.0,
        gamma=1.0,
        delta=1.0,
        tau_f=0.7,
        tau_r=1.2,
        w_min=0.2,
        w_max=3.0,
    )


def find_rapidin_files(rapidin_dir: str | os.PathLike) -> dict[str, Path]:
    """{ff, fr, rf, rr} -> the one `influence_results_*_{XTY}.json` file for each block."""
    rapidin_dir = Path(rapidin_dir)
    if not rapidin_dir.is_dir():
        raise DataError(f"{rapidin_dir}: expected a folder of RapidIn influence_results_*.json files")
    out = {}
    for block, tag in BLOCK_FILES.items():
        found = sorted(rapidin_dir.glob(f"influence_results_*_{tag}.json"))
        if len(found) != 1:
            raise DataError(
                f"{rapidin_dir}: expected exactly one influence_results_*_{tag}.json; found {len(found)}"
            )
        out[block] = found[0]
    return out


def _test_entries(data: dict, path: Path) -> list[dict]:
    keys = sorted(int(k) for k in data if k.isdigit())
    if not keys or keys != list(range(len(keys))):
        raise DataError(f"{path}: expected test indices 0..n-1 as keys; found {len(keys)} keys")
    return [data[str(k)] for k in keys]


def _fill_column(col: torch.Tensor, entry: dict, path: Path, j: int) -> None:
    for key in ("helpful", "harmful"):
        idx, vals = entry.get(key, []), entry.get(f"{key}_infl", [])
        if len(idx) != len(vals):
            raise DataError(f"{path}: test {j}: {key} has {len(idx)} indices but {len(vals)} values")
        for i, v in zip(idx, vals, strict=True):
            if not 0 <= int(i) < col.numel():
                raise DataError(f"{path}: test {j}: train index {i} outside [0, {col.numel()})")
            if torch.isnan(col[int(i)]):
                col[int(i)] = float(v)


def load_block(path: Path, n_train: int, *, min_helpful: int | None) -> torch.Tensor:
    """[n_train, n_test] float64 influence block. Unknown entries: an error when `min_helpful` is None
    (every value needed), else -inf (below every listed value) provided each test lists at least
    `min_helpful` helpful indices."""
    entries = _test_entries(read_json(path), path)
    block = torch.full((n_train, len(entries)), float("nan"), dtype=torch.float64)
    for j, entry in enumerate(entries):
        _fill_column(block[:, j], entry, path, j)
        unknown = int(torch.isnan(block[:, j]).sum())
        if unknown and min_helpful is None:
            raise DataError(
                f"{path}: test {j}: {unknown} of {n_train} train values missing; this agg needs all"
            )
        if unknown and len(entry.get("helpful", [])) < min_helpful:
            raise DataError(
                f"{path}: test {j}: {len(entry.get('helpful', []))} helpful entries listed; "
                f"top-k needs at least {min_helpful}"
            )
    return torch.nan_to_num(block, nan=float("-inf"))


def rapidin_scores(rapidin_dir: str | os.PathLike, cfg: WeightsConfig) -> dict[str, torch.Tensor]:
    """Directional scores {ff, fr, rr, rf} from a RapidIn output folder, aggregated as `cfg` says."""
    check_agg_args(cfg.agg, cfg.topk, cfg.trim)
    files = find_rapidin_files(rapidin_dir)
    n_forget = len(_test_entries(read_json(files["ff"]), files["ff"]))
    n_retain = len(_test_entries(read_json(files["rr"]), files["rr"]))
    rows = {"ff": n_forget, "fr": n_forget, "rf": n_retain, "rr": n_retain}
    cols = {"ff": n_forget, "fr": n_retain, "rf": n_forget, "rr": n_retain}
    scores = {}
    for name, path in files.items():
        k = block_topk(cfg.topk, cfg.topk_frac, rows[name])
        block = load_block(path, rows[name], min_helpful=k + 1 if cfg.agg == "median_topk" else None)
        if block.shape[1] != cols[name]:
            raise DataError(f"{path}: expected {cols[name]} tests; found {block.shape[1]}")
        ids = torch.arange(rows[name])
        self_mask = (
            (ids.unsqueeze(1) == ids.unsqueeze(0))
            if name in ("ff", "rr")
            else torch.zeros_like(block, dtype=torch.bool)
        )
        scores[name] = block_scores(
            block, self_mask, ids, agg=cfg.agg, topk=k, trim=cfg.trim, include_self=cfg.include_self
        )
    return scores


def weight_rows(weights: torch.Tensor, ids: list | None) -> list[dict]:
    """[{"index", "id", "weight"}]; `id` is None when no ids are given."""
    if ids is not None and len(ids) != weights.numel():
        raise DataError(f"expected {weights.numel()} ids; found {len(ids)}")
    return [
        {"index": i, "id": None if ids is None else ids[i], "weight": float(w)}
        for i, w in enumerate(weights.tolist())
    ]


def rapidin_scores_and_weights(rapidin_dir, cfg: WeightsConfig, *, reference: bool):
    """(forget_w, retain_w, scores, fused); reference mode replaces `cfg` by `reference_config()`."""
    if reference:
        cfg = reference_config()
    scores = rapidin_scores(rapidin_dir, cfg)
    forget_w, retain_w, fused = fuse_and_weight(scores, cfg)
    return forget_w, retain_w, scores, fused


def weights_from_rapidin_dir(
    rapidin_dir: str | os.PathLike,
    cfg: WeightsConfig,
    *,
    reference: bool,
    forget_ids: list | None = None,
    retain_ids: list | None = None,
) -> tuple[list, list]:
    """RapidIn folder -> (forget_rows, retain_rows), rows {"index", "id", "weight"} in pack order."""
    forget_w, retain_w, _, _ = rapidin_scores_and_weights(rapidin_dir, cfg, reference=reference)
    return weight_rows(forget_w, forget_ids), weight_rows(retain_w, retain_ids)


def score_rows(scores: dict, fused: dict, forget_rows: list, retain_rows: list) -> list[dict]:
    """scores.jsonl rows: pack, index, id, self/cross directional scores, fused score, z and weight."""
    out = []
    for pack, rows, self_k, cross_k, s_k, z_k in (
        ("forget", forget_rows, "ff", "fr", "s_f", "z_f"),
        ("retain", retain_rows, "rr", "rf", "s_r", "z_r"),
    ):
        for i, row in enumerate(rows):
            out.append(
                {
                    "pack": pack,
                    "index": row["index"],
                    "id": row["id"],
                    "self": float(scores[self_k][i]),
                    "cross": float(scores[cross_k][i]),
                    "fused": float(fused[s_k][i]),
                    "z": float(fused[z_k][i]),
                    "weight": row["weight"],
                }
            )
    return out


def write_weights(
    out_dir: str | os.PathLike, forget_rows: list, retain_rows: list, *, scores_rows: list | None = None
) -> None:
    """Write forget_weights.jsonl, retain_weights.jsonl (and scores.jsonl when given), atomically."""
    out_dir = Path(out_dir)
    write_jsonl(out_dir / "forget_weights.jsonl", forget_rows)
    write_jsonl(out_dir / "retain_weights.jsonl", retain_rows)
    if scores_rows is not None:
        write_jsonl(out_dir / "scores.jsonl", scores_rows)


def main_weights_from_rapidin(
    rapidin_dir,
    out,
    reference: bool,
    cfg: WeightsConfig,
    *,
    forget_ids: list | None = None,
    retain_ids: list | None = None,
) -> tuple[list, list]:
    """CLI body: RapidIn folder -> weights (and scores.jsonl) in `out`. Returns the rows written."""
    forget_w, retain_w, scores, fused = rapidin_scores_and_weights(rapidin_dir, cfg, reference=reference)
    forget_rows, retain_rows = weight_rows(forget_w, forget_ids), weight_rows(retain_w, retain_ids)
    write_weights(
        out, forget_rows, retain_rows, scores_rows=score_rows(scores, fused, forget_rows, retain_rows)
    )
    get_logger("weights").info(
        f"weights from {rapidin_dir} ({'reference' if reference else 'config'} mode): "
        f"{len(forget_rows)} forget, {len(retain_rows)} retain -> {out}"
    )
    return forget_rows, retain_rows
