"""A residual layer (sequence mixer branch + MLP branch, pre- or post-norm) and a depth stack."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx

from unitscale.nn.dropout import Dropout
from unitscale.nn.numerics import Numerics

__all__ = ["NORM_PLACEMENTS", "TransformerLayer", "TransformerStack"]

NORM_PLACEMENTS: tuple[str, ...] = ("pre", "post")


class TransformerLayer(nnx.Module):
    """``x -> mlp branch(mixer branch(x))`` with residual connections.

    Pre-norm: ``x + f(norm(x))``; post-norm: ``norm(x + f(x))``; ``f`` is followed by dropout.
    The sum is ``residual_split`` / ``residual_add`` of ``numerics.ops`` with the branch weight
    ``tau`` (``taus = (tau_mixer, tau_mlp)``, see :func:`unitscale.nn.residual.residual_taus`):
    unit-scaled, ``(tau f + x) / sqrt(1 + tau^2)``; standard, the plain sum (``taus`` have no effect).

    ``mixer(x, mask)`` is any sequence mixer (attention, convolution, RNN); ``mlp(x)`` the FFN.
    """

    def __init__(
        self,
        mixer: nnx.Module,
        mlp: nnx.Module,
        mixer_norm: nnx.Module,
        mlp_norm: nnx.Module,
        *,
        norm_placement: str = "pre",
        taus: tuple[float, float] = (1.0, 1.0),
        dropout: float = 0.0,
        numerics: Numerics = Numerics(),
        rngs: nnx.Rngs | None = None,
    ):
        if norm_placement not in NORM_PLACEMENTS:
            raise ValueError(f"norm_placement must be one of {NORM_PLACEMENTS}, got {norm_placement!r}")
        if len(taus) != 2 or any(t < 0 for t in taus):
            raise ValueError(f"taus must be two non-negative numbers, got {taus!r}")
        self.mixer, self.mlp = mixer, mlp
        self.mixer_norm, self.mlp_norm = mixer_norm, mlp_norm
        self.norm_placement, self.numerics = norm_placement, numerics
        self.taus = tuple(float(t) for t in taus)
        self.mixer_dropout = Dropout(dropout, numerics=numerics, rngs=rngs)
        self.mlp_dropout = Dropout(dropout, numerics=numerics, rngs=rngs)

    def _branch(self, x: jax.Array, fn: Callable, norm: nnx.Module, dropout: Dropout, tau: float):
        pre = self.norm_placement == "pre"
        branch = (lambda r: dropout(fn(norm(r)))) if pre else (lambda r: dropout(fn(r)))
        ops = self.numerics.ops
        residual, skip = ops.residual_split(x, tau)
        y = ops.residual_add(branch(residual), skip, tau)
        return y if pre else norm(y)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        with jax.named_scope("mixer"):
            x = self._branch(x, lambda h: self.mixer(h, mask), self.mixer_norm, self.mixer_dropout, self.taus[0])
        with jax.named_scope("mlp"):
            return self._branch(x, self.mlp, self.mlp_norm, self.mlp_dropout, self.taus[1])


def _apply_layer(layer: TransformerLayer, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return layer(x, mask)



class TransformerStack(nnx.Module):
    """Layers applied in order; ``remat=True`` recomputes each layer's activations in the backward
    pass (``nnx.remat``) instead of storing them."""

    def __init__(self, layers: Sequence[TransformerLayer], *, remat: bool = False):
        if not layers:
            raise ValueError("layers must hold at least one layer")
        self.layers = nnx.List(layers)
        self.remat = bool(remat)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        apply = nnx.remat(_apply_layer) if self.remat else _apply_layer
        for i, layer in enumerate(self.layers):
            with jax.named_scope(f"layers.{i}"):
                x = apply(layer, x, mask)
        return x
