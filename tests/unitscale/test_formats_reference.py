"""quantize against a brute-force NumPy reference over the enumerated grid, for arbitrary formats;
stochastic rounding: neighbours only, unbiased."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from unitscale.formats import E2M1, E4M3, E4M3_FNUZ, E5M2, FP16, FPFormat, quantize

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def grid_of(fmt: FPFormat) -> tuple[np.ndarray, float]:
    """Non-negative finite values in code order (code i is grid[i]) and the first value past max,
    decoded from the encoding alone."""
    e, m, b = fmt.exponent_bits, fmt.mantissa_bits, fmt.bias
    codes = np.arange(2 ** (e + m) + 1)
    exponent, mantissa = codes >> m, codes & (2**m - 1)
    subnormal = mantissa * 2.0 ** (1 - b - m)
    normal = (2**m + mantissa) * 2.0 ** (exponent - b - m)
    values = np.where(exponent == 0, subnormal, normal)
    n_finite = {
        "ieee": (2**e - 1) << m,  # the top exponent is inf / NaN
        "fn": 2 ** (e + m) - 1,  # the all-ones code is NaN
        "fnuz": 2 ** (e + m),  # only -0 is NaN
        "none": 2 ** (e + m),
    }[fmt.specials]
    return values[:n_finite], float(values[n_finite])


def reference_nearest(x: np.ndarray, fmt: FPFormat, saturate: bool) -> np.ndarray:
    """Nearest grid point, ties to the even code; overflow per the format's convention."""
    grid, beyond = grid_of(fmt)
    ext, n = np.append(grid, beyond), len(grid)
    a = np.abs(x.astype(np.float64))
    i = np.clip(np.searchsorted(ext, np.nan_to_num(a, posinf=beyond), side="right") - 1, 0, n - 1)
    down, up = a - ext[i], ext[i + 1] - a
    j = np.where(down < up, i, np.where(up < down, i + 1, i + (i % 2)))
    overflow = (j >= n) | (a >= beyond)
    if saturate or fmt.specials == "none":
        spill = grid[-1]
    else:
        spill = np.inf if fmt.specials == "ieee" else np.nan
    out = np.where(overflow, spill, ext[np.minimum(j, n - 1)])
    out = np.copysign(out, x.astype(np.float64))
    if fmt.specials == "fnuz":
        out = np.where(out == 0, 0.0, out)
    return np.where(np.isnan(x.astype(np.float64)), np.nan, out)


def same_bits(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))


def probes(fmt: FPFormat) -> np.ndarray:
    """Grid points, midpoints (ties), their float32 neighbours, beyond-max, tiny, specials."""
    grid, beyond = grid_of(fmt)
    ext = np.append(grid, beyond)
    base = np.concatenate([ext, (ext[1:] + ext[:-1]) / 2, [ext[1] / 2**40, 3 * beyond]])
    base = base.astype(np.float32)
    out = np.concatenate([
        base, np.nextafter(base, np.float32(np.inf)), np.nextafter(base, np.float32(0)),
        np.array([np.inf, np.nan, 0.0], np.float32),
    ])  # fmt: skip
    return np.concatenate([out, -out])


@st.composite
def any_format(draw) -> FPFormat:
    e, m = draw(st.integers(1, 5)), draw(st.integers(0, 5))
    specials = draw(st.sampled_from(["ieee", "fn", "fnuz", "none"]))
    bias = draw(st.one_of(st.none(), st.integers(-6, 24)))
    try:
        return FPFormat(e, m, bias=bias, specials=specials)
    except ValueError:
        assume(False)


def fits(fmt: FPFormat, dtype) -> bool:
    """Brute force: every finite value of fmt survives a round trip through dtype."""
    grid, _ = grid_of(fmt)
    with np.errstate(over="ignore"):
        return bool(np.all(grid.astype(dtype).astype(np.float64) == grid))


@settings(max_examples=80)
@given(
    fmt=any_format(),
    dtype=st.sampled_from(list(DTYPES)),
    saturate=st.booleans(),
    unit=hnp.arrays(np.float32, 64, elements=st.floats(-4, 4, width=32)),
    octave=st.integers(-30, 30),
)
def test_nearest_equals_brute_force_reference(fmt, dtype, saturate, unit, octave):
    drawn = (unit.astype(np.float64) * 2.0**octave).astype(np.float32)
    with np.errstate(over="ignore"):
        x = np.concatenate([probes(fmt), drawn]).astype(DTYPES[dtype])
    if not fits(fmt, DTYPES[dtype]):
        with pytest.raises(ValueError, match="cannot hold"):
            quantize(x, fmt, saturate=saturate)
        return
    got = np.asarray(quantize(x, fmt, saturate=saturate))
    assert got.dtype == x.dtype
    want = reference_nearest(x.astype(np.float32), fmt, saturate)
    ok = same_bits(got, want)
    assert ok.all(), (x[~ok][:6], got[~ok][:6], want[~ok][:6])


@pytest.mark.parametrize(
    "fmt",
    [E4M3, E5M2, E4M3_FNUZ, E2M1, FPFormat(3, 0, specials="fn"), FPFormat(1, 3, specials="fnuz")],
    ids=str,
)
def test_every_code_round_trips_and_nothing_leaves_the_grid(fmt):
    grid, _ = grid_of(fmt)
    x = np.concatenate([grid, -grid]).astype(np.float32)
    assert same_bits(
        quantize(x, fmt), np.where(x == 0, 0.0 if fmt.specials == "fnuz" else x, x)
    ).all()
    rng = np.random.default_rng(0)
    spread = rng.uniform(-1, 1, 1 << 14) * np.exp2(
        rng.uniform(np.log2(grid[1]) - 2, np.log2(fmt.max) + 2, 1 << 14)
    )
    outputs = np.abs(np.asarray(quantize(spread.astype(np.float32), fmt)))
    assert np.isin(outputs, grid).all()
    assert len(np.unique(outputs)) > len(grid) // 2  # the inputs did cover the range


def test_pytorch_reference_e2m1_grid_and_stochastic_fact():
    # docs/reference/number_formats.md (unit_scaling.formats test): E2M1 with bias 2, no specials.
    fmt = FPFormat(2, 1, bias=2, specials="none")
    dense = jnp.linspace(-5.0, 5.0, 4001)
    assert np.unique(np.abs(np.asarray(quantize(dense, fmt)))).tolist() == [
        0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0,
    ]  # fmt: skip
    n = 20000
    q = np.asarray(
        quantize(jnp.full((n,), -1.35), fmt, rounding="stochastic", key=jax.random.key(0))
    )
    assert set(np.unique(q).tolist()) == {-1.5, -1.0}
    p = np.float64(np.float32(1.35) - 1) / 0.5  # 0.7 up to float32's representation of 1.35
    assert abs(np.mean(q == -1.5) - p) <= 5 * np.sqrt(p * (1 - p) / n)


def neighbours(x: np.ndarray, fmt: FPFormat) -> tuple[np.ndarray, np.ndarray]:
    """Signed grid points lo, hi with |lo| <= |x| <= |hi|; past max, hi is the value beyond."""
    grid, beyond = grid_of(fmt)
    ext = np.append(grid, beyond)
    a = np.abs(x.astype(np.float64))
    i = np.clip(np.searchsorted(ext, a, side="right") - 1, 0, len(ext) - 2)
    on_grid = ext[i] == a
    lo, hi = ext[i], np.where(on_grid, ext[i], ext[i + 1])
    sign = np.sign(x)
    return sign * lo, sign * hi


def stochastic_samples(x: np.ndarray, fmt: FPFormat, n: int, seed: int, **kwargs) -> np.ndarray:
    xs = jnp.broadcast_to(jnp.asarray(x), (n, x.size))
    return np.asarray(quantize(xs, fmt, rounding="stochastic", key=jax.random.key(seed), **kwargs))


def assert_unbiased(samples: np.ndarray, x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
    n = samples.shape[0]
    x64, lo, hi = x.astype(np.float64), lo.astype(np.float64), hi.astype(np.float64)
    p = np.where(hi == lo, 0.0, (x64 - lo) / np.where(hi == lo, 1.0, hi - lo))
    standard_error = np.abs(hi - lo) * np.sqrt(p * (1 - p) / n)
    error = np.abs(samples.astype(np.float64).mean(axis=0) - x64)
    assert (error <= 5 * standard_error).all(), (x[error > 5 * standard_error], p)


@settings(max_examples=25)
@given(
    fmt=any_format(),
    fraction=hnp.arrays(np.float64, 24, elements=st.floats(0.05, 0.95)),
    seed=st.integers(0, 2**16),
)
def test_stochastic_is_unbiased_between_neighbours(fmt, fraction, seed):
    grid, _ = grid_of(fmt)
    assume(fits(fmt, np.float32) and len(grid) >= 3)
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(grid) - 1, size=fraction.size)  # a gap of the grid, subnormals included
    x = grid[i] + fraction * (grid[i + 1] - grid[i])
    x = np.concatenate([x, grid[rng.integers(0, len(grid), 8)]]) * rng.choice([-1, 1], x.size + 8)
    x = x.astype(np.float32)
    samples = stochastic_samples(x, fmt, n=2048, seed=seed)
    lo, hi = neighbours(x, fmt)
    assert ((samples == lo) | (samples == hi)).all()
    assert_unbiased(samples, x, lo, hi)


@pytest.mark.parametrize("fmt", [E4M3, E4M3_FNUZ, FP16], ids=str)
def test_stochastic_is_unbiased_below_the_smallest_subnormal(fmt):
    # Below min_subnormal the two neighbours are 0 and min_subnormal; 2^-12 min_subnormal needs
    # more than 32 random bits to be exact (documented truncation, 2^-32 relative at most).
    x = (fmt.min_subnormal * 2.0 ** -np.array([1, 2, 5, 9, 10, 12]) * 1.5).astype(np.float32)
    x = np.concatenate([x, -x])
    samples = stochastic_samples(x, fmt, n=1 << 16, seed=7)
    lo, hi = neighbours(x, fmt)
    assert ((samples == lo) | (samples == hi)).all()
    assert_unbiased(samples, x, lo, hi)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_stochastic_is_unbiased_for_16_bit_inputs(dtype):
    grid, _ = grid_of(E4M3)
    x = ((grid[1:-1] + grid[2:]) / 2 + (grid[2:] - grid[1:-1]) / 4).astype(DTYPES[dtype])[::8]
    samples = stochastic_samples(x, E4M3, n=4096, seed=3)
    assert samples.dtype == x.dtype
    lo, hi = neighbours(x.astype(np.float32), E4M3)
    assert ((samples == lo) | (samples == hi)).all()
    assert_unbiased(samples.astype(np.float32), x.astype(np.float32), lo, hi)


@pytest.mark.parametrize(
    "fmt, spill", [(E5M2, np.inf), (E4M3, np.nan), (E4M3_FNUZ, np.nan), (E2M1, 6.0)], ids=str
)
def test_stochastic_overflow_probability_beyond_max(fmt, spill):
    _, beyond = grid_of(fmt)
    x = np.array([fmt.max + 0.25 * (beyond - fmt.max), -(fmt.max + 0.75 * (beyond - fmt.max))])
    x = x.astype(np.float32)
    n = 8192
    saturated = stochastic_samples(x, fmt, n, seed=1, saturate=True)
    assert (saturated == np.sign(x) * fmt.max).all()
    free = stochastic_samples(x, fmt, n, seed=1, saturate=False)
    if fmt.specials == "none":  # nothing to spill into: saturation is the only behaviour
        assert (free == saturated).all()
        return
    spilled = np.isnan(free) if np.isnan(spill) else free == np.sign(x) * spill
    assert (spilled | (free == np.sign(x) * fmt.max)).all()
    p = np.array([0.25, 0.75])  # (|x| - max) / (beyond - max)
    assert (np.abs(spilled.mean(axis=0) - p) <= 5 * np.sqrt(p * (1 - p) / n)).all()


def test_stochastic_is_a_function_of_the_key():
    x = jnp.linspace(1.0, 2.0, 1000) + 1 / 32  # none on the E4M3 grid
    a = quantize(x, E4M3, rounding="stochastic", key=jax.random.key(0))
    b = quantize(x, E4M3, rounding="stochastic", key=jax.random.key(0))
    c = quantize(x, E4M3, rounding="stochastic", key=jax.random.key(1))
    legacy = quantize(x, E4M3, rounding="stochastic", key=jax.random.PRNGKey(1))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(c, legacy)  # raw uint32 keys of the same seed draw the same bits
