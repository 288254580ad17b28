"""The two checks every config section uses in `__post_init__`: errors name the dotted key that is wrong."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args, get_origin, get_type_hints

from rapidun_dist.core.errors import ConfigError


def check(cond: bool, field_name: str, msg: str) -> None:
    """Raise ConfigError("<field_name>: <msg>") unless `cond`."""
    if not cond:
        raise ConfigError(f"{field_name}: {msg}")


def check_literal(obj, prefix: str) -> None:
    """Every Literal-typed field of a dataclass holds one of its allowed values (also when built in code)."""
    for f in dataclasses.fields(obj):
        hint = get_type_hints(type(obj))[f.name]
        if get_origin(hint) is Literal:
            value = getattr(obj, f.name)
            check(
                value in get_args(hint),
                f"{prefix}.{f.name}",
                f"expected one of {', '.join(map(str, get_args(hint)))}, found {value!r}",
            )
