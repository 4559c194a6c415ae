"""experiments.intervals: the window ratio estimator of one run's interval and the t-interval over seeds."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.intervals import ci_note, seed_mean_ci, split_summary, window_ci, window_totals
from experiments.train import eval_metrics


def test_window_ci_is_the_ratio_estimator_over_windows():
    key = jax.random.key(3)
    logits = jax.random.normal(key, (6, 10, 7)) * 2
    targets = jax.random.randint(jax.random.key(4), (6, 10), 0, 7)
    valid = jnp.arange(10)[None, :] < jnp.array([10, 10, 10, 10, 10, 3])[:, None]  # a short last window
    totals = window_totals(logits, targets, valid)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    totals = {**{k: float(v) for k, v in totals.items()}, "nll": float(jnp.sum(jnp.where(valid, nll, 0))),
              "correct": 0.0, "count": float(jnp.sum(valid))}
    metrics = eval_metrics(totals)
    sums = np.asarray(jnp.sum(jnp.where(valid, nll, 0), axis=1), float)
    n = np.asarray(jnp.sum(valid, axis=1), float)
    m = sums.sum() / n.sum()
    expected = 1.959964 * math.sqrt(len(n) / (len(n) - 1) * np.sum((sums - m * n) ** 2)) / n.sum()
    assert metrics["loss"] == pytest.approx(m, rel=1e-5)
    assert window_ci(metrics, "loss") == pytest.approx(expected, rel=1e-4)
    summary = split_summary(metrics)
    assert summary["bits_ci95"] == pytest.approx(summary["loss_ci95"] / math.log(2))
    assert all(math.isnan(v) for v in split_summary(None).values())


def test_seed_interval_uses_student_t():
    mean, half = seed_mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    with pytest.raises(ValueError, match="values"):
        seed_mean_ci([1.0])


def test_the_note_names_what_a_single_run_is_averaged_over():
    assert "mean per-character test loss" in ci_note() and "(marked †)" in ci_note()
    assert "mean per-masked-character loss" in ci_note("per-masked-character")
