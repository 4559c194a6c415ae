"""Every op under jit, vmap, grad and remat, and in bfloat16 / float16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unitscale.functional as U


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


_IDS = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 5)))
_LABELS = jnp.asarray(np.random.default_rng(1).integers(0, 7, (6,)))
_KEY = jax.random.key(42)

# name -> (function of float arrays, their shapes). Integer inputs and keys are fixed closures.
OPS = {
    "matmul": (U.matmul, [(4, 8), (8, 6)]),
    "linear": (U.linear, [(2, 3, 8), (8, 6), (6,)]),
    "linear_readout": (U.linear_readout, [(5, 8), (8, 6), (6,)]),
    "gelu": (lambda x: U.gelu(x, 2.0), [(4, 6)]),
    "silu": (lambda x: U.silu(x, 0.5, "gmean"), [(4, 6)]),
    "silu_glu": (U.silu_glu, [(4, 6), (4, 6)]),
    "softmax": (lambda x: U.softmax(x, 0, mult=0.5), [(4, 6)]),
    "dropout": (lambda x: U.dropout(x, 0.3, rng=_KEY), [(4, 6)]),
    "layer_norm": (lambda x, w, b: U.layer_norm(x, 6, w, b), [(4, 6), (6,), (6,)]),
    "rms_norm": (lambda x, w: U.rms_norm(x, (6,), w), [(4, 6), (6,)]),
    "add": (U.add, [(4, 6), (6,)]),
    "residual": (
        lambda x, w: U.residual_apply(lambda r: U.linear(r, w), x, 0.5),
        [(4, 6), (6, 6)],
    ),
    "embedding": (lambda t: U.embedding(_IDS, t), [(11, 4)]),
    "attention": (
        lambda q, k, v: U.scaled_dot_product_attention(q, k, v, is_causal=True, mult=2.0),
        [(5, 2, 4), (5, 2, 4), (5, 2, 4)],
    ),
    "attention_dropout": (
        lambda q, k, v: U.scaled_dot_product_attention(q, k, v, dropout_p=0.2, rng=_KEY),
        [(5, 2, 4), (3, 2, 4), (3, 2, 4)],
    ),
    "cross_entropy": (lambda x: U.cross_entropy(x, _LABELS), [(6, 7)]),
    "mse_loss": (U.mse_loss, [(4, 6), (4, 6)]),
}


def _args(shapes, seed=0):
    return tuple(_normal(seed + i, s) for i, s in enumerate(shapes))


def _value_and_vjp(fn, args, cotangent_seed=100):
    out, vjp = jax.vjp(fn, *args)
    ct = _normal(cotangent_seed, out.shape).astype(out.dtype) if out.ndim else jnp.ones((), out.dtype)
    return out, vjp(ct)


def _assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), **tol)


@pytest.mark.parametrize("name", OPS)
def test_jit_matches_eager(name):
    fn, shapes = OPS[name]
    args = _args(shapes)
    eager = _value_and_vjp(fn, args)
    jitted = jax.jit(lambda *a: _value_and_vjp(fn, a))(*args)
    _assert_trees_close(eager, jitted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPS)
def test_vmap_matches_a_loop_over_examples(name):
    fn, shapes = OPS[name]
    batch = 3
    stacked = _args([(batch, *s) for s in shapes])
    per_example = lambda *a: _value_and_vjp(fn, a)  # noqa: E731
    mapped = jax.vmap(per_example)(*stacked)
    looped = [per_example(*(a[i] for a in stacked)) for i in range(batch)]
    _assert_trees_close(mapped, jax.tree.map(lambda *xs: jnp.stack(xs), *looped), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", OPS)
def test_grad_through_remat_matches_grad(name):
    fn, shapes = OPS[name]
    args = _args(shapes)
    cotangent = _normal(100, jax.eval_shape(fn, *args).shape)

    def loss(*a):
        return jnp.sum(fn(*a) * cotangent)

    argnums = tuple(range(len(args)))
    plain = jax.grad(loss, argnums)(*args)
    remat = jax.jit(jax.grad(jax.checkpoint(loss), argnums))(*args)
    _assert_trees_close(plain, remat, rtol=1e-5, atol=1e-6)


# bfloat16 keeps 8 significant bits, float16 11; results carry a few roundings of each.
@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 3e-2), (jnp.float16, 4e-3)])
@pytest.mark.parametrize("name", OPS)
def test_low_precision_returns_input_dtype_and_tracks_float32(name, dtype, tol):
    fn, shapes = OPS[name]
    low = tuple(a.astype(dtype) for a in _args(shapes))
    out, grads = jax.jit(lambda *a: _value_and_vjp(fn, a))(*low)
    ref_out, ref_grads = _value_and_vjp(fn, tuple(a.astype(jnp.float32) for a in low))
    assert out.dtype == dtype
    assert all(g.dtype == dtype for g in grads)
    for got, want in zip((out, *grads), (ref_out, *ref_grads)):
        want = np.asarray(want, np.float32)
        scale = float(np.sqrt(np.mean(want**2))) or 1.0
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol * scale)


def test_float16_matmul_scales_before_rounding():
    # Unscaled, this product would be 2 * 16 * 2^12 = 131072 > float16 max (65504): scaling
    # in float32 first returns the finite, exact 2048.
    left = jnp.full((2, 2**12), 16.0, jnp.float16)
    right = jnp.full((2**12, 2), 2.0, jnp.float16)
    out = U.matmul(left, right)
    assert out.dtype == jnp.float16
    np.testing.assert_array_equal(np.asarray(out, np.float32), 16 * 2 * 2**12 / 2**6)


def test_a_transformer_block_composes_under_jit_grad_and_remat():
    d, heads = 16, 2
    params = _args([(d, 3 * d), (d, d), (d, 4 * d), (4 * d, d)], seed=1)
    x = _normal(0, (2, 8, d))

    def block(params, x):
        w_qkv, w_o, w_up, w_down = params

        def attn(h):
            h = U.layer_norm(h, d)
            q, k, v = jnp.split(U.linear(h, w_qkv), 3, axis=-1)
            q, k, v = (t.reshape(*t.shape[:-1], heads, d // heads) for t in (q, k, v))
            out = U.scaled_dot_product_attention(q, k, v, is_causal=True)
            return U.linear(out.reshape(*out.shape[:-2], d), w_o)

        def mlp(h):
            return U.linear(U.gelu(U.linear(U.layer_norm(h, d), w_up)), w_down)

        h = U.residual_apply(attn, x, 0.5)
        h = U.residual_apply(mlp, h, 0.5)
        return U.mse_loss(h, jnp.zeros_like(h))

    plain = jax.grad(block)(params, x)
    fast = jax.jit(jax.grad(jax.checkpoint(block)))(params, x)
    _assert_trees_close(plain, fast, rtol=1e-5, atol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in plain)
