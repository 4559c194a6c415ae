"""Dropout whose mode is switched by ``nnx.view(model, deterministic=...)``, as ``nnx.Dropout``."""

from __future__ import annotations

import jax
from flax import nnx

from unitscale.nn.numerics import Numerics

__all__ = ["Dropout"]


class Dropout(nnx.Module):
    """Zero each element with probability ``rate`` in training mode (``deterministic=False``).

    ``dropout`` of ``numerics.ops``: unit-scaled, kept values ``(1-rate)^-1/2 x`` and evaluation
    returns ``(1-rate)^1/2 x``; standard, inverted dropout (kept values ``x / (1-rate)``; evaluation
    returns ``x``). Keys come from the ``rngs`` stream ``"dropout"``; none is needed when
    ``rate == 0`` or in evaluation mode.
    """

    def __init__(
        self,
        rate: float,
        *,
        numerics: Numerics = Numerics(),
        deterministic: bool = False,
        rngs: nnx.Rngs | None = None,
    ):
        if not isinstance(rate, (int, float)) or not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must lie in [0, 1), got {rate!r}")
        self.rate, self.numerics, self.deterministic = float(rate), numerics, deterministic
        if rate > 0 and rngs is None:
            raise ValueError(f"rngs: dropout with rate {rate} needs an nnx.Rngs with a 'dropout' stream")
        self.rngs = rngs["dropout"].fork() if rate > 0 else nnx.data(None)

    def set_view(self, deterministic: bool | None = None) -> None:
        """Used by ``nnx.view``: ``deterministic=True`` turns dropout off."""
        if deterministic is not None:
            self.deterministic = deterministic

    @property
    def active(self) -> bool:
        return self.rate > 0 and not self.deterministic

    def key(self) -> jax.Array | None:
        """A fresh key when dropout is active, else None."""
        return self.rngs() if self.active else None

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.numerics.ops.dropout(x, self.rate, training=self.active, rng=self.key())
