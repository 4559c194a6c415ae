"""Figures of tracked scales against format ranges (matplotlib, imported on first use: the
``plots`` extra).

* :func:`plot_scales`: the unit scaling paper's per-op figure. One row per tracked tensor in
  program order; x is log2 of a statistic (RMS by default); a circle marks the forward value,
  a triangle its gradient; weights and activations have their own colours. Vertical lines mark
  each chosen format's min subnormal (dotted), min normal (dashed) and max (solid). Several
  reports (e.g. standard vs unit-scaled) become side-by-side panels.
* :func:`plot_histogram`: how one tensor's values spread over binades (log2 |x|), with the
  formats' ranges drawn the same way.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jax.typing import ArrayLike

from unitscale.analysis.coverage import Coverage, coverages_of
from unitscale.analysis.records import ScaleRecord, ScaleReport
from unitscale.analysis.stats import STAT_NAMES, as_float32, histogram_of
from unitscale.formats import E4M3, E5M2, FP16, FPFormat

__all__ = ["PLOT_FORMATS", "plot_scales", "plot_histogram"]

PLOT_FORMATS: tuple[FPFormat, ...] = (FP16, E4M3, E5M2)

# (phase, kind) -> marker, colour, legend text
_STYLE = {
    ("forward", "activation"): ("o", "tab:blue", "activation"),
    ("forward", "weight"): ("s", "tab:green", "weight"),
    ("backward", "activation"): ("v", "tab:orange", "activation gradient"),
    ("backward", "weight"): ("v", "tab:red", "weight gradient"),
}
_LINES = (("min_subnormal", ":", "min subnormal"), ("min_normal", "--", "min normal"), ("max", "-", "max"))
_FORMAT_COLOURS = ("0.35", "tab:purple", "tab:brown", "tab:cyan", "tab:olive")
_ROW_INCHES = 0.14
_PLOT_INCHES = 5.0
_CHAR_INCHES = 0.058  # a 7-point monospace character
_MARGIN = 12  # binades shown beyond the outermost format line


def _figure(figsize: tuple[float, float]):
    """A matplotlib ``Figure`` outside pyplot: no global figure registry, no backend switch, and
    Jupyter still shows a returned figure."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'unitscale[plots]'") from None
    return Figure(figsize=figsize)


def _check_formats(formats: Sequence[FPFormat]) -> tuple[FPFormat, ...]:
    formats = tuple(formats)
    for f in formats:
        if not isinstance(f, FPFormat):
            raise TypeError(f"formats must hold FPFormat instances, got {type(f).__name__}")
    return formats


def _format_handles(formats: tuple[FPFormat, ...]) -> list:
    from matplotlib.lines import Line2D

    handles = []
    for fmt, colour in zip(formats, _FORMAT_COLOURS * 2):
        for attr, style, text in _LINES:
            value = getattr(fmt, attr)
            label = f"{fmt.name} {text} {value:.4g} (2^{math.log2(value):.3g})"
            handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=1.0, label=label))
    return handles


def _format_lines(ax, formats: tuple[FPFormat, ...]) -> None:
    """Vertical lines at log2 of each format's min subnormal, min normal and max."""
    for fmt, colour in zip(formats, _FORMAT_COLOURS * 2):
        for attr, style, _ in _LINES:
            ax.axvline(math.log2(getattr(fmt, attr)), color=colour, linestyle=style, linewidth=1.0, zorder=1)


def _short(label: str, width: int) -> str:
    return label if len(label) <= width else "..." + label[-(width - 3):]


def _rows(report: ScaleReport) -> list[int]:
    return sorted({r.index for r in report})


def _draw_points(ax, chosen: list[ScaleRecord], where: dict, stat: str, xlim, style) -> None:
    """One pass and kind: points inside ``xlim``, and arrow heads at the edge for those beyond."""
    marker, colour, text, phase = style
    values = np.array([r.stats.get(stat) for r in chosen], np.float64)
    ys = np.array([where[r.index] for r in chosen], np.float64)
    ok = np.isfinite(values) & (values > 0)
    xs, ys = np.log2(values[ok]), ys[ok]
    inside = (xs >= xlim[0]) & (xs <= xlim[1])
    ax.scatter(xs[inside], ys[inside], marker=marker, s=18, color=colour, label=f"{phase}: {text}", zorder=3,
               alpha=0.85, linewidths=0)
    for edge, arrow in ((xlim[0], "<"), (xlim[1], ">")):
        beyond = ~inside & ((xs < xlim[0]) if arrow == "<" else (xs > xlim[1]))
        ax.scatter(np.full(beyond.sum(), edge), ys[beyond], marker=arrow, s=30, color=colour, zorder=4,
                   clip_on=False)


def _draw_report(ax, report: ScaleReport, stat: str, formats, label_width: int, xlim) -> None:
    rows = _rows(report)
    where = {index: row for row, index in enumerate(rows)}
    first = {}
    for record in report:
        first.setdefault(record.index, record)
    for (phase, kind), (marker, colour, text) in _STYLE.items():
        chosen = [r for r in report if r.phase == phase and r.kind == kind]
        _draw_points(ax, chosen, where, stat, xlim, (marker, colour, text, phase))
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(first[i].label, label_width) for i in rows], fontsize=7, family="monospace")
    for tick, index in zip(ax.get_yticklabels(), rows):
        if first[index].kind == "weight":
            tick.set_color(_STYLE[("forward", "weight")][1])
    _shade_blocks(ax, [first[i] for i in rows])
    ax.set_ylim(len(rows) - 0.5, -0.5)  # program order runs down the page
    ax.set_xlim(*xlim)
    ax.set_xlabel(f"log2({stat}); arrow heads: beyond the axis")
    ax.grid(axis="x", color="0.9", linewidth=0.6, zorder=0)
    _format_lines(ax, formats)


def _blocks(records: list[ScaleRecord]) -> list[str]:
    """The top-level scope of each row (``layers.3``, ``loss``, ...); an argument row (a weight,
    placed just before its first use) belongs to the block of the row after it."""
    blocks, following = [], ""
    for record in reversed(records):
        if record.op not in ("weight", "input"):
            following = record.path.split("/", 1)[0]
        blocks.append(following)
    return blocks[::-1]


def _shade_blocks(ax, records: list[ScaleRecord]) -> None:
    """Grey bands on every other top-level block, so a tall figure stays navigable."""
    blocks, start, shade = _blocks(records), 0, False
    for row in range(1, len(blocks) + 1):
        if row == len(blocks) or blocks[row] != blocks[start]:
            if shade:
                ax.axhspan(start - 0.5, row - 0.5, color="0.94", zorder=0, linewidth=0)
            start, shade = row, not shade


def _x_limits(reports: Sequence[ScaleReport], stat: str, formats) -> tuple[float, float]:
    """The values and the formats' lines, but at most ``_MARGIN`` binades beyond the lines."""
    values = np.concatenate([rep.values(stat) for rep in reports])
    logs = list(np.log2(values[np.isfinite(values) & (values > 0)])) or [0.0]
    marks = [math.log2(getattr(f, a)) for f in formats for a, _, _ in _LINES]
    low, high = min(logs + marks), max(logs + marks)
    if marks:
        low, high = max(low, min(marks) - _MARGIN), min(high, max(marks) + _MARGIN)
    return math.floor(low) - 1, math.ceil(high) + 1


def plot_scales(
    reports: ScaleReport | Mapping[str, ScaleReport],
    *,
    stat: str = "rms",
    formats: Sequence[FPFormat] = PLOT_FORMATS,
    path: str | os.PathLike | None = None,
    title: str | None = None,
    label_width: int = 48,
) -> Any:
    """The per-op scale figure of one report, or of several side by side (``{"title": report}``).

    Rows are tensors in program order (``ScaleRecord.index``; weight rows labelled in green;
    every other top-level scope, e.g. ``layers.1``, on a grey band); x
    is ``log2(stat)`` with ``stat`` one of ``STAT_NAMES``. The axis spans the formats' lines and
    the values, but no more than 12 binades beyond the lines; values further out are drawn as
    arrow heads at its edges. Zero or
    non-finite statistics are not drawn. Returns the matplotlib ``Figure``; writes it to ``path``
    (e.g. a PNG) when given.
    """
    if stat not in STAT_NAMES:
        raise ValueError(f"stat={stat!r} is unknown; expected one of {STAT_NAMES}")
    panels = {"": reports} if isinstance(reports, ScaleReport) else dict(reports)
    if not panels or not all(isinstance(r, ScaleReport) for r in panels.values()):
        raise TypeError("reports must be a ScaleReport or a non-empty mapping of titles to ScaleReports")
    if any(len(r) == 0 for r in panels.values()):
        raise ValueError("reports: every report must hold at least one record")
    formats = _check_formats(formats)
    n_rows = max(len(_rows(r)) for r in panels.values())
    # Laid out in inches: the labels' column, the plot, a gap; the legend and title on top.
    label_in = _CHAR_INCHES * max(len(_short(r.label, label_width)) for rep in panels.values() for r in rep) + 0.2
    top_in, bottom_in = 0.5 + 0.16 * max(len(_STYLE), len(_LINES)), 0.55
    width = len(panels) * (label_in + _PLOT_INCHES + 0.3)
    height = top_in + 0.35 + _ROW_INCHES * n_rows + bottom_in
    fig = _figure((width, height))
    xlim = _x_limits(list(panels.values()), stat, formats)
    axes = []
    for i, (name, report) in enumerate(panels.items()):
        left = i * (label_in + _PLOT_INCHES + 0.3) + label_in
        ax = fig.add_axes((left / width, bottom_in / height, _PLOT_INCHES / width,
                           (height - top_in - 0.35 - bottom_in) / height))
        _draw_report(ax, report, stat, formats, label_width, xlim)
        ax.set_title(name, fontsize=11)
        axes.append(ax)
    handles, _ = axes[0].get_legend_handles_labels()
    fig.legend(handles=handles + _format_handles(formats), loc="upper center", ncol=1 + len(formats), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 1 - 0.3 / height))
    if title:
        fig.suptitle(title, fontsize=12, y=1 - 0.08 / height)
    return _save(fig, path)


def _save(fig, path) -> Any:
    if path is None:
        return fig
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    options = dict(dpi=110, bbox_inches="tight", pad_inches=0.15)
    if not str(path).lower().endswith(".png"):
        fig.savefig(path, **options)
        return fig
    # A PNG with a 256-colour palette: the scale plot has a row per tensor (7,000 px tall for the
    # small GPT), and as RGBA it is 2.4 MB; with a palette 0.8 MB, the plot's few colours intact.
    from PIL import Image  # matplotlib's own dependency, loaded only when a PNG is written

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **options)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
    return fig


def _histogram_of(source: ScaleRecord | ArrayLike, formats) -> tuple[tuple, int, str, tuple]:
    """(histogram, numel, description, coverages) of a record or an array."""
    if isinstance(source, ScaleRecord):
        what = "gradient of " if source.phase == "backward" else ""
        known = {c.format: c for c in source.coverage}
        coverage = tuple(known.get(f.name) or _missing(f) for f in formats)
        return source.histogram, source.stats.numel, f"{what}{source.label}", coverage
    values = as_float32(source, "source")
    return histogram_of(values), values.size, "", coverages_of(values, formats)


def _missing(fmt: FPFormat) -> None:
    raise ValueError(f"formats: the record has no coverage for {fmt.name}; track it with that format")


def _coverage_text(coverage: tuple[Coverage, ...]) -> str:
    widths = (("underflow", 9), ("subnormal", 9), ("normal", 7), ("overflow", 8))
    lines = [" " * 8 + "".join(f"{name:>{w + 1}}" for name, w in widths)]
    for c in coverage:
        lines.append(f"{c.format:>8}" + "".join(f"{c.get(name):>{w + 1}.1%}" for name, w in widths))
    return "\n".join(lines)


def plot_histogram(
    source: ScaleRecord | ArrayLike | Mapping[str, ScaleRecord | ArrayLike],
    *,
    formats: Sequence[FPFormat] = PLOT_FORMATS,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Any:
    """Histogram of log2 |x| (share of the tensor's values per binade) for a record, an array, or
    several side by side (``{"title": record}``), with the formats' ranges drawn as lines and
    each format's coverage (underflow / subnormal / normal / overflow shares) printed.
    Returns the ``Figure``; writes it to ``path`` when given."""
    panels = dict(source) if isinstance(source, Mapping) else {"": source}
    if not panels:
        raise ValueError("source: the mapping is empty")
    formats = _check_formats(formats)
    fig = _figure((6.5 * len(panels), 4.8))
    axes = fig.subplots(1, len(panels), squeeze=False, sharey=True)
    histograms = {name: _histogram_of(s, formats) for name, s in panels.items()}
    bins = [e for h, _, _, _ in histograms.values() for e, _ in h]
    marks = [math.log2(getattr(f, a)) for f in formats for a, _, _ in _LINES]
    low, high = min(bins + marks, default=-1), max(bins + marks, default=1)
    for ax, (name, (hist, numel, what, coverage)) in zip(axes[0], histograms.items()):
        if hist:
            e, n = np.array(hist).T
            ax.bar(e + 0.5, n / max(numel, 1), width=1.0, color="tab:blue", alpha=0.8, zorder=2)
        _format_lines(ax, formats)
        zero = numel - sum(n for _, n in hist)
        ax.set_title("\n".join(t for t in (name, what, f"{numel} values, {zero} zero or non-finite") if t),
                     fontsize=9)
        ax.text(0.99, 0.98, _coverage_text(coverage), transform=ax.transAxes, ha="right", va="top",
                fontsize=7, family="monospace", bbox=dict(facecolor="white", edgecolor="0.8", alpha=0.9))
        ax.set_xlim(low - 1, high + 2)
        ax.set_xlabel("log2 |x|")
        ax.grid(axis="x", color="0.9", linewidth=0.6, zorder=0)
    axes[0][0].set_ylabel("share of values per binade")
    fig.legend(handles=_format_handles(formats), loc="lower center", ncol=len(formats), fontsize=7,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.04 + 0.035 * len(_LINES), 1, 1))
    return _save(fig, path)
