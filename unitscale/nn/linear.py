"""Linear layers and :func:`dense`, the one place where unitscale.nn multiplies activations by a
weight matrix.

Every weight matmul of every module (attention projections, FFN, readout, RNN input projection,
heads) calls :func:`dense` with the layer's ``role`` (e.g. ``"attn_qkv"``, ``"attn_out"``,
``"ffn_up"``, ``"ffn_gate"``, ``"ffn_down"``, ``"readout"``), and the precision policy of
``Numerics.precision`` is applied there and nowhere else: a Linear whose role the policy quantises
holds a :class:`unitscale.precision.MatmulQuantizer` (its recipe state) and hands it to ``dense``.
Attention's two activation-activation matmuls run inside :func:`unitscale.nn.attention.attend` and are
not quantised (see :mod:`unitscale.precision`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unitscale.nn.init import normal_weight
from unitscale.nn.numerics import Numerics
from unitscale.nn.params import make_param
from unitscale.precision.matmul import MatmulQuantizer, MatmulSpec

__all__ = ["dense", "Linear", "LinearReadout"]


def dense(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    *,
    role: str,
    numerics: Numerics,
    readout: bool = False,
    quantizer: MatmulQuantizer | None = None,
) -> jax.Array:
    """``y = x W + b`` in the compute dtype, accumulated in float32; kernel is ``(fan_in, fan_out)``.

    The map is ``linear`` (or, for a readout, ``linear_readout``) of ``numerics.ops``: unit-scaled,
    output ``fan_in^-1/2`` (readout ``1/fan_in``); standard, the plain product. ``role`` names this
    matmul for precision policies. With a ``quantizer`` (the Linear's, for a role its policy
    quantises) the same map runs with quantised inputs and output-gradient, in float32, the weights
    quantised straight from their float32 master copy. Either way the result is rounded once to the
    compute dtype here (the standard product comes back as its float32 accumulator).
    """
    op = numerics.ops.linear_readout if readout else numerics.ops.linear
    if quantizer is not None:
        return quantizer(op, x, kernel, bias).astype(numerics.compute_dtype)
    x, kernel = numerics.cast(x), numerics.cast(kernel)
    bias = None if bias is None else numerics.cast(bias)
    return op(x, kernel, bias).astype(numerics.compute_dtype)


class Linear(nnx.Module):
    """Affine layer ``x W + b`` with W ``(in_features, out_features)`` of kind ``"hidden"``.

    Unit-scaled: W ~ N(0, 1). Standard: W ~ N(0, init_std^2), or LeCun normal when ``init_std`` is
    None (as ``nnx.Linear``). Biases start at zero. Parameter names match ``nnx.Linear``.
    ``quantizer``: the :class:`~unitscale.precision.MatmulQuantizer` of ``numerics.precision`` for
    this role, or None when the matmul runs in the compute dtype.
    """

    _kind = "hidden"
    _readout = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        role: str,
        use_bias: bool = True,
        numerics: Numerics = Numerics(),
        init_std: float | None = None,
        in_residual: bool = False,
        rngs: nnx.Rngs,
    ):
        for name, n in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"{name} must be a positive int, got {n!r}")
        if not isinstance(role, str) or not role:
            raise ValueError(f"role must be a non-empty string, got {role!r}")
        self.role, self.numerics = role, numerics
        self.in_features, self.out_features = in_features, out_features
        w = normal_weight(
            rngs.params(), (in_features, out_features),
            numerics=numerics, fan_in=in_features, std=init_std,
        )
        meta = dict(in_residual=in_residual, role=role)
        self.kernel = make_param(w, kind=self._kind, fan_in=in_features, fan_out=out_features, **meta)
        self.bias = (
            make_param(jnp.zeros((out_features,)), kind="bias", fan_in=1, fan_out=out_features, **meta)
            if use_bias
            else nnx.data(None)
        )
        spec = MatmulSpec.of(numerics.precision, role)
        self.quantizer = MatmulQuantizer(spec) if spec is not None else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        bias = None if self.bias is None else self.bias[...]
        with jax.named_scope(self.role):
            return dense(
                x, self.kernel[...], bias, role=self.role, numerics=self.numerics, readout=self._readout,
                quantizer=self.quantizer,
            )


class LinearReadout(Linear):
    """Output layer (kind ``"readout"``): unit-scaled forward scale ``1/fan_in`` (muP readout)."""

    _kind = "readout"
    _readout = True
