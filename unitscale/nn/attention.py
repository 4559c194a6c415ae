"""Multi-head self-attention and :func:`attend`, where its two activation matmuls run."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

import unitscale.functional as U
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


def _softmax_attention(q, k, v, keep, dropout_p, key, out_dtype):
    """Standard attention ``softmax(q k^T / sqrt(d_head)) v`` with float32 logits and softmax."""
    logits = jnp.einsum("...tnh,...snh->...nts", q, k, preferred_element_type=jnp.float32)
    logits = logits / math.sqrt(q.shape[-1])
    if keep is not None:
        # A finite floor keeps fully masked rows finite (uniform), as in unitscale.functional.
        logits = jnp.where(keep, logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)
    if key is not None:
        kept = jax.random.bernoulli(key, 1.0 - dropout_p, probs.shape)
        probs = jnp.where(kept, probs / (1.0 - dropout_p), 0.0)
    out = jnp.einsum("...nts,...snh->...tnh", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out.astype(out_dtype)


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

    Unit-scaled: :func:`unitscale.functional.scaled_dot_product_attention` (logits ``mult/d_head``).
    Standard: logits ``1/sqrt(d_head)``; ``mult`` is ignored.
    """
    if numerics.unit_scaled:
        p = dropout_p if key is not None else 0.0
        return U.scaled_dot_product_attention(q, k, v, mask, p, causal, mult, rng=key)
    keep = None
    if causal:
        q_len, kv_len = q.shape[-3], k.shape[-3]
        keep = jnp.tril(jnp.ones((q_len, kv_len), dtype=bool))
    if mask is not None:
        keep = mask if keep is None else keep & mask
    return _softmax_attention(q, k, v, keep, dropout_p, key, numerics.compute_dtype)


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
