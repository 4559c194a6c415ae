"""Range statistics of quantisation: how many values overflowed or underflowed a format.

When a value ``v`` (already multiplied by its scale) is rounded to ``q`` in format ``fmt``:

* overflow: ``|v|`` rounds (nearest even, on fmt's grid extended past its max) to more than
  ``fmt.max``, inf included: the quantiser saturated it to ``+-fmt.max``. (A value a float32
  rounding above max that still rounds to max, e.g. ``amax * (max / amax)``, is not an overflow.)
* underflow: ``v != 0`` but ``q == 0`` (flushed to zero).

Both are decided on float32 bit patterns, since XLA:CPU flushes subnormal operands of float
comparisons to zero. Counts are float32 scalars, so they sum and average like other metrics.

Per quantised matmul the counts are kept as a vector in ``STAT_NAMES`` order: the activation
(left) input and the weight input of the forward pass, and the output-gradient of the backward.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from unitscale.formats import FPFormat

__all__ = ["STAT_NAMES", "range_counts"]

STAT_NAMES: tuple[str, ...] = (
    "activations_overflow", "activations_underflow",
    "weights_overflow", "weights_underflow",
    "gradients_overflow", "gradients_underflow",
)  # fmt: skip

_MAGNITUDE = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)


def _overflow_threshold(fmt: FPFormat) -> tuple[np.uint32, bool]:
    """float32 bits of the midpoint between fmt.max and the next value of its grid, and whether a
    tie there rounds up (max's code is odd)."""
    top = math.floor(math.log2(fmt.max))
    mid = fmt.max + 2.0 ** (top - fmt.mantissa_bits - 1)
    max_code_odd = int(fmt.max / 2.0 ** (top - fmt.mantissa_bits)) % 2 == 1
    return np.float32(mid).view(np.uint32), max_code_odd


def range_counts(scaled: jax.Array, q: jax.Array, fmt: FPFormat) -> jax.Array:
    """``[overflow, underflow]`` (float32) of rounding float32 ``scaled`` to ``q`` in ``fmt``."""
    a = jax.lax.bitcast_convert_type(jnp.asarray(scaled, jnp.float32), jnp.uint32) & _MAGNITUDE
    b = jax.lax.bitcast_convert_type(jnp.asarray(q, jnp.float32), jnp.uint32) & _MAGNITUDE
    mid, tie_up = _overflow_threshold(fmt)
    over = ((a > mid) | ((a == mid) & tie_up)) & (a <= _INF)
    under = (a != 0) & (b == 0)
    return jnp.stack([jnp.sum(over, dtype=jnp.int32), jnp.sum(under, dtype=jnp.int32)]).astype(jnp.float32)
