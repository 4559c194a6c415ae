"""Nearest rounding and ``cast`` equal ml_dtypes' casts bit for bit wherever ml_dtypes has the
format.

Inputs: every float16 and every bfloat16 bit pattern, every grid point, midpoint (tie) and their
float32 neighbours for each format, random float32 bit patterns, and hypothesis-drawn arrays.
"""

import functools

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unitscale.formats import cast, format_from_name, quantize

ML_NAMES = [
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e4m3b11fnuz",
    "float8_e4m3", "float8_e3m4", "float6_e3m2fn", "float6_e2m3fn", "float4_e2m1fn",
    "float16", "bfloat16",
]  # fmt: skip
CASTABLE = [n for n in ML_NAMES if not n.startswith("float6")]  # XLA:CPU has no float6 arrays


def same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise bit equality of two float32 arrays, with every NaN equal to every NaN."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def ml_dtypes_round(x: np.ndarray, dtype: np.dtype, max_: float, saturate: bool) -> np.ndarray:
    """ml_dtypes' cast from float32 (exact for every input here), clipped first if saturating."""
    x32 = np.asarray(x, np.float32)
    if saturate:
        x32 = np.clip(x32, -max_, max_)
    with np.errstate(over="ignore", invalid="ignore"):
        return x32.astype(dtype).astype(np.float32)


def assert_matches_ml_dtypes(x: np.ndarray, name: str, saturate: bool) -> None:
    fmt = format_from_name(name)
    got = np.asarray(quantize(x, fmt, saturate=saturate))
    assert got.dtype == x.dtype
    want = ml_dtypes_round(x, fmt.dtype, fmt.max, saturate)
    ok = same_bits(got, want)
    if fmt.specials == "none":
        # ml_dtypes turns NaN into a zero of these NaN-less types; quantize keeps NaN.
        nan = np.isnan(np.asarray(x, np.float32))
        assert np.isnan(got[nan].astype(np.float32)).all()
        ok |= nan
    bad = np.flatnonzero(~ok)
    first = bad[:4]
    assert bad.size == 0, f"{bad.size} mismatches: x={x[first]} {got[first]} vs {want[first]}"


@functools.cache
def probes(name: str) -> np.ndarray:
    """Every grid point of the format, every midpoint between neighbours (including the one
    between max and the first value beyond it), their float32 neighbours, specials, both signs."""
    dtype = np.dtype(getattr(ml_dtypes, name, None) or getattr(np, name))
    info = ml_dtypes.finfo(dtype)
    codes = np.arange(2**info.bits, dtype=np.uint16 if info.bits == 16 else np.uint8)
    with np.errstate(invalid="ignore"):
        values = codes.view(dtype).astype(np.float32).astype(np.float64)
    grid = np.unique(np.abs(values[np.isfinite(values)]))
    top = float(info.max)
    beyond = top + 2.0 ** (np.floor(np.log2(top)) - info.nmant)  # next point of the top binade
    grid = np.append(grid, beyond)
    mids = (grid[1:] + grid[:-1]) / 2
    with np.errstate(over="ignore"):  # bfloat16's beyond-max point is 2^128: inf in float32
        base = np.concatenate([grid, mids, [grid[1] / 4, 2 * beyond, 3.4e38]]).astype(np.float32)
    near = np.concatenate([base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, 0)])
    specials = np.array([np.inf, np.nan, 0.0], np.float32)
    out = np.concatenate([near, specials])
    return np.concatenate([out, -out])


def random_float32_bits(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", ML_NAMES)
def test_float32_grid_ties_and_neighbours_match(name, saturate):
    assert_matches_ml_dtypes(probes(name), name, saturate)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", ML_NAMES)
def test_random_float32_bit_patterns_match(name, saturate):
    fmt = format_from_name(name)
    scaled = np.random.default_rng(1).standard_normal(1 << 14) * fmt.max
    exponents = np.random.default_rng(2).uniform(np.log2(fmt.min_subnormal) - 3, 3, 1 << 14)
    with np.errstate(over="ignore"):
        scaled = (scaled * np.exp2(exponents)).astype(np.float32)  # spread over the whole range
    x = np.concatenate([random_float32_bits(1 << 16, seed=0), scaled])
    assert_matches_ml_dtypes(x, name, saturate)


ALL_FLOAT16 = np.arange(2**16, dtype=np.uint16).view(np.float16)
ALL_BFLOAT16 = np.arange(2**16, dtype=np.uint16).view(ml_dtypes.bfloat16)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", [n for n in ML_NAMES if n != "bfloat16"])
def test_every_float16_input_matches(name, saturate):
    assert_matches_ml_dtypes(ALL_FLOAT16, name, saturate)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", [n for n in ML_NAMES if n != "float16"])
def test_every_bfloat16_input_matches(name, saturate):
    assert_matches_ml_dtypes(ALL_BFLOAT16, name, saturate)


floats32 = st.one_of(
    st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.floats(-600.0, 600.0, width=32),
    st.floats(-(2.0**-10), 2.0**-10, width=32),
)


@settings(max_examples=60)
@given(
    name=st.sampled_from(ML_NAMES),
    x=hnp.arrays(np.float32, 256, elements=floats32),
    saturate=st.booleans(),
)
def test_drawn_arrays_match(name, x, saturate):
    assert_matches_ml_dtypes(x, name, saturate)


@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("name", CASTABLE)
def test_cast_is_the_ml_dtypes_cast(name, saturate):
    fmt = format_from_name(name)
    x = np.concatenate([probes(name), random_float32_bits(1 << 12, seed=3)])
    y = cast(x, fmt, saturate=saturate)
    assert y.dtype == fmt.dtype
    got = np.asarray(y).astype(np.float32)
    want = ml_dtypes_round(x, fmt.dtype, fmt.max, saturate)
    ok = same_bits(got, want)
    if fmt.specials == "none":  # NaN becomes a zero; XLA and ml_dtypes disagree on its sign
        nan = np.isnan(x)
        assert (got[nan] == 0).all()
        ok |= nan
    assert ok.all(), x[~ok][:8]


@pytest.mark.parametrize("name", ["float8_e4m3fn", "float8_e5m2", "float4_e2m1fn"])
def test_cast_from_16_bit_inputs_rounds_once(name):
    fmt = format_from_name(name)
    for inputs in (ALL_FLOAT16, ALL_BFLOAT16):
        got = np.asarray(cast(jnp.asarray(inputs), fmt)).astype(np.float32)
        want = ml_dtypes_round(inputs, fmt.dtype, fmt.max, saturate=True)
        finite = ~np.isnan(inputs.astype(np.float32))
        assert same_bits(got[finite], want[finite]).all()


def test_cast_agrees_with_quantize_on_values():
    x = probes("float8_e4m3fn")
    for name in CASTABLE:
        fmt = format_from_name(name)
        finite = ~np.isnan(x)
        cast_values = np.asarray(cast(x, fmt)).astype(np.float32)
        assert same_bits(cast_values[finite], np.asarray(quantize(x, fmt))[finite]).all()
