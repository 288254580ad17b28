"""The data stage: load a source, build the splits and packs, write them to a data directory.

    out_dir/{train,val_clean,val_seen,test_clean,test_near,test_seen,test_ood}.jsonl   the splits
    out_dir/{forget,retain}.jsonl                                                      the packs
    out_dir/{forget,retain}_truth.jsonl   the packs' ground truth (evaluation only)  + summary.json

With `data.forget_clean_answers: false` the clean answers of the forget rows and of every poisoned train row
are withheld (`response` = ""), as in real poisoned data; they stay in forget_truth.jsonl alone, for
evaluation. With `data.retain_contamination` > 0 a share of the retain rows are poisoned train rows outside the
forget pack, unlabelled (`splits.make_packs`); retain_truth.jsonl and the summary's "retain" entry say which. A
prepared source without val_seen.jsonl gets it carved from its val_clean; one without
test_near.jsonl gets an empty test_near.

Everything is built in memory first, so a run that fails on its input touches nothing. Then each file is
written atomically, the old `summary.json` having been removed first, and the new `summary.json` (every file's
sha256) is written last: a directory is complete exactly when `summary.json` exists and the hashes match
(`is_prepared`), and a run interrupted while writing never passes for complete.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from rapidun_dist.config import DataConfig
from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import file_sha256, read_json, write_json, write_jsonl
from rapidun_dist.core.logging import get_logger
from rapidun_dist.data.attacks import attack_splits
from rapidun_dist.data.hetero import hetero_pack_spec, hetero_splits
from rapidun_dist.data.loaders import load_alpaca, load_dolly, load_generic, load_hub, load_prepared
from rapidun_dist.data.schema import (
    CONTAMINATED,
    DATA_FILES,
    ID,
    IS_POISONED,
    MISLABELLED,
    OPTIONAL_FILES,
    REFERENCE,
    RESPONSE,
    RETAIN_TRUTH,
    TARGET_GROUP,
    TRIGGER_FAMILY,
    TRIGGER_VARIANT,
    TRUTH,
    as_clean,
)
from rapidun_dist.data.splits import (
    TEST_SPLITS,
    PackSpec,
    carve_val_seen,
    dedupe_prompts,
    make_packs,
    make_splits,
)
from rapidun_dist.data.synthetic import generate_corpus
from rapidun_dist.data.synthetic_hard import generate_near_topic

SUMMARY = "summary.json"
_log = get_logger("rapidun.data")


def load_source(cfg: DataConfig, stats: dict) -> list[dict]:
    """Raw records of a non-prepared source (synthetic, dolly, alpaca, json, hub)."""
    kw = {"skip_malformed": cfg.skip_malformed, "max_rows": cfg.max_rows, "stats": stats}
    if cfg.source == "synthetic":
        return synthetic_corpus(cfg)
    if cfg.source == "dolly":
        return load_dolly(cfg.path, **kw)
    if cfg.source == "alpaca":
        return load_alpaca(cfg.path, **kw)
    if cfg.source == "json":
        return load_generic(cfg.path, cfg.field_map or None, **kw)
    if cfg.source == "hub":
        return load_hub(cfg.path, field_map=cfg.field_map or None, **kw)
    raise DataError(f"data.source: no loader for {cfg.source!r}")


def synthetic_corpus(cfg: DataConfig) -> list[dict]:
    """The generated corpus: n_synthetic rows, round(near_topic_fraction x n_synthetic) of them near-topic."""
    n_near = round(cfg.near_topic_fraction * cfg.n_synthetic)
    rows = generate_corpus(cfg.n_synthetic - n_near, cfg.seed)
    return rows + (generate_near_topic(n_near, cfg.seed) if n_near else [])


def clean_pool(records: list[dict], stats: dict) -> list[dict]:
    """Clean versions of the records (poisoned rows keep their clean original when known), one per prompt."""
    clean = [c for c in (as_clean(r) for r in records) if c is not None]
    stats["no_clean_answer"] = len(records) - len(clean)
    clean, stats["duplicate_prompts"] = dedupe_prompts(clean)
    if stats["no_clean_answer"] or stats["duplicate_prompts"]:
        _log.info(
            f"data: dropped {stats['no_clean_answer']} rows without a clean answer and "
            f"{stats['duplicate_prompts']} repeated prompts"
        )
    return clean


def load_splits(cfg: DataConfig, stats: dict) -> dict[str, list[dict]]:
    """The splits: built from a source (data.triggers, the hetero testbed, or a `data.attack` of data/attacks.py),
    or read from a prepared directory (test_near empty when absent; val_seen may be absent, `build_files` carves it)."""
    if cfg.source != "prepared":
        build = hetero_splits if cfg.testbed == "hetero" else make_splits
        if cfg.attack.kind != "families":
            build = attack_splits
        return build(clean_pool(load_source(cfg, stats), stats), cfg)
    splits = load_prepared(cfg.dir, skip_malformed=cfg.skip_malformed, stats=stats)
    return {"test_near": [], **splits}


def withhold_clean_answers(files: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Blank `response` of every forget row and every poisoned train row (forget_truth keeps them)."""
    out = dict(files)
    out["forget"] = [dict(r, **{RESPONSE: ""}) for r in files["forget"]]
    out["train"] = [dict(r, **{RESPONSE: ""}) if r[IS_POISONED] else r for r in files["train"]]
    return out


def build_files(cfg: DataConfig) -> tuple[dict[str, list[dict]], dict]:
    """Every row list of the data directory (7 splits, 2 packs, the forget truth) and the drop statistics."""
    stats: dict = {"skipped": 0}
    splits = load_splits(cfg, stats)
    held_out = {t: splits.get(t, []) for t in TEST_SPLITS}
    spec = hetero_pack_spec(cfg, splits["train"]) if cfg.testbed == "hetero" else PackSpec.from_config(cfg)
    packs = make_packs(splits["train"], held_out, spec)
    if "val_seen" not in splits:  # after the packs: its rows come out of val_clean, which they already avoid
        splits = carve_val_seen(splits, cfg)
    files = {
        **splits,
        "forget": packs.forget,
        "retain": packs.retain,
        TRUTH: packs.truth,
        RETAIN_TRUTH: packs.retain_truth,
        REFERENCE: packs.reference,
    }
    return (files if cfg.forget_clean_answers else withhold_clean_answers(files)), stats


def _poisoned(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r[IS_POISONED]]


def _counter(rows: list[dict], key) -> dict:
    return dict(sorted(Counter(key(r) for r in rows).items()))


def forget_summary(files: dict[str, list[dict]], cfg: DataConfig) -> dict:
    """What the forget pack holds: known poisoned and mislabelled rows, covered families and target groups."""
    truth = files[TRUTH]
    known = [r for r in truth if not r.get(MISLABELLED)]
    return {
        "known_poisoned": len(known),
        "mislabelled": len(truth) - len(known),
        "mislabelled_near": sum(
            1 for r in truth if r.get(MISLABELLED) and r.get("category") in cfg.near_categories
        ),
        "families": _counter(known, lambda r: r[TRIGGER_FAMILY]),
        "target_groups": _counter(known, lambda r: r.get(TARGET_GROUP, "")),
        "clean_answers": sum(1 for r in files["forget"] if r[RESPONSE].strip()),
    }


def retain_summary(files: dict[str, list[dict]], cfg: DataConfig) -> dict:
    """What the retain pack holds: clean rows and poisoned ones (`data.retain_contamination`), by family, and the
    contaminated rows' ids (to look up the weights they got)."""
    bad = [r for r in files.get(RETAIN_TRUTH, []) if r.get(CONTAMINATED)]
    return {
        "contamination": cfg.retain_contamination,
        "rows": len(files["retain"]),
        "contaminated": len(bad),
        "clean": len(files["retain"]) - len(bad),
        "families": _counter(bad, lambda r: r[TRIGGER_FAMILY]),
        "contaminated_ids": sorted(r[ID] for r in bad),
    }


def summarize(files: dict[str, list[dict]], cfg: DataConfig, stats: dict) -> dict:
    """Counts per file, poisoned rows per family / `family:variant` / target group, the forget pack's make-up,
    and what was dropped."""
    return {
        "source": cfg.source,
        "seed": cfg.seed,
        "counts": {name: len(rows) for name, rows in files.items()},
        "poisoned": {name: len(_poisoned(rows)) for name, rows in files.items()},
        "per_family": {
            name: _counter(_poisoned(rows), lambda r: r[TRIGGER_FAMILY]) for name, rows in files.items()
        },
        "per_variant": {
            name: _counter(_poisoned(rows), lambda r: f"{r[TRIGGER_FAMILY]}:{r[TRIGGER_VARIANT]}")
            for name, rows in files.items()
        },
        "per_target_group": {
            name: _counter(_poisoned(rows), lambda r: r.get(TARGET_GROUP, "")) for name, rows in files.items()
        },
        "forget": forget_summary(files, cfg),
        "retain": retain_summary(files, cfg),
        "dropped": {
            "malformed": stats.get("skipped", 0),
            "no_clean_answer": stats.get("no_clean_answer", 0),
            "duplicate_prompts": stats.get("duplicate_prompts", 0),
        },
    }


def write_data_dir(out_dir: Path, files: dict[str, list[dict]], summary: dict) -> dict:
    """Write every file atomically, then summary.json (with the files' sha256) as the completion marker.
    Files in OPTIONAL_FILES that `files` lacks are written empty; any other missing one is an error."""
    missing = [n for n in DATA_FILES if n not in files and n not in OPTIONAL_FILES]
    if missing:
        raise DataError(f"write_data_dir: no rows given for {', '.join(missing)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY).unlink(missing_ok=True)
    for name in DATA_FILES:
        write_jsonl(out_dir / f"{name}.jsonl", files.get(name, []))
    summary = {**summary, "files": {f"{n}.jsonl": file_sha256(out_dir / f"{n}.jsonl") for n in DATA_FILES}}
    write_json(out_dir / SUMMARY, summary)
    return summary


def is_prepared(out_dir: str | os.PathLike) -> bool:
    """True when `out_dir/summary.json` exists and every file it lists still has the recorded sha256."""
    out_dir = Path(out_dir)
    if not (out_dir / SUMMARY).is_file():
        return False
    listed = read_json(out_dir / SUMMARY).get("files", {})
    return set(listed) == {f"{n}.jsonl" for n in DATA_FILES} and all(
        (out_dir / name).is_file() and file_sha256(out_dir / name) == digest
        for name, digest in listed.items()
    )


def prepare_data(cfg: DataConfig, out_dir: str | os.PathLike) -> dict:
    """Build and write the data directory for `cfg`; return the summary (also written as summary.json)."""
    files, stats = build_files(cfg)
    summary = write_data_dir(Path(out_dir), files, summarize(files, cfg, stats))
    _log.info("data: " + ", ".join(f"{k}={v}" for k, v in summary["counts"].items()))
    return summary
