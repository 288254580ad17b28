"""Loaders on small files written to tmp_path: Dolly, Alpaca, generic (JSONL, JSON, Parquet), hub, errors."""

from __future__ import annotations

import json
import logging

import pytest

from rapidun_dist.core.errors import DataError
from rapidun_dist.data.loaders import load_alpaca, load_dolly, load_generic, load_hub


def _alpaca(rows):
    return [{"instruction": r["instruction"], "input": r["context"], "output": r["response"]} for r in rows]


def _assert_same(recs, rows, prefix, source):
    assert [r["id"] for r in recs] == [f"{prefix}-{i:06d}" for i in range(len(rows))]
    for rec, row in zip(recs, rows, strict=True):
        assert (rec["instruction"], rec["context"], rec["response"]) == (
            row["instruction"],
            row["context"],
            row["response"],
        )
        assert rec["source"] == source and rec["is_poisoned"] is False


@pytest.mark.parametrize("as_list", [False, True])
def test_load_dolly_jsonl_and_json(tmp_path, make_rows, writer, as_list):
    rows = make_rows(9)
    path = tmp_path / ("dolly.json" if as_list else "dolly.jsonl")
    path.write_text(json.dumps(rows)) if as_list else writer(path, rows)
    recs = load_dolly(path)
    _assert_same(recs, rows, "dolly", "dolly")
    assert [r["category"] for r in recs] == [r["category"] for r in rows]


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_load_alpaca_maps_input_and_output(tmp_path, make_rows, writer, suffix):
    rows = make_rows(7)
    path = tmp_path / f"alpaca.{suffix}"
    path.write_text(json.dumps(_alpaca(rows), indent=1)) if suffix == "json" else writer(path, _alpaca(rows))
    recs = load_alpaca(path)
    _assert_same(recs, rows, "alpaca", "alpaca")
    assert all(r["category"] == "" for r in recs)


def test_load_generic_jsonl_with_field_map(tmp_path, make_rows, writer):
    rows = make_rows(6)
    raw = [
        {"uid": f"q{i}", "prompt": r["instruction"], "ctx": r["context"], "completion": r["response"]}
        for i, r in enumerate(rows)
    ]
    writer(tmp_path / "my_set.jsonl", raw)
    recs = load_generic(
        tmp_path / "my_set.jsonl",
        {"id": "uid", "instruction": "prompt", "context": "ctx", "response": "completion"},
    )
    assert [r["id"] for r in recs] == [f"q{i}" for i in range(6)]
    assert all(r["source"] == "my_set" for r in recs)
    assert [r["response"] for r in recs] == [r["response"] for r in rows]


def test_load_generic_parquet(tmp_path, make_rows):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = make_rows(8)
    pq.write_table(pa.Table.from_pylist(_alpaca(rows)), tmp_path / "set.parquet")
    recs = load_generic(tmp_path / "set.parquet", {"context": "input", "response": "output"}, source="pq")
    _assert_same(recs, rows, "pq", "pq")


@pytest.mark.parametrize("layout", ["dolly", "alpaca"])
def test_load_hub_through_datasets_on_a_local_file(tmp_path, make_rows, writer, layout):
    pytest.importorskip("datasets")
    rows = make_rows(5)
    writer(tmp_path / "hub.jsonl", rows if layout == "dolly" else _alpaca(rows))
    recs = load_hub("json", data_files=str(tmp_path / "hub.jsonl"), cache_dir=str(tmp_path / "cache"))
    _assert_same(recs, rows, "json", "json")


def test_load_hub_failure_is_a_data_error(tmp_path):
    pytest.importorskip("datasets")
    with pytest.raises(DataError, match="hub dataset 'json' split 'train'"):
        load_hub("json", data_files=str(tmp_path / "missing.jsonl"), cache_dir=str(tmp_path / "cache"))


def test_malformed_line_names_file_and_line(tmp_path, make_rows, writer):
    rows = make_rows(4)
    path = tmp_path / "d.jsonl"
    writer(path, [rows[0], "", rows[1], '{"instruction": "broken', rows[2]])
    with pytest.raises(DataError, match=rf"{path}:4: malformed JSON line"):
        load_dolly(path)


def test_missing_field_names_file_line_and_field(tmp_path, make_rows, writer):
    rows = make_rows(3)
    del rows[2]["response"]
    writer(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl:3: field 'response'"):
        load_dolly(tmp_path / "d.jsonl")


def test_json_list_error_names_record(tmp_path, make_rows):
    rows = _alpaca(make_rows(3))
    rows[1]["instruction"] = None
    (tmp_path / "a.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"a\.json: record 1: field 'instruction'"):
        load_alpaca(tmp_path / "a.json")


def test_skip_malformed_counts_logs_and_keeps_stable_ids(tmp_path, make_rows, writer, rng, caplog):
    rows = make_rows(12)
    bad_at = sorted(rng.sample(range(12), 3))
    lines = [
        "not json at all" if i in bad_at and i % 2 else ({"context": "no instruction"} if i in bad_at else r)
        for i, r in enumerate(rows)
    ]
    writer(tmp_path / "d.jsonl", lines)
    stats = {}
    logger = logging.getLogger("rapidun")
    logger.addHandler(caplog.handler)
    try:
        recs = load_dolly(tmp_path / "d.jsonl", skip_malformed=True, stats=stats)
    finally:
        logger.removeHandler(caplog.handler)
    assert stats["skipped"] == 3 and len(recs) == 9
    assert [r["id"] for r in recs] == [f"dolly-{i:06d}" for i in range(12) if i not in bad_at]
    assert "skipped 3 malformed rows" in caplog.text


def test_max_rows_stops_early(tmp_path, make_rows, writer, rng):
    rows = make_rows(20)
    writer(tmp_path / "d.jsonl", rows)
    k = rng.randint(1, 19)
    assert [r["instruction"] for r in load_dolly(tmp_path / "d.jsonl", max_rows=k)] == [
        r["instruction"] for r in rows[:k]
    ]


def test_duplicate_ids_and_bad_files_are_errors(tmp_path, make_rows, writer):
    rows = [dict(r, id="same") for r in make_rows(2)]
    writer(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match="duplicate id 'same'"):
        load_generic(tmp_path / "d.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="expected a .json, .jsonl or .parquet file"):
        load_generic(tmp_path / "d.csv")
    with pytest.raises(DataError, match="file not found"):
        load_dolly(tmp_path / "nope.jsonl")
    (tmp_path / "bad.json").write_text('[{"instruction": "x",\n "output": }]')
    with pytest.raises(DataError, match=r"bad\.json: invalid JSON at line 2"):
        load_alpaca(tmp_path / "bad.json")
