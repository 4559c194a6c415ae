"""OCP Microscaling (MX v1.0) block quantisation.

A block of ``block`` consecutive elements along one axis shares an E8M0 scale ``X = 2^e``
(docs/reference/number_formats.md, "MX block scaling"):

    e = clip(floor(log2(amax)) - emax_elem, -127, 127),    emax_elem = floor(log2(fmt.max)),

and each element is ``quantize(x / X, fmt)``: round to nearest even, saturating at ``fmt.max``. So
the block's largest magnitude lands in ``[2^emax_elem, 2^(emax_elem+1))``; for E4M3 (max 448 =
1.75 * 2^8) values above 448 in that binade saturate, as the spec accepts. A block of zeros gets
``e = -127``. A block holding NaN or inf decodes to NaN throughout (the spec's NaN scale).
A trailing partial block is padded with zeros.

``floor(log2(amax))`` is read off amax's float32 exponent field (exact, no ``log2`` rounding);
powers of two are applied as two normal float32 factors so that ``2^-127`` never appears as a
subnormal (which XLA:CPU may flush).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from unitscale.formats import FPFormat, quantize
from unitscale.precision.stats import range_counts

__all__ = ["mx_emax", "mx_encode", "mx_decode", "mx_quantize", "mx_quantize_counted"]

_E8M0_MIN, _E8M0_MAX = -127, 127


def mx_emax(fmt: FPFormat) -> int:
    """``emax_elem``: the exponent of the largest binade of ``fmt`` (floor(log2(fmt.max)))."""
    return math.floor(math.log2(fmt.max))


def _pow2(k: jax.Array) -> jax.Array:
    """``2^k`` for int32 ``k`` in [-126, 127], built from float32 exponent bits."""
    return jax.lax.bitcast_convert_type(((k + 127) << 23).astype(jnp.uint32), jnp.float32)


def _times_pow2(x: jax.Array, k: jax.Array) -> jax.Array:
    """``x * 2^k`` for ``k`` in [-254, 254] as two normal float32 factors."""
    half = k // 2
    return x * _pow2(half) * _pow2(k - half)


def _blocks(x: jax.Array, axis: int, block: int) -> tuple[jax.Array, int]:
    """float32 ``x`` with ``axis`` moved last and split into ``(..., n_blocks, block)``."""
    x = jnp.moveaxis(jnp.asarray(x).astype(jnp.float32), axis, -1)
    n = x.shape[-1]
    pad = -n % block
    if pad:
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)])
    return x.reshape(*x.shape[:-1], -1, block), n


def _check(x: jax.Array, fmt: FPFormat, axis: int, block: int) -> int:
    if not isinstance(fmt, FPFormat):
        raise TypeError(f"fmt must be an FPFormat, got {type(fmt).__name__}")
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise ValueError(f"block must be a positive int, got {block!r}")
    ndim = jnp.ndim(x)
    if not isinstance(axis, int) or not -ndim <= axis < max(ndim, 1):
        raise ValueError(f"axis={axis!r} is out of range for an array of {ndim} dimensions")
    return axis % ndim


def _encode_blocks(x, fmt, axis, block):
    """(scaled blocks x / X, element blocks, block exponents (..., n_blocks, 1), length of axis)."""
    blocks, n = _blocks(x, axis, block)
    a = jnp.max(jnp.abs(blocks), axis=-1, keepdims=True)
    biased = (jax.lax.bitcast_convert_type(a, jnp.uint32) >> 23).astype(jnp.int32)  # NaN/inf: 255
    e = jnp.clip(biased - 127 - mx_emax(fmt), _E8M0_MIN, _E8M0_MAX)
    scaled = _times_pow2(blocks, -e)
    elements = jnp.where(biased == 255, jnp.nan, quantize(scaled, fmt))
    return scaled, elements, e, n


def _unblock(blocks: jax.Array, n: int, axis: int) -> jax.Array:
    return jnp.moveaxis(blocks.reshape(*blocks.shape[:-2], -1)[..., :n], -1, axis)


def mx_encode(x: jax.Array, fmt: FPFormat, *, axis: int = -1, block: int = 32) -> tuple[jax.Array, jax.Array]:
    """``(elements, exponents)``: float32 values on ``fmt``'s grid shaped like ``x``, and the int32
    block exponents ``e`` shaped like ``x`` with ``axis`` replaced by the number of blocks."""
    axis = _check(x, fmt, axis, block)
    _, elements, e, n = _encode_blocks(x, fmt, axis, block)
    return _unblock(elements, n, axis), jnp.moveaxis(e[..., 0], -1, axis)


def mx_decode(elements: jax.Array, exponents: jax.Array, *, axis: int = -1, block: int = 32) -> jax.Array:
    """``elements * 2^e`` with each block's exponent broadcast over its ``block`` elements."""
    axis = axis % jnp.ndim(elements)
    blocks, n = _blocks(elements, axis, block)
    e = jnp.moveaxis(exponents, axis, -1)[..., None]
    values = _times_pow2(blocks, e).reshape(*blocks.shape[:-2], -1)[..., :n]
    return jnp.moveaxis(values, -1, axis)


def mx_quantize(x: jax.Array, fmt: FPFormat, *, axis: int = -1, block: int = 32) -> jax.Array:
    """``x`` rounded to MX with ``fmt`` elements, blocks of ``block`` along ``axis``, as float32."""
    return mx_quantize_counted(x, fmt, axis=axis, block=block)[0]


def mx_quantize_counted(
    x: jax.Array, fmt: FPFormat, *, axis: int = -1, block: int = 32
) -> tuple[jax.Array, jax.Array]:
    """:func:`mx_quantize` and the ``[overflow, underflow]`` counts of its element rounding
    (:func:`unitscale.precision.stats.range_counts`)."""
    axis = _check(x, fmt, axis, block)
    scaled, elements, e, n = _encode_blocks(x, fmt, axis, block)
    counts = range_counts(_lost_as_tiny(scaled, _blocks(x, axis, block)[0]), elements, fmt)
    return _unblock(_times_pow2(elements, e), n, axis), counts


def _lost_as_tiny(scaled: jax.Array, blocks: jax.Array) -> jax.Array:
    """``scaled`` with each zero that came from a non-zero input set to float32's smallest subnormal:
    ``x / X`` below float32's normal range (or a subnormal ``x``) is flushed to zero by XLA:CPU, and
    :func:`range_counts` would not see that value underflow."""
    to_bits = lambda v: jax.lax.bitcast_convert_type(v, jnp.uint32)  # noqa: E731
    lost = ((to_bits(scaled) & 0x7FFFFFFF) == 0) & ((to_bits(blocks) & 0x7FFFFFFF) != 0)
    return jax.lax.bitcast_convert_type(to_bits(scaled) | lost.astype(jnp.uint32), jnp.float32)
