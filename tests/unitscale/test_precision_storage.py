"""Stored-format training state: parameters and Adam moments on a format's grid, no float32 master copy.

The nearest-rounding step is checked bit for bit against a NumPy reference of one Adam step. The
reference follows the float32 arithmetic XLA:CPU runs for optax's Adam: it contracts ``a * b + c`` into
one fused multiply-add (emulated here in extended precision, exact for float32 operands) and divides
by a scalar as a multiply by its reciprocal; then it rounds with ml_dtypes (round to nearest even,
saturating at the format's max as :func:`unitscale.formats.quantize` does).
"""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitscale import formats as F
from unitscale.precision import (StaticLossScale, Storage, apply_stored_updates, precision_policy,
                                 scale_by_stored_adam, scaling_recipe, store_params, stored_optimizer,
                                 value_and_grad_with_recipe)

ML_DTYPES = {"FP16": np.float16, "BF16": ml_dtypes.bfloat16, "E4M3FN": ml_dtypes.float8_e4m3fn}


def _round(x: np.ndarray, fmt) -> np.ndarray:
    if fmt is None:
        return x
    return np.clip(x, -fmt.max, fmt.max).astype(ML_DTYPES[fmt.name]).astype(np.float32)


def _fma(a, b, c) -> np.ndarray:
    wide = np.longdouble
    return (np.asarray(a, wide) * np.asarray(b, wide) + np.asarray(c, wide)).astype(np.float32)


def reference_step(p, g, mu, nu, count, *, lr, b1, b2, eps, storage):
    """One stored-format Adam step in NumPy float32: ``(p', mu', nu')``."""
    f = np.float32
    mu = _round(_fma(f(1 - b1), g, f(b1) * mu), storage.first_moment)
    nu = _round(_fma(f(1 - b2), g * g, f(b2) * nu), storage.second_moment)
    c1, c2 = f(1) - f(b1) ** f(count), f(1) - f(b2) ** f(count)
    direction = (mu * (f(1) / c1)) / (np.sqrt(nu * (f(1) / c2)) + f(eps))
    return _round(_fma(f(-lr), direction, p), storage.params), mu, nu


def _adam(storage, lr, b1, b2, eps, seed=0):
    inner = optax.chain(scale_by_stored_adam(b1, b2, eps, storage, seed=seed + 1), optax.scale_by_learning_rate(lr))
    return stored_optimizer(inner, storage, seed=seed)


def _steps(storage, params, grads, *, lr, b1, b2, eps, seed=0):
    """Params and Adam state after one jitted stored step per gradient in ``grads``."""
    optimizer = _adam(storage, lr, b1, b2, eps, seed)

    @jax.jit
    def step(params, state, g):
        updates, state = optimizer.update(g, state, params)
        return apply_stored_updates(params, updates, state, storage), state

    params = store_params(params, storage)
    state = optimizer.init(params)
    for g in grads:
        params, state = step(params, state, g)
    return params, state


def _adam_state(state):
    return state.inner[0]


formats = st.sampled_from([F.FP16, F.BF16, F.E4M3])
moment_formats = st.sampled_from([None, F.FP16, F.BF16])


@settings(max_examples=25)
@given(params_fmt=formats, first=moment_formats, second=st.sampled_from([None, F.FP16]),
       log_grad=st.integers(-30, 0), lr=st.sampled_from([1e-1, 3e-3, 1e-4]), b1=st.sampled_from([0.9, 0.5]),
       b2=st.sampled_from([0.999, 0.95]), seed=st.integers(0, 2**16))
def test_a_stored_adam_step_is_exact_against_numpy(params_fmt, first, second, log_grad, lr, b1, b2, seed):
    rng = np.random.default_rng(seed)
    storage = Storage(params=params_fmt, first_moment=first, second_moment=second)
    p0 = _round(rng.standard_normal(300).astype(np.float32) * np.float32(4), params_fmt)
    grads = [(rng.standard_normal(300) * 2.0 ** rng.integers(log_grad - 8, log_grad + 1, 300)).astype(np.float32)
             for _ in range(2)]
    got_p, state = _steps(storage, jnp.asarray(p0), [jnp.asarray(g) for g in grads], lr=lr, b1=b1, b2=b2, eps=1e-8)
    p, mu, nu = p0, np.zeros_like(p0), np.zeros_like(p0)
    for count, g in enumerate(grads, start=1):
        p, mu, nu = reference_step(p, g, mu, nu, count, lr=lr, b1=b1, b2=b2, eps=1e-8, storage=storage)
    adam = _adam_state(state)
    np.testing.assert_array_equal(np.asarray(adam.mu), mu)
    np.testing.assert_array_equal(np.asarray(adam.nu), nu)
    np.testing.assert_array_equal(np.asarray(got_p), p)


def test_float32_storage_equals_optax_adam():
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.standard_normal(100), jnp.float32)
    grads = [jnp.asarray(rng.standard_normal(100), jnp.float32) for _ in range(3)]
    stored, _ = _steps(Storage(), p, grads, lr=1e-2, b1=0.9, b2=0.999, eps=1e-8)
    plain, opt = p, optax.adam(1e-2)
    state = opt.init(p)

    @jax.jit  # one program, as the stored step is: XLA fuses the update into the sum alike
    def step(params, state, g):
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        plain, state = step(plain, state, g)
    np.testing.assert_array_equal(stored, plain)


def test_stochastic_rounding_of_the_update_is_unbiased():
    # An update of a quarter of FP16's spacing at 1.0: nearest rounding loses it every time;
    # stochastic rounding moves the stored value up with probability 1/4.
    spacing = 2.0**-10
    p = jnp.ones(4096, jnp.float32)
    update = jnp.full(4096, spacing / 4, jnp.float32)
    storage = Storage(params=F.FP16, rounding="stochastic")
    optimizer = stored_optimizer(optax.identity(), storage, seed=3)
    state = optimizer.update(update, optimizer.init(p), p)[1]
    stored = np.asarray(apply_stored_updates(p, update, state, storage), np.float64)
    assert set(np.unique(stored)) == {1.0, 1.0 + spacing}
    # Mean of 4096 Bernoulli(1/4) steps: standard error spacing * sqrt(3/16 / 4096); allow 4 of them.
    assert abs(stored.mean() - (1.0 + spacing / 4)) < 4 * spacing * (3 / 16 / 4096) ** 0.5
    nearest = apply_stored_updates(p, update, state, Storage(params=F.FP16))
    np.testing.assert_array_equal(nearest, p)


def test_stochastic_moments_are_unbiased_and_seeded():
    storage = Storage(first_moment=F.FP16, rounding="stochastic")
    g = jnp.full(8192, 1.0 + 2.0**-12, jnp.float32)  # (1 - b1) g with b1 = 0 falls between FP16 values
    p = jnp.zeros(8192, jnp.float32)

    def first_moment(seed):
        return np.asarray(_adam_state(_steps(storage, p, [g], lr=1e-3, b1=0.0, b2=0.9, eps=1e-8, seed=seed)[1]).mu,
                          np.float64)

    mu = first_moment(0)
    assert set(np.unique(mu)) == {1.0, 1.0 + 2.0**-10}
    assert abs(mu.mean() - float(g[0])) < 4 * 2.0**-10 * (3 / 16 / 8192) ** 0.5
    np.testing.assert_array_equal(mu, first_moment(0))
    assert not np.array_equal(mu, first_moment(1))


def test_store_params_rounds_an_initialisation_to_the_grid():
    p = {"w": jnp.asarray([1.0 + 2.0**-12, 3e-9, 70000.0]), "steps": jnp.asarray([3], jnp.int32)}
    stored = store_params(p, Storage(params=F.FP16))
    np.testing.assert_array_equal(stored["w"], [1.0, 0.0, 65504.0])
    assert stored["steps"].dtype == jnp.int32


def test_moments_need_a_stored_adam():
    storage = Storage(first_moment=F.FP16)
    with pytest.raises(ValueError, match="scale_by_stored_adam"):
        stored_optimizer(optax.adam(1e-3), storage).init(jnp.zeros(3))


def test_storage_validates_its_fields():
    with pytest.raises(ValueError, match="rounding must be one of"):
        Storage(rounding="up")
    with pytest.raises(TypeError, match="params must be an FPFormat"):
        Storage(params=16)
    assert Storage(params="FP16").params == F.FP16


def test_the_paper_preset_stores_fp16_weights_and_first_moment_stochastically():
    policy = precision_policy("fp16_paper")
    assert policy.compute_dtype == "float16"
    assert policy.storage == Storage(params=F.FP16, first_moment=F.FP16, rounding="stochastic")
    assert type(policy).from_dict(policy.to_dict()) == policy


def test_backward_only_loss_scale_leaves_the_gradients_scaled():
    from flax import nnx

    class Scalar(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.asarray(2.0))

    loss_fn = lambda m, b: (m.w[...] * b, {"count": jnp.asarray(1.0)})  # noqa: E731
    _, paper = scaling_recipe("fp32", "static-backward")
    assert paper == StaticLossScale(2048.0, backward_only=True)
    grads = {name: value_and_grad_with_recipe(loss_fn, Scalar(), jnp.asarray(3.0), scale)[2]
             for name, scale in (("paper", paper), ("usual", StaticLossScale(2048.0)))}
    assert float(grads["paper"]["w"][...]) == 3.0 * 2048 and float(grads["usual"]["w"][...]) == 3.0
