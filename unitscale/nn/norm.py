"""Layer norm and RMS norm (parameters of kind ``"norm"``); statistics in float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

import unitscale.functional as U
from unitscale.nn.numerics import Numerics
from unitscale.nn.params import make_param

__all__ = ["LayerNorm", "RMSNorm"]


def _norm_param(value: jax.Array, in_residual: bool) -> nnx.Param:
    return make_param(value, kind="norm", fan_in=1, fan_out=value.shape[0], in_residual=in_residual)


class LayerNorm(nnx.Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis (``nnx.LayerNorm`` names).

    Unit-scaled: :func:`unitscale.functional.layer_norm` (the gain/offset gradients scaled by
    ``(features / x.size)^1/2``). Standard: the same arithmetic with plain gradients.
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
            if self.numerics.unit_scaled:
                y = U.layer_norm(x, self.features, self.scale[...], bias, self.eps)
            else:
                x32 = x.astype(jnp.float32)
                centred = x32 - x32.mean(-1, keepdims=True)
                y = centred * jax.lax.rsqrt((centred**2).mean(-1, keepdims=True) + self.eps)
                y = y * self.scale[...] + (0.0 if bias is None else bias)
            return self.numerics.cast(y)


class RMSNorm(nnx.Module):
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis (``nnx.RMSNorm`` names)."""

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
            if self.numerics.unit_scaled:
                y = U.rms_norm(x, self.features, self.scale[...], self.eps)
            else:
                x32 = x.astype(jnp.float32)
                y = x32 * jax.lax.rsqrt((x32**2).mean(-1, keepdims=True) + self.eps) * self.scale[...]
            return self.numerics.cast(y)
