"""Softmax attention as XLA:CPU runs it best: heads-major products, causal attention in query blocks.

``softmax_attention`` is the one attention computation; the unit-scaled op
(:func:`unitscale.functional.scaled_dot_product_attention`) and the standard one
(:mod:`unitscale.standard`) differ only in the logit scale and the factor on the probabilities.

    logits = logit_scale * q k^T (+ bias), masked entries set to the float32 floor,
    out = dropout(prob_scale * softmax(logits)) v.

Two choices make it fast on CPU without changing the function:

* The products run on ``(..., heads, seq, d_head)`` operands, the layout in which every head is a
  contiguous batch of the matmul; the ``(..., seq, heads, d_head)`` layout of the API costs one
  transpose in and one out instead of a copy inside each product.
* Causal attention runs in query blocks of ``block`` rows: block ``i`` sees keys ``[0, end_i)`` only,
  so the products, the softmax and its gradient skip the keys every query of the block masks (for 4
  blocks, 10/16 of the dense work) and each block's probabilities are small enough to stay in cache.
  Measured on 2 CPU cores (batch 16, seq 256, 4 heads of 32, float32), forward and backward of one
  attention took 41 ms dense and 21 ms in blocks of 64 (benchmarks/README.md).

Blocking changes only the order in which the softmax denominators and the products' sums are
accumulated (a masked key contributes an exact zero either way), so results agree with the dense
form to float32 rounding, not bit for bit. It applies when the only mask is the causal one: with an
explicit mask a query may have no visible key at all, and such a row must attend uniformly to all
keys, as the dense form does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from unitscale.scale import scale

__all__ = ["QUERY_BLOCK", "softmax_attention"]

# Rows per causal query block: the fastest of 32, 64 and 128 at sequence 256 (benchmarks/README.md).
QUERY_BLOCK = 64
# A finite floor (not -inf) keeps fully masked rows finite: they attend uniformly.
_FLOOR = float(jnp.finfo(jnp.float32).min)


def _blocks(length: int, block: int) -> list[tuple[int, int]]:
    return [(start, min(start + block, length)) for start in range(0, length, block)]


def softmax_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    logit_scale: float,
    is_causal: bool = False,
    keep: jax.Array | None = None,
    bias: jax.Array | None = None,
    prob_scale: tuple[float, float] = (1.0, 1.0),
    dropout_p: float = 0.0,
    rng: jax.Array | None = None,
    block: int = QUERY_BLOCK,
) -> jax.Array:
    """``dropout(scale(softmax(logit_scale * q k^T + bias, masked), *prob_scale)) v`` in float32.

    Shapes: q ``(..., q_seq, heads, d_head)``, k and v ``(..., kv_seq, heads, d_head)`` (checked by
    the callers); ``keep`` (True = attend) and ``bias`` broadcast to ``(..., heads, q_seq, kv_seq)``.
    ``is_causal`` keeps key ``j`` for query ``i`` iff ``j <= i`` (top-left aligned). ``prob_scale``
    is the forward and backward factor of :func:`unitscale.scale.scale` on the probabilities.
    Dropout keeps each probability with ``1 - dropout_p`` (kept ones divided by it) from one draw of
    ``rng`` over the whole ``(..., heads, q_seq, kv_seq)`` matrix, so blocking draws the same mask.
    Returns float32 ``(..., q_seq, heads, d_head)``.
    """
    q_len, kv_len = q.shape[-3], k.shape[-3]
    qh, kh, vh = (jnp.swapaxes(x, -3, -2) for x in (q, k, v))
    logits_shape = (*qh.shape[:-1], kv_len)
    kept = jax.random.bernoulli(rng, 1.0 - dropout_p, logits_shape) if dropout_p > 0.0 else None
    blocked = is_causal and keep is None and bias is None and q_len > block
    outs = []
    for start, stop in _blocks(q_len, block) if blocked else [(0, q_len)]:
        end = min(stop, kv_len) if blocked else kv_len
        logits = jnp.einsum("...nth,...nsh->...nts", qh[..., start:stop, :], kh[..., :end, :],
                            preferred_element_type=jnp.float32) * logit_scale
        if bias is not None:
            logits = logits + bias
        mask = keep
        if is_causal:
            rows = jnp.arange(start, stop)[:, None]
            mask = rows >= jnp.arange(end)[None, :] if mask is None else mask & (rows >= jnp.arange(end))
        if mask is not None:
            logits = jnp.where(mask, logits, _FLOOR)
        probs = scale(jax.nn.softmax(logits, axis=-1), *prob_scale)
        if kept is not None:
            probs = jnp.where(kept[..., start:stop, :end], probs / (1.0 - dropout_p), 0.0)
        outs.append(jnp.einsum("...nts,...nsh->...nth", probs.astype(v.dtype), vh[..., :end, :],
                               preferred_element_type=jnp.float32))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=-2)
    return jnp.swapaxes(out, -3, -2)
