"""Initial weights: a float32 normal draw at the scale the parametrisation sets."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unitscale.nn.numerics import Numerics

__all__ = ["normal_weight"]


def normal_weight(
    key: jax.Array, shape: tuple[int, ...], *, numerics: Numerics, fan_in: int, std: float | None
) -> jax.Array:
    """A float32 N(0, s^2) draw with ``s = numerics.weight_std(fan_in, std)``: 1 unit-scaled; else
    ``std``, or ``fan_in^-1/2`` (LeCun) when ``std`` is None."""
    return numerics.weight_std(fan_in, std) * jax.random.normal(key, shape, jnp.float32)
