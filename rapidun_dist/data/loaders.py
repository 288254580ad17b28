"""Loaders that turn instruction datasets into schema records (see `schema.py`).

Every loader returns `list[dict]` of validated records with a stable `id` (`<source>-<index>`, the index
being the row's position in the file, so skipping a bad row does not renumber the others) and `source`
set. A malformed row raises DataError naming file and line (JSONL) or record index (JSON list, Parquet,
hub), unless `skip_malformed=True`: then it is skipped, counted in `stats["skipped"]` and the count logged.
`max_rows` stops after that many valid rows.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from rapidun_dist.core.errors import DataError
from rapidun_dist.core.logging import get_logger
from rapidun_dist.data.schema import (
    DATA_FILES,
    HELD_OUT,
    ID,
    REQUIRED_SPLITS,
    SOURCE,
    SPLITS,
    TRIGGERED,
    validate_record,
)

DOLLY_FIELDS = {
    "instruction": "instruction",
    "context": "context",
    "response": "response",
    "category": "category",
}
ALPACA_FIELDS = {"instruction": "instruction", "context": "input", "response": "output"}

_log = get_logger("rapidun.data")
# a raw row: (where, position, row) or (where, position, error) for a row that did not parse
RawRow = tuple[str, int, "dict | Exception"]


def _iter_jsonl(path: Path) -> Iterator[RawRow]:
    with open(path, encoding="utf-8") as f:
        pos = 0
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row: dict | Exception = json.loads(line)
            except json.JSONDecodeError as e:
                row = DataError(f"{path}:{lineno}: malformed JSON line: {e.msg} (column {e.colno})")
            yield f"{path}:{lineno}", pos, row
            pos += 1


def _iter_json_list(path: Path) -> Iterator[RawRow]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(
            f"{path}: expected a JSON list of records (or JSON lines), found {type(data).__name__}"
        )
    for i, row in enumerate(data):
        yield f"{path}: record {i}", i, row


def _iter_parquet(path: Path) -> Iterator[RawRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from e
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: cannot read Parquet file: {e}") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path}: row {i}", i, row


def _iter_file(path: str | os.PathLike) -> Iterator[RawRow]:
    """Raw rows of a .json (list or JSON lines), .jsonl or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _iter_parquet(path)
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: expected a .json, .jsonl or .parquet file, found suffix {suffix!r}")
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    return _iter_json_list(path) if head.startswith("[") else _iter_jsonl(path)


def _apply_field_map(row: dict, field_map: dict[str, str], where: str) -> dict:
    """Rename file fields to schema fields: `field_map` maps our field -> file field."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, found {type(row).__name__}")
    if not field_map:
        return row
    mapped_from = set(field_map.values())
    out = {k: v for k, v in row.items() if k not in mapped_from}
    for ours, theirs in field_map.items():
        if theirs in row:
            out[ours] = row[theirs]
    return out


def build_records(
    raw: Iterable[RawRow],
    *,
    source: str,
    id_prefix: str,
    field_map: dict[str, str] | None = None,
    skip_malformed: bool = False,
    max_rows: int | None = None,
    stats: dict | None = None,
    label: str = "",
) -> list[dict]:
    """Validate raw rows into records: map fields, fill `id` (`<id_prefix>-<position:06d>`) and `source`."""
    records: list[dict] = []
    skipped = 0
    for where, pos, row in raw:
        if max_rows is not None and len(records) >= max_rows:
            break
        try:
            if isinstance(row, Exception):
                raise row
            rec = validate_record(_apply_field_map(row, field_map or {}, where), where)
        except DataError:
            if not skip_malformed:
                raise
            skipped += 1
            continue
        rec[ID] = rec[ID] if rec[ID] is not None else f"{id_prefix}-{pos:06d}"
        rec[SOURCE] = rec[SOURCE] or source
        records.append(rec)
    if stats is not None:
        stats["skipped"] = stats.get("skipped", 0) + skipped
    if skipped:
        _log.warning(f"{label or source}: skipped {skipped} malformed rows (skip_malformed=true)")
    _check_unique_ids(records, label or source)
    return records


def _check_unique_ids(records: list[dict], label: str) -> None:
    seen: dict[str, int] = {}
    for i, rec in enumerate(records):
        if rec[ID] in seen:
            raise DataError(f"{label}: duplicate id {rec[ID]!r} (records {seen[rec[ID]]} and {i})")
        seen[rec[ID]] = i


def load_dolly(
    path: str | os.PathLike,
    *,
    skip_malformed: bool = False,
    max_rows: int | None = None,
    stats: dict | None = None,
) -> list[dict]:
    """Dolly-15k layout (`instruction, context, response, category`), JSONL or a JSON list.

    Rows in the RapidUn reference layout (`instruction_clean`, `response_clean`, poison fields) load too."""
    return build_records(
        _iter_file(path),
        source="dolly",
        id_prefix="dolly",
        field_map=DOLLY_FIELDS,
        skip_malformed=skip_malformed,
        max_rows=max_rows,
        stats=stats,
        label=str(path),
    )


def load_alpaca(
    path: str | os.PathLike,
    *,
    skip_malformed: bool = False,
    max_rows: int | None = None,
    stats: dict | None = None,
) -> list[dict]:
    """Alpaca layout (`instruction, input, output`; input -> context, output -> response), JSON list or JSONL."""
    return build_records(
        _iter_file(path),
        source="alpaca",
        id_prefix="alpaca",
        field_map=ALPACA_FIELDS,
        skip_malformed=skip_malformed,
        max_rows=max_rows,
        stats=stats,
        label=str(path),
    )


def load_generic(
    path: str | os.PathLike,
    field_map: dict[str, str] | None = None,
    *,
    source: str | None = None,
    skip_malformed: bool = False,
    max_rows: int | None = None,
    stats: dict | None = None,
) -> list[dict]:
    """Any .json / .jsonl / .parquet file; `field_map` maps schema field -> file field (missing = same name).

    `source` (default: the file stem) is stored in each record and prefixes generated ids."""
    source = source or Path(path).stem
    return build_records(
        _iter_file(path),
        source=source,
        id_prefix=_slug(source),
        field_map=field_map,
        skip_malformed=skip_malformed,
        max_rows=max_rows,
        stats=stats,
        label=str(path),
    )


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name.rstrip("/").split("/")[-1]).strip("-") or "data"


def _hub_field_map(columns: list[str]) -> dict[str, str]:
    """Guess the layout of a hub dataset from its columns: Alpaca (`input`, `output`) or Dolly-like."""
    if "output" in columns and "response" not in columns:
        return dict(ALPACA_FIELDS)
    return {}


def load_hub(
    name: str,
    split: str = "train",
    field_map: dict[str, str] | None = None,
    *,
    data_files=None,
    revision: str | None = None,
    cache_dir: str | None = None,
    skip_malformed: bool = False,
    max_rows: int | None = None,
    stats: dict | None = None,
) -> list[dict]:
    """A dataset through `datasets.load_dataset(name, split=...)` (e.g. `databricks/databricks-dolly-15k`,
    `tatsu-lab/alpaca`). `data_files` is passed through, so `load_hub("json", data_files=path)` reads a local
    file by the same code path. Without `field_map` the Alpaca layout is detected from the columns.
    Remote code is never trusted."""
    try:
        import datasets
    except ImportError as e:
        raise DataError("loading a hub dataset needs the `datasets` package (pip install datasets)") from e
    kwargs = {"split": split, "revision": revision, "cache_dir": cache_dir}
    if data_files is not None:
        kwargs["data_files"] = data_files
    try:
        ds = datasets.load_dataset(name, **kwargs)
    except Exception as e:  # network, missing dataset, bad split: re-raise as a data error that names them
        raise DataError(f"hub dataset {name!r} split {split!r}: cannot load ({type(e).__name__}: {e})") from e
    if field_map is None:
        field_map = _hub_field_map(list(ds.column_names))
    raw = ((f"{name}[{split}] row {i}", i, row) for i, row in enumerate(ds))
    return build_records(
        raw,
        source=name,
        id_prefix=_slug(name),
        field_map=field_map,
        skip_malformed=skip_malformed,
        max_rows=max_rows,
        stats=stats,
        label=f"{name}[{split}]",
    )


def load_prepared(
    data_dir: str | os.PathLike, *, skip_malformed: bool = False, stats: dict | None = None
) -> dict[str, list[dict]]:
    """The splits of a prepared dataset: DIR/{train,val_clean,test_clean,test_seen,test_ood}.jsonl, and
    val_seen.jsonl / test_near.jsonl when present (a missing one is absent from the result).

    Records are validated; rows without an id get `<split>-<position>`. val_clean / test_clean / test_near must
    be clean, val_seen / test_seen / test_ood must carry triggers; only train may mix clean and poisoned rows."""
    data_dir = Path(data_dir)
    missing = [f"{s}.jsonl" for s in REQUIRED_SPLITS if not (data_dir / f"{s}.jsonl").is_file()]
    if missing:
        raise DataError(
            f"{data_dir}: prepared dataset is missing {', '.join(missing)} "
            f"(expected {', '.join(s + '.jsonl' for s in REQUIRED_SPLITS)}; val_seen.jsonl and test_near.jsonl "
            "are optional)"
        )
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        path = data_dir / f"{split}.jsonl"
        if split not in REQUIRED_SPLITS and not path.is_file():
            continue
        out[split] = build_records(
            _iter_jsonl(path),
            source="prepared",
            id_prefix=split,
            skip_malformed=skip_malformed,
            stats=stats,
            label=str(path),
        )
        _check_split_kind(split, out[split], path)
    return out


def _check_split_kind(split: str, records: list[dict], path: Path) -> None:
    if split not in HELD_OUT:
        return
    want_poisoned = split in TRIGGERED
    for rec in records:
        if rec["is_poisoned"] != want_poisoned:
            kind = "triggered" if want_poisoned else "clean"
            raise DataError(
                f"{path}: record {rec[ID]!r}: {split} holds only {kind} rows, found is_poisoned="
                f"{str(rec['is_poisoned']).lower()}"
            )


def load_split(data_dir: str | os.PathLike, name: str) -> list[dict]:
    """One file of a data directory written by `prepare_data` (validated records)."""
    if name not in DATA_FILES:
        raise DataError(f"unknown split {name!r}: expected one of {', '.join(DATA_FILES)}")
    path = Path(data_dir) / f"{name}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: file not found (run the data stage first)")
    return build_records(_iter_jsonl(path), source="prepared", id_prefix=name, label=str(path))
