"""Initial weights: N(0, 1) in the unit-scaled parametrisation, the usual scales otherwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["normal_weight"]


def normal_weight(
    key: jax.Array, shape: tuple[int, ...], *, unit_scaled: bool, fan_in: int, std: float | None
) -> jax.Array:
    """A float32 N(0, s^2) draw: s = 1 if ``unit_scaled``; else ``std``, or ``fan_in^-1/2`` (LeCun,
    the variance of Flax's default kernel init) when ``std`` is None."""
    if unit_scaled:
        s = 1.0
    elif std is None:
        s = fan_in**-0.5
    elif std > 0:
        s = float(std)
    else:
        raise ValueError(f"init std must be positive, got {std!r}")
    return s * jax.random.normal(key, shape, jnp.float32)
