"""tensor_stats / log2_histogram: known tensors give known statistics; float64 NumPy reference."""

import math

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unitscale.analysis.stats import STAT_NAMES, TensorStats, log2_histogram, tensor_stats


def test_a_small_known_tensor():
    s = tensor_stats(np.array([-3.0, 0.0, 4.0, 0.0], np.float32))
    assert s.numel == 4
    assert s.mean == pytest.approx(0.25)
    assert s.rms == pytest.approx(2.5)  # sqrt(25 / 4)
    assert s.std == pytest.approx(math.sqrt(6.25 - 0.0625))
    assert s.mean_abs == pytest.approx(1.75)
    assert (s.abs_max, s.abs_min, s.zero_fraction, s.nonfinite_fraction) == (4.0, 3.0, 0.5, 0.0)


def test_a_constant_tensor_has_zero_std_and_its_magnitude_everywhere_else():
    s = tensor_stats(jnp.full((3, 5), -0.75, jnp.bfloat16))
    assert (s.mean, s.std, s.rms, s.mean_abs, s.abs_max, s.abs_min) == (-0.75, 0.0, 0.75, 0.75, 0.75, 0.75)
    assert s.numel == 15


def test_all_zeros_have_no_non_zero_minimum():
    s = tensor_stats(np.zeros(7, np.float16))
    assert (s.mean, s.std, s.rms, s.abs_max, s.zero_fraction) == (0.0, 0.0, 0.0, 0.0, 1.0)
    assert math.isnan(s.abs_min)


def test_standard_normal_sample_matches_float64():
    x = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)
    s, ref = tensor_stats(x), x.astype(np.float64)
    assert s.std == pytest.approx(ref.std(), rel=1e-5)
    assert s.rms == pytest.approx(np.sqrt(np.mean(ref**2)), rel=1e-5)
    assert s.mean == pytest.approx(ref.mean(), abs=1e-6)
    assert s.mean_abs == pytest.approx(np.abs(ref).mean(), rel=1e-5)


@pytest.mark.parametrize("magnitude", [1e30, 1e-30, 1e-42])
def test_moments_neither_overflow_nor_underflow(magnitude):
    # x^2 overflows float32 at 1e30 and underflows at 1e-30; 1e-42 is a float32 subnormal.
    x = np.array([magnitude, -magnitude, 2 * magnitude, 0.0], np.float32)
    s = tensor_stats(x)
    ref = x.astype(np.float64)
    assert s.rms == pytest.approx(np.sqrt(np.mean(ref**2)), rel=1e-4)
    assert s.std == pytest.approx(ref.std(), rel=1e-4)
    assert s.abs_min == float(np.float32(magnitude))
    assert s.abs_max == float(np.float32(2 * magnitude))


def test_non_finite_values_are_counted_and_poison_the_moments():
    s = tensor_stats(np.array([1.0, np.inf, np.nan, 0.0], np.float32))
    assert s.nonfinite_fraction == 0.5 and s.zero_fraction == 0.25
    assert math.isnan(s.std) and math.isnan(s.abs_max)
    assert s.abs_min == 1.0


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-2.0**60, max_value=2.0**60)


@settings(max_examples=40)
@given(hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=9), elements=finite32))
def test_statistics_match_a_float64_reference(x):
    s, ref = tensor_stats(x), x.astype(np.float64).ravel()
    a = np.abs(ref)
    scale = max(a.max(), 1e-30)
    assert s.numel == ref.size
    assert s.mean == pytest.approx(ref.mean(), rel=1e-5, abs=1e-6 * scale)
    assert s.std == pytest.approx(ref.std(), rel=1e-4, abs=1e-6 * scale)
    assert s.rms == pytest.approx(np.sqrt(np.mean(ref**2)), rel=1e-5, abs=1e-30)
    assert s.mean_abs == pytest.approx(a.mean(), rel=1e-5, abs=1e-30)
    assert s.abs_max == a.max()
    if (a > 0).any():
        assert s.abs_min == a[a > 0].min()
    else:
        assert math.isnan(s.abs_min)
    assert s.zero_fraction == np.mean(ref == 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, ml_dtypes.float8_e4m3fn])
def test_low_precision_inputs_are_read_exactly(dtype):
    x = jnp.asarray(np.array([0.5, -2.0, 0.0, 0.125]), dtype)
    s = tensor_stats(x)
    assert (s.abs_max, s.abs_min, s.mean_abs) == (2.0, 0.125, 2.625 / 4)


def test_histogram_counts_values_per_binade():
    x = np.array([1.0, 1.5, 2.0, 3.0, 0.25, -0.25, 0.0, np.inf, np.nan, 2.0**-149], np.float32)
    assert log2_histogram(x) == ((-149, 1), (-2, 2), (0, 2), (1, 2))


@settings(max_examples=30)
@given(hnp.arrays(np.float32, st.integers(1, 50), elements=st.floats(width=32, allow_nan=False)))
def test_histogram_matches_floor_log2_in_float64(x):
    a = np.abs(x.astype(np.float64))
    a = a[(a > 0) & np.isfinite(a)]
    expected = np.unique(np.floor(np.log2(a)).astype(int), return_counts=True)
    assert log2_histogram(x) == tuple(zip(expected[0].tolist(), expected[1].tolist()))


@pytest.mark.parametrize("bad", [np.arange(3), np.zeros(2, np.complex64), np.zeros(2, np.float64), ["a"]])
def test_non_float32_compatible_input_is_a_type_error(bad):
    with pytest.raises(TypeError, match="x must"):
        tensor_stats(bad)


def test_stat_names_are_fields_and_unknown_names_are_rejected():
    s = tensor_stats(np.ones(2, np.float32))
    assert all(s.get(name) == getattr(s, name) for name in STAT_NAMES)
    with pytest.raises(ValueError, match="stat='median'"):
        s.get("median")
    assert isinstance(s, TensorStats)
