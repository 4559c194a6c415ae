"""range_coverage: exact class boundaries, and fractions equal to a brute-force count of quantize."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from unitscale.analysis.coverage import COVERAGE_CLASSES, range_coverage, range_thresholds
from unitscale.formats import BF16, E2M1, E3M2, E4M3, E4M3_FNUZ, E5M2, FP16, FP32, FPFormat, quantize

FORMATS = [FP16, BF16, E4M3, E5M2, E4M3_FNUZ, E2M1, E3M2, FPFormat(3, 0), FPFormat(1, 2), FP32]


def _f32(bits) -> float:
    return float(np.array(bits, np.uint32).view(np.float32))


def _bits(value) -> int:
    return int(np.float32(value).view(np.uint32))


def test_fp16_thresholds_follow_from_its_grid():
    t = range_thresholds(FP16)
    # Round to nearest even: 2^-25 (half min subnormal) ties to 0; 65520 (max + half ulp) ties up.
    assert t.nonzero == _bits(2.0**-25) + 1
    assert _f32(t.normal) == 2.0**-14 - 2.0**-25  # halfway from the largest subnormal: ties up
    assert _f32(t.overflow) == 65520.0
    assert t.as_floats() == (_f32(t.nonzero), 2.0**-14 - 2.0**-25, 65520.0)


def test_e4m3_overflows_strictly_above_464_because_448_has_an_even_code():
    t = range_thresholds(E4M3)
    assert t.overflow == _bits(464.0) + 1
    assert range_thresholds(E4M3_FNUZ).overflow == _bits(248.0)  # 240 = 1.111b x 2^7 is odd


def test_saturating_formats_overflow_where_the_unbounded_grid_passes_max():
    assert _f32(range_thresholds(E2M1).overflow) == 7.0  # between 6 and 8, the tie goes up
    assert _f32(range_thresholds(E3M2).overflow) == 30.0


def test_fp32_itself_loses_nothing_finite():
    t = range_thresholds(FP32)
    assert (t.nonzero, t.normal, t.overflow) == (1, _bits(2.0**-126), 0x7F800000)


def _reference(x: np.ndarray, fmt: FPFormat) -> dict[str, float]:
    """Classify each value by quantizing it (saturate=False); a saturating format's overflow is read
    off a wider IEEE format with the same bias and mantissa, whose grid continues past max."""
    q = np.asarray(quantize(jnp.asarray(x), fmt, saturate=False))
    if fmt.specials == "none":
        wide = FPFormat(fmt.exponent_bits + 1, fmt.mantissa_bits, bias=fmt.bias)
        over = np.abs(np.asarray(quantize(jnp.asarray(x), wide, saturate=False))) > fmt.max
    else:
        over = ~np.isfinite(q)
    finite = np.isfinite(x)
    classes = {
        "zero": x == 0,
        "nonfinite": ~finite,
        "overflow": finite & over,
        "underflow": finite & (x != 0) & (q == 0),
        "subnormal": finite & ~over & (q != 0) & (np.abs(q) < fmt.min_normal),
        "normal": finite & ~over & (np.abs(q) >= fmt.min_normal),
    }
    assert sum(classes.values()).tolist() == [1] * x.size  # a partition
    return {name: float(np.mean(v)) for name, v in classes.items()}


def _probe_values(fmt: FPFormat) -> np.ndarray:
    """Log-uniform magnitudes over and beyond the range, each threshold +-1 ulp, and specials."""
    rng = np.random.default_rng(7)
    lo, hi = math.log2(fmt.min_subnormal) - 4, math.log2(fmt.max) + 4
    spread = np.exp2(rng.uniform(max(lo, -149), min(hi, 127.9), 4000)) * rng.choice([-1, 1], 4000)
    t = range_thresholds(fmt)
    edges = np.array([b + d for b in (t.nonzero, t.normal, t.overflow) for d in (-1, 0, 1)], np.int64)
    edges = np.clip(edges, 1, 0x7F800000).astype(np.uint32).view(np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, fmt.max, fmt.min_normal, fmt.min_subnormal])
    return np.concatenate([spread, edges, -edges, special]).astype(np.float32)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_coverage_equals_a_brute_force_count_of_quantize(fmt):
    x = _probe_values(fmt)
    cov = range_coverage(x, fmt)
    assert cov.format == fmt.name
    assert {c: cov.get(c) for c in COVERAGE_CLASSES} == _reference(x, fmt)


def test_low_precision_inputs_and_the_forty_percent_reading():
    # A gradient of std 2^-24 (FP16's min subnormal) loses the values below 2^-25: P(|z| <= 1/2) = 38%.
    g = np.float32(2.0**-24) * np.random.default_rng(3).standard_normal(10_000).astype(np.float32)
    cov = range_coverage(g, FP16)
    assert cov.underflow == np.mean(np.abs(g) <= 2.0**-25)
    assert 0.36 < cov.underflow < 0.41 and cov.subnormal == 1 - cov.underflow
    half = range_coverage(jnp.asarray([1.0, 2.0**-20, 0.0, 1000.0], jnp.float16), E4M3)
    assert (half.normal, half.underflow, half.zero, half.overflow) == (0.25, 0.25, 0.25, 0.25)


def test_empty_input_has_undefined_fractions():
    assert all(math.isnan(range_coverage(np.zeros(0, np.float32), FP16).get(c)) for c in COVERAGE_CLASSES)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="fmt must be an FPFormat"):
        range_coverage(np.ones(2, np.float32), "fp16")
    with pytest.raises(TypeError, match="x must"):
        range_coverage(np.ones(2, np.int32), FP16)
    with pytest.raises(ValueError, match="not a coverage class"):
        range_coverage(np.ones(2, np.float32), FP16).get("lost")
