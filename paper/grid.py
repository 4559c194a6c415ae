"""A grid of training runs: rows are model variants, columns are precision x parametrisation x loss
scale, each cell a :class:`paper.stats.Sample` of one metric over seeds -- the layout of the
original paper's tables. Shared by the character-LM and BERT sections.

A run is a dict with ``precision``, ``parametrisation``, ``loss_scale``, ``seed``, ``diverged``,
``curve`` ([[step, value], ...]) and the metric; :func:`check_runs` validates them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from paper.files import ResultError, get
from paper.markdown import table
from paper.stats import Sample

Column = tuple[str, str, str]  # (precision, parametrisation, loss scale)
PRECISION_ORDER = ("fp32", "bf16", "fp16", "fp8")
NO_LOSS_SCALE = "none"
RUN_KEYS = {"precision": str, "parametrisation": str, "loss_scale": str, "seed": int, "diverged": bool,
            "curve": list}


def check_runs(runs: list, path: Path, extra: Mapping[str, type | tuple]) -> None:
    """Every run has the shared keys, ``extra`` keys, a finite metric unless diverged (the first
    float key of ``extra`` is the metric) and a curve of [step, value] pairs."""
    if not runs:
        raise ResultError(path, "'runs' is empty")
    metric = next(k for k, kind in extra.items() if kind is float)
    for i, run in enumerate(runs):
        where = f"{path} (runs[{i}])"
        for key, kind in {**RUN_KEYS, **extra}.items():
            get(run, key, where, kind)
        if not run["diverged"] and not math.isfinite(run[metric]):
            raise ResultError(where, f"{metric} is {run[metric]} but the run is not marked diverged")
        for j, point in enumerate(run["curve"]):
            if not (isinstance(point, list) and len(point) == 2
                    and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)):
                raise ResultError(where, f"curve[{j}] must be [step, value], got {point!r}")


def column(run: Mapping) -> Column:
    return run["precision"], run["parametrisation"], run["loss_scale"]


def column_label(col: Column) -> str:
    precision, parametrisation, loss_scale = col
    scaled = "" if loss_scale == NO_LOSS_SCALE else f", loss scale {loss_scale}"
    return f"{precision.upper()} {parametrisation}{scaled}"


def column_order(col: Column):
    precision, parametrisation, loss_scale = col
    rank = PRECISION_ORDER.index(precision) if precision in PRECISION_ORDER else len(PRECISION_ORDER)
    return rank, parametrisation == "unit-scaled", loss_scale != NO_LOSS_SCALE, col


def columns(runs: Sequence[Mapping]) -> list[Column]:
    return sorted({column(r) for r in runs}, key=column_order)


def cells(runs: Sequence[Mapping], row: Callable[[Mapping], str], metric: str) -> dict[tuple, Sample]:
    """(row, column) -> Sample of ``metric`` over the runs of that cell (NaN for diverged runs)."""
    grouped: dict[tuple, list[float]] = defaultdict(list)
    for run in runs:
        grouped[(row(run), column(run))].append(math.nan if run["diverged"] else run[metric])
    return {k: Sample.of(v) for k, v in grouped.items()}


def grid_table(samples: Mapping[tuple, Sample], rows: Sequence[str], cols: Sequence[Column],
               first: str, reference: Mapping[tuple, float] | None = None) -> str:
    """The grid as a table: ``mean ± CI (n=k)`` per cell, the reference value under it if any."""
    header = [first] + [column_label(c) for c in cols]
    body = []
    for r in rows:
        line = [r]
        for c in cols:
            s = samples.get((r, c))
            text = "—" if s is None else f"{s.text()} (n={s.n})"
            ref = (reference or {}).get((r, c))
            line.append(text + ("" if ref is None else f" [paper {ref:.3f}]"))
        body.append(line)
    return table(header, body, "l" + "r" * len(cols))


def plot_curves(runs: Sequence[Mapping], ylabel: str, title: str, path: Path) -> None:
    """``curve`` of every run, one colour per column (x: the last finite point of a diverged run)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    colours = {c: f"C{i}" for i, c in enumerate(columns(runs))}
    seen = set()
    for run in runs:
        c = column(run)
        points = [p for p in run["curve"] if math.isfinite(p[1])]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        ax.plot(xs, ys, color=colours[c], lw=1.2, alpha=0.85,
                label=None if c in seen else column_label(c))
        seen.add(c)
        if run["diverged"] and xs:
            ax.plot(xs[-1:], ys[-1:], "x", color=colours[c], ms=8)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (x: diverged)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def settings_text(settings: Mapping) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))
