"""Every op under jit, vmap, grad and remat, and in bfloat16 / float16.

All checks run jitted: op-by-op (eager) execution compiles every primitive for every new shape,
which would dominate the test time.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unitscale.functional as U


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


_IDS = jnp.asarray(np.random.default_rng(0).integers(0, 11, (2, 5)))
_LABELS = jnp.asarray(np.random.default_rng(1).integers(0, 7, (6,)))
_KEY = jax.random.key(42, impl="rbg")  # compiles faster than threefry; any impl works

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


def _value_and_vjp(fn, args, cotangent):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(cotangent.astype(out.dtype))


def _cotangent(fn, args, seed=100):
    return _normal(seed, jax.eval_shape(fn, *args).shape)


def _assert_trees_close(a, b, **tol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), **tol)


@pytest.mark.parametrize("name", OPS)
def test_jit_vmap_grad_and_remat_agree(name):
    # Per example: jit of (output, vjp). Over the batch: jit(vmap(...)) of the same. And the
    # gradient of <output, cotangent> through jax.checkpoint. All must coincide.
    fn, shapes = OPS[name]
    batch = 2
    stacked = _args([(batch, *s) for s in shapes])
    example = tuple(a[0] for a in stacked)
    cotangents = _normal(100, (batch, *jax.eval_shape(fn, *example).shape))

    per_example = jax.jit(lambda args, ct: _value_and_vjp(fn, args, ct))
    looped = [per_example(tuple(a[i] for a in stacked), cotangents[i]) for i in range(batch)]
    mapped = jax.jit(jax.vmap(lambda args, ct: _value_and_vjp(fn, args, ct)))(stacked, cotangents)
    stacked_loop = jax.tree.map(lambda *xs: jnp.stack(xs), *looped)
    _assert_trees_close(mapped, stacked_loop, rtol=1e-5, atol=1e-6)

    def loss(args, ct):
        return jnp.sum(fn(*args) * ct)

    remat_grads = jax.jit(jax.grad(jax.checkpoint(loss)))(example, cotangents[0])
    _assert_trees_close(remat_grads, looped[0][1], rtol=1e-5, atol=1e-6)


def _exact_in_16_bits(x):
    """float32 values exactly representable in both bfloat16 and float16 (8 significant bits,
    magnitudes in [2^-10, 2^8]), so one float32 reference serves both dtypes."""
    x = np.asarray(jnp.asarray(x).astype(jnp.bfloat16).astype(jnp.float32))
    return jnp.asarray(np.clip(np.abs(x), 2.0**-10, 2.0**8) * np.where(x < 0, -1, 1), jnp.float32)


@pytest.mark.parametrize("name", OPS)
def test_low_precision_returns_input_dtype_and_tracks_float32(name):
    fn, shapes = OPS[name]
    args = tuple(_exact_in_16_bits(a) for a in _args(shapes))
    cotangent = _exact_in_16_bits(_cotangent(fn, args))
    run = jax.jit(lambda args, ct: _value_and_vjp(fn, args, ct))
    want = [np.asarray(t) for t in jax.tree.leaves(run(args, cotangent))]
    # bfloat16 keeps 8 significant bits, float16 11; results carry a few roundings of each.
    for dtype, tol in ((jnp.bfloat16, 3e-2), (jnp.float16, 4e-3)):
        out, grads = run(tuple(a.astype(dtype) for a in args), cotangent.astype(dtype))
        assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
        for got, ref in zip((out, *grads), want, strict=True):
            rms = float(np.sqrt(np.mean(ref**2))) or 1.0
            np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=tol, atol=tol * rms)


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

    plain = jax.jit(jax.grad(block))(params, x)
    fast = jax.jit(jax.grad(jax.checkpoint(block)))(params, x)
    _assert_trees_close(plain, fast, rtol=1e-5, atol=1e-6)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in plain)


@pytest.mark.parametrize("with_bias", [False, True])
def test_float16_weight_gradients_are_scaled_before_rounding(with_bias):
    # Every raw weight-gradient entry x^T g (4096 rows) is ~1.3e6, far above float16's 65504, while
    # the unit-scaled gradient (times 4096^-1/2) is ~2e4: representable, so it must come out finite.
    rows, fan_in, fan_out = 4096, 64, 32
    x = 16 + jax.random.normal(jax.random.key(0), (rows, fan_in))
    w = jax.random.normal(jax.random.key(1), (fan_in, fan_out))
    b = jnp.zeros(fan_out)
    g = 20 + jax.random.normal(jax.random.key(2), (rows, fan_out))
    assert float(jnp.abs(x.T @ g).min()) > 65504 and float(jnp.abs(g.sum(0)).min()) > 65504

    def grads(dtype):
        fn = lambda x, w, b: U.linear(x.astype(dtype), w.astype(dtype), b.astype(dtype) if with_bias else None)  # noqa: E731
        _, vjp = jax.vjp(fn, x, w, b)
        return vjp(g.astype(dtype))

    got, want = grads(jnp.float16), grads(jnp.float32)
    for name, a, e in zip(("input", "weight", "bias"), got, want):
        if name == "bias" and not with_bias:
            continue
        assert bool(jnp.isfinite(a).all()), name
        # float16 inputs carry ~2^-11 relative error, and sums of them cancel: compare at the tensor's scale
        scale = float(jnp.abs(e).max())
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e), rtol=1e-2, atol=5e-3 * scale, err_msg=name)
