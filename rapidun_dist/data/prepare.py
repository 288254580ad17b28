"""The data stage: load a source, build the splits and packs, write them to a data directory.

    out_dir/{train,val_clean,test_clean,test_seen,test_ood,forget,retain}.jsonl  + summary.json

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
from rapidun_dist.data.loaders import load_alpaca, load_dolly, load_generic, load_hub, load_prepared
from rapidun_dist.data.schema import DATA_FILES, IS_POISONED, TRIGGER_FAMILY, TRIGGER_VARIANT, as_clean
from rapidun_dist.data.splits import TEST_SPLITS, build_packs, dedupe_prompts, make_splits
from rapidun_dist.data.synthetic import generate_corpus
from rapidun_dist.errors import DataError
from rapidun_dist.io import file_sha256, read_json, write_json, write_jsonl
from rapidun_dist.logging import get_logger

SUMMARY = "summary.json"
_log = get_logger("rapidun.data")


def load_source(cfg: DataConfig, stats: dict) -> list[dict]:
    """Raw records of a non-prepared source (synthetic, dolly, alpaca, json, hub)."""
    kw = {"skip_malformed": cfg.skip_malformed, "max_rows": cfg.max_rows, "stats": stats}
    if cfg.source == "synthetic":
        return generate_corpus(cfg.n_synthetic, cfg.seed)
    if cfg.source == "dolly":
        return load_dolly(cfg.path, **kw)
    if cfg.source == "alpaca":
        return load_alpaca(cfg.path, **kw)
    if cfg.source == "json":
        return load_generic(cfg.path, cfg.field_map or None, **kw)
    if cfg.source == "hub":
        return load_hub(cfg.path, field_map=cfg.field_map or None, **kw)
    raise DataError(f"data.source: no loader for {cfg.source!r}")


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


def build_files(cfg: DataConfig) -> tuple[dict[str, list[dict]], dict]:
    """All seven row lists (5 splits + 2 packs) for `cfg`, and the drop statistics."""
    stats: dict = {"skipped": 0}
    if cfg.source == "prepared":
        splits = load_prepared(cfg.dir, skip_malformed=cfg.skip_malformed, stats=stats)
    else:
        splits = make_splits(clean_pool(load_source(cfg, stats), stats), cfg)
    forget, retain = build_packs(
        splits["train"],
        {t: splits[t] for t in TEST_SPLITS},
        forget_fraction=cfg.forget_fraction,
        retain_ratio=cfg.retain_ratio,
        seed=cfg.seed,
    )
    splits.setdefault(
        "val_seen", []
    )  # triggered validation prompts: filled by the split builder when it makes them
    return {**splits, "forget": forget, "retain": retain}, stats


def summarize(files: dict[str, list[dict]], cfg: DataConfig, stats: dict) -> dict:
    """Counts per split, poisoned rows per family and per `family:variant`, and what was dropped."""

    def poisoned(rows):
        return [r for r in rows if r[IS_POISONED]]

    return {
        "source": cfg.source,
        "seed": cfg.seed,
        "counts": {name: len(rows) for name, rows in files.items()},
        "poisoned": {name: len(poisoned(rows)) for name, rows in files.items()},
        "per_family": {
            name: dict(sorted(Counter(r[TRIGGER_FAMILY] for r in poisoned(rows)).items()))
            for name, rows in files.items()
        },
        "per_variant": {
            name: dict(
                sorted(Counter(f"{r[TRIGGER_FAMILY]}:{r[TRIGGER_VARIANT]}" for r in poisoned(rows)).items())
            )
            for name, rows in files.items()
        },
        "dropped": {
            "malformed": stats.get("skipped", 0),
            "no_clean_answer": stats.get("no_clean_answer", 0),
            "duplicate_prompts": stats.get("duplicate_prompts", 0),
        },
    }


def write_data_dir(out_dir: Path, files: dict[str, list[dict]], summary: dict) -> dict:
    """Write every file atomically, then summary.json (with the files' sha256) as the completion marker."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / SUMMARY).unlink(missing_ok=True)
    for name in DATA_FILES:
        write_jsonl(out_dir / f"{name}.jsonl", files[name])
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
