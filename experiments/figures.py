"""The figures of the sweeps' results, drawn on plain matplotlib Figures (no pyplot state), each
variant in its own colour (:attr:`experiments.variants.Variant.colour`): the table of cells as a
heatmap, training curves per mixer / norm, the learning-rate sweep and the masked-LM curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.stages import RunRecord
from experiments.tables import format_cell
from experiments.variants import VARIANTS


def figure(width: float, height: float, layout: str | None = "constrained"):
    """A matplotlib Figure of ``width`` x ``height`` inches with the ``layout`` engine (None: place axes
    by hand or with ``tight_layout``)."""
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout=layout)


def plot_cell_table(rows: Sequence[Mapping[str, Any]], variants: Sequence[str], path: Path, *, title: str) -> Path:
    """Heatmap of the mean of each (mixer / norm, variant) cell, annotated with :func:`format_cell`;
    diverged or missing cells are grey. The colour scale stops 1 bit above the best cell."""
    labels = list(dict.fromkeys((r["mixer"], r["norm"]) for r in rows))
    by_cell = {(r["mixer"], r["norm"], r["variant"]): r for r in rows}
    values = np.full((len(labels), len(variants)), np.nan)
    for i, (mixer, norm) in enumerate(labels):
        for j, v in enumerate(variants):
            if (mixer, norm, v) in by_cell:
                values[i, j] = by_cell[mixer, norm, v]["mean"]
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    fig = figure(1.6 * len(variants) + 2, 0.75 * len(labels) + 2)
    ax = fig.add_subplot()
    ax.set_facecolor("lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", vmin=low, vmax=low + 1.0, aspect="auto")
    for i, (mixer, norm) in enumerate(labels):
        for j, v in enumerate(variants):
            row = by_cell.get((mixer, norm, v))
            text = format_cell(row).replace(" ± ", "\n± ").replace(" (", "\n(").replace(" @ ", "\n@ ") if row else ""
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if np.isfinite(values[i, j]) and values[i, j] > low + 0.6 else "black")
    ax.set_xticks(range(len(variants)), [VARIANTS[v].label.replace(", ", ",\n") for v in variants], fontsize=7,
                  rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), [f"{m} / {n}-norm" for m, n in labels], fontsize=8)
    fig.colorbar(image, ax=ax, label="bits per character (clipped at best + 1)")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)
    return path


def plot_loss_curves(records: Sequence[RunRecord], variants: Sequence[str], path: Path, *, title: str,
                metric: str = "bits") -> Path:
    """One panel per mixer / norm: training loss (in bits per token when ``metric == "bits"``) against
    step for each of ``variants`` (every seed drawn; x marks the step a run diverged)."""
    panels = list(dict.fromkeys((r.config["mixer"], r.config["norm"]) for r in records))
    cols = min(3, len(panels)) or 1
    fig = figure(4.2 * cols, 3.2 * -(-len(panels) // cols))
    axes = fig.subplots(-(-len(panels) // cols), cols, squeeze=False).ravel()
    scale = 1 / math.log(2) if metric == "bits" else 1.0
    for ax, (mixer, norm) in zip(axes, panels):
        for v in variants:
            mine = [r for r in records if r.result and (r.config["mixer"], r.config["norm"], r.config["variant"])
                    == (mixer, norm, v)]
            for k, r in enumerate(mine):
                train = r.result["curves"]["train"]
                y = np.asarray(train["loss"], float) * scale
                ax.plot(train["step"], y, color=VARIANTS[v].colour, lw=1.0, alpha=0.9 if k == 0 else 0.5,
                        label=VARIANTS[v].label if k == 0 else None)
                if r.status == "diverged":
                    ax.plot([r.result["diverged_at_step"]], [np.nanmax(y) if np.isfinite(y).any() else 0.0],
                            "x", color=VARIANTS[v].colour, ms=8, mew=2)
        ax.set_title(f"{mixer} / {norm}-norm", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (bits/token)" if metric == "bits" else "train loss")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    drawn = [ax for ax in axes if ax.get_legend_handles_labels()[0]]  # a panel's runs may all be missing
    if drawn:
        drawn[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    return path


def plot_lr_sweep(rows: Sequence[Mapping[str, Any]], rates: Mapping[str, float], path: Path, *, title: str) -> Path:
    """Final validation bits per token against learning rate per parametrisation; the chosen rate ringed."""
    fig = figure(5, 3.5)
    ax = fig.add_subplot()
    for param, colour in (("standard", "black"), ("unit", "tab:blue")):
        mine = sorted((r for r in rows if r["parametrisation"] == param), key=lambda r: r["lr"])
        if not mine:
            continue
        ax.plot([r["lr"] for r in mine], [r["val_bits"] for r in mine], "o-", color=colour, label=param)
        best = [r for r in mine if r["lr"] == rates.get(param)]
        if best:
            ax.plot([best[0]["lr"]], [best[0]["val_bits"]], "o", ms=14, mfc="none", color=colour)
        for r in mine:
            if r["status"] == "diverged":
                ax.annotate("diverged", (r["lr"], ax.get_ylim()[1]), fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation bits/token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)
    return path


def plot_mlm_curves(stages: Mapping[str, Sequence[RunRecord]], path: Path) -> Path:
    """Per stage: training MLM loss and validation MLM accuracy against step, one line per run."""
    fig = figure(9, 3.2 * len(stages))
    axes = fig.subplots(len(stages), 2, squeeze=False)
    for (stage, records), (loss_ax, acc_ax) in zip(stages.items(), axes):
        for r in records:
            if not r.result:
                continue
            colour, label = VARIANTS[r.config["variant"]].colour, VARIANTS[r.config["variant"]].label
            curves = r.result["curves"]
            first = r.config.get("seed", 0) == min(x.config.get("seed", 0) for x in records
                                                    if x.config["variant"] == r.config["variant"])
            loss_ax.plot(curves["train"]["step"], curves["train"]["loss"], color=colour, lw=1,
                         label=label if first else None, alpha=0.9 if first else 0.5)
            acc_ax.plot(curves["val"]["step"], curves["val"]["accuracy"], "o-", color=colour, ms=3, lw=1,
                        alpha=0.9 if first else 0.5)
            if r.status == "diverged":
                loss_ax.axvline(r.result["diverged_at_step"], color=colour, ls=":", lw=1)
        loss_ax.set(title=f"{stage}: training MLM loss", xlabel="step", ylabel="loss (nats)")
        acc_ax.set(title=f"{stage}: validation MLM accuracy", xlabel="step", ylabel="accuracy")
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
        if loss_ax.get_legend_handles_labels()[0]:  # a stage's runs may all be missing
            loss_ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return path
