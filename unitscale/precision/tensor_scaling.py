"""Per-tensor FP8 scaling: current (just-in-time) and delayed (amax history) scale factors.

A tensor ``x`` is quantised as ``q = quantize(s x, fmt)`` and used as ``q / s``. Following NVIDIA
Transformer Engine and Flax ``fp8_ops`` (docs/reference/number_formats.md, "Scaling recipes"):

    s = fmt.max / amax / 2^margin,

with ``amax = max |x|`` of the tensor itself (*current* scaling) or the maximum of the amaxes of
the last ``H`` steps (*delayed* scaling: ``amax`` of the history *before* this step, which is then
pushed onto it). An amax that is zero or not finite gives ``s = 1``, and a non-finite amax is not
pushed onto the history, so one overflowing step (skipped by a dynamic loss scaler) cannot freeze
the scale for ``H`` steps. A tensor growing by more than ``2^margin`` between steps saturates
under delayed scaling: choose ``margin`` for the drift you expect.

Histories are float32 vectors, newest first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unitscale.formats import FPFormat

__all__ = ["amax", "scale_from_amax", "push_amax", "scale_from_history"]


def amax(x: jax.Array) -> jax.Array:
    """``max |x|`` as a float32 scalar (NaN if x holds NaN)."""
    return jnp.max(jnp.abs(jnp.asarray(x).astype(jnp.float32)))


def scale_from_amax(a: jax.Array, fmt: FPFormat, margin: int = 0) -> jax.Array:
    """``fmt.max / a / 2^margin`` (float32), or 1 where ``a`` is zero, non-finite or the scale overflows."""
    a = jnp.asarray(a, jnp.float32)
    s = jnp.float32(fmt.max / 2.0**margin) / jnp.where(a > 0, a, 1.0)
    return jnp.where((a > 0) & jnp.isfinite(a) & jnp.isfinite(s), s, jnp.float32(1.0))


def push_amax(history: jax.Array, a: jax.Array) -> jax.Array:
    """``history`` with ``a`` prepended and its oldest entry dropped; unchanged if ``a`` is not finite."""
    a = jnp.asarray(a, history.dtype)
    pushed = jnp.concatenate([a[None], history[:-1]])
    return jnp.where(jnp.isfinite(a), pushed, history)


def scale_from_history(history: jax.Array, fmt: FPFormat, margin: int = 0) -> jax.Array:
    """The delayed scale: :func:`scale_from_amax` of the history's maximum."""
    return scale_from_amax(jnp.max(history), fmt, margin)
