"""Markdown helpers shared by the evaluation report and the multi-run comparison.

- `num(v)`: a finite int/float as float, anything else (None, NaN, inf, bool, str) as None.
- `cell(text, limit)`: text made safe for one table cell and still readable raw: `|`, backslash, backtick,
  emphasis and link brackets backslash-escaped, `<` (an HTML tag would swallow text, e.g. `<|sys|>`) and
  entity-like `&` written as entities, line breaks shown as " / ", zero-width and control characters made
  visible as "⟨U+200D⟩" marks (a trigger is often exactly such a character), and cut at a word
  boundary near `limit` with "..." and the number of characters left out.
- `fmt_*`: one number formatter per kind; a missing number is always "-".
- `table(header, rows)`: a pipe table.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Sequence

MISSING = "-"
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_ENTITY_LIKE = re.compile(r"&(?=#?\w+;)")


def num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _visible(ch: str) -> str:
    """Control, format (zero-width) and other invisible characters as a visible mark."""
    if ch in "\n\r\t":
        return ch
    if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cn", "Zl", "Zp"):
        return f"\u27e8U+{ord(ch):04X}\u27e9"
    return ch


def shorten(text: str, limit: int) -> str:
    """`text` cut at a word boundary near `limit` characters, with how much was left out."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    if space >= limit * 0.6:
        cut = cut[:space]
    return f"{cut.rstrip()}... (+{len(text) - len(cut)} chars)"


def cell(text, limit: int = 160) -> str:
    """Safe, readable table-cell text (see the module docstring); empty text is shown as "(empty)"."""
    raw = "".join(_visible(c) for c in str(text if text is not None else ""))
    raw = re.sub(r"\s*(\r\n|\r|\n)\s*", " / ", raw).replace("\t", " ").strip()
    if not raw:
        return "*(empty)*"
    raw = shorten(raw, limit)
    raw = _ENTITY_LIKE.sub("&amp;", raw).replace("<", "&lt;")
    return _MD_SPECIAL.sub(r"\\\1", raw)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def fmt_pct(v, digits: int = 1) -> str:
    v = num(v)
    return MISSING if v is None else f"{100 * v:.{digits}f}%"


def fmt_float(v, digits: int = 3) -> str:
    v = num(v)
    return MISSING if v is None else f"{v:.{digits}f}"


def fmt_seconds(v) -> str:
    v = num(v)
    return MISSING if v is None else (f"{v:.1f}" if v >= 1 else f"{v:.2f}")


def fmt_x(v) -> str:
    v = num(v)
    return MISSING if v is None else f"{v:.2f}x"


def fmt_auto(v) -> str:
    """Integers as integers, small numbers with 3 decimals, others with 4 significant digits."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    v = num(v)
    if v is None:
        return MISSING
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.4g}"


def fmt_proportion(prop: dict | None, p=None) -> str:
    """ "1.3% (4/300) [0.5-3.4]": the rate, k of n, and the 95% Wilson interval in percent; the bare rate when
    no sample size is known."""
    if prop is None:
        return fmt_pct(p)
    return f"{100 * prop['p']:.1f}% ({prop['k']}/{prop['n']}) [{100 * prop['lo']:.1f}-{100 * prop['hi']:.1f}]"


def fmt_mean_interval(m: dict | None, kind: str = "auto") -> str:
    """ "mean [lo, hi]" of a stats.mean_interval dict (n = 1: the value alone), formatted by `kind`."""
    if not m or num(m.get("mean")) is None:
        return MISSING
    f = {"pct": fmt_pct, "float": fmt_float, "s": fmt_seconds, "x": fmt_x}.get(kind, fmt_auto)
    if m.get("n", 1) < 2:
        return f"{f(m['mean'])} (n=1)"
    return f"{f(m['mean'])} [{f(m['lo'])}, {f(m['hi'])}]"
