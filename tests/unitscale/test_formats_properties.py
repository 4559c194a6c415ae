"""Algebraic properties of quantize, saturation, the straight-through variants, errors."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unitscale.formats import (
    BF16,
    E2M1,
    E3M2,
    E4M3,
    E4M3_FNUZ,
    E5M2,
    E5M2_FNUZ,
    FP16,
    FP32,
    FPFormat,
    cast,
    quantize,
    quantize_bwd,
    quantize_fwd,
)

FORMATS = [
    FP32, BF16, FP16, E4M3, E5M2, E4M3_FNUZ, E5M2_FNUZ, E2M1, E3M2,
    FPFormat(4, 3, bias=11, specials="fnuz"), FPFormat(3, 4), FPFormat(1, 3, specials="fn"),
    FPFormat(6, 5, bias=20), FPFormat(2, 0, specials="none"),
]  # fmt: skip
DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def holds(dtype: str, fmt: FPFormat) -> bool:
    host = {"float32": FP32, "bfloat16": BF16, "float16": FP16}[dtype]
    return (
        fmt.mantissa_bits <= host.mantissa_bits
        and fmt.min_subnormal >= host.min_subnormal
        and fmt.max <= host.max
    )


@st.composite
def format_and_array(draw, size=128):
    """A format, a dtype that can hold it, and an array of that dtype spread over fmt's range."""
    fmt = draw(st.sampled_from(FORMATS))
    dtype = draw(st.sampled_from([d for d in DTYPES if holds(d, fmt)]))
    unit = draw(hnp.arrays(np.float32, size, elements=st.floats(-2, 2, width=32)))
    octaves = draw(
        hnp.arrays(
            np.int32,
            size,
            elements=st.integers(int(np.log2(fmt.min_subnormal)) - 2, int(np.log2(fmt.max)) + 1),
        )
    )
    specials = draw(
        hnp.arrays(np.float32, 4, elements=st.sampled_from([np.inf, -np.inf, np.nan, -0.0]))
    )
    with np.errstate(over="ignore"):
        x = np.concatenate([unit * np.exp2(octaves.astype(np.float64)), specials]).astype(
            DTYPES[dtype]
        )
    return fmt, x


def bits(x) -> np.ndarray:
    x = np.asarray(x)
    return x.view(np.uint16 if x.dtype.itemsize == 2 else np.uint32)


def same(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    nan_a, nan_b = np.isnan(a.astype(np.float32)), np.isnan(b.astype(np.float32))
    return bool(((bits(a) == bits(b)) | (nan_a & nan_b)).all())


@settings(max_examples=60)
@given(case=format_and_array(), saturate=st.booleans())
def test_idempotent(case, saturate):
    fmt, x = case
    q = quantize(x, fmt, saturate=saturate)
    assert same(quantize(q, fmt, saturate=saturate), q)


@settings(max_examples=60)
@given(case=format_and_array(), saturate=st.booleans())
def test_symmetric(case, saturate):
    fmt, x = case
    q, q_neg = np.asarray(quantize(x, fmt, saturate=saturate)), quantize(-x, fmt, saturate=saturate)
    if fmt.specials == "fnuz":  # no -0: zero stays +0 on both sides
        q = np.where(q == 0, np.zeros_like(q), -q)
        assert same(q_neg, q)
    else:
        assert same(q_neg, -q)


@settings(max_examples=60)
@given(case=format_and_array())
def test_monotone(case):
    fmt, x = case
    x = np.sort(x[~np.isnan(x.astype(np.float32))].astype(np.float32)).astype(x.dtype)
    for saturate in (True, False) if fmt.specials in ("ieee", "none") else (True,):
        q = np.asarray(quantize(x, fmt, saturate=saturate)).astype(np.float32)
        assert (q[1:] >= q[:-1]).all()


@settings(max_examples=60)
@given(case=format_and_array())
def test_nearest_is_within_half_a_gap_and_on_the_grid(case):
    fmt, x = case
    x32 = x.astype(np.float32).astype(np.float64)
    inside = np.isfinite(x32) & (np.abs(x32) <= fmt.max)
    q = np.asarray(quantize(x, fmt)).astype(np.float64)[inside]
    x32 = x32[inside]
    # The grid step at |x| is 2^(max(floor(log2|x|), emin) - m).
    emin = np.log2(fmt.min_normal)
    octave = np.maximum(np.floor(np.log2(np.maximum(np.abs(x32), fmt.min_subnormal))), emin)
    step = np.exp2(octave - fmt.mantissa_bits)
    assert (np.abs(q - x32) <= step / 2).all()
    assert (np.mod(q, fmt.min_subnormal) == 0).all()


@settings(max_examples=40)
@given(case=format_and_array())
def test_saturation_clips_to_max(case):
    fmt, x = case
    q = np.asarray(quantize(x, fmt, saturate=True)).astype(np.float32)
    x32 = x.astype(np.float32)
    finite_in = ~np.isnan(x32)
    assert (np.abs(q[finite_in]) <= fmt.max).all()
    assert np.isnan(q[~finite_in]).all()
    assert (q[np.abs(x32) >= fmt.max] == np.sign(x32[np.abs(x32) >= fmt.max]) * fmt.max).all()


@pytest.mark.parametrize(
    "fmt, overflow",
    [
        (E5M2, np.inf),
        (FP16, np.inf),
        (E4M3, np.nan),
        (E4M3_FNUZ, np.nan),
        (E5M2_FNUZ, np.nan),
        (E2M1, 6.0),
    ],
    ids=str,
)
def test_overflow_without_saturation_follows_the_convention(fmt, overflow):
    huge = np.array([2 * fmt.max, np.inf, 3.0e38], np.float32)
    for sign in (1, -1):
        q = np.asarray(quantize(sign * huge, fmt, saturate=False))
        if np.isnan(overflow):
            assert np.isnan(q).all()
        else:
            assert (q == sign * overflow).all()
        assert (np.asarray(quantize(sign * huge, fmt)) == sign * fmt.max).all()


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_nan_stays_nan_and_zero_keeps_its_sign_where_the_format_has_one(fmt):
    x = jnp.array([np.nan, -np.nan, 0.0, -0.0, -fmt.min_subnormal / 4], jnp.float32)
    for rounding, key in (("nearest", None), ("stochastic", jax.random.key(0))):
        q = np.asarray(quantize(x, fmt, rounding=rounding, key=key))
        assert np.isnan(q[:2]).all()
        assert (q[2:] == 0).all()
        negative_zero = fmt.specials != "fnuz"
        assert np.signbit(q[2:]).tolist() == [False, negative_zero, negative_zero]


def test_jit_and_vmap_agree_with_the_plain_call():
    x = jax.random.normal(jax.random.key(0), (4, 64)) * 100
    plain = quantize(x, E4M3)
    assert same(jax.vmap(lambda r: quantize(r, E4M3))(x), plain)
    assert same(jax.jit(lambda r: quantize(r, E4M3))(x), plain)
    keys = jax.random.split(jax.random.key(1), 4)
    rows = jax.vmap(lambda r, k: quantize(r, E4M3, rounding="stochastic", key=k))(x, keys)
    for i in range(4):
        assert same(rows[i], quantize(x[i], E4M3, rounding="stochastic", key=keys[i]))


def test_quantize_fwd_quantizes_values_and_passes_gradients_through():
    x = jax.random.normal(jax.random.key(0), (256,)) * 300  # some saturate at 448
    g = jax.random.normal(jax.random.key(1), (256,))
    y, vjp = jax.vjp(lambda v: quantize_fwd(v, E4M3), x)
    assert same(y, quantize(x, E4M3))
    assert same(vjp(g)[0], g)


def test_quantize_bwd_is_identity_forward_and_quantizes_the_gradient():
    x = jax.random.normal(jax.random.key(0), (256,))
    g = jax.random.normal(jax.random.key(1), (256,)) * 1e5
    y, vjp = jax.vjp(lambda v: quantize_bwd(v, E5M2, saturate=False), x)
    assert same(y, x)
    gx = vjp(g)[0]
    assert same(gx, quantize(g, E5M2, saturate=False))
    assert np.isinf(gx).any()  # 1e5-scale gradients overflow E5M2 without saturation


def test_stochastic_keys_reach_both_passes_under_jit_and_vmap():
    keys = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(jax.random.key(0), (3, 128))
    g = jax.random.normal(jax.random.key(1), (3, 128))

    def f(v, kf, kb):
        v = quantize_fwd(v, E4M3, rounding="stochastic", key=kf)
        return quantize_bwd(v, E5M2, rounding="stochastic", key=kb)

    def row(v, gv, k):
        kf, kb = jax.random.split(k)
        y, vjp = jax.vjp(lambda u: f(u, kf, kb), v)
        return y, vjp(gv)[0], kf, kb

    y, gx, kf, kb = jax.jit(jax.vmap(row))(x, g, keys)
    for i in range(3):
        assert same(y[i], quantize(x[i], E4M3, rounding="stochastic", key=kf[i]))
        assert same(gx[i], quantize(g[i], E5M2, rounding="stochastic", key=kb[i]))
    assert not same(gx[0], quantize(g[0], E5M2))  # it really rounded stochastically


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_straight_through_keeps_16_bit_dtypes(dtype):
    x = jnp.linspace(-3, 3, 64, dtype=dtype)
    y, vjp = jax.vjp(lambda v: quantize_bwd(quantize_fwd(v, E4M3), E5M2), x)
    assert y.dtype == x.dtype and vjp(jnp.ones_like(x))[0].dtype == x.dtype


# --- errors ---------------------------------------------------------------------------------


def test_integer_and_wide_inputs_are_type_errors():
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16, got dtype int32"):
        quantize(jnp.arange(4), E4M3)
    with pytest.raises(TypeError, match="got dtype float8_e4m3fn"):
        quantize(jnp.ones(4, jnp.float8_e4m3fn), E4M3)
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        cast(jnp.arange(4), E4M3)
    for straight_through in (quantize_fwd, quantize_bwd):
        with pytest.raises(TypeError, match="got dtype int32"):
            straight_through(jnp.arange(4), E4M3)


def test_formats_a_16_bit_input_cannot_hold_are_rejected():
    with pytest.raises(ValueError, match="fmt=FP16 has values that x's dtype bfloat16 cannot hold"):
        quantize(jnp.ones(4, jnp.bfloat16), FP16)
    with pytest.raises(ValueError, match="fmt=BF16 .* float16 cannot hold"):
        quantize(jnp.ones(4, jnp.float16), BF16)
    with pytest.raises(ValueError, match="cannot hold"):
        quantize(jnp.ones(4, jnp.bfloat16), FP32)
    # The documented way out: quantize in float32.
    assert quantize(jnp.ones(4, jnp.bfloat16).astype(jnp.float32), FP16).dtype == jnp.float32


def test_bad_rounding_key_and_format_arguments():
    x = jnp.ones(4)
    with pytest.raises(ValueError, match="rounding='up' is unknown"):
        quantize(x, E4M3, rounding="up")
    for fn in (quantize, quantize_fwd, quantize_bwd):
        with pytest.raises(ValueError, match="key is required for rounding='stochastic'"):
            fn(x, E4M3, rounding="stochastic")
    with pytest.raises(ValueError, match="rounding='toward_zero' is unknown"):
        quantize_fwd(x, E4M3, rounding="toward_zero")
    with pytest.raises(TypeError, match="fmt must be an FPFormat, got str"):
        quantize(x, "e4m3")
    with pytest.raises(TypeError, match="fmt must be an FPFormat"):
        cast(x, "e4m3")


def test_cast_without_a_backend_dtype_points_to_quantize():
    with pytest.raises(ValueError, match="has no numpy/ml_dtypes dtype; use quantize"):
        cast(jnp.ones(4), FPFormat(3, 3))
    with pytest.raises(ValueError, match="cannot hold dtype float6_e3m2fn; use quantize"):
        cast(jnp.ones(4), E3M2)
