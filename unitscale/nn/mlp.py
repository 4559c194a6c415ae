"""Position-wise feed-forward block: GELU (``down(gelu(up x))``) or SwiGLU (``down(up x * silu(gate x))``)."""

from __future__ import annotations

import jax
from flax import nnx

import unitscale.functional as U
from unitscale.nn.linear import Linear
from unitscale.nn.numerics import Numerics

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS: tuple[str, ...] = ("gelu", "swiglu")


class MLP(nnx.Module):
    """Linears with roles ``"ffn_up"``, ``"ffn_gate"`` (SwiGLU only) and ``"ffn_down"``.

    Unit-scaled: :func:`unitscale.functional.gelu` / :func:`~unitscale.functional.silu_glu` with
    ``act_mult`` (u-muP's alpha_ffn-act). Standard: exact ``jax.nn.gelu`` / ``x * silu(gate)``;
    ``act_mult`` is ignored.
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
            up = self.up(x)
            unit = self.numerics.unit_scaled
            if self.gate is None:
                h = U.gelu(up, self.act_mult) if unit else jax.nn.gelu(up, approximate=False)
            else:
                gate = self.gate(x)
                h = U.silu_glu(up, gate, self.act_mult) if unit else up * jax.nn.silu(gate)
            return self.down(h)
