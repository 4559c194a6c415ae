"""Results tables of the sweeps: one flat row per run, and one row per cell (the runs that share the
values of some config keys) with its mean and 95% interval, written as ``1.234 ± 0.010 †``."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from experiments.intervals import seed_mean_ci
from experiments.stages import RunRecord

# The config columns of a char-LM run row (a BERT row has no mixer or norm).
RUN_KEYS = ("variant", "mixer", "norm", "seed", "lr")


def final_columns(record: RunRecord) -> dict:
    """Where a run stopped and its final validation and test metrics (NaN where it has none)."""
    result = record.result or {}
    cols = {"diverged_at_step": result.get("diverged_at_step"), "steps_done": result.get("steps_done")}
    for split in ("val", "test"):
        for key in ("bits", "bits_ci95", "loss", "accuracy"):
            cols[f"{split}_{key}"] = (result.get(split) or {}).get(key, math.nan)
    return cols


def run_rows(records: Sequence[RunRecord], keys: Sequence[str] = RUN_KEYS) -> list[dict]:
    """One flat row per run (no curves): its name, config ``keys``, status, final metrics, speed and the
    problem if any."""
    rows = []
    for r in records:
        result = r.result or {}
        rows.append({"run": r.name, **{k: r.config.get(k) for k in keys}, "status": r.status, **final_columns(r),
                     "skipped_steps": result.get("skipped_steps"), "train_loss": result.get("train_loss"),
                     "tokens_per_s": result.get("tokens_per_s"), "wall_time_s": result.get("wall_time_s"),
                     "ipu_step_time_s": result.get("ipu_step_time_s"), "problem": r.problem})
    return rows


def aggregate(records: Sequence[RunRecord], split: str = "test", metric: str = "bits",
              keys: Sequence[str] = ("mixer", "norm", "variant")) -> list[dict]:
    """One row per cell (the runs sharing the config values of ``keys``): counts by status and the mean
    ``metric`` of ``split`` with its 95% CI: over seeds (``ci_kind = "seeds"``) where two or more runs
    completed, else the single run's window CI (``"tokens"``). Diverged runs are counted, not averaged."""
    cells: dict[tuple, list[RunRecord]] = {}
    for r in records:
        cells.setdefault(tuple(r.config[k] for k in keys), []).append(r)
    rows = []
    for cell, runs in cells.items():
        done = [r for r in runs if r.status == "completed" and math.isfinite(r.result[split][metric])]
        values = [r.result[split][metric] for r in done]
        if len(done) >= 2:
            mean, ci, kind = *seed_mean_ci(values), "seeds"
        elif done:
            mean, ci, kind = values[0], done[0].result[split][f"{metric}_ci95"], "tokens"
        else:
            mean, ci, kind = math.nan, math.nan, None
        diverged = [r for r in runs if r.status == "diverged"]
        rows.append({**dict(zip(keys, cell)), "split": split, "metric": metric,
                     "mean": mean, "ci95": ci, "ci_kind": kind, "runs": len(runs), "completed": len(done),
                     "diverged": len(diverged), "diverged_at_steps": [r.result["diverged_at_step"] for r in diverged],
                     "unavailable": len(runs) - len(done) - len(diverged),
                     "seeds": [r.config["seed"] for r in done], "values": values})
    return rows


def format_cell(row: Mapping[str, Any], digits: int = 3) -> str:
    """``1.234 ± 0.010`` (``†`` marks a CI over seeds), ``diverged @ step k`` or ``n/a``."""
    if row["completed"] and math.isfinite(row["mean"]):
        text = f"{row['mean']:.{digits}f} ± {row['ci95']:.{digits}f}{' †' if row['ci_kind'] == 'seeds' else ''}"
        return text + (f" ({row['diverged']}/{row['runs']} diverged)" if row["diverged"] else "")
    if row["diverged"]:
        return "diverged @ step " + ", ".join(str(s) for s in row["diverged_at_steps"])
    return "n/a"
