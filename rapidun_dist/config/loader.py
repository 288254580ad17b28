"""YAML -> `RunConfig`: a strict YAML loader, dotted overrides, and type coercion against the dataclass hints.

Dotted overrides (`unlearn.lr=1e-4`, `methods=[rapidun,ga]`) are applied to the raw mapping before validation, so
an unknown key is an error naming its full dotted path. `dump_config` writes the resolved config back as YAML
(`config.yaml` of a run, `rapidun validate`)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from rapidun_dist.config.run import RunConfig
from rapidun_dist.core.errors import ConfigError


class StrictLoader(yaml.SafeLoader):
    """YAML with two traps closed: a repeated key is an error (PyYAML keeps the last one silently), and only
    `true`/`false` are booleans (YAML 1.2; YAML 1.1 also reads yes/no/on/off, so `merge=yes` became True)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                    f"(first at line {seen[key] + 1}); remove one of them"
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def parse_yaml(text: str, where: str = "YAML"):
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML: {e}") from None


def _parse_value(text: str) -> Any:
    return parse_yaml(text, "override value") if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides (values parsed as YAML) to a nested mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: expected a dotted key such as unlearn.lr")
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is not a section")
        node[parts[-1]] = _parse_value(value)
    return raw


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, found {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key {where}{unknown[0]} (known in {prefix or 'top level'}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for key, value in raw.items():
        hint = hints[key]
        path = f"{prefix}.{key}" if prefix else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value or {}, path)
        elif get_origin(hint) is list and get_args(hint) and dataclasses.is_dataclass(get_args(hint)[0]):
            if not isinstance(value, list):
                raise ConfigError(f"{path}: expected a list, found {type(value).__name__}")
            kwargs[key] = [_build(get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = _coerce(value, hint, path)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _coerce(value, hint, path):
    origin, args = get_origin(hint), get_args(hint)
    if value is None:
        if type(None) in args:
            return None
        raise ConfigError(f"{path}: may not be null")
    base = (
        [a for a in args if a is not type(None)] if args and origin not in (list, dict, Literal) else [hint]
    )
    target = base[0]
    if get_origin(target) is Literal:
        if value in get_args(target):
            return value
        allowed = ", ".join(map(str, get_args(target)))
        raise ConfigError(f"{path}: expected one of {allowed}, found {value!r}")
    if target is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if target is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if target is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if target is bool and isinstance(value, bool):
        return value
    if target is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    if get_origin(target) is list and isinstance(value, list):
        (item,) = get_args(target) or (Any,)
        return [v if item is Any else _coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if get_origin(target) is dict and isinstance(value, dict):
        kt, vt = get_args(target) or (Any, Any)
        return {_coerce(k, kt, f"{path} key"): _coerce(v, vt, f"{path}.{k}") for k, v in value.items()}
    if target is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{path}: expected {getattr(target, '__name__', target)}, found {value!r}")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML file (or the defaults when `path` is None) and apply dotted overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path}: cannot be read: {e}") from None
        try:
            raw = parse_yaml(text, str(path)) or {}
        except ConfigError as e:
            raise ConfigError(str(e) if str(path) in str(e) else f"{path}: {e}") from None
    apply_overrides(raw, list(overrides or []))
    return _build(RunConfig, raw, "")


def config_from_dict(raw: dict) -> RunConfig:
    return _build(RunConfig, raw, "")


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
