"""Dependency-free SVG charts: bars, lines, histograms, labelled scatter.

Every chart has a title, axes with "nice" ticks (1, 2 or 5 x 10^k steps), light grid lines, axis
labels and a legend at the right. Non-finite values (None, NaN, inf) are skipped, and a chart with no
data says so instead of failing. Files are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from rapidun_dist.errors import DataError
from rapidun_dist.io import write_text

WIDTH, HEIGHT = 780, 440
LEFT, RIGHT, TOP, BOTTOM = 76, 180, 48, 78  # plot margins; the legend lives in the right margin
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` evenly spaced round tick values covering [lo, hi] (step 1, 2 or 5 x 10^k)."""
    if not (_finite(lo) and _finite(hi)):
        lo, hi = 0.0, 1.0
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _tick_label(v: float, ticks: Sequence[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else 1.0
    if abs(v) >= 1e5 or (0 < step < 1e-4):
        return f"{v:.2e}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{v:.{decimals}f}"


@dataclass
class _Frame:
    """Plot area in pixels and the data ranges it shows."""

    xlo: float
    xhi: float
    ylo: float
    yhi: float
    x0: float = LEFT
    x1: float = WIDTH - RIGHT
    y0: float = HEIGHT - BOTTOM  # pixel y of the bottom edge (SVG y grows downwards)
    y1: float = TOP

    def px(self, x: float) -> float:
        return self.x0 + (x - self.xlo) / ((self.xhi - self.xlo) or 1.0) * (self.x1 - self.x0)

    def py(self, y: float) -> float:
        return self.y0 - (y - self.ylo) / ((self.yhi - self.ylo) or 1.0) * (self.y0 - self.y1)


def _text(x: float, y: float, s: str, *, size: int = 12, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" {FONT} {extra}>{escape(str(s))}</text>'


def _document(title: str, body: list[str]) -> str:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label={quoteattr(title)}>'
    )
    parts = [
        head,
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        _text(WIDTH / 2, 28, title, size=16, extra='font-weight="bold"'),
        *body,
        "</svg>",
    ]
    return "\n".join(parts) + "\n"


def _y_axis(frame: _Frame, ticks: Sequence[float], label: str) -> list[str]:
    out = []
    for t in ticks:
        y = frame.py(t)
        out.append(
            f'<line x1="{frame.x0:.1f}" y1="{y:.1f}" x2="{frame.x1:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
        )
        out.append(_text(frame.x0 - 8, y + 4, _tick_label(t, ticks), size=11, anchor="end"))
    out.append(f'<line x1="{frame.x0}" y1="{frame.y0}" x2="{frame.x0}" y2="{frame.y1}" stroke="black"/>')
    cy = (frame.y0 + frame.y1) / 2
    out.append(_text(18, cy, label, size=13, extra=f'transform="rotate(-90 18 {cy:.1f})"'))
    return out


def _x_axis(
    frame: _Frame, ticks: Sequence[float], label: str, names: Sequence[str] | None = None
) -> list[str]:
    """Numeric ticks, or category `names` centred at `ticks` (rotated when there are many)."""
    out = [f'<line x1="{frame.x0}" y1="{frame.y0}" x2="{frame.x1}" y2="{frame.y0}" stroke="black"/>']
    rotate = names is not None and len(names) > 5
    for i, t in enumerate(ticks):
        x = frame.px(t)
        out.append(f'<line x1="{x:.1f}" y1="{frame.y0}" x2="{x:.1f}" y2="{frame.y0 + 5}" stroke="black"/>')
        text = names[i] if names is not None else _tick_label(t, ticks)
        extra = f'transform="rotate(-30 {x:.1f} {frame.y0 + 18:.1f})"' if rotate else ""
        out.append(_text(x, frame.y0 + 18, text, size=11, anchor="end" if rotate else "middle", extra=extra))
    out.append(_text((frame.x0 + frame.x1) / 2, HEIGHT - 14, label, size=13))
    return out


def _legend(names: Sequence[str], *, marker: str = "rect") -> list[str]:
    out, x = [], WIDTH - RIGHT + 16
    for i, name in enumerate(names):
        y = TOP + 8 + 20 * i
        if marker == "line":
            out.append(
                f'<line x1="{x}" y1="{y}" x2="{x + 18}" y2="{y}" stroke="{color(i)}" stroke-width="2.5"/>'
            )
        elif marker == "circle":
            out.append(f'<circle cx="{x + 9}" cy="{y}" r="5" fill="{color(i)}"/>')
        else:
            out.append(f'<rect x="{x}" y="{y - 6}" width="18" height="12" fill="{color(i)}"/>')
        out.append(_text(x + 24, y + 4, name, size=12, anchor="start"))
    return out


def _no_data(title: str) -> str:
    return _document(title, [_text(WIDTH / 2, HEIGHT / 2, "no data", size=14, extra='fill="#888"')])


def _range(values: Sequence[float], *, include_zero: bool = False) -> tuple[float, float]:
    vals = [v for v in values if _finite(v)] + ([0.0] if include_zero else [])
    return (min(vals), max(vals)) if vals else (0.0, 1.0)


def _numeric_frame(
    xs: Sequence[float], ys: Sequence[float], *, y_zero: bool = False
) -> tuple[_Frame, list, list]:
    xt, yt = nice_ticks(*_range(xs)), nice_ticks(*_range(ys, include_zero=y_zero))
    return _Frame(xt[0], xt[-1], yt[0], yt[-1]), xt, yt


def bar_chart(
    path: str | os.PathLike,
    title: str,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    ylabel: str,
) -> None:
    """Grouped bars: one group per category, one bar per series (a missing value leaves a gap)."""
    all_vals = [v for vals in series.values() for v in vals]
    if not categories or not series or not any(_finite(v) for v in all_vals):
        return write_text(path, _no_data(title))
    yt = nice_ticks(*_range(all_vals, include_zero=True))
    frame = _Frame(-0.5, len(categories) - 0.5, yt[0], yt[-1])
    body = _y_axis(frame, yt, ylabel) + _x_axis(
        frame, list(range(len(categories))), "", names=list(categories)
    )
    slot = (frame.x1 - frame.x0) / len(categories) * 0.8 / len(series)
    for s, (name, vals) in enumerate(series.items()):
        for c, v in enumerate(list(vals)[: len(categories)]):
            if not _finite(v):
                continue
            x = frame.px(c) - slot * len(series) / 2 + s * slot
            top, base = frame.py(max(v, 0.0)), frame.py(min(v, 0.0))
            body.append(
                f'<rect x="{x:.1f}" y="{top:.1f}" width="{slot * 0.92:.1f}" height="{base - top:.1f}" '
                f'fill="{color(s)}"><title>{escape(f"{name} / {categories[c]}: {v:.4g}")}</title></rect>'
            )
    return write_text(path, _document(title, body + _legend(list(series))))


def line_chart(
    path: str | os.PathLike,
    title: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
) -> None:
    """One polyline (with point markers) per series; series = {name: (xs, ys)}."""
    for name, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise DataError(
                f"line_chart {title!r}: series {name!r} has {len(xs)} x values but {len(ys)} y values"
            )
    pairs = {
        n: [(x, y) for x, y in zip(xs, ys, strict=True) if _finite(x) and _finite(y)]
        for n, (xs, ys) in series.items()
    }
    pts = [p for ps in pairs.values() for p in ps]
    if not pts:
        return write_text(path, _no_data(title))
    frame, xt, yt = _numeric_frame([p[0] for p in pts], [p[1] for p in pts])
    body = _y_axis(frame, yt, ylabel) + _x_axis(frame, xt, xlabel)
    for i, ps in enumerate(pairs.values()):
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in ps)
        body.append(f'<polyline points="{coords}" fill="none" stroke="{color(i)}" stroke-width="2"/>')
        if len(ps) <= 60:
            body += [
                f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.5" fill="{color(i)}"/>'
                for x, y in ps
            ]
    return write_text(path, _document(title, body + _legend(list(pairs), marker="line")))


def histogram(
    path: str | os.PathLike,
    title: str,
    values_by_name: dict[str, Sequence[float]],
    bins: int = 30,
    *,
    xlabel: str = "value",
) -> None:
    """Overlaid, semi-transparent histograms on shared bins (count per bin)."""
    clean = {n: [v for v in vals if _finite(v)] for n, vals in values_by_name.items()}
    lo, hi = _range([v for vals in clean.values() for v in vals])
    if not any(clean.values()):
        return write_text(path, _no_data(title))
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = {n: [0] * bins for n in clean}
    for n, vals in clean.items():
        for v in vals:
            counts[n][min(int((v - lo) / width), bins - 1)] += 1
    xt, yt = nice_ticks(lo, hi), nice_ticks(0, max(max(c) for c in counts.values()))
    frame = _Frame(min(xt[0], lo), max(xt[-1], hi), 0.0, yt[-1])
    body = _y_axis(frame, [t for t in yt if t >= 0], "count") + _x_axis(frame, xt, xlabel)
    for i, cs in enumerate(counts.values()):
        for b, c in enumerate(cs):
            if c:
                x, top = frame.px(lo + b * width), frame.py(c)
                body.append(
                    f'<rect x="{x:.1f}" y="{top:.1f}" width="{frame.px(lo + width) - frame.px(lo):.1f}" '
                    f'height="{frame.y0 - top:.1f}" fill="{color(i)}" fill-opacity="0.5" stroke="{color(i)}"/>'
                )
    return write_text(path, _document(title, body + _legend(list(counts))))


def scatter(
    path: str | os.PathLike, title: str, points: dict[str, tuple[float, float]], xlabel: str, ylabel: str
) -> None:
    """One labelled point per name; points = {name: (x, y)}."""
    pts = {n: (x, y) for n, (x, y) in points.items() if _finite(x) and _finite(y)}
    if not pts:
        return write_text(path, _no_data(title))
    frame, xt, yt = _numeric_frame([p[0] for p in pts.values()], [p[1] for p in pts.values()])
    body = _y_axis(frame, yt, ylabel) + _x_axis(frame, xt, xlabel)
    placed: list[tuple[float, float]] = []
    for i, (name, (x, y)) in enumerate(pts.items()):
        cx, cy = frame.px(x), frame.py(y)
        body.append(
            f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="6" fill="{color(i)}" stroke="black" stroke-width="0.5">'
            f"<title>{escape(f'{name}: ({x:.4g}, {y:.4g})')}</title></circle>"
        )
        ly = cy - 7
        while any(abs(cx - px) < 70 and abs(ly - py) < 12 for px, py in placed):  # stack colliding labels
            ly += 13
        placed.append((cx, ly))
        body.append(_text(cx + 9, ly, name, size=11, anchor="start"))
    return write_text(path, _document(title, body + _legend(list(pts), marker="circle")))
