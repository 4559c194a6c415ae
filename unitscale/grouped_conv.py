"""Grouped 1-D convolution as XLA:CPU runs it best: a depthwise one as a sum of shifted products.

``grouped_conv1d`` is the one convolution of both op twins: the unit-scaled op
(:func:`unitscale.functional.conv1d`) and the standard one (:mod:`unitscale.standard`) differ only in
the scales around it. On ``(n, seq, in_channels)`` inputs and ``(kernel, in_channels/groups,
out_channels)`` weights, with ``x_pad`` the input padded by ``(lo, hi)`` along the sequence,

    out[t, o] = sum_k sum_i x_pad[t*stride + k*dilation, group(o)*in_per_group + i] w[k, i, o],

products and sums formed in the ``accumulate`` dtype and returned in it.

A depthwise convolution (``groups = in_channels = out_channels``, one weight per tap and channel) is
the mixer of the convolutional language models. XLA:CPU runs it through ``lax.conv_general_dilated``
with ``feature_group_count`` slowly; as ``kernel`` shifted element-wise
products the forward and backward take a fraction of the time (measured by
``python -m benchmarks.conv``: 11-14x on 2 busy CPU cores at batch 8, sequence 128, 64 channels,
kernel 7, and at batch 16, sequence 256, 128 channels).
The taps are summed in order ``k = 0 .. kernel-1``, so the result agrees with lax's convolution to
rounding in ``accumulate``, not bit for bit. Every other grouping goes to lax's convolution, which
runs dense and grouped products well.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["grouped_conv1d", "is_depthwise", "lax_conv1d"]


def is_depthwise(in_channels: int, weight_shape: tuple[int, int, int]) -> bool:
    """Whether a ``(kernel, in_channels/groups, out_channels)`` weight is one filter per channel."""
    _, in_per_group, out_channels = weight_shape
    return in_per_group == 1 and out_channels == in_channels


def grouped_conv1d(
    x: jax.Array, weight: jax.Array, *, stride: int, padding: tuple[int, int], dilation: int, groups: int,
    accumulate: jnp.dtype,
) -> jax.Array:
    """``(n, out_seq, out_channels)`` in ``accumulate`` (see the module docstring); arguments as
    :func:`unitscale.op_args.conv1d_args` checked them."""
    if is_depthwise(x.shape[-1], weight.shape):
        return _depthwise(x, weight, stride, padding, dilation, accumulate)
    return lax_conv1d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      accumulate=accumulate)


def lax_conv1d(
    x: jax.Array, weight: jax.Array, *, stride: int, padding: tuple[int, int], dilation: int, groups: int,
    accumulate: jnp.dtype,
) -> jax.Array:
    """The same convolution through ``lax.conv_general_dilated`` for every grouping (the reference the
    depthwise form is tested and benchmarked against)."""
    return jax.lax.conv_general_dilated(
        x, weight, window_strides=(stride,), padding=[padding], rhs_dilation=(dilation,),
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups, preferred_element_type=accumulate,
    )


def _depthwise(x: jax.Array, weight: jax.Array, stride: int, padding: tuple[int, int], dilation: int,
               accumulate: jnp.dtype) -> jax.Array:
    kernel = weight.shape[0]
    padded = jnp.pad(x.astype(accumulate), ((0, 0), padding, (0, 0)))
    taps = weight[:, 0, :].astype(accumulate)
    out_seq = (padded.shape[1] - dilation * (kernel - 1) - 1) // stride + 1
    span = stride * (out_seq - 1) + 1
    out = padded[:, :span:stride, :] * taps[0]
    for k in range(1, kernel):
        start = k * dilation
        out = out + padded[:, start : start + span : stride, :] * taps[k]
    return out
