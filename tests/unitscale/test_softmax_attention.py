"""The one attention computation: causal query blocks compute the dense function.

Blocking skips keys that every query of a block masks; the products and softmax sums then run over
fewer exact zeros, so outputs and gradients may differ from the dense form in the last bits only.
The reference here is the same function with one block (``block`` >= the query length).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitscale.softmax_attention import softmax_attention

# Float32 rounding of sums over at most a few hundred terms: a few units in the last place of the
# largest element (float32 eps is 1.2e-7).
ROUNDING = 2e-6


def _inputs(seed, batch, q_len, kv_len, heads, d_head):
    rng = np.random.default_rng(seed)
    shapes = [(batch, q_len, heads, d_head), (batch, kv_len, heads, d_head), (batch, kv_len, heads, d_head),
              (batch, q_len, heads, d_head)]
    return [jnp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]


def _out_and_grads(q, k, v, cotangent, **kwargs):
    fn = lambda q, k, v: softmax_attention(q, k, v, **kwargs)  # noqa: E731
    return jax.jit(lambda q, k, v, g: (lambda out, vjp: (out, vjp(g)))(*jax.vjp(fn, q, k, v)))(q, k, v, cotangent)


def _assert_rounding_close(got, want):
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        scale = float(jnp.max(jnp.abs(b)))
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=ROUNDING * scale)


@settings(max_examples=12)
@given(
    q_len=st.sampled_from([1, 63, 64, 65, 130, 256]),
    extra_keys=st.sampled_from([0, 0, 7]),
    heads=st.sampled_from([1, 3]),
    d_head=st.sampled_from([8, 32]),
    block=st.sampled_from([16, 64]),
    dropout_p=st.sampled_from([0.0, 0.25]),
    seed=st.integers(0, 2**16),
)
def test_causal_blocks_compute_the_dense_attention(q_len, extra_keys, heads, d_head, block, dropout_p, seed):
    q, k, v, g = _inputs(seed, 2, q_len, q_len + extra_keys, heads, d_head)
    common = dict(logit_scale=d_head**-0.5, is_causal=True, prob_scale=(1.7, 0.6), dropout_p=dropout_p,
                  rng=jax.random.key(seed) if dropout_p else None)
    blocked = _out_and_grads(q, k, v, g, block=block, **common)
    dense = _out_and_grads(q, k, v, g, block=10**6, **common)
    _assert_rounding_close(blocked, dense)


def test_causal_attention_never_sees_later_keys():
    q, k, v, g = _inputs(0, 1, 130, 130, 2, 8)
    attend = jax.jit(lambda v: softmax_attention(q, k, v, logit_scale=1.0, is_causal=True, block=16))
    changed = v.at[:, 70:].set(1e4)
    np.testing.assert_array_equal(attend(v)[:, :70], attend(changed)[:, :70])
    assert not np.allclose(attend(v)[:, 70:], attend(changed)[:, 70:])


def test_masked_keys_get_no_gradient():
    q, k, v, g = _inputs(1, 1, 100, 100, 1, 8)
    _, (dq, dk, dv) = _out_and_grads(q, k, v, g.at[:, :50].set(0.0), logit_scale=1.0, is_causal=True, block=16)
    # Only queries 50.. carry a gradient; they see every key, so all keys get one.
    assert np.all(np.asarray(dq[:, :50]) == 0) and np.all(np.asarray(dk) != 0)
    _, (_, dk, dv) = _out_and_grads(q, k, v, g.at[:, 50:].set(0.0), logit_scale=1.0, is_causal=True, block=16)
    assert np.all(np.asarray(dk[:, 50:]) == 0) and np.all(np.asarray(dv[:, 50:]) == 0)


def test_a_fully_masked_row_attends_uniformly_to_every_key():
    q, k, v, _ = _inputs(2, 1, 70, 70, 1, 4)
    keep = jnp.ones((1, 1, 70, 70), bool).at[..., 5, :].set(False)  # query 5 may see nothing
    out = softmax_attention(q, k, v, logit_scale=1.0, is_causal=True, keep=keep, block=16)
    np.testing.assert_allclose(out[0, 5], jnp.mean(v[0], axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_inputs_give_float32_results_close_to_float32_inputs(dtype):
    q, k, v, _ = _inputs(3, 2, 96, 96, 2, 16)
    narrow = softmax_attention(*(t.astype(dtype) for t in (q, k, v)), logit_scale=0.25, is_causal=True, block=32)
    wide = softmax_attention(*(t.astype(dtype).astype(jnp.float32) for t in (q, k, v)), logit_scale=0.25,
                             is_causal=True, block=32)
    assert narrow.dtype == jnp.float32
    # The probabilities are rounded to the value dtype before the second product, as matmul units do.
    np.testing.assert_allclose(narrow, wide, rtol=0, atol=float(jnp.finfo(dtype).eps) * 4)
