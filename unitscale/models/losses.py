"""Token cross-entropy with the totals the training loop pools (``nll``, ``correct``, ``count``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from unitscale.nn.numerics import op_twin

__all__ = ["batch_field", "token_cross_entropy"]

_IGNORE = -100


def batch_field(batch: Any, name: str, default: Any = None, *, required: bool = True) -> Any:
    """``batch[name]`` for a mapping, ``batch.name`` otherwise (e.g. experiments.data batches)."""
    value = batch.get(name, default) if isinstance(batch, Mapping) else getattr(batch, name, default)
    if value is None and required:
        raise ValueError(f"batch has no field {name!r}")
    return value


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, valid: jax.Array, *, unit_scaled: bool, mult: float = 1.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over the positions where ``valid``, and per-batch totals.

    ``cross_entropy`` of the parametrisation's ops (:func:`unitscale.nn.numerics.op_twin`), with
    invalid positions ignored. Unit-scaled: :func:`unitscale.functional.cross_entropy` with ``mult``
    (u-muP's alpha_loss-softmax scales the logits); its value is the standard mean, its logit
    gradient is unit-scaled. Standard: :func:`unitscale.standard.cross_entropy`, optax's
    cross-entropy averaged over valid positions (``mult`` has no effect). Both compute in float32;
    with no valid position the mean is NaN, as in PyTorch.

    Returns ``(loss, {"nll": sum of per-token losses, "correct": argmax hits, "count": valid count})``.
    """
    valid = jnp.asarray(valid) != 0
    targets = jnp.asarray(targets)
    safe = jnp.where(valid, targets, 0)
    count = jnp.sum(valid).astype(jnp.float32)
    logits32 = logits.astype(jnp.float32)
    loss = op_twin(unit_scaled).cross_entropy(
        logits32, jnp.where(valid, targets, _IGNORE), ignore_index=_IGNORE, mult=mult
    )
    correct = jnp.sum(valid & (jnp.argmax(logits, axis=-1) == safe)).astype(jnp.float32)
    totals = {"nll": jax.lax.stop_gradient(loss) * count, "correct": correct, "count": count}
    return loss, totals
