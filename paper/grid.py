"""A results grid in the layout of the original paper's tables: rows are model variants, columns are
precision x parametrisation (x loss scale), each cell a :class:`paper.stats.Sample` over seeds; and
training curves drawn one colour per column. Shared by the character-LM and BERT sections."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from paper.markdown import table
from paper.stats import Sample


def grid_table(samples: Mapping[tuple, Sample], rows: Sequence[str], cols: Sequence[Hashable],
               labels: Mapping[Hashable, str], first: str,
               reference: Mapping[tuple, float] | None = None,
               absent: Mapping[tuple, str] | None = None) -> str:
    """``samples[(row, col)]`` as ``mean ± CI (n=k)`` cells, with ``[paper x]`` after a cell the
    reference reports; a cell without a sample shows ``absent[(row, col)]`` or a dash."""
    header = [first] + [labels[c] for c in cols]
    body = []
    for r in rows:
        line = [r]
        for c in cols:
            s = samples.get((r, c))
            ref = (reference or {}).get((r, c))
            text = (absent or {}).get((r, c), "—") if s is None else s.text()
            line.append(text + ("" if ref is None else f" [paper {ref:.3f}]"))
        body.append(line)
    return table(header, body, "l" + "r" * len(cols))


@dataclass(frozen=True)
class Curve:
    """One run's curve: its column, the points, and the step it diverged at (None if it did not)."""

    column: Hashable
    steps: tuple[float, ...]
    values: tuple[float, ...]
    diverged_at: float | None = None


def plot_curves(curves: Sequence[Curve], labels: Mapping[Hashable, str], ylabel: str, title: str,
                path: Path) -> None:
    """Every curve, one colour per column (in ``labels`` order); x marks where a run diverged, at
    the top of the axis."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    colours = {c: f"C{i % 10}" for i, c in enumerate(labels)}
    seen = set()
    finite = [v for c in curves for v in c.values if math.isfinite(v)]
    top = max(finite) if finite else 1.0
    for c in curves:
        points = [(s, v) for s, v in zip(c.steps, c.values) if math.isfinite(v)]
        ax.plot([p[0] for p in points], [p[1] for p in points], color=colours[c.column], lw=1.1,
                alpha=0.85, label=None if c.column in seen else labels[c.column])
        seen.add(c.column)
        if c.diverged_at is not None:
            ax.plot([c.diverged_at], [top], "x", color=colours[c.column], ms=9, mew=2, clip_on=False)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (x: a run diverged there)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)


def settings_text(settings: Mapping) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))
