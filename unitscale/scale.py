"""Separate forward and backward scales: the one primitive every unit-scaled op is built from.

``scale(x, fwd, bwd)`` returns ``fwd * x`` but declares its derivative to be ``bwd * I``, so
reverse mode sends ``bwd * g`` to ``x``. Unit scaling needs this because an op's output and its
input gradients generally need different factors to keep unit variance (Blake et al., 2023, Sec. 4).

The rule is a ``jax.custom_jvp`` rather than a ``custom_vjp``: the tangent map ``t -> bwd * t`` is
linear, so JAX transposes it into the backward pass itself, and forward mode (``jax.jvp``,
``jax.jacfwd``, Hessians) works too. Scales are static Python numbers, so under ``jit`` they are
compile-time constants that XLA fuses into the neighbouring element-wise work; a factor of 1 emits
no operation at all.
"""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp

__all__ = ["scale", "scale_fwd", "scale_bwd"]

def _check_factor(value: object, name: str) -> float:
    # Tracers and arrays are rejected: a traced scale would be a runtime multiply, not a constant.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a static Python float, got {type(value).__name__}; "
            "scales are compile-time constants"
        )
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _multiply(x: jax.Array, factor: float) -> jax.Array:
    """``factor * x`` in the dtype of ``x``; narrow floats multiply in float32, then round once."""
    if factor == 1.0:
        return x
    if x.dtype.itemsize < 4:
        return (x.astype(jnp.float32) * factor).astype(x.dtype)
    return x * jnp.asarray(factor, x.dtype)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _scaled(x: jax.Array, fwd: float, bwd: float) -> jax.Array:
    return _multiply(x, fwd)


@_scaled.defjvp
def _scaled_jvp(fwd: float, bwd: float, primals, tangents):
    (x,), (t,) = primals, tangents
    # The primal goes through _scaled again so that higher-order derivatives also see bwd.
    return _scaled(x, fwd, bwd), _multiply(t, bwd)


def scale(x: jax.Array, fwd: float = 1.0, bwd: float = 1.0) -> jax.Array:
    """Scale ``x`` by ``fwd`` in the forward pass and its gradient by ``bwd`` in the backward pass.

    Forward: ``y = fwd * x``. Backward: ``dL/dx = bwd * dL/dy`` (forward mode: ``dy = bwd * dx``).

    Args:
      x: a floating-point array.
      fwd: static forward factor.
      bwd: static backward factor.

    Returns:
      An array with the shape and dtype of ``x``.
    """
    fwd = _check_factor(fwd, "fwd")
    bwd = _check_factor(bwd, "bwd")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"x must be a floating-point array, got dtype {x.dtype}")
    if fwd == 1.0 and bwd == 1.0:
        return x
    return _scaled(x, fwd, bwd)


def scale_fwd(x: jax.Array, s: float) -> jax.Array:
    """Forward-only scale: ``y = s * x``, gradient passed through unchanged."""
    return scale(x, fwd=_check_factor(s, "s"), bwd=1.0)


def scale_bwd(x: jax.Array, s: float) -> jax.Array:
    """Backward-only scale: ``y = x``, gradient ``s * dL/dy``."""
    return scale(x, fwd=1.0, bwd=_check_factor(s, "s"))
