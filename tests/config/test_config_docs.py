"""Every config field is documented where it is declared, and `rapidun_dist.config.docs` serves those docs.

The walk finds the config modules by listing the package (a new section module is checked without being named
here) and reads each field's doc from the source: the string literal that follows the annotated assignment."""

import ast
import dataclasses
import importlib
import pkgutil
import re
import typing
from pathlib import Path

import pytest

import rapidun_dist.config as config_pkg
from rapidun_dist.config import RunConfig, UnlearnConfig, load_config
from rapidun_dist.config.docs import (
    SECTION,
    config_reference,
    field_docs,
    key_docs,
    value_of,
)
from rapidun_dist.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
# The method registry is not a config section: its MethodSpec rows are code, not YAML keys.
NOT_SECTIONS = {"methods"}


def section_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(config_pkg.__path__) if m.name not in NOT_SECTIONS]
    return [f"{config_pkg.__name__}.{n}" for n in names]


def _is_dataclass_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")
    return name == "dataclass"


def undocumented_fields(source: str) -> list[tuple[str, str]]:
    """(class, field) of every field of a @dataclass class in `source` without a non-empty string literal after it."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef) or not any(map(_is_dataclass_decorator, node.decorator_list)):
            continue
        body = node.body
        for i, stmt in enumerate(body):
            if not isinstance(stmt, ast.AnnAssign):
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = (
                nxt.value.value if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) else None
            )
            if not (isinstance(doc, str) and doc.strip()):
                missing.append((node.name, stmt.target.id))
    return missing


def key_prefixes() -> dict[type, str]:
    """Each config dataclass reachable from RunConfig -> the dotted key prefix of its fields."""
    out: dict[type, str] = {RunConfig: ""}

    def walk(cls: type, prefix: str) -> None:
        for name, hint in typing.get_type_hints(cls).items():
            args = typing.get_args(hint)
            if dataclasses.is_dataclass(hint):
                out[hint] = f"{prefix}{name}."
                walk(hint, f"{prefix}{name}.")
            elif args and dataclasses.is_dataclass(args[0]):
                out.setdefault(args[0], f"{prefix}{name}[].")

    walk(RunConfig, "")
    return out


def test_every_config_field_is_documented():
    prefixes = {cls.__name__: p for cls, p in key_prefixes().items()}
    missing = []
    for name in section_modules():
        module = importlib.import_module(name)
        source = Path(module.__file__).read_text(encoding="utf-8")
        for cls, fld in undocumented_fields(source):
            where = prefixes.get(cls, f"{name.rsplit('.', 1)[-1]}.{cls}.")
            missing.append(f"{where}{fld}")
    assert not missing, "fields without a docstring under their declaration: " + ", ".join(missing)


def test_the_walk_covers_every_section_and_catches_a_missing_doc():
    walked = set(section_modules())
    for cls in key_prefixes():
        assert cls.__module__ in walked, f"{cls.__name__} lives outside the walked config modules"
    source = 'from dataclasses import dataclass\n@dataclass\nclass X:\n    a: int = 1\n    """doc"""\n    b: int = 2\n'
    assert undocumented_fields(source) == [("X", "b")]


def test_field_docs_match_the_source():
    docs = field_docs(UnlearnConfig)
    assert [f.name for f in dataclasses.fields(UnlearnConfig)] == list(docs)
    assert docs["lr"].startswith("AdamW peak learning rate")
    assert "\n    " not in docs["epochs"]  # indentation of continuation lines removed


@pytest.mark.parametrize(
    "key, type_, default, fragment",
    [
        ("unlearn.lr", "float", "6.0e-05", "learning rate"),
        ("unlearn.max_steps", "int or null", "null", "optimizer steps"),
        ("unlearn.budget", "one of: adaptive, fixed", "adaptive", "adaptive"),
        ("weights.alpha", "float", "1.0", "S_f = alpha FF - beta FR"),
        ("model.tiny.hidden_size", "int", "64", "residual stream"),
        ("data.triggers[].mode", "one of: prefix, suffix, random", "required", "word boundary"),
    ],
)
def test_key_doc_of_one_key(key, type_, default, fragment):
    (doc,) = key_docs(key)
    assert (doc.key, doc.type, doc.default) == (key, type_, default)
    assert fragment in doc.doc


def test_key_docs_of_a_list_of_entries_give_the_entries_keys():
    docs = key_docs("eval.triggers")
    assert [d.key for d in docs] == ["eval.triggers", "eval.triggers[].text", "eval.triggers[].mode"]
    assert (docs[0].type, docs[0].default) == ("list of {text, mode}", "[]")
    assert "Clean mode" in docs[0].doc


def test_key_docs_of_a_section_list_every_key_once():
    docs = key_docs("unlearn")
    assert docs[0].key == "unlearn" and docs[0].type == SECTION and docs[0].doc
    assert [d.key for d in docs[1:]] == [f"unlearn.{f.name}" for f in dataclasses.fields(UnlearnConfig)]
    keys = {d.key for d in key_docs("eval")}
    assert {"eval.sampled", "eval.sampled.n", "eval.relearn.steps", "eval.triggers[].text"} <= keys


def test_every_key_has_a_doc_and_a_unique_name():
    docs = key_docs("")
    assert len({d.key for d in docs}) == len(docs)
    assert [d.key for d in docs if not d.doc.strip()] == []
    assert {"mode", "run_dir", "seed", "methods", "distributed.collective_timeout_s"} <= {d.key for d in docs}


@pytest.mark.parametrize(
    "key, near",
    [("unlearn.lrr", "unlearn.lr"), ("lr", "implant.lr"), ("eval.sampled.temp", "eval.sampled.temperature")],
)
def test_unknown_key_names_the_nearest(key, near):
    with pytest.raises(ConfigError, match=f"unknown config key {re.escape(repr(key))}.*{re.escape(near)}"):
        key_docs(key)


def test_value_of_a_key_in_a_config():
    cfg = load_config(CONFIGS / "tiny_cpu.yaml", ["unlearn.lr=1e-4"])
    assert value_of(cfg, "unlearn.lr") == pytest.approx(1e-4)
    assert value_of(cfg, "model.tiny.hidden_size") == cfg.model.tiny.hidden_size
    assert value_of(cfg, "data.triggers[].name") == [t.name for t in cfg.data.triggers]


def test_reference_page_is_current():
    page = ROOT / "docs" / "config.md"
    assert page.read_text(encoding="utf-8") == config_reference(), (
        "docs/config.md is stale: python -m rapidun_dist.config.docs docs/config.md"
    )
