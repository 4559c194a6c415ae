"""Per-tensor FP8 scaling (current, delayed) and the quantised weight matmul: what it rounds, the
gradients it computes, the recipe state it writes through the backward pass, and its range counts
against a brute-force count."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unitscale import formats as F
from unitscale.formats import FPFormat
from unitscale.precision.matmul import AmaxHistory, MatmulQuantizer, MatmulSpec, RangeCounts
from unitscale.precision.recipe import precision_metrics, value_and_grad_with_recipe
from unitscale.precision.stats import STAT_NAMES, range_counts
from unitscale.precision.tensor_scaling import amax, push_amax, scale_from_amax, scale_from_history

# --- the pieces --------------------------------------------------------------------------------------


def test_scale_from_amax_is_fmt_max_over_amax_over_two_to_the_margin():
    assert float(scale_from_amax(jnp.float32(7.0), F.E4M3)) == np.float32(448.0) / np.float32(7.0)
    assert float(scale_from_amax(jnp.float32(2.0), F.E5M2, margin=3)) == 57344.0 / 2 / 8
    for bad in (0.0, np.inf, np.nan, 1e-45):  # zero, non-finite, or a scale that would overflow
        assert float(scale_from_amax(jnp.float32(bad), F.E4M3)) == 1.0


def test_amax_history_is_newest_first_and_ignores_non_finite_amaxes():
    h = jnp.zeros(3, jnp.float32)
    for a in (1.0, 5.0, np.inf, 2.0, np.nan, 3.0):
        h = push_amax(h, jnp.float32(a))
    np.testing.assert_array_equal(h, [3.0, 2.0, 5.0])
    assert float(scale_from_history(h, F.E4M3, margin=1)) == np.float32(224.0) / np.float32(5.0)
    assert np.isnan(float(amax(jnp.array([1.0, np.nan]))))


# --- a model of one quantised matmul ---------------------------------------------------------------


def _affine(x, w, b):
    return jnp.matmul(x, w, preferred_element_type=jnp.float32)


class OneMatmul(nnx.Module):
    """``y = x W`` through a MatmulQuantizer (a Linear without the rest of the layer)."""

    def __init__(self, spec: MatmulSpec, w: jax.Array):
        self.kernel = nnx.Param(jnp.asarray(w, jnp.float32))
        self.quantizer = MatmulQuantizer(spec)

    def __call__(self, x, op=_affine):
        return self.quantizer(op, x, self.kernel[...], None)


def _loss(model, batch):
    x, c = batch
    return jnp.sum(model(x) * c), {"count": jnp.float32(1)}


def make_step(model: nnx.Module):
    """A jitted ``state, x, c -> (state, kernel grad, finite)`` of the recipe's training-step contract."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, x, c):
        m = nnx.merge(graphdef, state)
        _, _, grads, _, finite = value_and_grad_with_recipe(_loss, m, (x, c), None)
        return nnx.state(m), grads["kernel"][...], finite

    return state, step


def _spec(scaling="none", **kw) -> MatmulSpec:
    return MatmulSpec(F.E4M3, F.E5M2, scaling=scaling, stats=True, **kw)


def _counts(state) -> dict[str, float]:
    (counts,) = jax.tree.leaves(nnx.filter_state(state, RangeCounts))
    return dict(zip(STAT_NAMES, np.asarray(counts).tolist()))


# --- delayed scaling tracks a drifting tensor -------------------------------------------------------

STEPS = 100
DRIFT = 2.0 ** (10 / (STEPS - 1))  # 2^10 over 100 steps


def _drift_run(spec: MatmulSpec):
    """Activations growing by 2^10 over 100 steps (amax 3 -> ~3000) and output-gradients growing by
    2^10 from amax ~2^10 (past E5M2's 57344 by the end); per step: counts, history and the scale used."""
    key = jax.random.key(5)
    x0 = jax.random.normal(jax.random.fold_in(key, 0), (16, 32))
    x0 = x0 / jnp.max(jnp.abs(x0)) * 3.0
    c0 = jax.random.normal(jax.random.fold_in(key, 1), (16, 8))
    c0 = c0 / jnp.max(jnp.abs(c0)) * 2.0**10
    w = jax.random.normal(jax.random.fold_in(key, 2), (32, 8))
    state, step = make_step(OneMatmul(spec, w))
    records = []
    for t in range(STEPS):
        history_before = None
        if spec.scaling == "delayed":
            history_before = np.asarray(jax.tree.leaves(nnx.filter_state(state, AmaxHistory))[0])
        x, c = x0 * DRIFT**t, c0 * DRIFT**t
        state, _, finite = step(state, x, c)
        records.append(dict(counts=_counts(state), before=history_before, amax_x=float(amax(x)),
                            amax_g=float(amax(c)), finite=bool(finite)))
    return state, records


def test_unscaled_fp8_overflows_the_drifting_tensors():
    _, records = _drift_run(_spec("none"))
    assert sum(r["counts"]["activations_overflow"] for r in records) > 0
    assert sum(r["counts"]["gradients_overflow"] for r in records) > 0


def test_delayed_scaling_tracks_a_tensor_drifting_by_2_to_the_10_without_overflow():
    margin, history = 1, 16
    state, records = _drift_run(_spec("delayed", margin=margin, history=history))
    for t, r in enumerate(records):
        assert r["counts"]["activations_overflow"] == 0, t
        assert r["counts"]["gradients_overflow"] == 0, t
        assert r["counts"]["weights_overflow"] == 0, t
    # the histories hold the last `history` amaxes, newest first (rows x, W, g)
    final = np.asarray(jax.tree.leaves(nnx.filter_state(state, AmaxHistory))[0])
    np.testing.assert_array_equal(final[0], [records[-1 - i]["amax_x"] for i in range(history)])
    np.testing.assert_array_equal(final[2], [records[-1 - i]["amax_g"] for i in range(history)])
    assert np.all(final[1] == final[1][0])  # the weight does not change here
    # the scale used at step t is fmt.max / max(history before t) / 2^margin, so after the first
    # step each tensor fills its format's range to within the drift of one step
    for r in records[1:]:
        for row, key, fmt in ((0, "amax_x", F.E4M3), (2, "amax_g", F.E5M2)):
            scale = np.float32(fmt.max / 2**margin) / np.float32(r["before"][row].max())
            filled = scale * r[key] / fmt.max
            assert 2.0**-margin <= filled <= 2.0**-margin * DRIFT * (1 + 1e-6), (key, filled)


def test_delayed_scaling_without_margin_saturates_a_growing_tensor_as_documented():
    _, records = _drift_run(_spec("delayed", margin=0, history=16))
    assert sum(r["counts"]["activations_overflow"] > 0 for r in records) >= STEPS - 2


# --- what the quantised matmul computes ---------------------------------------------------------------


def _recorder(store: dict):
    @jax.custom_vjp
    def tap(y):
        return y

    tap.defvjp(lambda y: (y, None),
               lambda _, g: (jax.debug.callback(lambda v: store.__setitem__("g", np.asarray(v)), g), (g,))[1])

    def op(x, w, b):
        jax.debug.callback(lambda a, c: store.update(x=np.asarray(a), w=np.asarray(c)), x, w)
        return tap(_affine(x, w, b))

    return op


def _current_scale(v: np.ndarray, fmt: FPFormat) -> np.float32:
    """``s = fmt.max / amax(v)``, computed in NumPy float32."""
    return np.float32(fmt.max) / np.max(np.abs(v)).astype(np.float32)


def test_current_scaling_scales_each_tensor_by_its_own_amax():
    key = jax.random.key(6)
    x = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (8, 16))) * 1e4  # beyond E4M3 unscaled
    w = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (16, 4))) * 1e-4  # below its subnormals
    c = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (8, 4))) * 1e-9  # below E5M2's
    store: dict = {}
    model = OneMatmul(_spec("current"), w)
    _, _, grads, _, _ = value_and_grad_with_recipe(lambda m, b: _loss_op(m, b, _recorder(store)), model, (x, c), None)
    for name, value, fmt in (("x", x, F.E4M3), ("w", w, F.E4M3), ("g", c, F.E5M2)):
        s = _current_scale(value, fmt)
        on_grid = np.asarray(F.quantize(jnp.asarray(value * s), fmt))
        # the operand is quantize(s v) / s: the same grid points, divided by s to within float32
        # rounding (XLA:CPU's division is not always correctly rounded, so 1 ulp)
        np.testing.assert_array_equal(np.asarray(F.quantize(jnp.asarray(store[name] * s), fmt)), on_grid, name)
        np.testing.assert_allclose(store[name], on_grid / s, rtol=2.0**-23, atol=0, err_msg=name)
        assert np.max(np.abs(on_grid)) == fmt.max  # the scale fills the format
        np.testing.assert_allclose(store[name], value, rtol=fmt.epsilon, atol=0, err_msg=name)
    assert all(v == 0 for v in precision_metrics(model).values())
    np.testing.assert_allclose(grads["kernel"][...], store["x"].T @ store["g"], rtol=1e-6)


def _loss_op(model, batch, op):
    x, c = batch
    return jnp.sum(model(x, op) * c), {"count": jnp.float32(1)}


def test_delayed_scaling_rounds_with_the_scale_of_the_history_before_the_step():
    key = jax.random.key(12)
    x = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (8, 16)), np.float32)
    x = x / np.abs(x).max() * 4.0
    w = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (16, 4)), np.float32)
    c = np.asarray(jax.random.normal(jax.random.fold_in(key, 2), (8, 4)), np.float32) * 2.0**-12
    model = OneMatmul(_spec("delayed", history=2, margin=1), w)
    past = np.array([[5.0, 3.0], [0.25, 0.5], [2.0**-10, 0.0]], np.float32)  # rows x, W, g; newest first
    model.quantizer.history[...] = jnp.asarray(past)
    store: dict = {}
    value_and_grad_with_recipe(lambda m, b: _loss_op(m, b, _recorder(store)), model, (x, c), None)
    for name, value, fmt, row in (("x", x, F.E4M3, 0), ("w", w, F.E4M3, 1), ("g", c, F.E5M2, 2)):
        s = np.float32(fmt.max / 2) / past[row].max()  # fmt.max / max(history) / 2^margin
        on_grid = np.asarray(F.quantize(jnp.asarray(value * s), fmt))
        np.testing.assert_array_equal(np.asarray(F.quantize(jnp.asarray(store[name] * s), fmt)), on_grid, name)
        np.testing.assert_allclose(store[name], on_grid / s, rtol=2.0**-23, atol=0, err_msg=name)
    # then each amax is pushed, newest first
    expected = np.stack([[np.abs(v).max(), p[0]] for v, p in zip((x, w, c), past)]).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model.quantizer.history[...]), expected)
    assert _counts(nnx.state(model))["weights_overflow"] > 0  # amax(W) = 1.93, far above its history (0.5): saturated


def test_unscaled_matmul_gradients_use_the_rounded_operands_and_rounded_output_gradient():
    key = jax.random.key(7)
    x = jax.random.normal(jax.random.fold_in(key, 0), (8, 16))
    w = jax.random.normal(jax.random.fold_in(key, 1), (16, 4))
    c = jax.random.normal(jax.random.fold_in(key, 2), (8, 4)) * 10.0
    quantizer = MatmulQuantizer(_spec("none"))
    y, vjp = jax.vjp(lambda a, b: quantizer(_affine, a, b, None), x, w)
    xq, wq, gq = (np.asarray(F.quantize(v, f), np.float64) for v, f in ((x, F.E4M3), (w, F.E4M3), (c, F.E5M2)))
    dx, dw = vjp(c)
    np.testing.assert_allclose(y, xq @ wq, rtol=1e-6)
    np.testing.assert_allclose(dx, gq @ wq.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dw, xq.T @ gq, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scaling", ["none", "current", "delayed"])
def test_float8_operands_give_bit_identical_results_to_the_simulation(scaling):
    key = jax.random.key(8)
    x = jax.random.normal(jax.random.fold_in(key, 0), (8, 16)) * 30.0
    w = jax.random.normal(jax.random.fold_in(key, 1), (16, 4))
    c = jax.random.normal(jax.random.fold_in(key, 2), (8, 4))
    results = []
    for operands in ("simulated", "float8"):
        model = OneMatmul(MatmulSpec(F.E4M3, F.E5M2, scaling=scaling, history=4, operands=operands), w)
        out = value_and_grad_with_recipe(_loss, model, (x, c), None)
        results.append([np.asarray(out[0]), np.asarray(out[2]["kernel"][...])])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_recipe_state_is_written_through_the_backward_pass_only():
    model = OneMatmul(_spec("delayed", history=4), jnp.ones((4, 2)))
    x, c = jnp.full((3, 4), 2.0), jnp.full((3, 2), 0.5)
    model(x)  # a forward pass alone writes nothing
    assert not np.any(np.asarray(model.quantizer.history[...]))
    value_and_grad_with_recipe(_loss, model, (x, c), None)
    np.testing.assert_array_equal(model.quantizer.history[...][:, 0], [2.0, 1.0, 0.5])
    assert not np.any(np.asarray(model.quantizer.history[...])[:, 1:])


# --- range counts against a brute-force count ----------------------------------------------------------


def brute_force_counts(values: np.ndarray, fmt: FPFormat) -> tuple[int, int]:
    """(overflow, underflow) of rounding each value to nearest-even on ``fmt``'s grid continued past its
    max, counted one value at a time in float64: overflow if it lands above max, underflow if a
    non-zero value lands on zero."""
    emin = round(math.log2(fmt.min_normal))
    over = under = 0
    for v in np.abs(np.asarray(values, np.float64)).ravel():
        if v == 0:
            continue
        if math.isinf(v):
            over += 1
            continue
        step = 2.0 ** (max(math.floor(math.log2(v)), emin) - fmt.mantissa_bits)
        rounded = float(np.round(v / step)) * step  # np.round: half to even
        over += rounded > fmt.max
        under += rounded == 0
    return over, under


# E4M3: max 448, next grid point 480, so 464 is a tie that rounds to 448 (even code); smallest
# subnormal 2^-9, so 2^-10 is a tie that rounds to 0. E5M2: max 57344 has an odd code, so the tie
# 61440 rounds up (overflow); smallest subnormal 2^-16.
X_KNOWN = np.array([[464.0, 464.01, 500.0, -1e4, 1.0, 2.0**-10, -(2.0**-11), 1.5 * 2.0**-10],
                    [-0.3, 448.0, 2.0**-9, 0.0, 3e-5, -1e-7, 7.0, -470.0]], np.float32)
W_KNOWN = np.array([[1.0, -2.0, 0.5], [1e3, 0.5, 1.0], [2.0**-12, 1.0, -1.0], [0.25, -0.25, 2.0],
                    [-600.0, 0.0, 1.0], [1.0, 1.0, 1.0], [2.0**-10 * 1.01, 1.0, 1.0], [1.0, 3.0, 480.0]], np.float32)
C_KNOWN = np.array([[61440.0, 61439.0, 2.0**-17], [1e6, -2.0**-18, 3.0 * 2.0**-18]], np.float32)


@pytest.mark.parametrize("scaling", ["none", "current"])
def test_range_counts_match_a_brute_force_count(scaling):
    model, c = OneMatmul(_spec(scaling), W_KNOWN), C_KNOWN
    expected = []
    for v, fmt in ((X_KNOWN, F.E4M3), (W_KNOWN, F.E4M3), (c, F.E5M2)):
        if scaling == "current":
            v = v * (np.float32(fmt.max) / np.max(np.abs(v)).astype(np.float32))
        expected += brute_force_counts(v, fmt)
    for _ in range(2):  # counts are the last step's, not accumulated
        value_and_grad_with_recipe(_loss, model, (X_KNOWN, c), None)
        got = precision_metrics(model)
        assert [got[k] for k in STAT_NAMES] == expected
    if scaling == "none":
        assert expected == [4, 4, 3, 1, 2, 2]  # the hand count of the comment above


def test_range_counts_of_several_matmuls_are_summed():
    a, b = OneMatmul(_spec(), W_KNOWN), OneMatmul(_spec(), jnp.ones((3, 3)))

    class Two(nnx.Module):
        def __init__(self):
            self.a, self.b = a, b

        def __call__(self, x):
            return self.b(self.a(x))

    c = jnp.full((2, 3), 1e-9)  # all six underflow E5M2 at b's output, so a's output-gradient is zero
    value_and_grad_with_recipe(_loss, Two(), (X_KNOWN, c), None)
    total = precision_metrics(Two())
    for name in STAT_NAMES:
        assert total[name] == _counts(nnx.state(a))[name] + _counts(nnx.state(b))[name]
    assert total["gradients_underflow"] == 6 and _counts(nnx.state(a))["activations_overflow"] == 4


def test_range_counts_function_on_exhaustive_float32_neighbourhoods():
    # every float32 within a few ulps of each threshold, for each format with a tie rule of either parity
    for fmt in (F.E4M3, F.E5M2, F.E4M3_FNUZ, F.E5M2_FNUZ, F.E2M1):
        step = 2.0 ** (math.floor(math.log2(fmt.max)) - fmt.mantissa_bits)
        points = [fmt.max + step / 2, fmt.min_subnormal / 2, fmt.max, fmt.min_subnormal]
        values = np.concatenate([np.float32(p) + np.arange(-4, 5, dtype=np.float32) * np.spacing(np.float32(p))
                                 for p in points])
        values = np.concatenate([values, -values, [np.inf, 0.0]]).astype(np.float32)
        q = F.quantize(jnp.asarray(values), fmt)
        got = np.asarray(range_counts(jnp.asarray(values), q, fmt)).tolist()
        assert got == list(brute_force_counts(values, fmt)), fmt.name


@pytest.mark.parametrize("preset, scaling, real", [("fp8", "delayed", True), ("umup_fp8", "none", True),
                                                   ("mxfp6", "delayed", False), ("mxfp6", "none", False),
                                                   ("mxfp4", "current", True)])
def test_float8_operands_twin_keeps_formats_the_backend_cannot_hold_simulated(preset, scaling, real):
    # XLA:CPU holds float8 and float4 but no float6 arrays: E2M3 / E3M2 stay simulated (and must not raise)
    from unitscale.models.gpt import GPT, GPTConfig
    from unitscale.precision.policy import precision_policy
    from unitscale.precision.recipe import float8_operands

    policy = precision_policy(preset, scaling=scaling)
    model = GPT(GPTConfig(vocab_size=8, max_len=4, d_model=8, depth=1, heads=1, precision=policy),
                rngs=nnx.Rngs(0))
    twin = float8_operands(model)
    specs = [m.spec for _, m in nnx.iter_modules(twin) if isinstance(m, MatmulQuantizer)]
    assert specs and all(s.operands == ("float8" if real else "simulated") for s in specs)
    assert twin.config.precision.operands == ("float8" if real else "simulated")
