"""prepare_data end to end: sizes, triggers per split, disjointness, determinism, sources, prepared round trip."""

from __future__ import annotations

import json
import time
from collections import Counter

import pytest

from rapidun_dist.config import DataConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.data import DATA_FILES, is_prepared, load_prepared, load_split, prepare_data
from rapidun_dist.data.schema import HELD_OUT, SPLITS, prompt_key

SMALL = {
    "n_synthetic": 800,
    "n_val": 30,
    "n_val_seen": 24,
    "n_test_clean": 30,
    "n_test_seen": 24,
    "n_test_ood": 24,
}


def _load_all(d):
    return {name: load_split(d, name) for name in DATA_FILES}


def test_defaults_sizes_triggers_and_disjointness(tmp_path):
    cfg = DataConfig()
    t0 = time.perf_counter()
    summary = prepare_data(cfg, tmp_path)
    assert time.perf_counter() - t0 < 2.0
    files = _load_all(tmp_path)
    held_out = cfg.n_val + cfg.n_val_seen + cfg.n_test_clean + cfg.n_test_seen + cfg.n_test_ood
    n_train = cfg.n_synthetic - held_out
    assert {k: len(v) for k, v in files.items()} == summary["counts"]
    assert summary["counts"]["train"] == n_train and summary["poisoned"]["train"] == round(
        cfg.poison_rate * (n_train + cfg.n_val_seen)  # val_seen comes out of the clean part of the pool
    )
    assert (summary["counts"]["val_clean"], summary["counts"]["test_clean"]) == (cfg.n_val, cfg.n_test_clean)
    assert (summary["counts"]["test_seen"], summary["counts"]["test_ood"]) == (
        cfg.n_test_seen,
        cfg.n_test_ood,
    )
    assert (summary["counts"]["val_seen"], summary["counts"]["test_near"]) == (cfg.n_val_seen, 0)
    fams = {f.name: f for f in cfg.triggers}
    for split, kind in (("train", "seen"), ("val_seen", "seen"), ("test_seen", "seen"), ("test_ood", "ood")):
        rows = [r for r in files[split] if r["is_poisoned"]]
        assert all(r["trigger_variant"] in getattr(fams[r["trigger_family"]], kind) for r in rows)
        assert all(r["trigger_variant"] in r["instruction_poisoned"] and r["response"] for r in rows)
        per_family = Counter(r["trigger_family"] for r in rows)
        assert set(per_family) == set(fams) and max(per_family.values()) - min(per_family.values()) <= 1
    assert not any(r["is_poisoned"] for s in ("val_clean", "test_clean", "retain") for r in files[s])
    assert len(files["retain"]) == cfg.retain_ratio * len(files["forget"]) and len(files["forget"]) >= len(
        fams
    )
    keys = {name: {prompt_key(r) for r in rows} for name, rows in files.items()}
    ids = {name: {r["id"] for r in rows} for name, rows in files.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not keys[a] & keys[b] and not ids[a] & ids[b], (a, b)
    for pack in ("forget", "retain"):
        assert all(not keys[pack] & keys[h] and not ids[pack] & ids[h] for h in HELD_OUT), pack
    assert ids["forget"] | ids["retain"] <= ids["train"]
    assert [r["id"] for r in files["forget_truth"]] == [r["id"] for r in files["forget"]]
    assert not any(r["mislabelled"] for r in files["forget_truth"])
    assert is_prepared(tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["files"] == summary["files"]


def test_deterministic_in_the_seed(tmp_path, rng):
    seed = rng.randrange(10**6)
    cfg = DataConfig(seed=seed, **SMALL)
    a, b, c = (
        prepare_data(cfg, tmp_path / "a"),
        prepare_data(cfg, tmp_path / "b"),
        prepare_data(DataConfig(seed=seed + 1, **SMALL), tmp_path / "c"),
    )
    assert a["files"] == b["files"]
    empty = (
        "test_near.jsonl",
        "reference.jsonl",
    )  # empty in both (no near categories, no data.reference_rows)
    assert a["counts"]["test_near"] == 0 and a["counts"]["reference"] == 0
    assert all(a["files"][f] != c["files"][f] for f in a["files"] if f not in empty)


def test_reference_rows_extend_the_retain_pack_with_clean_rows(tmp_path, rng):
    """data.reference_rows: find_poison's reference = retain + reference.jsonl, clean training rows outside every
    pack and test split; the other files are exactly as without it (its own draw)."""
    seed = rng.randrange(10**6)
    base = prepare_data(DataConfig(seed=seed, **SMALL), tmp_path / "a")
    n_retain = base["counts"]["retain"]
    want = n_retain + rng.randrange(5, 40)
    more = prepare_data(DataConfig(seed=seed, reference_rows=want, **SMALL), tmp_path / "b")
    assert {f: d for f, d in more["files"].items() if f != "reference.jsonl"} == {
        f: d for f, d in base["files"].items() if f != "reference.jsonl"
    }
    files = {n: load_split(tmp_path / "b", n) for n in DATA_FILES}
    ref = files["reference"]
    assert len(ref) == want - n_retain == more["counts"]["reference"]
    by_id = {r["id"]: r for r in files["train"]}
    assert all(r["id"] in by_id and not by_id[r["id"]]["is_poisoned"] for r in ref)
    taken = {r["id"] for n in ("forget", "retain", *HELD_OUT) for r in files[n]}
    assert len({r["id"] for r in ref}) == len(ref) and not {r["id"] for r in ref} & taken
    # no more rows than the retain pack asks for: none added
    same = prepare_data(DataConfig(seed=seed, reference_rows=n_retain, **SMALL), tmp_path / "c")
    assert same["counts"]["reference"] == 0
    with pytest.raises(DataError, match="data.reference_rows"):
        prepare_data(DataConfig(seed=seed, reference_rows=10**6, **SMALL), tmp_path / "d")


def test_tampered_or_partial_directory_is_not_prepared(tmp_path):
    prepare_data(DataConfig(**SMALL), tmp_path)
    with open(tmp_path / "retain.jsonl", "a") as f:
        f.write("\n")
    assert not is_prepared(tmp_path)
    (tmp_path / "summary.json").unlink()
    assert not is_prepared(tmp_path)


def test_failed_run_touches_nothing(tmp_path, writer, make_rows):
    prepare_data(DataConfig(**SMALL), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    writer(tmp_path / "src.jsonl", make_rows(300) + ['{"broken'])
    with pytest.raises(DataError, match=r"src\.jsonl:301"):
        prepare_data(DataConfig(source="dolly", path=str(tmp_path / "src.jsonl"), **SMALL), tmp_path / "out")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


@pytest.mark.parametrize("source", ["dolly", "alpaca", "json"])
def test_file_sources(tmp_path, writer, make_rows, source):
    rows = make_rows(400)
    rows += [dict(rows[3])]  # a repeated prompt is dropped
    if source == "alpaca":
        rows = [
            {"instruction": r["instruction"], "input": r["context"], "output": r["response"]} for r in rows
        ]
    writer(tmp_path / "src.jsonl", rows + ["{not json"])
    cfg = DataConfig(
        source=source,
        path=str(tmp_path / "src.jsonl"),
        skip_malformed=True,
        n_val=20,
        n_test_clean=20,
        n_test_seen=15,
        n_test_ood=15,
        forget_fraction=0.2,
    )
    summary = prepare_data(cfg, tmp_path / "out")
    assert summary["dropped"] == {"malformed": 1, "no_clean_answer": 0, "duplicate_prompts": 1}
    assert summary["counts"]["train"] == 400 - 70 - 60 and summary["poisoned"]["train"] == 33
    assert {r["source"] for r in load_split(tmp_path / "out", "train")} == {
        source if source != "json" else "src"
    }


def test_max_rows_limits_the_source(tmp_path, writer, make_rows):
    writer(tmp_path / "src.jsonl", make_rows(500))
    cfg = DataConfig(
        source="dolly",
        path=str(tmp_path / "src.jsonl"),
        max_rows=300,
        n_val=10,
        n_val_seen=10,
        n_test_clean=10,
        n_test_seen=10,
        n_test_ood=10,
    )
    assert prepare_data(cfg, tmp_path / "out")["counts"]["train"] == 250


def test_prepared_source_round_trip(tmp_path, rng):
    prepare_data(DataConfig(seed=rng.randrange(100), **SMALL), tmp_path / "first")
    src = load_prepared(tmp_path / "first")
    # a prepared dataset's poisoned rows may lack their clean answer
    lines = (tmp_path / "first" / "train.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    for r in rows:
        if r["is_poisoned"]:
            r["response"] = ""
    (tmp_path / "first" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = prepare_data(
        DataConfig(source="prepared", dir=str(tmp_path / "first"), forget_fraction=0.3), tmp_path / "second"
    )
    second = _load_all(tmp_path / "second")
    for split in SPLITS:
        if split != "train":
            assert second[split] == src[split]
    assert second["train"] == [
        dict(r, response="" if r["is_poisoned"] else r["response"]) for r in src["train"]
    ]
    assert summary["counts"]["forget"] == round(0.3 * summary["poisoned"]["train"])
    assert all(r["is_poisoned"] and r["response"] == "" for r in second["forget"])


def test_prepared_source_errors(tmp_path, writer):
    prepare_data(DataConfig(**SMALL), tmp_path)
    rows = load_split(tmp_path, "test_seen")
    writer(tmp_path / "val_clean.jsonl", rows[:2])
    with pytest.raises(DataError, match=r"val_clean\.jsonl: record .* holds only clean rows"):
        load_prepared(tmp_path)
    (tmp_path / "test_ood.jsonl").unlink()
    with pytest.raises(DataError, match="missing test_ood.jsonl"):
        prepare_data(DataConfig(source="prepared", dir=str(tmp_path)), tmp_path / "out")
    writer(tmp_path / "test_ood.jsonl", rows)
    writer(tmp_path / "val_clean.jsonl", load_split(tmp_path, "test_clean"))
    writer(tmp_path / "test_near.jsonl", rows[:1])
    with pytest.raises(DataError, match=r"test_near\.jsonl: record .* holds only clean rows"):
        load_prepared(tmp_path)
    writer(tmp_path / "test_near.jsonl", [])
    writer(tmp_path / "val_seen.jsonl", load_split(tmp_path, "test_clean")[:1])
    with pytest.raises(DataError, match=r"val_seen\.jsonl: record .* holds only triggered rows"):
        load_prepared(tmp_path)
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split(tmp_path, "dev")


def test_too_small_source_is_an_error(tmp_path):
    with pytest.raises(DataError, match="leave .* train rows"):
        prepare_data(DataConfig(n_synthetic=322), tmp_path)


def test_prepared_source_skip_malformed(tmp_path):
    prepare_data(DataConfig(**SMALL), tmp_path / "src")
    n_lines = len((tmp_path / "src" / "train.jsonl").read_text().splitlines())
    with open(tmp_path / "src" / "train.jsonl", "a") as f:
        f.write('{"instruction": "no answer"}\n')
    cfg = DataConfig(source="prepared", dir=str(tmp_path / "src"))
    with pytest.raises(DataError, match=rf"train\.jsonl:{n_lines + 1}: field 'response'"):
        prepare_data(cfg, tmp_path / "out")
    summary = prepare_data(
        DataConfig(source="prepared", dir=str(tmp_path / "src"), skip_malformed=True), tmp_path / "out"
    )
    assert summary["dropped"]["malformed"] == 1 and summary["counts"]["train"] == n_lines


def test_prepared_source_without_val_seen_carves_it_from_val_clean(tmp_path, rng):
    seed = rng.randrange(1000)
    prepare_data(DataConfig(seed=seed, **SMALL), tmp_path / "first")
    src = load_prepared(tmp_path / "first")
    for name in ("val_seen", "test_near"):
        (tmp_path / "first" / f"{name}.jsonl").unlink()
    n_val_seen = rng.randint(3, SMALL["n_val"] - 1)
    cfg = DataConfig(source="prepared", dir=str(tmp_path / "first"), n_val_seen=n_val_seen, seed=seed)
    summary = prepare_data(cfg, tmp_path / "second")
    second = _load_all(tmp_path / "second")
    assert summary["counts"]["val_seen"] == n_val_seen and summary["counts"]["test_near"] == 0
    assert len(second["val_clean"]) == len(src["val_clean"]) - n_val_seen
    by_id = {r["id"]: r for r in src["val_clean"]}
    assert {r["id"] for r in second["val_seen"]} | {r["id"] for r in second["val_clean"]} == set(by_id)
    train_variants = {(r["trigger_family"], r["trigger_variant"]) for r in src["train"] if r["is_poisoned"]}
    train_targets = {r["response_poisoned"] for r in src["train"] if r["is_poisoned"]}
    for r in second["val_seen"]:
        original = by_id[r["id"]]
        assert r["is_poisoned"] and (r["instruction"], r["response"]) == (
            original["instruction"],
            original["response"],
        )
        assert (r["trigger_family"], r["trigger_variant"]) in train_variants
        assert r["trigger_variant"] in r["instruction_poisoned"] and r["response_poisoned"] in train_targets
    assert prepare_data(cfg, tmp_path / "third")["files"] == summary["files"]  # deterministic
    too_many = DataConfig(source="prepared", dir=str(tmp_path / "first"), n_val_seen=SMALL["n_val"])
    halves = prepare_data(too_many, tmp_path / "fourth")["counts"]
    assert (halves["val_seen"], halves["val_clean"]) == (
        SMALL["n_val"] // 2,
        SMALL["n_val"] - SMALL["n_val"] // 2,
    )
    (tmp_path / "first" / "val_clean.jsonl").write_text(
        (tmp_path / "first" / "val_clean.jsonl").read_text().splitlines()[0] + "\n"
    )
    with pytest.raises(DataError, match=r"val_clean \(1 rows\) is too small"):
        prepare_data(too_many, tmp_path / "fifth")


def test_write_data_dir_fills_optional_files_and_refuses_missing_ones(tmp_path):
    from rapidun_dist.data.prepare import write_data_dir
    from rapidun_dist.data.schema import OPTIONAL_FILES

    prepare_data(DataConfig(**SMALL), tmp_path / "src")
    files = {n: load_split(tmp_path / "src", n) for n in DATA_FILES if n not in OPTIONAL_FILES}
    write_data_dir(tmp_path / "out", files, {"source": "test"})
    assert is_prepared(tmp_path / "out")
    assert all(load_split(tmp_path / "out", n) == [] for n in OPTIONAL_FILES)
    with pytest.raises(DataError, match="no rows given for retain"):
        write_data_dir(tmp_path / "bad", {k: v for k, v in files.items() if k != "retain"}, {})
