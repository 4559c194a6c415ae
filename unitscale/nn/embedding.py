"""Embedding tables (kind ``"embedding"``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unitscale.nn.init import normal_weight
from unitscale.nn.numerics import Numerics
from unitscale.nn.params import make_param

__all__ = ["Embedding", "check_ids"]


def check_ids(ids: jax.Array, size: int, name: str) -> None:
    """Raise if concrete integer ``ids`` fall outside ``[0, size)``; ``name`` is the size's name.

    Traced ids (under ``jit``) cannot be inspected: an out-of-range id then yields a NaN row.
    """
    if not jnp.issubdtype(jnp.asarray(ids).dtype, jnp.integer):
        raise TypeError(f"ids must be an integer array, got dtype {jnp.asarray(ids).dtype}")
    if isinstance(ids, jax.core.Tracer) or jnp.size(ids) == 0:
        return
    # numpy, so that a concrete array inside a traced function is read, not staged.
    values = np.asarray(ids)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= size:
        raise ValueError(f"token ids must lie in [0, {name}={size}), got values in [{low}, {high}]")


class Embedding(nnx.Module):
    """Lookup ``table[ids]`` of a ``(num_embeddings, features)`` table.

    ``embedding`` of ``numerics.ops``: unit-scaled, N(0, 1) table, the table gradient scaled by
    ``(num_embeddings / ids.size)^1/2``; standard, N(0, init_std^2), N(0, 1) when None (as
    ``nnx.Embed``). Parameter name ``embedding`` as in ``nnx.Embed``.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        role: str = "embedding",
        numerics: Numerics = Numerics(),
        init_std: float | None = None,
        rngs: nnx.Rngs,
    ):
        self.num_embeddings, self.features = num_embeddings, features
        self.role, self.numerics = role, numerics
        # An embedding row is one input per output: LeCun with fan_in 1 is N(0, 1).
        table = normal_weight(
            rngs.params(), (num_embeddings, features),
            numerics=numerics, fan_in=1, std=init_std,
        )
        self.embedding = make_param(
            table, kind="embedding", fan_in=num_embeddings, fan_out=features, in_residual=False, role=role
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        check_ids(ids, self.num_embeddings, "num_embeddings")
        with jax.named_scope(self.role):
            return self.numerics.cast(self.numerics.ops.embedding(ids, self.embedding[...]))
