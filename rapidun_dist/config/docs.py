"""The documentation of every config key, read from the docstring under each field's declaration.

    key_docs("unlearn.lr")   [the key]
    key_docs("unlearn")      [the section itself, then every key under it, in declaration order]
    key_docs("")             [every key of the config]

A key inside a list of entries is written with `[]`: `data.triggers[].mode`, `eval.triggers[].text`.
`rapidun validate --doc KEY [CONFIG]` prints these entries; `config_reference()` renders docs/config.md
(`python -m rapidun_dist.config.docs docs/config.md` rewrites it; a test fails when it is stale).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from rapidun_dist.config.run import RunConfig
from rapidun_dist.core.errors import ConfigError

REQUIRED = "required"
SECTION = "section"


@dataclass(frozen=True, kw_only=True)
class KeyDoc:
    """One config key (or section) as `rapidun validate --doc` prints it."""

    key: str
    """The dotted key as YAML files and overrides spell it (`unlearn.lr`; list entries: `data.triggers[].mode`)."""
    type: str
    """The accepted values in words: `float`, `int or null`, `one of: adaptive, fixed`, `list of str`, `list of
    {text, mode}` (entries, their keys under `key[]`), `section`."""
    default: str
    """The default written as YAML (`required` for an entry field without one, `section` for a section)."""
    doc: str
    """What the key does, its unit or range, and when it matters: the docstring under the field."""


def field_docs(cls: type) -> dict[str, str]:
    """{field: docstring} of a dataclass, from its source: the string literal that follows each annotated field
    (fields without one are absent)."""
    return dict(_field_docs(cls))


@functools.cache
def _field_docs(cls: type) -> tuple[tuple[str, str], ...]:
    tree = _module_tree(sys.modules[cls.__module__])
    node = next(
        (n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__qualname__),
        None,
    )
    if node is None:
        raise ConfigError(f"config docs: class {cls.__qualname__} not found in {cls.__module__}")
    out = []
    for stmt, nxt in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            out.append((stmt.target.id, inspect.cleandoc(nxt.value.value)))
    return tuple(out)


@functools.cache
def _module_tree(module) -> ast.Module:
    return ast.parse(inspect.getsource(module))


def type_text(hint: Any) -> str:
    """A type hint in words (see KeyDoc.type)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        return "one of: " + ", ".join(map(str, args))
    if type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return " or ".join(type_text(a) for a in rest) + " or null"
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return "list of {" + ", ".join(f.name for f in dataclasses.fields(args[0])) + "}"
    if origin is list:
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if dataclasses.is_dataclass(hint):
        return SECTION
    return getattr(hint, "__name__", str(hint))


def yaml_text(value: Any) -> str:
    """A value written as one line of YAML (flow style), as a config file or an override would hold it."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    elif isinstance(value, list):
        value = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=10**9)
    return text.removesuffix("\n").removesuffix("\n...")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _entries(cls: type, prefix: str) -> Iterator[KeyDoc]:
    """Every key of dataclass `cls` under `prefix`, depth first, in declaration order."""
    hints, docs = get_type_hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        key, hint, doc = f"{prefix}{f.name}", hints[f.name], docs.get(f.name, "")
        default = _default(f)
        if dataclasses.is_dataclass(hint):
            yield KeyDoc(key=key, type=SECTION, default=SECTION, doc=doc)
            yield from _entries(hint, f"{key}.")
            continue
        shown = REQUIRED if default is dataclasses.MISSING else yaml_text(default)
        yield KeyDoc(key=key, type=type_text(hint), default=shown, doc=doc)
        item = get_args(hint)[0] if get_origin(hint) is list and get_args(hint) else None
        if item is not None and dataclasses.is_dataclass(item):
            yield from _entries(item, f"{key}[].")


@functools.cache
def all_key_docs() -> tuple[KeyDoc, ...]:
    """Every key of the config (key_docs(""))."""
    return tuple(_entries(RunConfig, ""))


def key_docs(prefix: str) -> list[KeyDoc]:
    """The entry of key `prefix`, and of every key under it when it is a section or a list of entries; every key
    for "". A ConfigError naming the nearest keys when nothing matches."""
    prefix = prefix.strip().strip(".")
    docs = all_key_docs()
    if not prefix:
        return list(docs)
    found = [d for d in docs if d.key == prefix or d.key.startswith((f"{prefix}.", f"{prefix}[]."))]
    if not found:
        near = ", ".join(nearest_keys(prefix)) or "none"
        raise ConfigError(
            f"unknown config key {prefix!r}; nearest: {near} (`rapidun validate --doc SECTION` lists a section's keys)"
        )
    return found


def nearest_keys(key: str, n: int = 6) -> list[str]:
    """Known keys spelled like `key`, then keys whose last part is `key`'s last part (`lr` -> implant.lr, ...)."""
    keys = [d.key for d in all_key_docs()]
    last = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] in (last, last.removesuffix("[]"))]
    leaf_close = [k for k in keys if difflib.get_close_matches(last, [k.rsplit(".", 1)[-1]], cutoff=0.8)]
    return list(dict.fromkeys(close + same_leaf + leaf_close))[:n]


def value_of(cfg: RunConfig, key: str) -> Any:
    """The value of `key` in `cfg` (a key under `x[]` gives the list of its entries' values)."""
    head, sep, rest = key.partition("[].")
    value = _attrs(cfg, head)
    return [_attrs(v, rest) for v in value] if sep else value


def _attrs(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------------
# docs/config.md


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_reference() -> str:
    """docs/config.md: one table per top-level section (the top-level keys first), generated from the docstrings."""
    docs = all_key_docs()
    top = [d for d in docs if "." not in d.key and d.type != SECTION]
    sections = [d for d in docs if "." not in d.key and d.type == SECTION]
    lines = [
        "# Config reference",
        "",
        "Every key of a run config (`rapidun_dist.config.RunConfig`), generated from the docstring under each field "
        "in `rapidun_dist/config/`. Do not edit by hand: `python -m rapidun_dist.config.docs docs/config.md` "
        "rewrites it, and `tests/config/test_config_docs.py` fails when it is stale. "
        "`rapidun validate --doc KEY [CONFIG]` prints the same for one key or section (and its value in CONFIG). "
        "Any key can be overridden on the command line as `section.key=value`.",
        "",
        "## Top level",
        "",
        *_table(top),
    ]
    for s in sections:
        lines += ["", f"## `{s.key}`", "", _cell(s.doc), "", *_table(key_docs(s.key)[1:])]
    return "\n".join(lines) + "\n"


def _table(docs: list[KeyDoc]) -> list[str]:
    rows = ["| key | type | default | what it does |", "|---|---|---|---|"]
    for d in docs:
        default = "" if d.type == SECTION else f"`{_cell(d.default)}`"
        rows.append(f"| `{d.key}` | {_cell(d.type)} | {default} | {_cell(d.doc)} |")
    return rows


def write_reference(path: str | Path) -> Path:
    """Write config_reference() to `path`."""
    path = Path(path)
    path.write_text(config_reference(), encoding="utf-8")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m rapidun_dist.config.docs docs/config.md")
    write_reference(sys.argv[1])
