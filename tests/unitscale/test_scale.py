"""scale / scale_fwd / scale_bwd: independent forward and backward factors, composable with JAX."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitscale.scale import scale, scale_bwd, scale_fwd

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
factors = st.floats(min_value=1 / 64, max_value=64).map(lambda f: float(np.float32(f)))


def _normal(seed, shape, dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def _as_f32(x):
    return np.asarray(x.astype(jnp.float32))


@settings(max_examples=8)
@given(
    fwd=factors,
    bwd=factors,
    dtype=st.sampled_from(DTYPES),
    shape=st.sampled_from([(7,), (3, 5), (2, 3, 4)]),
    seed=st.integers(0, 2**16),
)
def test_forward_scales_by_fwd_and_gradient_by_bwd(fwd, bwd, dtype, shape, seed):
    # Inputs and expectations in numpy (ml_dtypes for bfloat16): no per-shape compilation.
    np_dtype = jnp.dtype(dtype)
    rng = np.random.default_rng(seed)
    x, g = (rng.standard_normal(shape).astype(np_dtype) for _ in range(2))

    def run(x, g):
        y, vjp = jax.vjp(lambda t: scale(t, fwd, bwd), x)
        return y, vjp(g)[0]

    y, dx = jax.jit(run)(x, g)
    assert y.dtype == np_dtype and dx.dtype == np_dtype
    # The product is taken in float32 and rounded once to the input dtype.
    expect_y = (x.astype(np.float32) * np.float32(fwd)).astype(np_dtype)
    expect_dx = (g.astype(np.float32) * np.float32(bwd)).astype(np_dtype)
    np.testing.assert_array_equal(_as_f32(y), expect_y.astype(np.float32))
    np.testing.assert_array_equal(_as_f32(dx), expect_dx.astype(np.float32))


def test_scale_fwd_and_scale_bwd_act_on_one_pass_only():
    x, g = _normal(0, (64,)), _normal(1, (64,))
    y, vjp = jax.vjp(lambda t: scale_fwd(t, 3.5), x)
    np.testing.assert_array_equal(y, x * 3.5)
    np.testing.assert_array_equal(vjp(g)[0], g)
    y, vjp = jax.vjp(lambda t: scale_bwd(t, 3.5), x)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(vjp(g)[0], g * 3.5)


def test_forward_mode_tangent_is_scaled_by_bwd():
    x, t = _normal(0, (16,)), _normal(1, (16,))
    y, dy = jax.jvp(lambda v: scale(v, 2.0, 0.25), (x,), (t,))
    np.testing.assert_array_equal(y, 2.0 * x)
    np.testing.assert_array_equal(dy, 0.25 * t)


def test_higher_order_derivatives_use_bwd_at_every_order():
    # L = sum(y^2), y = scale(x, f, b): grad = 2 b y, so the Hessian is 2 b * dy/dx = 2 b^2 I.
    f, b = 2.0, 3.0
    hess = jax.hessian(lambda x: jnp.sum(scale(x, f, b) ** 2))(jnp.ones(3))
    np.testing.assert_allclose(hess, 2 * b**2 * np.eye(3))


def test_composes_with_jit_vmap_grad_and_remat():
    x = _normal(0, (4, 8))

    def loss(v):
        return jnp.sum(jnp.sin(scale(v, 0.5, 4.0)))

    expect = 4.0 * jnp.cos(0.5 * x)
    np.testing.assert_allclose(jax.grad(loss)(x), expect, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(x), expect, rtol=1e-6)
    np.testing.assert_allclose(jax.grad(jax.checkpoint(loss))(x), expect, rtol=1e-6)
    per_row = jax.vmap(jax.grad(loss))(x)
    np.testing.assert_allclose(per_row, expect, rtol=1e-6)


def test_unit_factors_add_no_operation():
    jaxpr = jax.make_jaxpr(lambda x: scale(x, 1.0, 1.0))(jnp.ones(3))
    assert not jaxpr.eqns


def test_scales_are_compile_time_constants():
    x = jnp.ones((8, 8))
    fwd_hlo = jax.jit(lambda v: scale_bwd(v, 3.0)).lower(x).compile().as_text()
    assert "multiply" not in fwd_hlo  # a backward-only scale costs nothing in the forward pass
    grad_fn = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(scale(v, 2.0, 3.0)))))
    # Both factors are literals in the program, not runtime inputs.
    grad_hlo = grad_fn.lower(x).as_text()
    assert "constant dense<3.000000e+00>" in grad_hlo
    assert "constant dense<2.000000e+00>" in grad_hlo
    assert "%arg1" not in grad_hlo  # the only runtime input is x


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(fwd=jnp.float32(2.0)), TypeError, "fwd"),
        (dict(bwd=np.array([1.0, 2.0])), TypeError, "bwd"),
        (dict(fwd=float("inf")), ValueError, "fwd"),
        (dict(bwd=float("nan")), ValueError, "bwd"),
        (dict(fwd=True), TypeError, "fwd"),
    ],
)
def test_bad_factors_are_rejected_by_name(kwargs, error, words):
    with pytest.raises(error, match=words):
        scale(jnp.ones(3), **kwargs)


def test_traced_factor_is_rejected():
    with pytest.raises(TypeError, match="static"):
        jax.jit(lambda x, s: scale_fwd(x, s))(jnp.ones(3), 2.0)


def test_integer_input_is_rejected():
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        scale(jnp.arange(3), 2.0, 2.0)


def test_preserves_sharding_across_two_devices():
    # A fresh interpreter is needed: the host device count is fixed when JAX starts.
    script = textwrap.dedent(
        """
        import jax, jax.numpy as jnp, numpy as np
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from unitscale.scale import scale
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharding = NamedSharding(mesh, P("data", None))
        x = jax.device_put(jnp.arange(32.0).reshape(8, 4), sharding)
        f = jax.jit(jax.value_and_grad(lambda v: jnp.sum(scale(v, 2.0, 3.0) ** 2)))
        value, grad = f(x)
        assert len(jax.devices()) == 2
        assert grad.sharding.is_equivalent_to(sharding, 2), grad.sharding
        np.testing.assert_allclose(value, np.sum((2 * np.arange(32.0)) ** 2))
        np.testing.assert_allclose(grad, 3.0 * 2 * 2 * np.arange(32.0).reshape(8, 4))
        print("ok")
        """
    )
    flags = "--xla_force_host_platform_device_count=2"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]
