"""Sharded, resumable per-sample feature storage (run_dir/features/).

Rows are the forget samples then the retain samples (global order). They are cut into contiguous shards of
`shard_size` rows; each shard is owned by one rank (balanced by token count) and written atomically as
`shard-XXXXX.safetensors` ({"features" [n, K], "rows" [n]}) followed by a `shard-XXXXX.json` sidecar
holding its sha256, size and mtime (taken when the shard is written), the spec hash and a hash of the shard's row
ids. A shard counts as done only when the sidecar exists, matches the spec and the row ids, and the file is the
one written - so a rerun after a crash recomputes exactly the missing or corrupt shards, and a shard never passes
for rows it was not computed on.

"The file is the one written" is a stat, not a read: a shard whose size and mtime match its sidecar is trusted
(a resume at 57k rows x 16 ranks would otherwise read ~52 GB per rank before its first collective). The full
sha256 is checked when size or mtime differ (a touched or rewritten file: same bytes pass, others are
recomputed), for sidecars written before size and mtime were recorded, and for every shard when the
environment variable RAPIDUN_VERIFY_FEATURES=1 is set (`full_verify`). `load_features` applies the same rule
to the index's entries.
The spec covers everything that changes a feature: the extractor's own spec (estimator, projections, layers,
positions) and, from the caller, a hash of the model weights, the tokenizer, the prompt format and `max_length`
(docs/DESIGN.md section 3). `index.json` (ids, shards, checksums, spec) is written last, by rank 0.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from rapidun_dist.core.errors import StageError
from rapidun_dist.core.io import file_sha256, read_json, save_safetensors, write_json

VERIFY_ENV = "RAPIDUN_VERIFY_FEATURES"  # =1: hash every shard on every check (the stat is not trusted)


def full_verify() -> bool:
    """Whether every shard's sha256 is checked, whatever its stat says (RAPIDUN_VERIFY_FEATURES=1)."""
    return os.environ.get(VERIFY_ENV, "").strip().lower() in ("1", "true", "yes")


def file_stamp(path: Path) -> dict:
    """{"size", "mtime_ns"} of a file as it is now."""
    st = Path(path).stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def matches_record(path: Path, rec: dict) -> bool:
    """`path` is the file `rec` ({"sha256", and "size", "mtime_ns" when recorded}) describes: same size and mtime
    trusted without reading it (unless `full_verify`), else its sha256 decides; another size never matches."""
    stamp = file_stamp(path)
    if "size" in rec and rec["size"] != stamp["size"]:
        return False
    if not full_verify() and rec.get("size") == stamp["size"] and rec.get("mtime_ns") == stamp["mtime_ns"]:
        return True
    return rec.get("sha256") == file_sha256(path)


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def ids_hash(ids: list[str]) -> str:
    """Hash of an ordered list of row ids (what a shard was computed on)."""
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()[:16]


def plan_shards(n_rows: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n_rows)) for s in range(0, n_rows, shard_size)]


def assign_shards(shards: list[tuple[int, int]], token_counts: list[int], world_size: int) -> list[int]:
    """Owner rank per shard: longest-processing-time-first by token count (deterministic)."""
    loads = [0] * world_size
    owner = [0] * len(shards)
    cost = [sum(token_counts[s:e]) for s, e in shards]
    for i in sorted(range(len(shards)), key=lambda i: (-cost[i], i)):
        r = min(range(world_size), key=lambda r: (loads[r], r))
        owner[i] = r
        loads[r] += cost[i]
    return owner


@dataclass
class FeatureStore:
    root: Path
    spec: dict

    def __post_init__(self):
        self.root = Path(self.root)
        self.hash = spec_hash(self.spec)

    def shard_file(self, i: int) -> Path:
        return self.root / f"shard-{i:05d}.safetensors"

    def sidecar(self, i: int) -> Path:
        return self.root / f"shard-{i:05d}.json"

    def is_valid(self, i: int, rows: tuple[int, int], row_ids: str | None = None) -> bool:
        """Shard i is complete, uncorrupted, of this spec, for rows [s, e) (and these row ids, when given)."""
        side, f = self.sidecar(i), self.shard_file(i)
        if not side.exists() or not f.exists():
            return False
        try:
            meta = read_json(side)
        except Exception:  # noqa: BLE001 - a torn or foreign sidecar means: recompute this shard
            return False
        return (
            meta.get("spec_hash") == self.hash
            and tuple(meta.get("rows", ())) == tuple(rows)
            and (row_ids is None or meta.get("ids_hash") == row_ids)
            and matches_record(f, meta)
        )

    def missing(self, shards: list[tuple[int, int]], row_ids: list[str | None]) -> list[int]:
        """Indices of the shards that are not valid (stat checks; see the module docstring)."""
        return [i for i, rows in enumerate(shards) if not self.is_valid(i, rows, row_ids[i])]

    def write_shard(
        self, i: int, rows: tuple[int, int], feats: torch.Tensor, row_ids: str | None = None
    ) -> None:
        if feats.shape[0] != rows[1] - rows[0]:
            raise StageError(f"shard {i}: expected {rows[1] - rows[0]} feature rows, found {feats.shape[0]}")
        self.sidecar(i).unlink(missing_ok=True)
        save_safetensors(
            self.shard_file(i),
            {
                "features": feats.float().cpu(),
                "rows": torch.arange(rows[0], rows[1], dtype=torch.long, device="cpu"),
            },
            metadata={"spec_hash": self.hash},
        )
        write_json(
            self.sidecar(i),
            {
                "rows": list(rows),
                "sha256": file_sha256(self.shard_file(i)),
                **file_stamp(self.shard_file(i)),
                "spec_hash": self.hash,
                "ids_hash": row_ids,
            },
        )

    def write_index(self, ids: list[str], n_forget: int, shards: list[tuple[int, int]]) -> Path:
        entries = [self._entry(i, r) for i, r in enumerate(shards)]
        path = self.root / "index.json"
        write_json(
            path,
            {
                "spec": self.spec,
                "spec_hash": self.hash,
                "n": len(ids),
                "n_forget": n_forget,
                "dim": self.spec["dim"],
                "ids": ids,
                "shards": entries,
            },
        )
        return path

    def _entry(self, i: int, rows: tuple[int, int]) -> dict:
        meta = read_json(self.sidecar(i))
        stamp = {k: meta[k] for k in ("size", "mtime_ns") if k in meta}
        return {"file": self.shard_file(i).name, "rows": list(rows), "sha256": meta["sha256"], **stamp}

    def clean_stale(self) -> None:
        for tmp in self.root.glob(".shard-*.tmp"):
            tmp.unlink(missing_ok=True)


def load_features(root: Path, rows: list[int] | None = None) -> tuple[torch.Tensor, dict]:
    """Features [n, K] in global row order (or only `rows`), each shard checked against its index entry
    (`matches_record`: stat, sha256 when the stat differs or on request), and the index."""
    root = Path(root)
    index = read_json(root / "index.json")
    from safetensors.torch import load_file

    wanted = None if rows is None else set(rows)
    parts, got = [], []
    for entry in index["shards"]:
        s, e = entry["rows"]
        if wanted is not None and not any(r in wanted for r in range(s, e)):
            continue
        path = root / entry["file"]
        if not matches_record(path, entry):
            raise StageError(f"{path}: checksum mismatch with index.json (rerun the influence stage)")
        parts.append(load_file(str(path))["features"])
        got.extend(range(s, e))
    feats = torch.cat(parts) if parts else torch.zeros(0, index["dim"], device="cpu")
    if rows is not None:
        pos = {r: i for i, r in enumerate(got)}
        feats = feats[torch.tensor([pos[r] for r in rows], dtype=torch.long, device="cpu")]
    return feats, index
