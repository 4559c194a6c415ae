"""Loss scaling: jmp-compatible semantics, validation, FP16 underflow and its recovery, skipped steps."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from unitscale.nn.linear import Linear
from unitscale.nn.numerics import Numerics
from unitscale.precision.loss_scale import DynamicLossScale, NoOpLossScale, StaticLossScale, all_finite, select_tree
from unitscale.precision.recipe import apply_if_finite, value_and_grad_with_recipe

# --- the jmp semantics, as a plain-Python reference --------------------------------------------


def jmp_adjust(scale: float, counter: int, finite: bool, period: int, factor: int, min_scale: float):
    """jmp 0.0.4's documented DynamicLossScale.adjust: grow by ``factor`` when a finite step completes a
    period (unless the grown scale overflows), shrink by ``factor`` (not below ``min_scale``) and reset
    the counter on a non-finite step."""
    if not finite:
        return max(min_scale, scale / factor), 0
    if counter == period - 1 and math.isfinite(scale * factor):
        scale = scale * factor
    return scale, (counter + 1) % period


@jax.jit
def _trajectory(loss_scale: DynamicLossScale, flags: jax.Array):
    def step(ls, finite):
        ls = ls.adjust(finite)
        return ls, (ls.loss_scale, ls.counter)

    return jax.lax.scan(step, loss_scale, flags)[1]


@settings(max_examples=60)
@given(
    flags=st.lists(st.booleans(), min_size=24, max_size=24),
    exponent=st.integers(-4, 127),
    period=st.sampled_from([1, 2, 3]),
    factor=st.sampled_from([2, 4]),
    min_exponent=st.sampled_from([-2, 0]),
)
def test_dynamic_loss_scale_follows_jmp_step_by_step(flags, exponent, period, factor, min_exponent):
    min_scale = 2.0**min_exponent
    start = max(2.0**exponent, min_scale)
    scales, counters = _trajectory(DynamicLossScale(start, period=period, factor=factor, min_scale=min_scale),
                                   jnp.asarray(flags))
    scale, counter = start, 0
    for i, finite in enumerate(flags):
        scale, counter = jmp_adjust(scale, counter, finite, period, factor, min_scale)
        assert (float(scales[i]), int(counters[i])) == (scale, counter), f"step {i}"
        assert float(scales[i]) >= min_scale


def test_dynamic_loss_scale_grows_after_period_clean_steps_and_halves_on_a_bad_one():
    ls = DynamicLossScale(2.0**10, period=3, factor=2, min_scale=2.0**9)
    seen = []
    for finite in [True, True, True, True, False, False, False, True]:
        ls = ls.adjust(jnp.bool_(finite))
        seen.append(float(ls.loss_scale))
    assert seen == [2**10, 2**10, 2**11, 2**11, 2**10, 2**9, 2**9, 2**9]


def test_dynamic_loss_scale_keeps_its_static_fields_through_jit_and_its_leaves_are_scale_and_counter():
    ls = DynamicLossScale(8.0, period=5, factor=4, min_scale=0.5)
    leaves, treedef = jax.tree.flatten(ls)
    assert [np.dtype(x.dtype) for x in leaves] == [np.float32, np.int32]
    out = jax.jit(lambda s: s.adjust(jnp.bool_(False)))(ls)
    assert (out.period, out.factor, out.min_scale) == (5, 4, 0.5)
    assert float(out.loss_scale) == 2.0
    assert float(jax.jit(lambda s: s.adjust(jnp.bool_(False)))(out).loss_scale) == 0.5  # min_scale survived
    assert jax.tree.leaves(StaticLossScale(4.0)) == [] and jax.tree.leaves(NoOpLossScale()) == []
    assert DynamicLossScale.skips_nonfinite and not StaticLossScale.skips_nonfinite
    assert not NoOpLossScale.skips_nonfinite


@pytest.mark.parametrize("make, name", [
    (lambda: StaticLossScale(3.0), "loss_scale"),
    (lambda: StaticLossScale(0.0), "loss_scale"),
    (lambda: StaticLossScale(-4.0), "loss_scale"),
    (lambda: StaticLossScale(math.inf), "loss_scale"),
    (lambda: DynamicLossScale(1000.0), "loss_scale"),
    (lambda: DynamicLossScale(np.array([2.0, 4.0])), "loss_scale"),
    (lambda: DynamicLossScale(2.0, factor=3), "factor"),
    (lambda: DynamicLossScale(2.0, factor=1), "factor"),
    (lambda: DynamicLossScale(2.0, period=0), "period"),
    (lambda: DynamicLossScale(2.0, min_scale=3.0), "min_scale"),
])
def test_loss_scales_must_be_powers_of_two(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_static_loss_scale_takes_a_python_number_and_adjust_or_bad_flags():
    with pytest.raises(TypeError, match="loss_scale"):
        StaticLossScale(True)
    with pytest.raises(TypeError, match="loss_scale"):
        StaticLossScale("1024")
    assert StaticLossScale(2**11).loss_scale == 2048.0
    with pytest.raises(ValueError, match="grads_finite"):
        DynamicLossScale(2.0).adjust(jnp.ones(2, bool))


@pytest.mark.parametrize("ls", [StaticLossScale(2.0**-3), DynamicLossScale(2.0**15)])
def test_scale_and_unscale_are_exact_and_leave_integer_leaves_alone(ls):
    tree = {"f32": jax.random.normal(jax.random.key(1), (64,)), "f16": jnp.linspace(-1.5, 1.5, 9, dtype=jnp.float16),
            "int": jnp.arange(5)}
    back = ls.unscale(ls.scale(tree))
    for k in tree:
        assert back[k].dtype == tree[k].dtype
        np.testing.assert_array_equal(np.asarray(back[k]), np.asarray(tree[k]))
    assert ls.scale(tree)["int"] is not None and np.array_equal(ls.scale(tree)["int"], tree["int"])
    np.testing.assert_array_equal(ls.scale(tree)["f32"], tree["f32"] * float(ls.loss_scale))


def test_all_finite_and_select_tree():
    assert bool(all_finite({"a": jnp.ones(3), "n": jnp.arange(3)}))
    assert not bool(all_finite({"a": jnp.array([1.0, jnp.inf])}))
    assert not bool(all_finite([jnp.array([jnp.nan], jnp.float16)]))
    assert bool(all_finite({}))
    a, b = {"x": jnp.array([jnp.nan, -0.0])}, {"x": jnp.array([1.0, 0.0])}
    assert np.array_equal(np.asarray(select_tree(jnp.bool_(True), a, b)["x"]).view(np.uint32),
                          np.asarray(a["x"]).view(np.uint32))
    with pytest.raises(ValueError, match="pred"):
        select_tree(jnp.array([True]), a, b)
    with pytest.raises(ValueError, match="structure"):
        select_tree(jnp.bool_(True), a, [b["x"]])


# --- FP16 underflow and its recovery -------------------------------------------------------------

# The output-gradient of the layer is SMALL * c with c ~ N(0, 1): below FP16's smallest subnormal
# (2^-24) for most entries, so without loss scaling they are flushed to zero on the way into the
# float16 backward pass.
SMALL = 2.0**-27


def _layer(precision: str) -> Linear:
    numerics = Numerics(unit_scaled=False, precision=precision)
    return Linear(16, 8, role="ffn_up", numerics=numerics, init_std=1.0, rngs=nnx.Rngs(0))


def _loss(model, batch):
    x, c = batch
    return SMALL * jnp.sum(model(x).astype(jnp.float32) * c), {"count": jnp.float32(1)}


BATCH = (jax.random.normal(jax.random.key(2), (32, 16)), jax.random.normal(jax.random.key(3), (32, 8)))


def _kernel_grad(precision: str, loss_scale) -> tuple[np.ndarray, object, bool]:
    _, _, grads, new_scale, finite = value_and_grad_with_recipe(_loss, _layer(precision), BATCH, loss_scale)
    return np.asarray(grads["kernel"][...]), new_scale, bool(finite)


def test_fp16_without_loss_scaling_underflows_small_gradients_and_dynamic_scaling_recovers_them():
    reference, _, _ = _kernel_grad("fp32", None)
    assert np.all(reference != 0)
    unscaled, _, finite = _kernel_grad("fp16", None)
    underflowed = int(np.sum(unscaled == 0))
    assert finite and underflowed >= 0.9 * reference.size, f"{underflowed} of {reference.size} flushed to zero"

    recovered, new_scale, finite = _kernel_grad("fp16", DynamicLossScale(2.0**15))
    assert finite and float(new_scale.loss_scale) == 2.0**15 and int(new_scale.counter) == 1
    assert np.all(recovered != 0)
    np.testing.assert_allclose(recovered, reference, rtol=2e-2, atol=1e-3 * np.abs(reference).max())


def test_fp16_overflowing_loss_scale_is_not_finite_and_backs_off():
    # 2^40 times the gradients overflows float16; the scaler reports it and halves.
    _, new_scale, finite = _kernel_grad("fp16", DynamicLossScale(2.0**60))
    assert not finite
    assert float(new_scale.loss_scale) == 2.0**59 and int(new_scale.counter) == 0


# --- skipped steps ---------------------------------------------------------------------------------


def _bits(tree) -> list[bytes]:
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_apply_if_finite_skips_a_non_finite_step_bit_for_bit(bad):
    params = {"w": jax.random.normal(jax.random.key(4), (4, 3)), "b": jnp.zeros(3)}
    optimizer = optax.adamw(1e-2)
    opt_state = optimizer.init(params)
    good = jax.tree.map(jnp.ones_like, params)
    params, opt_state = apply_if_finite(optimizer, good, opt_state, params, jnp.bool_(True))  # a real state
    grads = {"w": jnp.ones((4, 3)).at[1, 2].set(bad), "b": jnp.ones(3)}
    new_params, new_state = jax.jit(apply_if_finite, static_argnums=0)(
        optimizer, grads, opt_state, params, all_finite(grads))
    assert _bits(new_params) == _bits(params) and _bits(new_state) == _bits(opt_state)
    stepped, stepped_state = apply_if_finite(optimizer, good, opt_state, params, all_finite(good))
    assert _bits(stepped) != _bits(params) and _bits(stepped_state) != _bits(opt_state)
