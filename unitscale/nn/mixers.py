"""Causal sequence mixers besides attention, for the character-level experiments of the unit
scaling paper: a grouped/depthwise 1-D convolution and an Elman RNN."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

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

    ``conv1d`` of ``numerics.ops``: unit-scaled (output ``(kernel*features/groups)^-1/2``), N(0, 1)
    weights; standard, the plain convolution, weights N(0, init_std^2) (LeCun when None).
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
            numerics=numerics, fan_in=fan_in, std=init_std,
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
            y = self.numerics.ops.conv1d(x, w, b, padding="causal", groups=self.groups)
            return self.out(y)


class ElmanRNN(nnx.Module):
    """Elman RNN ``h_t = tanh(x_t W_in + h_{t-1} W + b)`` over the sequence (``jax.lax.scan``),
    returning the hidden states. ``W_in`` is the Linear ``"rnn_in"``; ``W`` (``recurrent``) and ``b``
    belong to the recurrence.

    ``rnn`` of ``numerics.ops``: unit-scaled (unit-variance states and gradients at init; the
    derivation is in :func:`unitscale.functional.rnn`), N(0, 1) weights; standard, the plain
    recurrence, weights N(0, init_std^2) (LeCun when None).
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
            numerics=numerics, fan_in=features, std=init_std,
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
            return self.numerics.ops.rnn(drive, w, b)
