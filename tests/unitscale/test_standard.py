"""unitscale.standard, the twin of unitscale.functional: the same names and signatures, the same
argument checks, the plain ops (values and gradients); labels checked where they can be; layers
pick their twin from Numerics."""

import importlib.util
import inspect
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import unitscale.functional as U
import unitscale.standard as S
from unitscale.nn import Numerics, op_twin


def _load(name):
    # Test modules are not a package (--import-mode=importlib): load the sibling by its path.
    spec = importlib.util.spec_from_file_location(f"_twin_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


errors = _load("test_functional_errors")

TWINS = {"functional": U, "standard": S}
KEY = jax.random.key(0)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _ids(seed, shape, high):
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


# --- one op set, two twins -------------------------------------------------------------------


def test_twins_have_the_same_ops_with_the_same_signatures():
    assert S.__all__ == U.__all__
    for name in U.__all__:
        assert inspect.signature(getattr(S, name)) == inspect.signature(getattr(U, name)), name
        assert getattr(S, name).__doc__, name


def test_numerics_picks_the_twin_and_the_initial_weight_scale():
    unit, standard = Numerics(unit_scaled=True), Numerics(unit_scaled=False)
    assert unit.ops is U and standard.ops is S
    assert op_twin(True) is U and op_twin(False) is S
    assert unit.weight_std(64, None) == 1.0 and unit.weight_std(64, 0.02) == 1.0
    assert standard.weight_std(64, None) == 64**-0.5 and standard.weight_std(64, 0.02) == 0.02
    with pytest.raises(ValueError, match="init std must be positive"):
        standard.weight_std(64, 0.0)


# Every bad input of test_functional_errors fails the standard twin with the same message, except a
# constraint that names a valid tie of the wrong arity (the standard ops tie no scales).
FUNCTIONAL_ONLY = {"constraint arity"}


@pytest.mark.parametrize("case", [c for c in errors.CASES if c not in FUNCTIONAL_ONLY])
def test_standard_rejects_the_same_bad_input(case, monkeypatch):
    monkeypatch.setattr(errors, "U", S)  # the cases look the op set up when they run
    call, error, message = errors.CASES[case]
    with pytest.raises(error, match=message):
        call()


# --- the standard ops are the plain ones -------------------------------------------------------


def _plain_layer_norm(x, w, b, eps=1e-5):
    centred = x - x.mean(-1, keepdims=True)
    return centred / jnp.sqrt((centred**2).mean(-1, keepdims=True) + eps) * w + b


def _plain_attention(q, k, v, causal):
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        logits = jnp.where(jnp.tril(jnp.ones(logits.shape[-2:], bool)), logits, -jnp.inf)
    return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, -1), v)


def _plain_conv(x, w, b):
    """Causal depthwise-by-groups convolution as an explicit sum over taps (groups = 1 here)."""
    kernel = w.shape[0]
    padded = jnp.pad(x, ((0, 0), (kernel - 1, 0), (0, 0)))
    return sum(padded[:, t : t + x.shape[1]] @ w[t] for t in range(kernel)) + b


def _plain_rnn(x, w, b):
    h, states = jnp.zeros((x.shape[0], x.shape[-1])), []
    for t in range(x.shape[1]):
        h = jnp.tanh(x[:, t] + h @ w + b)
        states.append(h)
    return jnp.stack(states, 1)


x = _normal(1, (3, 5, 8))
w88, b8 = _normal(2, (8, 8)), _normal(3, (8,))
q, k, v = (_normal(s, (2, 6, 2, 4)) for s in (4, 5, 6))
labels = _ids(7, (3, 5), 8)

PLAIN = {  # name: (standard call, plain jnp reference), each a function of its float arguments
    "matmul": (lambda a, m: S.matmul(a, m), lambda a, m: a @ m, (x, w88)),
    "linear": (lambda a, m, c: S.linear(a, m, c), lambda a, m, c: a @ m + c, (x, w88, b8)),
    "linear_readout": (lambda a, m: S.linear_readout(a, m), lambda a, m: a @ m, (x, w88)),
    "gelu": (lambda a: S.gelu(a, mult=3.0), lambda a: jax.nn.gelu(a, approximate=False), (x,)),
    "gelu tanh": (lambda a: S.gelu(a, approximate="tanh"), lambda a: jax.nn.gelu(a, approximate=True), (x,)),
    "silu": (lambda a: S.silu(a, 2.0), lambda a: a * jax.nn.sigmoid(a), (x,)),
    "silu_glu": (lambda a, g: S.silu_glu(a, g, 2.0), lambda a, g: a * g * jax.nn.sigmoid(g), (x, x[::-1])),
    "softmax": (lambda a: S.softmax(a, 1, mult=4.0), lambda a: jax.nn.softmax(a, 1), (x,)),
    "tanh": (S.tanh, jnp.tanh, (x,)),
    "layer_norm": (lambda a, g, c: S.layer_norm(a, 8, g, c), _plain_layer_norm, (x, b8, b8[::-1])),
    "rms_norm": (lambda a, g: S.rms_norm(a, 8, g),
                 lambda a, g: a / jnp.sqrt((a**2).mean(-1, keepdims=True) + 1e-5) * g, (x, b8)),
    "add": (lambda a, c: S.add(a, c), lambda a, c: a + c, (x, b8)),
    "residual": (lambda a: S.residual_apply(jnp.sin, a, tau=0.3), lambda a: jnp.sin(a) + a, (x,)),
    "embedding": (lambda t: S.embedding(labels, t), lambda t: t[labels], (w88,)),
    "attention": (lambda a, b, c: S.scaled_dot_product_attention(a, b, c, mult=5.0),
                  lambda a, b, c: _plain_attention(a, b, c, False), (q, k, v)),
    "causal attention": (lambda a, b, c: S.scaled_dot_product_attention(a, b, c, is_causal=True),
                         lambda a, b, c: _plain_attention(a, b, c, True), (q, k, v)),
    "cross_entropy": (lambda a: S.cross_entropy(a, labels, mult=0.5),
                      lambda a: optax.softmax_cross_entropy_with_integer_labels(a, labels).mean(), (x,)),
    "mse_loss": (lambda a, c: S.mse_loss(a, c), lambda a, c: ((a - c) ** 2).mean(), (x, x[::-1])),
    "conv1d": (lambda a, m, c: S.conv1d(a, m, c, padding="causal"), _plain_conv, (x, _normal(8, (3, 8, 8)), b8)),
    "rnn": (lambda a, m, c: S.rnn(a, m, c), _plain_rnn, (x, 0.3 * w88, b8)),
    "dropout eval": (lambda a: S.dropout(a, 0.3, training=False), lambda a: a, (x,)),
}


@pytest.mark.parametrize("name", PLAIN)
def test_standard_ops_are_the_plain_functions_with_their_true_gradients(name):
    op, plain, args = PLAIN[name]
    np.testing.assert_allclose(op(*args), plain(*args), rtol=1e-5, atol=1e-5)
    argnums = tuple(range(len(args)))
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    for got, want in zip(jax.grad(loss(op), argnums)(*args), jax.grad(loss(plain), argnums)(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_standard_dropout_is_inverted_dropout():
    y = S.dropout(jnp.ones((100, 100)), 0.25, rng=KEY)
    kept = np.asarray(y) != 0
    assert set(np.unique(np.asarray(y))) == {0.0, np.float32(1 / 0.75)}
    assert 0.7 < kept.mean() < 0.8
    # no key is needed when nothing is dropped
    assert S.dropout(x, 0.0) is x and S.dropout(x, 0.5, training=False) is x


def test_standard_cross_entropy_ignores_labels_and_sums():
    masked = labels.at[0].set(-1)
    per_token = optax.softmax_cross_entropy_with_integer_labels(x, jnp.where(masked >= 0, masked, 0))
    valid = masked >= 0
    mean = S.cross_entropy(x, masked, ignore_index=-1)
    np.testing.assert_allclose(mean, per_token[valid].mean(), rtol=1e-6)
    np.testing.assert_allclose(S.cross_entropy(x, masked, ignore_index=-1, reduction="sum"),
                               per_token[valid].sum(), rtol=1e-6)
    grad = jax.grad(lambda a: S.cross_entropy(a, masked, ignore_index=-1))(x)
    assert not np.asarray(grad[0]).any()


def test_standard_products_return_their_float32_accumulator_and_the_rest_the_input_dtype():
    xb, wb = x.astype(jnp.bfloat16), w88.astype(jnp.bfloat16)
    assert S.linear(xb, wb, b8.astype(jnp.bfloat16)).dtype == jnp.float32
    assert S.matmul(xb, wb).dtype == jnp.float32
    assert U.linear(xb, wb).dtype == jnp.bfloat16
    for out in (S.gelu(xb), S.layer_norm(xb, 8), S.conv1d(xb, wb[None]), S.rnn(xb, wb), S.add(xb, xb)):
        assert out.dtype == jnp.bfloat16


# --- labels out of range -----------------------------------------------------------------------


@pytest.mark.parametrize("twin", TWINS)
@pytest.mark.parametrize("bad", [8, 100, -1, -7])
def test_cross_entropy_rejects_concrete_labels_outside_the_classes(twin, bad):
    ops = TWINS[twin]
    with pytest.raises(ValueError, match=rf"target must hold class indices in \[0, 8\) or ignore_index=-100; got {bad}"):
        ops.cross_entropy(x, labels.at[1, 2].set(bad))
    # the ignore index itself is fine, and so is any ignore index outside the classes
    ops.cross_entropy(x, labels.at[1, 2].set(-100))
    ops.cross_entropy(x, labels.at[1, 2].set(bad), ignore_index=bad)


@pytest.mark.parametrize("twin", TWINS)
def test_cross_entropy_cannot_check_traced_labels(twin):
    """Under jit the labels are tracers: no error; as documented, a label >= V gives NaN and a
    negative one counts from the end."""
    ops = TWINS[twin]
    loss = jax.jit(lambda t: ops.cross_entropy(x, t))
    assert np.isnan(loss(labels.at[1, 2].set(8)))
    np.testing.assert_allclose(loss(labels.at[1, 2].set(-1)), loss(labels.at[1, 2].set(7)), rtol=1e-6)
