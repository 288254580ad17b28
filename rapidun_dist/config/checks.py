"""The two checks every config section uses in `__post_init__`: errors name the dotted key that is wrong."""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, get_args, get_origin, get_type_hints

from rapidun_dist.core.errors import ConfigError


def check(cond: bool, field_name: str, msg: str) -> None:
    """Raise ConfigError("<field_name>: <msg>") unless `cond`."""
    if not cond:
        raise ConfigError(f"{field_name}: {msg}")


def check_literal(obj, prefix: str) -> None:
    """Every Literal-typed field of a dataclass holds one of its allowed values (also when built in code)."""
    for name, allowed in _literal_fields(type(obj)):
        value = getattr(obj, name)
        check(
            value in allowed,
            f"{prefix}.{name}",
            f"expected one of {', '.join(map(str, allowed))}, found {value!r}",
        )


@functools.cache
def _literal_fields(cls: type) -> tuple[tuple[str, tuple], ...]:
    """(field name, allowed values) of the Literal-typed fields of a dataclass, resolved once per class (resolving
    the type hints is what costs: a per-row TriggerSpec made 200k suspect rows take 25 s)."""
    hints = get_type_hints(cls)
    return tuple(
        (f.name, get_args(hints[f.name]))
        for f in dataclasses.fields(cls)
        if get_origin(hints[f.name]) is Literal
    )
