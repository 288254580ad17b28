"""Atomic file writes and strict JSONL reading. Nothing is left half-written: write to a temp file, then rename."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from rapidun_dist.core.errors import DataError


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(*, directory: bool = False) -> int:
    """The permissions a plain open() (0o666) or mkdir() (0o777) gives under the user's umask. mkstemp and
    mkdtemp create private files (0o600 / 0o700): teammates on a shared file system could not read a run dir."""
    return (0o777 if directory else 0o666) & ~current_umask()


def share_tree(root: str | os.PathLike) -> None:
    """Give `root` and everything below it the plain-open()/mkdir() permissions (library writers such as
    safetensors create private files)."""
    root = Path(root)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, plain_mode(directory=p.is_dir()))


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on failure delete it. The file ends up
    with the permissions a plain open() would give."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, plain_mode())
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, plain_mode())  # again: a writer that replaced the temp file made it private
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    """`rows` as JSON lines at `path` (atomic, parent folders made); returns the path."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n")
    return Path(path)


def _json_default(obj):
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None


def iter_jsonl(
    path: str | os.PathLike, *, skip_malformed: bool = False, stats: dict | None = None
) -> Iterator[dict]:
    """Yield one dict per non-empty line. A malformed line raises DataError naming file and line,
    or is skipped and counted in `stats["skipped"]` when `skip_malformed`."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, found {type(row).__name__}")
            except ValueError as e:
                if skip_malformed:
                    if stats is not None:
                        stats["skipped"] = stats.get("skipped", 0) + 1
                    continue
                raise DataError(f"{path}:{lineno}: malformed JSONL line: {e}") from None
            yield row


def read_jsonl(path: str | os.PathLike, **kw) -> list[dict]:
    return list(iter_jsonl(path, **kw))


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
