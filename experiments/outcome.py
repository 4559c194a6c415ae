"""What one run of a char-LM, shift or BERT sweep reports to the sweep runner (the ``result`` of its
``result.json``): completed or diverged (and at which step), final metrics with 95% intervals, speed,
and its training and validation curves."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.intervals import split_summary
from experiments.results import read_jsonl
from experiments.train import CHECKPOINT_DIR, METRICS_FILE, NonFiniteLossError, TrainResult

# The fields of an outcome that summaries read (a result.json without them is malformed).
RESULT_KEYS = ("status", "diverged_at_step", "steps_done", "val", "test", "curves")
# Per-step metrics of unitscale.precision's recipes in the train records (when the run has them).
RECIPE_METRICS = ("loss_scale", "activations_underflow", "weights_underflow", "gradients_underflow",
                  "gradients_overflow")


def downsample(rows: Sequence[Any], max_points: int) -> list[Any]:
    """At most ``max_points`` evenly spaced items of ``rows``, the first and last always among them."""
    if len(rows) <= max_points:
        return list(rows)
    keep = np.unique(np.round(np.linspace(0, len(rows) - 1, max_points)).astype(int))
    return [rows[i] for i in keep]


def curves(records: Sequence[Mapping[str, Any]], max_points: int = 200) -> dict[str, dict[str, list]]:
    """Train records (step, loss, accuracy, grad norm, skipped steps) and validation records (step, loss,
    bits, accuracy) of a ``metrics.jsonl``, each downsampled to ``max_points``."""
    train = downsample([r for r in records if r.get("kind") == "train"], max_points)
    val = downsample([r for r in records if r.get("kind") == "eval" and r.get("split") == "val"], max_points)
    column = lambda rs, k: [r.get(k, math.nan) for r in rs]  # noqa: E731
    return {"train": {"step": column(train, "step"), "loss": column(train, "loss"),
                      "accuracy": column(train, "correct"), "grad_norm": column(train, "grad_norm"),
                      "skipped": column(train, "skipped"),
                      **{k: column(train, k) for k in RECIPE_METRICS if any(k in r for r in train)}},
            "val": {"step": column(val, "step"), "loss": column(val, "loss"), "bits": column(val, "bits_per_token"),
                    "accuracy": column(val, "accuracy")}}


def run_outcome(fit: Callable[[], TrainResult], out_dir: Path) -> dict:
    """Call ``fit`` and describe what happened: status ``completed`` or ``diverged`` (with the 1-based
    step whose loss or gradients went non-finite), final metrics per split, speed and curves. Deletes
    a completed run's checkpoints (they are only needed to resume an unfinished run); a diverged run
    keeps the checkpoint of its last good step, as its error message says, to replay the failure."""
    try:
        result = fit()
        status, diverged_at, final, record = "completed", None, result.final, result.record
    except NonFiniteLossError as err:
        status, diverged_at, final, record = "diverged", err.step + 1, {}, {}
    records = read_jsonl(out_dir / METRICS_FILE)
    train_records = [r for r in records if r.get("kind") == "train"]
    ipu = record.get("ipu") or {}
    if status == "completed":
        shutil.rmtree(out_dir / CHECKPOINT_DIR, ignore_errors=True)
    return {"status": status, "diverged_at_step": diverged_at,
            "steps_done": train_records[-1]["step"] if train_records else 0,
            "skipped_steps": int(sum(r.get("skipped", 0) for r in train_records)),
            "train_loss": train_records[-1]["loss"] if train_records else math.nan,
            "val": split_summary(final.get("val")), "test": split_summary(final.get("test")),
            "tokens_per_s": record.get("tokens_per_s"), "wall_time_s": record.get("wall_time_s"),
            "ipu_step_time_s": ipu.get("step_time_s"), "curves": curves(records)}
