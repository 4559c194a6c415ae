"""Multi-head self-attention and :func:`attend`, where its two activation matmuls run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unitscale.nn.dropout import Dropout
from unitscale.nn.linear import Linear
from unitscale.nn.numerics import Numerics

__all__ = ["attend", "padding_mask", "MultiHeadSelfAttention"]


def padding_mask(mask: jax.Array | None) -> jax.Array | None:
    """A ``(batch, seq)`` mask (nonzero/True = real token) as a boolean ``(batch, 1, 1, seq)`` key
    mask that broadcasts over heads and queries; None stays None."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"attention_mask must be (batch, seq), got shape {mask.shape}")
    return (mask != 0)[:, None, None, :]


def attend(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None,
    causal: bool,
    numerics: Numerics,
    mult: float = 1.0,
    dropout_p: float = 0.0,
    key: jax.Array | None = None,
) -> jax.Array:
    """Attention of ``(..., seq, heads, d_head)`` tensors; ``mask`` broadcasts to
    ``(..., heads, q_seq, kv_seq)`` (True = attend). Dropout on the probabilities when ``key`` is set.

    ``scaled_dot_product_attention`` of ``numerics.ops``: unit-scaled, logits ``mult/d_head``;
    standard, logits ``1/sqrt(d_head)`` (``mult`` has no effect).
    """
    p = dropout_p if key is not None else 0.0
    return numerics.ops.scaled_dot_product_attention(q, k, v, mask, p, causal, mult, rng=key)


class MultiHeadSelfAttention(nnx.Module):
    """Fused projection ``"attn_qkv"`` (d -> 3d), attention over ``heads``, projection ``"attn_out"``.

    ``causal`` masks future positions; ``__call__(x, mask)`` takes an optional ``(batch, seq)``
    padding mask. ``softmax_mult`` is u-muP's alpha_attn-softmax (unit-scaled only).
    """

    def __init__(
        self,
        features: int,
        heads: int,
        *,
        causal: bool,
        dropout: float = 0.0,
        softmax_mult: float = 1.0,
        use_bias: bool = True,
        numerics: Numerics = Numerics(),
        init_std: float | None = None,
        in_residual: bool = False,
        rngs: nnx.Rngs,
    ):
        if not isinstance(heads, int) or heads < 1 or features % heads:
            raise ValueError(f"features ({features}) must be divisible by heads ({heads})")
        self.heads, self.causal, self.numerics = heads, bool(causal), numerics
        self.softmax_mult = float(softmax_mult)
        common = dict(use_bias=use_bias, numerics=numerics, init_std=init_std, in_residual=in_residual, rngs=rngs)
        self.qkv = Linear(features, 3 * features, role="attn_qkv", **common)
        self.out = Linear(features, features, role="attn_out", **common)
        self.dropout = Dropout(dropout, numerics=numerics, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        with jax.named_scope("attention"):
            qkv = self.qkv(x)
            q, k, v = jnp.split(qkv.reshape(*x.shape[:-1], 3 * self.heads, -1), 3, axis=-2)
            o = attend(
                q, k, v, mask=padding_mask(mask), causal=self.causal, numerics=self.numerics,
                mult=self.softmax_mult, dropout_p=self.dropout.rate, key=self.dropout.key(),
            )
            return self.out(o.reshape(x.shape))
