"""The unit-scaling contract of every op in unitscale.functional.

For unit-variance random inputs and a unit-variance random output gradient (``jax.vjp`` with a
normal cotangent; a cotangent of 1 for scalar losses), the output and each input gradient have
std within the tolerances of unit-scaling 0.3.5's tests (seed-independent here: shapes, seeds and
hyperparameters are drawn by hypothesis): ``|std - 1| <= 0.1`` for single ops at shapes around
(2^8 x 2^10) @ (2^10 x 2^12); attention looser where the reference is looser.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscale.functional as U

seeds = st.integers(0, 2**20)


def _normal(seed, shape):
    # numpy draws need no compilation per shape; seeds are fixed, so runs are reproducible.
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _unit_backward(fn, *args, seed=12345):
    """Output of ``fn(*args)`` and the input gradients for a unit-normal output gradient."""
    out_shape = jax.eval_shape(fn, *args)
    if out_shape.ndim == 0:
        cotangent = jnp.ones((), out_shape.dtype)
    else:  # an offset seed keeps the cotangent independent of inputs drawn from `seed`
        cotangent = _normal(seed + 10**9, out_shape.shape).astype(out_shape.dtype)

    def run(args, cotangent):
        out, vjp = jax.vjp(fn, *args)
        return out, vjp(cotangent)

    return jax.jit(run)(args, cotangent)


def _std(t):
    return float(np.std(np.asarray(t, dtype=np.float64)))


def _rms(t):
    return float(np.sqrt(np.mean(np.square(np.asarray(t, dtype=np.float64)))))


def assert_unit(*tensors, tol=0.1, stat=_std):
    values = [stat(t) for t in tensors]
    assert all(abs(v - 1) <= tol for v in values), f"{stat.__name__} = {np.round(values, 3)}"


# --- matmul / linear ------------------------------------------------------------------------


@settings(max_examples=5)
@given(
    m=st.sampled_from([2**7, 2**8, 2**9]),
    k=st.sampled_from([2**9, 2**10, 2**11]),
    n=st.sampled_from([2**11, 2**12]),
    batched=st.booleans(),
    seed=seeds,
)
def test_matmul_is_unit_scaled(m, k, n, batched, seed):
    # With batch axes on the left, the right gradient sums over every row: (2, m/2, k) @ (k, n).
    left = _normal(seed, (2, m // 2, k) if batched else (m, k))
    right = _normal(seed + 1, (k, n))
    out, (d_left, d_right) = _unit_backward(
        lambda a, b: U.matmul(a, b, constraint=None), left, right, seed=seed + 2
    )
    assert_unit(out, d_left, d_right)


@settings(max_examples=6)
@given(
    constraint=st.sampled_from(["to_output_scale", "to_left_grad_scale", "to_right_grad_scale"]),
    seed=seeds,
)
def test_matmul_constraint_makes_its_tensor_unit(constraint, seed):
    left, right = _normal(seed, (2**8, 2**10)), _normal(seed + 1, (2**10, 2**12))
    out, grads = _unit_backward(lambda a, b: U.matmul(a, b, constraint), left, right, seed=seed)
    chosen = dict(
        to_output_scale=out, to_left_grad_scale=grads[0], to_right_grad_scale=grads[1]
    )
    assert_unit(chosen[constraint])
    for name, tensor in chosen.items():
        if name != constraint:  # tied to another tensor's scale: far from unit at these shapes
            assert abs(_std(tensor) - 1) > 0.3


def test_matmul_gmean_balances_the_three_scales():
    left, right = _normal(0, (2**8, 2**10)), _normal(1, (2**10, 2**12))
    out, (d_left, d_right) = _unit_backward(lambda a, b: U.matmul(a, b, "gmean"), left, right)
    assert _std(out) * _std(d_left) * _std(d_right) == pytest.approx(1, abs=0.1)


@settings(max_examples=5)
@given(
    batch=st.sampled_from([(2**8,), (4, 2**6), (2, 8, 16)]),
    fan_in=st.sampled_from([2**9, 2**10]),
    fan_out=st.sampled_from([2**11, 2**12]),
    seed=seeds,
)
def test_linear_is_unit_scaled(batch, fan_in, fan_out, seed):
    x = _normal(seed, (*batch, fan_in))
    w, b = _normal(seed + 1, (fan_in, fan_out)), _normal(seed + 2, (fan_out,))
    out, grads = _unit_backward(lambda *a: U.linear(*a, constraint=None), x, w, b, seed=seed)
    assert_unit(out, *grads)


@settings(max_examples=4)
@given(constraint=st.sampled_from(["to_output_scale", "to_grad_input_scale"]), seed=seeds)
def test_linear_constraint_keeps_weight_gradients_unit(constraint, seed):
    x, w, b = _normal(seed, (2**8, 2**10)), _normal(seed + 1, (2**10, 2**12)), jnp.zeros(2**12)
    out, (dx, dw, db) = _unit_backward(lambda *a: U.linear(*a, constraint), x, w, b, seed=seed)
    assert_unit(dw, db)  # weights sit on a cut edge: never constrained
    assert_unit(out if constraint == "to_output_scale" else dx)


def test_linear_gmean_balances_output_and_input_gradient():
    x, w, b = _normal(0, (2**8, 2**10)), _normal(1, (2**10, 2**12)), jnp.zeros(2**12)
    out, (dx, dw, db) = _unit_backward(lambda *a: U.linear(*a, "gmean"), x, w, b)
    assert_unit(dw, db)
    assert abs(_std(out) - 1) > 0.1 and abs(_std(dx) - 1) > 0.1
    assert _std(out) * _std(dx) == pytest.approx(1, abs=0.1)


def test_linear_readout_has_mup_output_and_unit_gradients():
    fan_in = 2**10
    x, w, b = _normal(0, (2**8, fan_in)), _normal(1, (fan_in, 2**12)), jnp.zeros(2**12)
    out, grads = _unit_backward(U.linear_readout, x, w, b)
    assert_unit(*grads)
    assert _std(out) * fan_in**0.5 == pytest.approx(1, abs=0.1)  # std = fan_in^-1/2


# --- element-wise ---------------------------------------------------------------------------

mults = st.sampled_from([1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0])


@settings(max_examples=8)
@given(
    op=st.sampled_from(["gelu", "gelu_tanh", "silu"]), mult=mults, seed=seeds
)
def test_activations_are_unit_scaled(op, mult, seed):
    fn = {
        "gelu": lambda x: U.gelu(x, mult, None),
        "gelu_tanh": lambda x: U.gelu(x, mult, None, approximate="tanh"),
        "silu": lambda x: U.silu(x, mult, None),
    }[op]
    out, (dx,) = _unit_backward(fn, _normal(seed, (2**6, 2**10)), seed=seed + 1)
    assert_unit(out, dx)


@pytest.mark.parametrize("op", [U.gelu, U.silu])
def test_activation_constraints_make_their_side_unit(op):
    x = _normal(0, (2**16,))
    out, (dx,) = _unit_backward(lambda t: op(t, 2.0, "to_output_scale"), x)
    assert_unit(out)
    out, (dx,) = _unit_backward(lambda t: op(t, 2.0, "to_grad_input_scale"), x)
    assert_unit(dx)


@settings(max_examples=5)
@given(mult=mults, seed=seeds)
def test_silu_glu_is_unit_scaled(mult, seed):
    x, gate = _normal(seed, (2**6, 2**10)), _normal(seed + 1, (2**6, 2**10))
    out, grads = _unit_backward(lambda a, b: U.silu_glu(a, b, mult), x, gate, seed=seed + 2)
    assert_unit(out, *grads)


@settings(max_examples=6)
@given(
    n=st.sampled_from([2**8, 2**10, 2**12]),
    dim=st.integers(0, 2),
    mult=st.sampled_from([1 / 16, 1 / 8, 1 / 4]),
    seed=seeds,
)
def test_softmax_is_unit_scaled_in_rms_for_small_mult(n, dim, mult, seed):
    # The fitted model is accurate for mult <= 1/4 (unit-scaling 0.3.5 tests at mult = 1/4, rms).
    shape = [4, 4, 4]
    shape[dim] = n
    x = _normal(seed, tuple(shape))
    out, (dx,) = _unit_backward(lambda t: U.softmax(t, dim, None, None, mult), x, seed=seed + 1)
    assert_unit(out, dx, stat=_rms)


@pytest.mark.xfail(
    strict=True,
    reason="unit-scaling 0.3.5's fitted softmax scale is inaccurate near mult = 1 (its tests use "
    "mult = 1/4): at n = 4096, mult = 1 the output and gradient rms are about 0.72 and 0.71",
)
def test_softmax_is_unit_scaled_at_mult_one():
    x = _normal(0, (16, 2**12))
    out, (dx,) = _unit_backward(lambda t: U.softmax(t, -1, None, None, 1.0), x)
    assert_unit(out, dx, stat=_rms)


def test_softmax_constraints_make_their_side_unit():
    x = _normal(0, (16, 2**12))
    out, _ = _unit_backward(lambda t: U.softmax(t, -1, None, "to_output_scale", 0.25), x)
    assert_unit(out, stat=_rms)
    _, (dx,) = _unit_backward(lambda t: U.softmax(t, -1, None, "to_grad_input_scale", 0.25), x)
    assert_unit(dx, stat=_rms)


@settings(max_examples=4)
@given(p=st.floats(0.01, 0.99), seed=seeds)
def test_dropout_is_unit_scaled(p, seed):
    fn = lambda x: U.dropout(x, p, rng=jax.random.key(seed + 7))  # noqa: E731
    out, (dx,) = _unit_backward(fn, _normal(seed, (2**18,)), seed=seed + 1)
    assert_unit(out, dx)


# --- normalisation --------------------------------------------------------------------------


@settings(max_examples=4)
@given(
    shape=st.sampled_from(
        [((2**7, 2**10), (2**10,)), ((8, 16, 2**10), (2**10,)), ((2**7, 32, 32), (32, 32))]
    ),
    affine=st.booleans(),
    seed=seeds,
)
def test_norms_are_unit_scaled(shape, affine, seed):
    shape, norm_shape = shape
    x = _normal(seed, shape)
    # A unit bias would add to the unit normalised output; like the reference, start it at zero.
    w, b = _normal(seed + 1, norm_shape), jnp.zeros(norm_shape)
    if affine:
        ln = _unit_backward(lambda *a: U.layer_norm(a[0], norm_shape, *a[1:]), x, w, b, seed=seed)
        rms = _unit_backward(lambda *a: U.rms_norm(a[0], norm_shape, *a[1:]), x, w, seed=seed)
    else:
        ln = _unit_backward(lambda t: U.layer_norm(t, norm_shape), x, seed=seed)
        rms = _unit_backward(lambda t: U.rms_norm(t, norm_shape), x, seed=seed)
    for out, grads in (ln, rms):
        assert_unit(out, *grads)


# --- add and residuals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "left_shape, right_shape",
    [
        ((2**8, 2**10), (2**8, 2**10)),
        ((2**10,), (2**8, 2**10)),
        ((2**5, 1, 2**10), (2**6, 2**10)),
    ],
)
def test_add_is_unit_scaled_with_broadcasting(left_shape, right_shape):
    a, b = _normal(0, left_shape), _normal(1, right_shape)
    out, grads = _unit_backward(lambda x, y: U.add(x, y, constraint=None), a, b)
    assert_unit(out, *grads)


def test_add_of_a_single_element_keeps_unit_scale():
    a, b = jnp.array(5.0), _normal(1, (2**8, 2**10))
    out, (da, db) = _unit_backward(lambda x, y: U.add(x, y, constraint=None), a, b)
    assert_unit(out, db)  # out = b + 5: a shift, not a wider spread
    assert 1e-4 < abs(float(da)) < 5  # one draw of a folded unit normal
    out, (db,) = _unit_backward(lambda y: U.add(2.0, y), b)
    assert_unit(out, db)


def test_add_gmean_balances_the_three_scales():
    a, b = _normal(0, (2**8, 2**10)), _normal(1, (2**8, 2**10))
    out, (da, db) = _unit_backward(lambda x, y: U.add(x, y, "gmean"), a, b)
    assert abs(_std(out) - 1) > 0.1
    assert _std(out) * _std(da) * _std(db) == pytest.approx(1, abs=0.1)


@settings(max_examples=5)
@given(tau=st.floats(0.1, 5.0), seed=seeds)
def test_residual_branch_keeps_every_tensor_unit(tau, seed):
    x, w = _normal(seed, (2**6, 2**10)), _normal(seed + 1, (2**10, 2**10))

    def block(x, w):
        residual, skip = U.residual_split(x, tau)
        branch = U.linear(residual, w, None, constraint=None)
        return U.residual_add(branch, skip, tau), branch

    (out, branch), vjp = jax.vjp(block, x, w)
    dx, dw = vjp((_normal(seed + 2, out.shape), jnp.zeros_like(branch)))
    assert_unit(out, branch, dx, dw)
    out2, (dx2, dw2) = _unit_backward(
        lambda x, w: U.residual_apply(lambda r: U.linear(r, w, None, constraint=None), x, tau),
        x, w, seed=seed + 2,
    )  # fmt: skip
    assert_unit(out2, dx2, dw2)


# --- embedding and attention ----------------------------------------------------------------


@settings(max_examples=4)
@given(
    vocab=st.sampled_from([2**10, 2**12]),
    ids_shape=st.sampled_from([(16, 32), (8, 64), (2**10,)]),
    d=st.sampled_from([64, 128]),
    seed=seeds,
)
def test_embedding_is_unit_scaled(vocab, ids_shape, d, seed):
    ids = jnp.asarray(np.random.default_rng(seed).integers(0, vocab, ids_shape))
    table = _normal(seed + 1, (vocab, d))
    out, (d_table,) = _unit_backward(lambda t: U.embedding(ids, t), table, seed=seed + 2)
    assert_unit(out, d_table)


def _attention_inputs(seed, batch, seq, heads, d_head):
    return tuple(_normal(seed + i, (batch, seq, heads, d_head)) for i in range(3))


@settings(max_examples=6)
@given(
    seq=st.sampled_from([64, 128, 256]),
    heads=st.sampled_from([1, 2, 4]),
    d_head=st.sampled_from([32, 64, 128]),
    mult=st.sampled_from([0.25, 1.0, 4.0]),
    is_causal=st.booleans(),
    dropout_p=st.sampled_from([0.0, 0.1, 0.5]),
    seed=seeds,
)
def test_attention_output_and_value_gradient_are_unit(
    seq, heads, d_head, mult, is_causal, dropout_p, seed
):
    batch = max(2**16 // (seq * heads * d_head), 1)
    q, k, v = _attention_inputs(seed, batch, seq, heads, d_head)

    def attend(q, k, v):
        return U.scaled_dot_product_attention(
            q, k, v, None, dropout_p, is_causal, mult, rng=jax.random.key(seed + 7)
        )

    out, (dq, dk, dv) = _unit_backward(attend, q, k, v, seed=seed + 3)
    # unit-scaling 0.3.5 accepts 0.1 at (256, 64, 64) non-causal and 0.5 for attention modules.
    # Its causal model log(S)/S undercounts the mean visible fraction H_S/S, so causal outputs sit
    # up to ~8% high: allow 0.15 there.
    assert_unit(out, dv, tol=0.15 if is_causal else 0.1)


@settings(max_examples=4)
@given(
    seq=st.sampled_from([64, 256]),
    d_head=st.sampled_from([32, 64, 128]),
    mult=st.sampled_from([0.25, 0.5, 1.0]),
    seed=seeds,
)
def test_attention_query_key_gradients_scale_as_mult_over_sqrt_d_head(seq, d_head, mult, seed):
    # muP logits (mult / d_head) make q, k gradients small by design, std ~ mult * d_head^-1/2
    # while attention is near-uniform (unit-scaling 0.3.5 tests this as S^-1/2 with S = d_head).
    batch = max(2**16 // (seq * d_head), 1)
    q, k, v = _attention_inputs(seed, batch, seq, 2, d_head)
    fn = lambda q, k, v: U.scaled_dot_product_attention(q, k, v, mult=mult)  # noqa: E731
    _, (dq, dk, _) = _unit_backward(fn, q, k, v, seed=seed + 3)
    expect = mult * d_head**-0.5
    for grad in (dq, dk):
        assert _std(grad) / expect == pytest.approx(1, abs=0.1)


# --- losses ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(2**8,), (2**12, 2**8), (8, 128, 2**10)])
def test_cross_entropy_logit_gradient_is_unit(reduction, shape):
    logits = _normal(0, shape)
    labels = jnp.asarray(np.random.default_rng(1).integers(0, shape[-1], shape[:-1]))
    loss = lambda x: U.cross_entropy(x, labels, reduction=reduction)  # noqa: E731
    _, (d_logits,) = _unit_backward(loss, logits)
    assert_unit(d_logits)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_gradients_are_unit(reduction):
    a, b = _normal(0, (2, 2**10)), _normal(1, (2, 2**10))
    _, grads = _unit_backward(lambda x, y: U.mse_loss(x, y, reduction=reduction), a, b)
    assert_unit(*grads)
