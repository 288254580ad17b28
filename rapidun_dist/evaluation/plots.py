"""Report charts with matplotlib (Agg, no display): bars with 95% error bars, lines, histograms, Pareto scatters.

Every function writes one figure to `path`, in the format its suffix names (`.png` for the report; `.svg` or
`.pdf` work too), atomically (nothing half-written is left behind). Figures are built with the object API
(`matplotlib.figure.Figure` + the Agg canvas): no pyplot state, no display, safe to call from any process.

Values are `Estimate(value, lo, hi)` where an interval exists (a Wilson interval for an ASR, a t interval over
seeds) and plain floats otherwise. Non-finite values (None, NaN, inf) are skipped; a chart with nothing to
draw says "no data" instead of failing.

PPL-ratio axes stay linear and readable: points beyond the collapse ratio (1.5) are pinned to the right edge
with a ">" marker and their true value in the label, so one collapsed method does not squash the others.

Pareto fronts minimise both coordinates (ASR and clean PPL ratio are both lower-is-better): a point is on the
front when no other point is at least as good on both and strictly better on one.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from rapidun_dist.core.errors import DataError
from rapidun_dist.core.io import atomic_path

DPI = 110
LINESTYLES = ("-", "--", "-.", ":")  # cycled with the colours, so identical curves stay visible
COLLAPSE_RATIO = 1.5  # a clean PPL ratio above this is a collapsed model (docs/DESIGN.md section 8)


class Estimate(NamedTuple):
    """A number with an optional 95% interval [lo, hi]."""

    value: float | None
    lo: float | None = None
    hi: float | None = None


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def as_estimate(v) -> Estimate:
    """A float, None or an Estimate, as an Estimate whose non-finite parts are None."""
    e = v if isinstance(v, Estimate) else Estimate(v)
    return Estimate(*(x if finite(x) else None for x in e))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (both coordinates minimised), ordered by x then y."""
    pts = [(float(x), float(y)) for x, y in points]
    front = [
        i
        for i, (x, y) in enumerate(pts)
        if not any((ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(pts) if j != i)
    ]
    return sorted(front, key=lambda i: pts[i])


# ---------------------------------------------------------------------------------------------- figures


def _figure(ncols: int = 1, *, width: float = 7.5, height: float = 4.2) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, color="#e5e5e5", linewidth=0.8)
        ax.set_axisbelow(True)
    return fig, axes


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` (format from the suffix) atomically; returns the path."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI)
    return path


def _no_data(path, title: str) -> Path:
    fig, (ax,) = _figure()
    ax.set_title(title)
    ax.text(
        0.5, 0.5, "no data", ha="center", va="center", color="#888888", fontsize=14, transform=ax.transAxes
    )
    ax.set_xticks([])
    ax.set_yticks([])
    return save(fig, path)


def _legend(ax, n: int) -> None:
    if n:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)


def _err(est: Sequence[Estimate]) -> list[list[float]] | None:
    """Asymmetric error-bar lengths [below, above] (0 where an interval is missing), or None when none exists."""
    if not any(e.lo is not None and e.hi is not None for e in est):
        return None
    below = [e.value - e.lo if e.lo is not None and e.value is not None else 0.0 for e in est]
    above = [e.hi - e.value if e.hi is not None and e.value is not None else 0.0 for e in est]
    return [[max(b, 0.0) for b in below], [max(a, 0.0) for a in above]]


# ---------------------------------------------------------------------------------------------- bars


def _grouped_bars(
    ax, categories: Sequence[str], series: dict[str, Sequence], ylabel: str, *, fmt: str | None = None,
    clip: float | None = None,
) -> None:  # fmt: skip
    """One group per category, one bar per series, 95% error bars where an interval is given. `fmt` writes each
    value above its bar; a bar taller than `clip` is cut there, hatched, and labelled with its true value."""
    width = 0.8 / max(len(series), 1)
    for s, (name, vals) in enumerate(series.items()):
        est = [as_estimate(v) for v in list(vals)[: len(categories)]]
        keep = [i for i, e in enumerate(est) if e.value is not None]
        xs = [c + (s - (len(series) - 1) / 2) * width for c in keep]
        shown = [_clipped(est[i], clip) for i in keep]
        err = _err(shown)
        bars = ax.bar(xs, [e.value for e in shown], width * 0.92, yerr=err, capsize=3 if err else 0, label=name,
                      color=f"C{s}", error_kw={"elinewidth": 1.0, "ecolor": "#333333"})  # fmt: skip
        for bar, x, i, e in zip(bars, xs, keep, shown, strict=True):
            cut = clip is not None and est[i].value > clip
            if cut:
                bar.set_hatch("//")
            if fmt or cut:
                top = e.hi if e.hi is not None else e.value
                ax.annotate((fmt or "{:.3g}").format(est[i].value) + ("x" if cut else ""), (x, top),
                            xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)  # fmt: skip
    many = len(categories) > 5
    ax.set_xticks(
        range(len(categories)), list(categories), rotation=30 if many else 0, ha="right" if many else "center"
    )
    ax.set_ylabel(ylabel)


def _clipped(e: Estimate, clip: float | None) -> Estimate:
    if clip is None or e.value <= clip:
        return e
    return Estimate(clip, None, None)


def bar_chart(
    path: str | os.PathLike,
    title: str,
    categories: Sequence[str],
    series: dict[str, Sequence],
    ylabel: str,
    *,
    hlines: dict[str, float] | None = None,
    log: bool = False,
) -> Path:
    """Grouped bars (values or Estimates; a missing value leaves a gap), optional labelled reference lines."""
    vals = [as_estimate(v).value for vs in series.values() for v in vs]
    if not categories or not any(v is not None for v in vals):
        return _no_data(path, title)
    fig, (ax,) = _figure(width=max(6.0, 1.1 * len(categories) + 3.0))
    _grouped_bars(ax, categories, series, ylabel)
    _reference_lines(ax, hlines, horizontal=True)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    _legend(ax, len(series) + len(hlines or {}))
    return save(fig, path)


def _reference_lines(ax, lines: dict[str, float] | None, *, horizontal: bool) -> None:
    for i, (label, v) in enumerate((lines or {}).items()):
        style = {"color": "#555555" if i == 0 else "#c0392b", "linestyle": "--" if i == 0 else ":"}
        (ax.axhline if horizontal else ax.axvline)(v, linewidth=1.2, label=label, **style)


def method_summary(
    path: str | os.PathLike,
    title: str,
    methods: Sequence[str],
    asr: dict[str, Sequence],
    ppl_ratio: Sequence,
    *,
    ratio_label: str = "clean PPL / PPL before",
    interval_label: str = "95% Wilson interval",
) -> Path:
    """Two panels: ASR per method (one bar per split, in %), and the clean PPL ratio with the collapse line
    (a collapsed bar is cut just above that line and labelled with its value, so the others stay readable)."""
    if not methods:
        return _no_data(path, title)
    fig, (left, right) = _figure(2, width=max(5.5, 0.8 * len(methods) + 2.5), height=4.4)
    pct = {k: [_scaled(as_estimate(v), 100.0) for v in vs] for k, vs in asr.items()}
    _grouped_bars(left, methods, pct, "ASR (%)", fmt="{:.1f}")
    left.set_ylim(0, 125)
    left.set_yticks(range(0, 101, 20))
    left.set_title(f"Attack success rate ({interval_label})", fontsize=10)
    left.legend(fontsize=9, frameon=False, loc="upper center", ncols=len(pct))
    ratios = [as_estimate(v) for v in ppl_ratio]
    clip = COLLAPSE_RATIO * 1.15
    _grouped_bars(right, methods, {"PPL ratio": ratios}, ratio_label, fmt="{:.3f}", clip=clip)
    lines = {"before (1.0)": 1.0, f"collapse ({COLLAPSE_RATIO})": COLLAPSE_RATIO}
    vals = [v for r in ratios if r.value is not None for v in _clipped(r, clip) if v is not None]
    if vals and max(vals) < 0.8 * COLLAPSE_RATIO:
        lines.pop(f"collapse ({COLLAPSE_RATIO})")  # far away: it would only squash the bars
    _reference_lines(right, lines, horizontal=True)
    lo, hi = min([1.0, *vals]), min(max([1.0, *vals]), clip)
    right.set_ylim(max(0.0, lo - 0.25 * (hi - lo) - 0.01), hi + 0.12 * (hi - lo) + 0.01)
    right.set_title("Clean perplexity ratio (lower is better)", fontsize=10)
    right.legend(fontsize=8, frameon=False, loc="upper left")
    fig.suptitle(title)
    return save(fig, path)


def _scaled(e: Estimate, k: float) -> Estimate:
    return Estimate(*(x * k if x is not None else None for x in e))


# ---------------------------------------------------------------------------------------------- lines


def line_chart(
    path: str | os.PathLike,
    title: str,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    *,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """One line with point markers per series; series = {name: (xs, ys)}; non-finite points are dropped."""
    return line_panels(path, title, {ylabel: series}, xlabel, ylim=ylim)


def _finite_pairs(title: str, series: dict) -> dict[str, list[tuple[float, float]]]:
    for name, (xs, ys) in series.items():
        if len(xs) != len(ys):
            raise DataError(
                f"line chart {title!r}: series {name!r} has {len(xs)} x values but {len(ys)} y values"
            )
    pairs = {
        n: [(x, y) for x, y in zip(xs, ys, strict=True) if finite(x) and finite(y)]
        for n, (xs, ys) in series.items()
    }
    return {n: ps for n, ps in pairs.items() if ps}


def line_panels(
    path: str | os.PathLike,
    title: str,
    panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]],
    xlabel: str,
    *,
    ylim: tuple[float, float] | None = None,
) -> Path:
    """Side-by-side line charts sharing x: panels = {ylabel: {name: (xs, ys)}}; a series keeps its colour in
    every panel, and the legend (right of the last panel) names each series once."""
    pairs = {ylabel: _finite_pairs(title, series) for ylabel, series in panels.items()}
    pairs = {ylabel: p for ylabel, p in pairs.items() if p}
    if not pairs:
        return _no_data(path, title)
    names = list(dict.fromkeys(n for p in pairs.values() for n in p))
    fig, axes = _figure(len(pairs), width=5.4 if len(pairs) > 1 else 7.5)
    for ax, (ylabel, series) in zip(axes, pairs.items(), strict=True):
        for name, ps in series.items():
            k = names.index(name)
            ax.plot(*zip(*ps, strict=True), marker="o" if len(ps) <= 30 else None, markersize=3.5, color=f"C{k % 10}",
                    linestyle=LINESTYLES[k % len(LINESTYLES)], label=name)  # fmt: skip
        if ylim:
            ax.set_ylim(*ylim)
        ax.set(xlabel=xlabel, ylabel=ylabel)
    handles = {h.get_label(): h for ax in axes for h in ax.get_lines()}
    axes[-1].legend([handles[n] for n in names], names, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9,
                    frameon=False)  # fmt: skip
    fig.suptitle(title) if len(pairs) > 1 else axes[0].set_title(title)
    return save(fig, path)


# ---------------------------------------------------------------------------------------------- histograms


def histogram_counts(values_by_name: dict[str, Sequence[float]], bins: int = 30) -> tuple[list[float], dict]:
    """Shared bin edges over all finite values and the count per bin per name (the last bin is closed)."""
    clean = {n: [float(v) for v in vals if finite(v)] for n, vals in values_by_name.items()}
    allv = [v for vals in clean.values() for v in vals]
    if not allv:
        return [], {n: [] for n in clean}
    lo, hi = min(allv), max(allv)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    edges = [lo + b * width for b in range(bins)] + [hi]
    counts = {n: [0] * bins for n in clean}
    for n, vals in clean.items():
        for v in vals:
            counts[n][min(int((v - lo) / width), bins - 1)] += 1
    return edges, counts


def histogram(
    path: str | os.PathLike,
    title: str,
    values_by_name: dict[str, Sequence[float]],
    bins: int = 30,
    *,
    xlabel: str = "value",
) -> Path:
    """Overlaid step histograms of raw values on shared bins."""
    edges, counts = histogram_counts(values_by_name, bins)
    return histogram_from_counts(path, title, edges, counts, xlabel=xlabel)


def histogram_from_counts(
    path: str | os.PathLike,
    title: str,
    edges: Sequence[float],
    counts_by_name: dict[str, Sequence[int]],
    *,
    xlabel: str = "value",
    vlines: dict[str, float] | None = None,
) -> Path:
    """Overlaid histograms drawn from stored bin edges and counts (one count per bin per name)."""
    for name, counts in counts_by_name.items():
        if counts and len(counts) != len(edges) - 1:
            raise DataError(
                f"histogram {title!r}: {name!r} has {len(counts)} counts for {len(edges) - 1} bins"
            )
    shown = {n: c for n, c in counts_by_name.items() if c and sum(c) > 0}
    if not shown:
        return _no_data(path, title)
    fig, axes = _figure(len(shown), width=4.6, height=3.6)
    for i, (ax, (name, counts)) in enumerate(zip(axes, shown.items(), strict=True)):
        ax.stairs(counts, edges, fill=True, alpha=0.55, color=f"C{i}")
        ax.stairs(counts, edges, color=f"C{i}", linewidth=1.2)
        _reference_lines(ax, vlines, horizontal=False)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set(xlabel=xlabel, ylabel="count", title=f"{name} (n={sum(counts)})")
        if vlines:
            ax.legend(fontsize=8, frameon=False)
    fig.suptitle(title)
    return save(fig, path)


# ---------------------------------------------------------------------------------------------- scatter / Pareto


class Point(NamedTuple):
    """One labelled point with optional 95% intervals on both axes."""

    x: Estimate
    y: Estimate


def _point(p) -> Point | None:
    if isinstance(p, Point):
        pt = Point(as_estimate(p.x), as_estimate(p.y))
    else:
        pt = Point(as_estimate(p[0]), as_estimate(p[1]))
    return pt if pt.x.value is not None and pt.y.value is not None else None


def _draw_front(ax, pts: list[Point], *, label: str | None, color: str = "black", style: str = "--") -> None:
    """The non-dominated points circled and joined by a staircase (the attainable region lies above it)."""
    idx = pareto_front([(p.x.value, p.y.value) for p in pts])
    xs, ys = [pts[i].x.value for i in idx], [pts[i].y.value for i in idx]
    ax.step(xs, ys, where="post", color=color, linestyle=style, linewidth=1.1, label=label, zorder=1)
    ax.scatter(xs, ys, s=170, facecolors="none", edgecolors=color, linewidths=1.0, zorder=2)


def _label_points(ax, labelled: list[tuple[str, float, float]], fig: Figure) -> None:
    """Name each point beside it: the first of a few offsets (right, below, left, then further out) whose
    label box does not overlap a label or point already placed."""
    ax.autoscale_view()
    to_pt = 72.0 / fig.dpi
    anchors = [tuple(c * to_pt for c in ax.transData.transform((x, y))) for _, x, y in labelled]
    boxes = [(px - 4, py - 4, px + 4, py + 4) for px, py in anchors]  # the markers themselves
    for (name, x, y), (px, py) in sorted(
        zip(labelled, anchors, strict=True), key=lambda t: (t[0][1], t[0][2])
    ):
        w, h = 5.0 * len(name) + 2, 9.0
        candidates = [(6, 4), (6, -12), (-6 - w, 4), (-6 - w, -12)] + [(6, 4 + 10 * k) for k in range(1, 8)]
        for dx, dy in candidates:
            box = (px + dx, py + dy, px + dx + w, py + dy + h)
            if not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in boxes):
                break
        boxes.append(box)
        ax.annotate(name, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=8)


def pin_limit(xs: Sequence[float]) -> float | None:
    """Where off-scale x values (beyond the collapse ratio) are pinned: a little right of the largest
    in-range value; None when nothing is off scale."""
    inside = [x for x in xs if x <= COLLAPSE_RATIO]
    if len(inside) == len(xs):
        return None
    if not inside:
        return COLLAPSE_RATIO
    lo, hi = min(inside), max(inside)
    return hi + max(0.15 * (hi - lo), 0.01)


def _pinned(p: Point, pin: float | None) -> tuple[Point, str]:
    """`p` moved to the pin when it is off scale, and the label suffix that gives its true x."""
    if pin is None or p.x.value <= pin:
        return p, ""
    return Point(Estimate(pin), p.y), f" ({p.x.value:.2f}x, off scale)"


def _scatter_panel(
    ax, fig, pts: dict[str, Point], reference: dict[str, Point], *, front: bool, pin: float | None
) -> None:
    if not pts and not reference:  # e.g. no OOD triggers in a clean job: an empty panel that says so
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#777777")
        return
    moved = {n: _pinned(p, pin) for n, p in pts.items()}
    for i, (name, (p, suffix)) in enumerate(moved.items()):
        ax.errorbar(p.x.value, p.y.value, xerr=_err([p.x]), yerr=_err([p.y]), fmt=">" if suffix else "o",
                    color=f"C{i % 10}", markersize=7, capsize=3, elinewidth=1.0, label=name + suffix, zorder=3,
                    clip_on=False)  # fmt: skip
    for name, p in reference.items():
        ax.errorbar(p.x.value, p.y.value, yerr=_err([p.y]), fmt="X", color="#777777", markersize=8, capsize=3,
                    elinewidth=1.0, label=f"{name} (reference)", zorder=3)  # fmt: skip
    if front and len(pts) > 1:
        _draw_front(ax, [p for p, _ in moved.values()], label="Pareto front")
    xs = [p.x.value for p, _ in moved.values()] + [p.x.value for p in reference.values()]
    if max(xs) >= 0.8 * COLLAPSE_RATIO:  # otherwise the line would only stretch the axis
        _reference_lines(ax, {f"collapse ({COLLAPSE_RATIO}x)": COLLAPSE_RATIO}, horizontal=False)
    if pin is not None:
        ax.set_xlim(right=pin + 0.02 * (pin - min(xs) or 1.0))
    labelled = [(n + s, p.x.value, p.y.value) for n, (p, s) in moved.items()]
    _label_points(ax, labelled + [(n, p.x.value, p.y.value) for n, p in reference.items()], fig)


def scatter(
    path: str | os.PathLike,
    title: str,
    points: dict | Sequence[dict],
    xlabel: str,
    ylabel: str | Sequence[str],
    *,
    front: bool = True,
    reference: dict | Sequence[dict] | None = None,
) -> Path:
    """Labelled points with 2D error bars and the Pareto front of `points` marked; one panel per dict.

    `points` = {name: Point | (x, y)} for one panel, or a list of such dicts (one per y label); `reference`
    (same shape) adds grey points that take no part in the front (the model before unlearning)."""
    panels = [points] if isinstance(points, dict) else list(points)
    refs = (
        [reference or {}] * len(panels)
        if reference is None or isinstance(reference, dict)
        else list(reference)
    )
    ylabels = [ylabel] if isinstance(ylabel, str) else list(ylabel)
    if not len(ylabels) == len(panels) == len(refs):
        raise DataError(
            f"scatter {title!r}: {len(panels)} panels, {len(refs)} references, {len(ylabels)} y labels"
        )
    clean = [{n: p for n, raw in pan.items() if (p := _point(raw)) is not None} for pan in panels]
    clean_refs = [{n: p for n, raw in r.items() if (p := _point(raw)) is not None} for r in refs]
    if not any(clean):
        return _no_data(path, title)
    xs = [p.x.value for pan in (*clean, *clean_refs) for p in pan.values()]
    pin = pin_limit(xs)
    fig, axes = _figure(len(clean), width=5.6, height=4.4)
    for ax, pan, ref, yl in zip(axes, clean, clean_refs, ylabels, strict=True):
        _scatter_panel(ax, fig, pan, ref, front=front, pin=pin)
        ax.set(xlabel=xlabel, ylabel=yl)
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title)
    return save(fig, path)


def _method_curve(
    ax, color: str, label: str, pts: list[tuple[float, float]], mean: Point | None, pin
) -> Point | None:
    """One method's runs (pinned where off scale), its own Pareto curve and its mean; returns the drawn mean."""
    shown = [(min(x, pin) if pin is not None else x, y) for x, y in pts]
    off = sum(1 for (x, _), (sx, _) in zip(pts, shown, strict=True) if sx != x)
    ax.scatter(*zip(*shown, strict=True), s=16, alpha=0.55, color=color, clip_on=False)
    idx = pareto_front(shown)
    if len(idx) > 1:
        ax.step(
            *zip(*[shown[j] for j in idx], strict=True), where="post", color=color, linewidth=1.2, alpha=0.8
        )
    label = f"{label} (n={len(pts)}" + (f", {off} off scale" if off else "")
    if mean is None:
        ax.plot([], [], "o", color=color, label=label + ")")
        return None
    mean_x = mean.x.value
    mean, suffix = _pinned(mean, pin)
    ax.errorbar(mean.x.value, mean.y.value, xerr=_err([mean.x]), yerr=_err([mean.y]), fmt=">" if suffix else "D",
                color=color, markersize=7, capsize=3, label=label + (f", mean {mean_x:.2f}x)" if suffix else ")"),
                zorder=3, clip_on=False)  # fmt: skip
    return mean


def pareto_curves(
    path: str | os.PathLike,
    title: str,
    runs: dict[str, Sequence[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    *,
    means: dict[str, Point] | None = None,
) -> Path:
    """Per method: its individual runs (small dots), its own Pareto curve through them, and its mean with
    95% intervals (large marker); the front across the method means is marked in black. Runs beyond the
    collapse ratio are pinned to the right edge."""
    runs = {m: [(x, y) for x, y in pts if finite(x) and finite(y)] for m, pts in runs.items()}
    runs = {m: pts for m, pts in runs.items() if pts}
    if not runs:
        return _no_data(path, title)
    means = {m: p for m, raw in (means or {}).items() if m in runs and (p := _point(raw)) is not None}
    pin = pin_limit([x for pts in runs.values() for x, _ in pts] + [p.x.value for p in means.values()])
    fig, (ax,) = _figure(width=8.0, height=5.0)
    drawn = [
        _method_curve(ax, f"C{i % 10}", method, pts, means.get(method), pin)
        for i, (method, pts) in enumerate(runs.items())
    ]
    drawn = [p for p in drawn if p is not None]
    if len(drawn) > 1:
        _draw_front(ax, drawn, label="front of the means")
    if max(p[0] for pts in runs.values() for p in pts if p[0] <= (pin or math.inf)) >= 0.8 * COLLAPSE_RATIO:
        _reference_lines(ax, {f"collapse ({COLLAPSE_RATIO}x)": COLLAPSE_RATIO}, horizontal=False)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _legend(ax, len(runs))
    return save(fig, path)
