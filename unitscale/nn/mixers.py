"""Causal sequence mixers besides attention, for the character-level experiments of the unit
scaling paper: a grouped/depthwise 1-D convolution and an Elman RNN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import unitscale.functional as U
from unitscale.nn.init import normal_weight
from unitscale.nn.linear import Linear
from unitscale.nn.numerics import Numerics
from unitscale.nn.params import make_param

__all__ = ["CausalConv", "ElmanRNN"]


def _no_mask(mask: jax.Array | None, name: str) -> None:
    if mask is not None:
        raise ValueError(f"mask: the {name} mixer is causal and takes no padding mask")


class CausalConv(nnx.Module):
    """Depthwise-separable causal convolution: a grouped 1-D convolution over the sequence
    (``kernel`` taps, ``groups`` groups; ``groups=features`` is depthwise), then a pointwise
    Linear ``"conv_out"``. Output t sees inputs ``t-kernel+1 .. t``.

    Unit-scaled: :func:`unitscale.functional.conv1d` (output ``(kernel*features/groups)^-1/2``),
    N(0, 1) weights. Standard: the plain convolution, weights N(0, init_std^2) (LeCun when None).
    The convolution is not a matmul of :func:`unitscale.nn.linear.dense`; its pointwise
    projection is.
    """

    def __init__(
        self,
        features: int,
        *,
        kernel: int = 7,
        groups: int | None = None,
        use_bias: bool = True,
        numerics: Numerics = Numerics(),
        init_std: float | None = None,
        in_residual: bool = False,
        rngs: nnx.Rngs,
    ):
        groups = features if groups is None else groups
        if not isinstance(groups, int) or groups < 1 or features % groups:
            raise ValueError(f"groups ({groups}) must be a positive divisor of features ({features})")
        if not isinstance(kernel, int) or kernel < 1:
            raise ValueError(f"kernel must be a positive int, got {kernel!r}")
        self.kernel_size, self.groups, self.numerics = kernel, groups, numerics
        fan_in = kernel * features // groups
        w = normal_weight(
            rngs.params(), (kernel, features // groups, features),
            unit_scaled=numerics.unit_scaled, fan_in=fan_in, std=init_std,
        )
        meta = dict(in_residual=in_residual, role="conv")
        self.kernel = make_param(w, kind="hidden", fan_in=fan_in, fan_out=fan_in, **meta)
        self.bias = (
            make_param(jnp.zeros((features,)), kind="bias", fan_in=1, fan_out=features, **meta)
            if use_bias
            else nnx.data(None)
        )
        self.out = Linear(
            features, features, role="conv_out", use_bias=use_bias, numerics=numerics,
            init_std=init_std, in_residual=in_residual, rngs=rngs,
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        _no_mask(mask, "conv")
        w = self.numerics.cast(self.kernel[...])
        b = None if self.bias is None else self.numerics.cast(self.bias[...])
        with jax.named_scope("conv"):
            if self.numerics.unit_scaled:
                y = U.conv1d(x, w, b, padding="causal", groups=self.groups)
            else:
                y = _plain_causal_conv(x, w, b, self.groups)
            return self.out(y)


def _plain_causal_conv(x, w, b, groups):
    lead, (seq, channels) = x.shape[:-2], x.shape[-2:]
    y = jax.lax.conv_general_dilated(
        x.reshape(-1, seq, channels), w, window_strides=(1,), padding=[(w.shape[0] - 1, 0)],
        dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=groups,
        preferred_element_type=jnp.float32,
    )
    if b is not None:
        y = y + b.astype(jnp.float32)
    return y.reshape(*lead, seq, -1).astype(x.dtype)


class ElmanRNN(nnx.Module):
    """Elman RNN ``h_t = tanh(x_t W_in + h_{t-1} W + b)`` over the sequence (``jax.lax.scan``),
    returning the hidden states. ``W_in`` is the Linear ``"rnn_in"``; ``W`` (``recurrent``) and ``b``
    belong to the recurrence.

    Unit-scaled: :func:`unitscale.functional.rnn` (unit-variance states and gradients at init; the
    derivation is in its docstring), N(0, 1) weights. Standard: the plain recurrence, weights
    N(0, init_std^2) (LeCun when None).
    """

    def __init__(
        self,
        features: int,
        *,
        use_bias: bool = True,
        numerics: Numerics = Numerics(),
        init_std: float | None = None,
        in_residual: bool = False,
        rngs: nnx.Rngs,
    ):
        self.numerics = numerics
        self.input = Linear(
            features, features, role="rnn_in", use_bias=False, numerics=numerics,
            init_std=init_std, in_residual=in_residual, rngs=rngs,
        )
        w = normal_weight(
            rngs.params(), (features, features),
            unit_scaled=numerics.unit_scaled, fan_in=features, std=init_std,
        )
        meta = dict(in_residual=in_residual, role="rnn_recurrent")
        self.recurrent = make_param(w, kind="hidden", fan_in=features, fan_out=features, **meta)
        self.bias = (
            make_param(jnp.zeros((features,)), kind="bias", fan_in=1, fan_out=features, **meta)
            if use_bias
            else nnx.data(None)
        )

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        _no_mask(mask, "rnn")
        drive = self.input(x)
        w = self.numerics.cast(self.recurrent[...])
        b = None if self.bias is None else self.numerics.cast(self.bias[...])
        with jax.named_scope("rnn"):
            if self.numerics.unit_scaled:
                return U.rnn(drive, w, b)
            return _plain_elman(drive, w, b)


def _plain_elman(drive, w, b):
    d32 = drive.astype(jnp.float32) + (0.0 if b is None else b.astype(jnp.float32))
    w32 = w.astype(jnp.float32)

    def step(h, d_t):
        h = jnp.tanh(d_t + h @ w32)
        return h, h

    _, states = jax.lax.scan(step, jnp.zeros(d32.shape[:-2] + d32.shape[-1:]), jnp.moveaxis(d32, -2, 0))
    return jnp.moveaxis(states, 0, -2).astype(drive.dtype)
