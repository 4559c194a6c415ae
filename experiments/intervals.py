"""95% confidence intervals of the experiments' metrics: of one run's per-token means, from sums over its
evaluation windows, and of a mean over seeds.

For a single run, the standard error of the mean per-token loss (or accuracy) is estimated from the
sums over its evaluation windows (the rows of the evaluation batches): a ratio estimator over windows,
so the correlation of neighbouring tokens within a window is accounted for; the half-width is 1.96
times it. Over n >= 2 seeds: ``mean +- t(0.975, n-1) s / sqrt(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Z95 = 1.959964  # two-sided 95% normal quantile
# Student's t quantiles t(0.975, df) for df = 1..10 (standard tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
SPLIT_KEYS = ("loss", "loss_ci95", "bits", "bits_ci95", "accuracy", "accuracy_ci95", "tokens")


def ci_note(measured: str = "per-character test") -> str:
    """How the intervals of a results table are computed, for its ``results.json`` (``measured``: what
    a single run's mean is taken over)."""
    return ("95% CIs: with several completed seeds, mean +- t(0.975, n-1) sd / sqrt(n) over seeds (marked †); "
            f"for a single run, 1.96 x the standard error of its mean {measured} loss from its evaluation "
            "windows (ratio estimator over 256-character windows), in bits.")


def window_totals(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Sums over the rows ("windows") w of a batch for confidence intervals of per-token means:
    ``wsq_nll = sum_w L_w^2``, ``wx_nll = sum_w L_w n_w`` (``L_w`` the summed NLL of window w, ``n_w``
    its valid tokens), likewise for ``correct``, and ``wsq_n = sum_w n_w^2``, ``windows``."""
    logits32 = jax.lax.stop_gradient(logits).astype(jnp.float32)
    safe = jnp.where(valid, targets, 0)
    per_token = {"nll": optax.softmax_cross_entropy_with_integer_labels(logits32, safe),
                 "correct": (jnp.argmax(logits32, axis=-1) == safe).astype(jnp.float32)}
    axes = tuple(range(1, valid.ndim))
    n = jnp.sum(valid, axis=axes).astype(jnp.float32)
    out = {"wsq_n": jnp.sum(n * n), "windows": jnp.sum(n > 0).astype(jnp.float32)}
    for name, x in per_token.items():
        total = jnp.sum(jnp.where(valid, x, 0.0), axis=axes)
        out[f"wsq_{name}"], out[f"wx_{name}"] = jnp.sum(total * total), jnp.sum(total * n)
    return out


def window_ci(metrics: Mapping[str, float], name: str) -> float:
    """95% half-width of the per-token mean ``metrics[name]`` from the window sums of an evaluation
    record (every total divided by ``tokens``, as :func:`experiments.train.eval_metrics` reports them).

    Ratio estimator over W windows with sums ``L_w`` and sizes ``n_w``, mean ``m = sum L / sum n``:
    ``Var(m) = W / (W - 1) * sum_w (L_w - m n_w)^2 / (sum n)^2``.
    """
    key = {"loss": "nll", "accuracy": "correct"}[name]
    n = float(metrics["tokens"])
    windows = metrics["windows"] * n
    if windows < 2:
        return math.nan
    m = metrics[name]
    resid = (metrics[f"wsq_{key}"] - 2 * m * metrics[f"wx_{key}"] + m * m * metrics["wsq_n"]) * n
    return Z95 * math.sqrt(max(resid, 0.0) * windows / (windows - 1)) / n


def split_summary(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """``loss``, ``bits`` (per token), ``accuracy`` and their 95% half-widths, and ``tokens``, of one split."""
    if not metrics:
        return {k: math.nan for k in SPLIT_KEYS}
    loss_ci = window_ci(metrics, "loss")
    return {"loss": metrics["loss"], "loss_ci95": loss_ci, "bits": metrics["bits_per_token"],
            "bits_ci95": loss_ci / math.log(2), "accuracy": metrics["accuracy"],
            "accuracy_ci95": window_ci(metrics, "accuracy"), "tokens": metrics["tokens"]}


def seed_mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, t(0.975, n-1) * sd / sqrt(n))`` of n >= 2 values (n <= 11; 1.96 beyond)."""
    x = np.asarray(values, float)
    if x.size < 2:
        raise ValueError(f"values: need at least 2 values for a spread, got {x.size}")
    t = T975[x.size - 2] if x.size - 1 <= len(T975) else Z95
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))
