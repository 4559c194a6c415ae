"""Layer norm and RMS norm (parameters of kind ``"norm"``); statistics in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unitscale.nn.numerics import Numerics
from unitscale.nn.params import make_param

__all__ = ["LayerNorm", "RMSNorm"]


def _norm_param(value: jax.Array, in_residual: bool) -> nnx.Param:
    return make_param(value, kind="norm", fan_in=1, fan_out=value.shape[0], in_residual=in_residual)


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (``nnx.LayerNorm`` names).

    ``layer_norm`` of ``numerics.ops``: unit-scaled, the gain/offset gradients are scaled by
    ``(features / x.size)^1/2``; standard, the same arithmetic with plain gradients.
    """

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-5,
        use_bias: bool = True,
        numerics: Numerics = Numerics(),
        in_residual: bool = False,
    ):
        self.features, self.eps, self.numerics = features, eps, numerics
        self.scale = _norm_param(jnp.ones((features,)), in_residual)
        self.bias = _norm_param(jnp.zeros((features,)), in_residual) if use_bias else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = None if self.bias is None else self.bias[...]
        with jax.named_scope("layer_norm"):
            y = self.numerics.ops.layer_norm(x, self.features, self.scale[...], bias, self.eps)
            return self.numerics.cast(y)


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis (``nnx.RMSNorm`` names), by
    ``rms_norm`` of ``numerics.ops`` (unit-scaled: the gain gradient scaled as in LayerNorm)."""

    def __init__(
        self,
        features: int,
        *,
        eps: float = 1e-5,
        numerics: Numerics = Numerics(),
        in_residual: bool = False,
    ):
        self.features, self.eps, self.numerics = features, eps, numerics
        self.scale = _norm_param(jnp.ones((features,)), in_residual)

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("rms_norm"):
            y = self.numerics.ops.rms_norm(x, self.features, self.scale[...], self.eps)
            return self.numerics.cast(y)
