"""Position-wise feed-forward block: GELU (``down(gelu(up x))``) or SwiGLU (``down(up x * silu(gate x))``)."""

from __future__ import annotations

import jax
from flax import nnx

from unitscale.nn.linear import Linear
from unitscale.nn.numerics import Numerics

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS: tuple[str, ...] = ("gelu", "swiglu")


class MLP(nnx.Module):
    """Linears with roles ``"ffn_up"``, ``"ffn_gate"`` (SwiGLU only) and ``"ffn_down"``.

    The activation is ``gelu`` / ``silu_glu`` of ``numerics.ops`` with ``act_mult`` (u-muP's
    alpha_ffn-act): unit-scaled, :func:`unitscale.functional.gelu` / ``silu_glu``; standard, exact
    ``jax.nn.gelu`` / ``x * silu(gate)``, where ``act_mult`` has no effect.
    """

    def __init__(
        self,
        features: int,
        hidden: int,
        *,
        activation: str = "gelu",
        act_mult: float = 1.0,
        use_bias: bool = True,
        numerics: Numerics = Numerics(),
        init_std: float | None = None,
        in_residual: bool = False,
        rngs: nnx.Rngs,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation, self.act_mult, self.numerics = activation, float(act_mult), numerics
        common = dict(use_bias=use_bias, numerics=numerics, init_std=init_std, in_residual=in_residual, rngs=rngs)
        self.up = Linear(features, hidden, role="ffn_up", **common)
        self.gate = Linear(features, hidden, role="ffn_gate", **common) if activation == "swiglu" else nnx.data(None)
        self.down = Linear(hidden, features, role="ffn_down", **common)

    def __call__(self, x: jax.Array) -> jax.Array:
        with jax.named_scope("mlp"):
            up, ops = self.up(x), self.numerics.ops
            if self.gate is None:
                h = ops.gelu(up, self.act_mult)
            else:
                h = ops.silu_glu(up, self.gate(x), self.act_mult)
            return self.down(h)
