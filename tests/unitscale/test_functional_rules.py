"""Exact scaling rules: each op equals its standard counterpart times a constant, per tensor.

For every op, the output and each input gradient are compared with those of the plain JAX op
(same inputs, same cotangent). Each must be an exact multiple of the plain one, and the multiples
are the op's documented scales: the formulas of unit-scaling 0.3.5 for ``constraint=None``, and
all tied scales equal to ``constraint(*scales)`` otherwise. Values that must equal the standard
ones (losses, norms, embedding rows) are checked directly.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscale.functional as U
from unitscale.constraints import CONSTRAINTS

seeds = st.integers(0, 2**20)
BINARY = [None, "gmean", "hmean", "amean", "to_output_scale", "to_grad_input_scale", min]
TERNARY = [None, "gmean", "hmean", "amean", "to_output_scale", "to_left_grad_scale",
           "to_right_grad_scale", max]  # fmt: skip
binary_constraints, ternary_constraints = st.sampled_from(BINARY), st.sampled_from(TERNARY)


def _np_normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _normal(seed, shape):
    # Inputs come from numpy and checks run jitted: eager jnp ops would compile per new shape.
    return jnp.asarray(_np_normal(seed, shape))


def _ints(seed, high, shape):
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape))


def _jit_vjp(fn, *args, cotangent):
    """Output of ``fn`` and its input gradients for ``cotangent``, in one compiled call."""
    return jax.jit(lambda a, ct: (lambda out, vjp: (out, vjp(ct)))(*jax.vjp(fn, *a)))(
        args, cotangent
    )


def _both(unit_fn, plain_fn, args, seed):
    """(output, grads) of unit_fn and plain_fn for the same inputs and a shared random cotangent."""
    shape = jax.eval_shape(plain_fn, *args)
    cotangent = _normal(seed + 10**9, shape.shape) if shape.ndim else jnp.ones(())

    def run(args, cotangent):
        results = []
        for fn in (unit_fn, plain_fn):
            out, vjp = jax.vjp(fn, *args)
            results.append((out, vjp(cotangent)))
        return results

    return jax.jit(run)(args, cotangent)


def _ratio(scaled, plain):
    """The factor c with ``scaled == c * plain``, asserting the relation holds element-wise."""
    scaled, plain = np.asarray(scaled, np.float64), np.asarray(plain, np.float64)
    c = float(np.sum(scaled * plain) / np.sum(plain * plain))
    np.testing.assert_allclose(scaled, c * plain, rtol=2e-4, atol=2e-5 * np.abs(scaled).max())
    return c


def measured_scales(unit_fn, plain_fn, args, seed=0):
    """Forward scale then one backward scale per argument, measured against the plain op."""
    (out_u, grads_u), (out_p, grads_p) = _both(unit_fn, plain_fn, args, seed)
    return (_ratio(out_u, out_p), *(_ratio(g_u, g_p) for g_u, g_p in zip(grads_u, grads_p)))


def _constrained(constraint, scales, tied):
    """Expected scales: the ``tied`` positions all become ``constraint(*those scales)``."""
    if constraint is None:
        return scales
    fn = CONSTRAINTS[constraint] if isinstance(constraint, str) else constraint
    value = fn(*[scales[i] for i in tied])
    return tuple(value if i in tied else s for i, s in enumerate(scales))


def assert_scales(measured, expected):
    np.testing.assert_allclose(measured, expected, rtol=1e-4)


def _sigmoid_log(z):
    return z / (1 + z)  # sigmoid(log z)


# --- matmul / linear ------------------------------------------------------------------------


@pytest.mark.parametrize("constraint", TERNARY)
@settings(max_examples=3)
@given(
    batches=st.sampled_from([((), ()), ((3,), ()), ((2, 1), (3,)), ((), (4,)), ((2,), (2,))]),
    dims=st.tuples(*[st.integers(2, 9)] * 3),
    seed=seeds,
)
def test_matmul_scales(batches, dims, constraint, seed):
    (lb, rb), (m, k, n) = batches, dims
    left, right = _normal(seed, (*lb, m, k)), _normal(seed + 1, (*rb, k, n))
    out_size = math.prod(jnp.broadcast_shapes(lb, rb)) * m * n
    # Each gradient element sums (output size * k / input size) products.
    expect = (
        k**-0.5,
        (out_size * k / left.size) ** -0.5,
        (out_size * k / right.size) ** -0.5,
    )
    unit = lambda a, b: U.matmul(a, b, constraint)  # noqa: E731
    measured = measured_scales(unit, jnp.matmul, (left, right), seed)
    assert_scales(measured, _constrained(constraint, expect, (0, 1, 2)))


@pytest.mark.parametrize("shapes", [((5,), (5, 3)), ((4, 5), (5,)), ((5,), (5,))])
def test_matmul_accepts_vectors_like_jnp_matmul(shapes):
    left, right = _normal(0, shapes[0]), _normal(1, shapes[1])
    out = U.matmul(left, right, constraint=None)
    np.testing.assert_allclose(out, jnp.matmul(left, right) / 5**0.5, rtol=1e-5)


@pytest.mark.parametrize("constraint", BINARY)
@settings(max_examples=3)
@given(
    batch=st.sampled_from([(), (3,), (2, 3)]),
    fans=st.tuples(st.integers(2, 9), st.integers(2, 9)),
    bias=st.booleans(),
    readout=st.booleans(),
    seed=seeds,
)
def test_linear_and_readout_scales(batch, fans, bias, constraint, readout, seed):
    fan_in, fan_out = fans
    x, w = _normal(seed, (*batch, fan_in)), _normal(seed + 1, (fan_in, fan_out))
    args = (x, w, _normal(seed + 2, (fan_out,))) if bias else (x, w)
    op = U.linear_readout if readout else U.linear

    def unit(x, w, *b):
        return op(x, w, b[0] if b else None, constraint=constraint)

    def plain(x, w, *b):
        return x @ w + (b[0] if b else 0.0)

    rows = math.prod(batch)
    expect = (fan_in ** (-1.0 if readout else -0.5), fan_out**-0.5, rows**-0.5, rows**-0.5)
    expect = _constrained(constraint, expect, (0, 1))
    assert_scales(measured_scales(unit, plain, args, seed), expect[: len(args) + 1])


def test_linear_scale_power():
    x, w = _normal(0, (6, 4)), _normal(1, (4, 9))
    fn = lambda x, w: U.linear(x, w, None, None, scale_power=(1.0, 0.25, 2.0))  # noqa: E731
    assert_scales(measured_scales(fn, jnp.matmul, (x, w)), (1 / 4, 9**-0.25, 6**-2.0))


# --- element-wise ---------------------------------------------------------------------------


def _activation_expect(mult, grad_alpha_z):
    # Output limits: 2 for mult -> 0, (2 / (1 - 1/pi))^1/2 for mult -> inf; gradient: 2 and 2^1/2.
    a = _sigmoid_log(4 * mult**2)
    b = _sigmoid_log(grad_alpha_z)
    out = 2 ** (1 - a) * (2 / (1 - 1 / math.pi)) ** (a / 2)
    return out, 2 ** (1 - b) * 2 ** (b / 2)


@settings(max_examples=10)
@given(
    op=st.sampled_from(["gelu", "gelu_tanh", "silu"]),
    mult=st.floats(0.1, 10.0),
    constraint=binary_constraints,
    seed=seeds,
)
def test_activation_scales(op, mult, constraint, seed):
    x = _normal(seed, (5, 7))
    if op == "silu":
        unit = lambda x: U.silu(x, mult, constraint)  # noqa: E731
        plain = lambda x: x * jax.nn.sigmoid(mult * x)  # noqa: E731
        expect = _activation_expect(mult, mult**2)
    else:
        tanh = op == "gelu_tanh"
        unit = lambda x: U.gelu(x, mult, constraint, "tanh" if tanh else "none")  # noqa: E731
        plain = lambda x: jax.nn.gelu(mult * x, approximate=tanh) / mult  # noqa: E731
        expect = _activation_expect(mult, 4 * mult**2)
    measured = measured_scales(unit, plain, (x,), seed)
    assert_scales(measured, _constrained(constraint, expect, (0, 1)))


@settings(max_examples=5)
@given(mult=st.floats(0.1, 10.0), seed=seeds)
def test_silu_glu_scales(mult, seed):
    x, gate = _normal(seed, (4, 6)), _normal(seed + 1, (4, 6))
    s = _activation_expect(mult, mult**2)[1]
    plain = lambda x, g: x * g * jax.nn.sigmoid(mult * g)  # noqa: E731
    measured = measured_scales(lambda x, g: U.silu_glu(x, g, mult), plain, (x, gate), seed)
    assert_scales(measured, (s, s, s))


@settings(max_examples=10)
@given(
    shape=st.sampled_from([(7,), (3, 5), (2, 6, 4)]),
    dim=st.integers(-3, 2),
    mult=st.floats(0.1, 10.0),
    constraint=binary_constraints,
    seed=seeds,
)
def test_softmax_scales(shape, dim, mult, constraint, seed):
    if not -len(shape) <= dim < len(shape):
        dim = -1
    n = shape[dim]
    a = _sigmoid_log(mult**2 / 4)
    expect = (n ** (1 - a / 2), (n / mult) ** (1 - a / 2))
    unit = lambda x: U.softmax(x, dim, None, constraint, mult)  # noqa: E731
    plain = lambda x: jax.nn.softmax(mult * x, axis=dim)  # noqa: E731
    measured = measured_scales(unit, plain, (_normal(seed, shape),), seed)
    assert_scales(measured, _constrained(constraint, expect, (0, 1)))


def test_softmax_dtype_argument_sets_the_output_dtype():
    x = _normal(0, (3, 8)).astype(jnp.bfloat16)
    assert U.softmax(x, dtype=jnp.float32).dtype == jnp.float32
    assert U.softmax(x).dtype == jnp.bfloat16


@settings(max_examples=5)
@given(p=st.floats(0.05, 0.95), seed=seeds)
def test_dropout_keeps_at_inverse_root_and_drops_to_zero(p, seed):
    x, g = _normal(seed, (2**14,)), _normal(seed + 1, (2**14,))
    key = jax.random.key(seed, impl="rbg")  # any PRNG works; rbg compiles fastest
    out, (dx,) = _jit_vjp(lambda t: U.dropout(t, p, rng=key), x, cotangent=g)
    kept = np.asarray(out) != 0
    inv_root = (1 - p) ** -0.5
    np.testing.assert_allclose(np.asarray(out)[kept], np.asarray(x)[kept] * inv_root, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(dx)[kept], np.asarray(g)[kept] * inv_root, rtol=1e-6)
    assert not np.any(np.asarray(dx)[~kept])
    # Fraction dropped within 5 binomial standard errors of p.
    assert abs((1 - kept.mean()) - p) <= 5 * (p * (1 - p) / x.size) ** 0.5


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_dropout_eval_mode_scales_by_root_keep_probability(p):
    x = _normal(0, (64,))
    measured = measured_scales(lambda t: U.dropout(t, p, training=False), lambda t: t, (x,))
    assert_scales(measured, ((1 - p) ** 0.5, (1 - p) ** 0.5))


def test_dropout_depends_only_on_the_key():
    x = _normal(0, (256,))
    a, b = (U.dropout(x, 0.5, rng=jax.random.key(3)) for _ in range(2))
    c = U.dropout(x, 0.5, rng=jax.random.key(4))
    np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(a) != np.asarray(c))


# --- normalisation --------------------------------------------------------------------------


def _plain_layer_norm(x, w, b, axes, eps=1e-5):
    mean = x.mean(axes, keepdims=True)
    return (x - mean) / jnp.sqrt(x.var(axes, keepdims=True) + eps) * w + b


def _plain_rms_norm(x, w, axes, eps=1e-5):
    return x / jnp.sqrt(jnp.mean(x**2, axes, keepdims=True) + eps) * w


@settings(max_examples=4)
@given(
    shapes=st.sampled_from([((4, 6), (6,)), ((3, 4, 5), (4, 5)), ((2, 3, 8), 8)]),
    seed=seeds,
)
def test_norm_values_and_affine_gradient_scales(shapes, seed):
    shape, norm_shape = shapes
    norm_tuple = (norm_shape,) if isinstance(norm_shape, int) else norm_shape
    axes = tuple(range(-len(norm_tuple), 0))
    x = jnp.asarray(_np_normal(seed, shape) * 3 + 1)
    w, b = _normal(seed + 1, norm_tuple), _normal(seed + 2, norm_tuple)
    s = (math.prod(norm_tuple) / x.size) ** 0.5
    ln = measured_scales(
        lambda x, w, b: U.layer_norm(x, norm_shape, w, b),
        lambda x, w, b: _plain_layer_norm(x, w, b, axes), (x, w, b), seed,
    )  # fmt: skip
    assert_scales(ln, (1.0, 1.0, s, s))
    rms = measured_scales(
        lambda x, w: U.rms_norm(x, norm_shape, w), lambda x, w: _plain_rms_norm(x, w, axes),
        (x, w), seed,
    )  # fmt: skip
    assert_scales(rms, (1.0, 1.0, s))


def test_norms_without_affine_parameters_equal_the_plain_norm():
    x = jnp.asarray(_np_normal(0, (4, 16)) * 5 - 2)
    expect = _plain_layer_norm(x, 1.0, 0.0, (-1,))
    np.testing.assert_allclose(U.layer_norm(x, 16), expect, atol=1e-5)
    np.testing.assert_allclose(U.rms_norm(x, (16,)), _plain_rms_norm(x, 1.0, (-1,)), atol=1e-5)


# --- add and residuals ----------------------------------------------------------------------


@settings(max_examples=10)
@given(
    shapes=st.sampled_from([((3, 4), (3, 4)), ((4,), (3, 4)), ((2, 1, 4), (3, 4)), ((1,), (3, 4))]),
    constraint=ternary_constraints,
    swap=st.booleans(),
    seed=seeds,
)
def test_add_scales(shapes, constraint, swap, seed):
    a_shape, b_shape = shapes[::-1] if swap else shapes
    a, b = _normal(seed, a_shape), _normal(seed + 1, b_shape)
    out_size = math.prod(jnp.broadcast_shapes(a_shape, b_shape))
    out_s = 1.0 if min(a.size, b.size) == 1 else 2**-0.5
    expect = (out_s, (a.size / out_size) ** 0.5, (b.size / out_size) ** 0.5)
    measured = measured_scales(lambda x, y: U.add(x, y, constraint), jnp.add, (a, b), seed)
    assert_scales(measured, _constrained(constraint, expect, (0, 1, 2)))


def test_add_with_a_python_scalar_is_a_plain_add():
    x = _normal(0, (5,))
    assert_scales(measured_scales(lambda t: U.add(t, 2.0), lambda t: t + 2.0, (x,)), (1.0, 1.0))
    assert_scales(measured_scales(lambda t: U.add(-1, t), lambda t: t - 1, (x,)), (1.0, 1.0))


@settings(max_examples=6)
@given(tau=st.floats(0.0, 5.0), seed=seeds)
def test_residual_weights(tau, seed):
    x, r = _normal(seed, (4, 5)), _normal(seed + 1, (4, 5))
    w_res, w_skip = tau / (1 + tau**2) ** 0.5, 1 / (1 + tau**2) ** 0.5
    residual, skip = U.residual_split(x, tau)
    np.testing.assert_array_equal(residual, x)
    np.testing.assert_array_equal(skip, x)
    _, vjp = jax.vjp(lambda t: U.residual_split(t, tau), x)
    dx_res, dx_skip = vjp((r, jnp.zeros_like(r)))[0], vjp((jnp.zeros_like(r), r))[0]
    np.testing.assert_allclose(dx_res, w_res * r, rtol=1e-6)
    np.testing.assert_allclose(dx_skip, w_skip * r, rtol=1e-6)
    joined, vjp = jax.vjp(lambda a, b: U.residual_add(a, b, tau), r, x)
    np.testing.assert_allclose(joined, w_res * r + w_skip * x, rtol=1e-5, atol=1e-6)
    for grad in vjp(x):
        np.testing.assert_array_equal(grad, x)  # backward weights were applied by the split


def test_residual_apply_is_split_branch_add():
    x, w = _normal(0, (4, 8)), _normal(1, (8, 8))
    branch = lambda t: jnp.tanh(t @ w)  # noqa: E731
    res, skip = U.residual_split(x, 0.5)
    np.testing.assert_allclose(
        U.residual_apply(branch, x, 0.5), U.residual_add(branch(res), skip, 0.5), rtol=1e-6
    )


# --- embedding and attention ----------------------------------------------------------------


@settings(max_examples=5)
@given(
    vocab=st.integers(2, 50),
    ids_shape=st.sampled_from([(7,), (3, 4)]),
    padding=st.booleans(),
    seed=seeds,
)
def test_embedding_rows_and_table_gradient_scale(vocab, ids_shape, padding, seed):
    ids, table = _ints(seed, vocab, ids_shape), _normal(seed + 1, (vocab, 6))
    np_ids = np.asarray(ids)
    pad = int(np_ids.reshape(-1)[0]) if padding else None
    cotangent = _np_normal(seed + 2, (*ids_shape, 6))
    out, (d_table,) = _jit_vjp(
        lambda t: U.embedding(ids, t, padding_idx=pad), table, cotangent=jnp.asarray(cotangent)
    )
    np.testing.assert_array_equal(out, np.asarray(table)[np_ids])  # forward: a plain lookup
    # Plain table gradient: scatter-add of the cotangent rows, none for the padding row.
    expect = np.zeros((vocab, 6), np.float64)
    np.add.at(expect, np_ids, cotangent)
    if pad is not None:
        expect[pad] = 0.0
    np.testing.assert_allclose(d_table, (vocab / ids.size) ** 0.5 * expect, rtol=1e-5, atol=1e-6)


def test_embedding_ids_out_of_range_give_nan_rows():
    table = jnp.asarray(_np_normal(0, (4, 3)))
    out = np.asarray(jax.jit(U.embedding)(jnp.array([0, 4, -1, -5]), table))
    np.testing.assert_array_equal(out[[0, 2]], np.asarray(table)[[0, -1]])
    assert np.isnan(out[[1, 3]]).all()


def _attention_scale(kv_seq, d_head, mult, dropout_p, causal):
    flat = (math.log(kv_seq) if causal else 1.0) / kv_seq
    a = _sigmoid_log(mult**2 / (4 * d_head))
    return (1 - dropout_p) ** 0.5 / flat ** ((1 - a) / 2)


@pytest.mark.parametrize("mask", ["none", "causal", "bool", "float"])
@settings(max_examples=3)
@given(
    q_seq=st.integers(2, 9),
    kv_seq=st.integers(2, 9),
    heads=st.integers(1, 3),
    d_head=st.sampled_from([4, 8]),
    mult=st.floats(0.25, 8.0),
    seed=seeds,
)
def test_attention_matches_jax_dot_product_attention_times_its_scale(
    q_seq, kv_seq, heads, d_head, mult, mask, seed
):
    batch, causal = 2, mask == "causal"
    if causal:  # the reference's causal rule is for self-attention lengths
        q_seq = kv_seq
    q = _normal(seed, (batch, q_seq, heads, d_head))
    k, v = (_normal(seed + i, (batch, kv_seq, heads, d_head)) for i in (1, 2))
    attn_mask = None
    if mask == "bool":  # every query keeps at least key 0, so no row is fully masked
        keep = _np_normal(seed + 4, (heads, q_seq, kv_seq)) > 0
        keep[..., 0] = True
        attn_mask = jnp.asarray(keep)
    elif mask == "float":
        attn_mask = _normal(seed + 4, (batch, 1, q_seq, kv_seq))
    s = _attention_scale(kv_seq, d_head, mult, 0.0, causal)
    unit = lambda q, k, v: U.scaled_dot_product_attention(  # noqa: E731
        q, k, v, attn_mask=attn_mask, is_causal=causal, mult=mult
    )
    plain = lambda q, k, v: jax.nn.dot_product_attention(  # noqa: E731
        q, k, v,
        bias=attn_mask if mask == "float" else None,
        mask=attn_mask if mask == "bool" else None,
        scale=mult / d_head, is_causal=causal,
    )  # fmt: skip
    assert_scales(measured_scales(unit, plain, (q, k, v), seed), (s, s, s, s))


def test_attention_causal_mask_hides_later_keys():
    q, k, v = (_np_normal(i, (1, 6, 2, 4)) for i in range(3))
    changed = v.copy()
    changed[:, 3:] = 100.0  # positions 0..2 may not see keys 3..5
    attend = jax.jit(lambda v: U.scaled_dot_product_attention(q, k, v, is_causal=True))
    out, out2 = attend(v), attend(changed)
    np.testing.assert_array_equal(out[:, :3], out2[:, :3])
    assert not np.allclose(out[:, 3:], out2[:, 3:])


def test_attention_dropout_is_unbiased_and_keyed():
    seq, d_head = 64, 8
    q, k = _normal(0, (32, seq, 2, d_head)), _normal(1, (32, seq, 2, d_head))
    ones = jnp.ones((32, seq, 2, d_head))
    p = 0.25
    s = _attention_scale(seq, d_head, 1.0, p, False)
    attend = jax.jit(
        lambda key: U.scaled_dot_product_attention(q, k, ones, dropout_p=p, rng=key)
    )
    out = np.asarray(attend(jax.random.key(0)), np.float64) / s
    # With value = 1 each output is s * (sum of kept probabilities / (1 - p)), mean 1 * s.
    assert out.mean() == pytest.approx(1.0, abs=0.01)
    assert out.std() > 0.05  # it did drop something
    np.testing.assert_array_equal(attend(jax.random.key(0)), attend(jax.random.key(0)))
    assert np.any(np.asarray(attend(jax.random.key(1))) != np.asarray(attend(jax.random.key(0))))


# --- losses ---------------------------------------------------------------------------------


@settings(max_examples=8)
@given(
    shape=st.sampled_from([(9,), (6, 9), (2, 3, 17)]),
    reduction=st.sampled_from(["mean", "sum"]),
    mult=st.floats(0.25, 4.0),
    ignore=st.booleans(),
    seed=seeds,
)
def test_cross_entropy_value_is_standard_and_gradient_rescaled(
    shape, reduction, mult, ignore, seed
):
    vocab = shape[-1]
    logits = _np_normal(seed, shape).astype(np.float64) * 3
    labels = np.random.default_rng(seed + 1).integers(0, vocab, shape[:-1])
    if ignore and labels.ndim:
        labels.reshape(-1)[0] = -100
    valid = labels != -100
    # The standard loss, in float64 numpy: -log softmax(mult * logits)[label], valid targets only.
    z = mult * logits
    log_probs = z - z.max(-1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    expect = np.where(valid, nll, 0.0).sum() / (valid.sum() if reduction == "mean" else 1)
    unit = lambda x: U.cross_entropy(x, labels, reduction=reduction, mult=mult)  # noqa: E731
    loss, (grad,) = _jit_vjp(unit, jnp.asarray(logits, jnp.float32), cotangent=jnp.ones(()))
    np.testing.assert_allclose(loss, expect, rtol=1e-5)
    # Gradient: (softmax - onehot) * V / (V-1)^1/2, neither divided by the count nor multiplied
    # by mult; ignored targets get none.
    one_hot = np.eye(vocab)[np.where(valid, labels, 0)]
    expect_grad = (np.exp(log_probs) - one_hot) * valid[..., None] * vocab / (vocab - 1) ** 0.5
    np.testing.assert_allclose(grad, expect_grad, rtol=1e-4, atol=1e-6)


def test_cross_entropy_equals_optax_mean_loss():
    logits, labels = _normal(0, (2**10, 2**8)), _ints(1, 2**8, (2**10,))
    expect = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    np.testing.assert_allclose(U.cross_entropy(logits, labels), expect, rtol=1e-6)


def test_cross_entropy_mean_with_every_target_ignored_is_nan_like_pytorch():
    assert np.isnan(U.cross_entropy(_normal(0, (3, 4)), jnp.full((3,), -100)))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_value_and_gradient_scales(reduction):
    a, b = _normal(0, (3, 7)), _normal(1, (3, 7))
    expect = jnp.sum((a - b) ** 2) / (a.size if reduction == "mean" else 1)
    np.testing.assert_allclose(U.mse_loss(a, b, reduction=reduction), expect, rtol=1e-6)
    plain = lambda x, y: jnp.sum((x - y) ** 2)  # noqa: E731
    measured = measured_scales(lambda x, y: U.mse_loss(x, y, reduction=reduction), plain, (a, b))
    assert_scales(measured[1:], (8**-0.5, 8**-0.5))
