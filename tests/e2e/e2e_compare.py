"""Compare two run directories of the same config: every number of `eval/report.json`, every stage's output
files (manifest hashes) and every other file of the run, leaving out what a rerun may change (seconds,
timestamps, file times, versions, the run directory's own path).

    python tests/e2e/e2e_compare.py OLD_RUN_DIR NEW_RUN_DIR [--rtol 0]

Prints each report value that differs (`/methods/rapidun/asr_seen: 0.03 -> 0.0333`), then per stage in run order
the output files whose bytes differ and whether their content does once the volatile fields are left out, and
names the first stage whose content differs. Exit status 1 when any report value or any file's content differs.
Standard library only, so it runs against any checkout (the golden tier imports it too).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import sys
from pathlib import Path

# Keys whose values are wall-clock time, machine state or where the run lives, not results. `fingerprint` hashes
# the config with the upstream stages' output hashes, and those cover files that hold seconds (suspects/summary.json).
VOLATILE_KEYS = frozenset(
    {
        "seconds",  # per method, per stage, per rank
        "stage_seconds",
        "stage_overhead_seconds",
        "overhead_seconds",
        "speedup_vs_retrain",  # a ratio of seconds
        "rows_per_s",
        "peak_rss_mib_per_rank",
        "versions",
        "start",
        "end",
        "run_dir",
        "mtime_ns",
        "fingerprint",
    }
)
# Lists that are sets underneath: peft keeps LoRA target_modules as a set and writes it in hash-seed order.
SET_KEYS = frozenset({"target_modules"})
# Files not compared: the log (timestamps) and the manifest (its stages are compared one by one).
NOT_COMPARED = {"run.log", "manifest.json"}
# Text rendered from eval/report.json (compared value by value) that also shows seconds: lines that differ only in
# their numbers count as volatile here, and are printed.
RENDERED = {"eval/report.md"}


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """`{"a": {"b": [1, 2]}}` -> `{"/a/b[0]": 1, "/a/b[1]": 2}`, volatile keys left out."""
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in VOLATILE_KEYS or str(key).endswith("_seconds"):
                continue
            if key in SET_KEYS and isinstance(value, list):
                value = sorted(value, key=str)
            out.update(flatten(value, f"{prefix}/{key}"))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            out.update(flatten(value, f"{prefix}[{i}]"))
    else:
        out[prefix or "/"] = obj
    return out


def _same(a, b, rtol: float) -> bool:
    numbers = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if not numbers:
        return type(a) is type(b) and a == b  # True == 1 in Python, not in a report
    if math.isnan(a) and math.isnan(b):
        return True
    return a == b if rtol == 0 else math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)


def value_differences(old, new, rtol: float = 0.0) -> list[str]:
    """One line per value that differs, is missing on one side, or is new."""
    a, b = flatten(old), flatten(new)
    lines = []
    for key in sorted(a.keys() | b.keys()):
        if key not in b:
            lines.append(f"{key}: {a[key]!r} -> (missing)")
        elif key not in a:
            lines.append(f"{key}: (missing) -> {b[key]!r}")
        elif not _same(a[key], b[key], rtol):
            lines.append(f"{key}: {a[key]!r} -> {b[key]!r}")
    return lines


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _content(path: Path, run_dir: Path):
    """A file's content with the run directory's path replaced by `<run_dir>`: parsed JSON / JSONL, else text,
    else the sha256 of its bytes."""
    try:
        text = (
            path.read_text().replace(str(run_dir.resolve()), "<run_dir>").replace(str(run_dir), "<run_dir>")
        )
    except UnicodeDecodeError:
        return _sha256(path)
    if path.suffix == ".json":
        return json.loads(text)
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return text


def _text_difference(a: str, b: str, rendered: bool) -> str | None:
    if a == b:
        return None
    lines_a, lines_b = a.splitlines(), b.splitlines()
    pairs = [(x, y) for x, y in zip(lines_a, lines_b, strict=False) if x != y]
    numbers_only = len(lines_a) == len(lines_b) and all(_masked(x) == _masked(y) for x, y in pairs)
    shown = "".join(f"\n    - {x}\n    + {y}" for x, y in pairs)
    if rendered and numbers_only:
        return f"volatile only (numbers differ in {len(pairs)} lines){shown}"
    return f"content differs ({len(pairs)} lines){shown if numbers_only else ''}"


def _masked(line: str) -> str:
    return re.sub(r"[0-9]+(\.[0-9]+)?", "#", line)


def file_difference(old_dir: Path, new_dir: Path, rel: str, rtol: float = 0.0) -> str | None:
    """None when `rel` is byte-identical; "volatile only..." when only volatile fields differ; else what differs."""
    a, b = old_dir / rel, new_dir / rel
    if not a.is_file() or not b.is_file():
        return "present on one side only"
    if _sha256(a) == _sha256(b):
        return None
    ca, cb = _content(a, old_dir), _content(b, new_dir)
    if isinstance(ca, str) or isinstance(cb, str):
        return _text_difference(ca, cb, rel in RENDERED)
    diffs = value_differences(ca, cb, rtol)
    return "volatile only" if not diffs else f"content differs ({len(diffs)} values, first {diffs[0]})"


def compare_runs(old_dir: Path, new_dir: Path, rtol: float = 0.0, out=sys.stdout) -> bool:
    """Print the comparison of two run directories; True when no report value and no file content differs."""
    old_report = json.loads((old_dir / "eval" / "report.json").read_text())
    diffs = value_differences(old_report, json.loads((new_dir / "eval" / "report.json").read_text()), rtol)
    print(f"eval/report.json: {len(flatten(old_report))} values compared, {len(diffs)} differ", file=out)
    for line in diffs:
        print(f"  {line}", file=out)
    stages = {r: json.loads((r / "manifest.json").read_text())["stages"] for r in (old_dir, new_dir)}
    first_content = None
    seen: set[str] = set()
    for stage in list(dict.fromkeys([*stages[old_dir], *stages[new_dir]])):
        outputs = [set(stages[r].get(stage, {}).get("outputs", {})) for r in (old_dir, new_dir)]
        rels = sorted(outputs[0] | outputs[1])
        seen.update(rels)
        found = {rel: file_difference(old_dir, new_dir, rel, rtol) for rel in rels}
        found = {rel: why for rel, why in found.items() if why}
        hard = {rel: why for rel, why in found.items() if not why.startswith("volatile only")}
        if hard and first_content is None:
            first_content = stage
        state = (
            "content differs" if hard else "bytes differ in volatile fields only" if found else "identical"
        )
        print(f"stage {stage}: {len(rels)} outputs, {state}", file=out)
        for rel, why in found.items():
            print(f"  {rel}: {why}", file=out)
    print(f"first stage whose output content differs: {first_content or 'none'}", file=out)
    others = sorted(
        {str(p.relative_to(r)) for r in (old_dir, new_dir) for p in r.rglob("*") if p.is_file()}
        - seen
        - NOT_COMPARED
    )
    found = {rel: file_difference(old_dir, new_dir, rel, rtol) for rel in others}
    hard = {rel: why for rel, why in found.items() if why and not why.startswith("volatile only")}
    n_volatile = sum(bool(why) and why.startswith("volatile only") for why in found.values())
    print(
        f"other files: {len(others)} compared, {len(others) - n_volatile - len(hard)} identical, "
        f"{n_volatile} differ in volatile fields only, {len(hard)} differ in content",
        file=out,
    )
    for rel, why in hard.items():
        print(f"  {rel}: {why}", file=out)
    return not diffs and first_content is None and not hard


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("old", type=Path, help="run directory made by the reference checkout")
    p.add_argument("new", type=Path, help="run directory made by the checkout under test")
    p.add_argument("--rtol", type=float, default=0.0, help="relative tolerance for numbers (default: exact)")
    args = p.parse_args(argv)
    return 0 if compare_runs(args.old, args.new, args.rtol) else 1


if __name__ == "__main__":
    sys.exit(main())
