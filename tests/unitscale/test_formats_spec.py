"""FPFormat as a description: derived properties, ml_dtypes correspondence, names, validation."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from unitscale.formats import (
    BF16,
    E2M1,
    E2M3,
    E3M2,
    E4M3,
    E4M3_FNUZ,
    E5M2,
    E5M2_FNUZ,
    FP16,
    FP32,
    FPFormat,
    format_from_name,
)

# docs/reference/number_formats.md, the table: dtype, bias, max, min normal, min subnormal, eps,
# and the "cast overflow" column read as a special-value convention.
TABLE = [
    ("float8_e4m3fn", 7, 448.0, 2.0**-6, 2.0**-9, 2.0**-3, "fn"),
    ("float8_e5m2", 15, 57344.0, 2.0**-14, 2.0**-16, 2.0**-2, "ieee"),
    ("float8_e4m3fnuz", 8, 240.0, 2.0**-7, 2.0**-10, 2.0**-3, "fnuz"),
    ("float8_e5m2fnuz", 16, 57344.0, 2.0**-15, 2.0**-17, 2.0**-2, "fnuz"),
    ("float8_e4m3b11fnuz", 11, 30.0, 2.0**-10, 2.0**-13, 2.0**-3, "fnuz"),
    ("float8_e4m3", 7, 240.0, 2.0**-6, 2.0**-9, 2.0**-3, "ieee"),
    ("float8_e3m4", 3, 15.5, 2.0**-2, 2.0**-6, 2.0**-4, "ieee"),
    ("float6_e3m2fn", 3, 28.0, 2.0**-2, 2.0**-4, 0.25, "none"),
    ("float6_e2m3fn", 1, 7.5, 1.0, 0.125, 0.125, "none"),
    ("float4_e2m1fn", 1, 6.0, 1.0, 0.5, 0.5, "none"),
    ("float16", 15, 65504.0, 2.0**-14, 2.0**-24, 2.0**-10, "ieee"),
    ("bfloat16", 127, 3.39e38, 2.0**-126, 2.0**-133, 2.0**-7, "ieee"),
]


def _dtype(name: str) -> np.dtype:
    return np.dtype(getattr(ml_dtypes, name, None) or getattr(np, name))


@pytest.mark.parametrize("row", TABLE, ids=[r[0] for r in TABLE])
def test_reference_table_row_matches_derived_properties(row):
    name, bias, max_, min_normal, min_subnormal, eps, specials = row
    fmt = format_from_name(name)
    assert fmt.bias == bias
    assert fmt.specials == specials
    # The table rounds bfloat16's max to three digits; every other entry is exact.
    assert fmt.max == (pytest.approx(max_, rel=1e-3) if name == "bfloat16" else max_)
    assert fmt.min_normal == min_normal
    assert fmt.min_subnormal == min_subnormal
    assert fmt.epsilon == eps


@pytest.mark.parametrize("name", [r[0] for r in TABLE] + ["float32"])
def test_properties_equal_ml_dtypes_finfo(name):
    fmt, info = format_from_name(name), ml_dtypes.finfo(_dtype(name))
    assert fmt.dtype == _dtype(name)
    assert fmt.max == float(info.max)
    assert fmt.min_normal == float(info.smallest_normal)
    assert fmt.min_subnormal == float(info.smallest_subnormal)
    assert fmt.epsilon == float(info.eps)
    assert fmt.bits == info.bits
    assert (fmt.exponent_bits, fmt.mantissa_bits) == (info.nexp, info.nmant)


@pytest.mark.parametrize(
    "fmt, expected, dtype",
    [
        (FP32, (8, 23, 127, "ieee"), np.float32),
        (BF16, (8, 7, 127, "ieee"), ml_dtypes.bfloat16),
        (FP16, (5, 10, 15, "ieee"), np.float16),
        (E4M3, (4, 3, 7, "fn"), ml_dtypes.float8_e4m3fn),
        (E5M2, (5, 2, 15, "ieee"), ml_dtypes.float8_e5m2),
        (E4M3_FNUZ, (4, 3, 8, "fnuz"), ml_dtypes.float8_e4m3fnuz),
        (E5M2_FNUZ, (5, 2, 16, "fnuz"), ml_dtypes.float8_e5m2fnuz),
        (E2M1, (2, 1, 1, "none"), ml_dtypes.float4_e2m1fn),
        (E3M2, (3, 2, 3, "none"), ml_dtypes.float6_e3m2fn),
        (E2M3, (2, 3, 1, "none"), ml_dtypes.float6_e2m3fn),
    ],
)
def test_named_formats_encode_as_documented(fmt, expected, dtype):
    assert (fmt.exponent_bits, fmt.mantissa_bits, fmt.bias, fmt.specials) == expected
    assert fmt.dtype == np.dtype(dtype)


def test_formats_without_a_dtype_report_none():
    assert FPFormat(3, 3).dtype is None
    assert FPFormat(4, 3, bias=9, specials="fn").dtype is None
    assert FPFormat(5, 2, specials="fn").dtype is None


def test_pytorch_reference_e2m1_with_bias_2():
    # unit_scaling.formats test (docs/reference/number_formats.md): max 3, min normal 0.5,
    # min subnormal 0.25.
    fmt = FPFormat(2, 1, bias=2, specials="none")
    assert (fmt.max, fmt.min_normal, fmt.min_subnormal) == (3.0, 0.5, 0.25)


def test_pytorch_reference_range_is_fnuz_like_for_e4m3():
    # The PyTorch FPFormat(4, 3) range, max 2^(2^(e-1)-1) (2 - 2^-m) and min normal 2^(1-2^(e-1)),
    # is the all-finite format with bias 2^(e-1).
    for e, m in [(4, 3), (5, 2), (3, 4)]:
        fmt = FPFormat(e, m, bias=2 ** (e - 1), specials="none")
        assert fmt.max == 2.0 ** (2 ** (e - 1) - 1) * (2 - 2.0**-m)
        assert fmt.min_normal == 2.0 ** (1 - 2 ** (e - 1))


def test_default_bias_depends_on_convention():
    assert FPFormat(4, 3).bias == 7
    assert FPFormat(4, 3, specials="fn").bias == 7
    assert FPFormat(4, 3, specials="none").bias == 7
    assert FPFormat(4, 3, specials="fnuz").bias == 8
    assert FPFormat(4, 3, bias=0).bias == 0


def test_one_exponent_bit_is_a_fixed_point_grid():
    # e = 1: exponent code 0 is subnormal, code 1 the single normal binade (reserved under ieee).
    none = FPFormat(1, 2, specials="none")
    assert none.bias == 0
    assert (none.min_subnormal, none.min_normal, none.max) == (0.5, 2.0, 3.5)
    ieee = FPFormat(1, 2)
    assert (ieee.min_subnormal, ieee.max) == (0.5, 1.5)
    assert ieee.min_normal > ieee.max
    fnuz = FPFormat(1, 0, specials="fnuz")
    assert (fnuz.bias, fnuz.max, fnuz.min_subnormal) == (1, 1.0, 1.0)
    assert FPFormat(1, 1, specials="fn").max == 2.0  # codes 00, 01, 10 are 0, 1, 2; 11 is NaN


def test_fn_max_skips_only_the_nan_code():
    assert FPFormat(4, 3, specials="fn").max == 448.0  # 1.75 * 2^8
    assert FPFormat(3, 0, specials="fn").max == 2.0 ** (6 - 3)  # m = 0: exponent code 7 is NaN


def test_bits_and_epsilon_follow_from_widths():
    for e, m, specials in [(1, 0, "none"), (2, 5, "fn"), (8, 23, "ieee"), (5, 10, "fnuz")]:
        fmt = FPFormat(e, m, specials=specials)
        assert fmt.bits == 1 + e + m
        assert fmt.epsilon == 2.0**-m


def test_formats_are_frozen_hashable_and_equal_by_value():
    assert FPFormat(4, 3) == FPFormat(4, 3, bias=7)
    assert hash(FPFormat(4, 3)) == hash(FPFormat(4, 3, bias=7))
    assert len({E4M3, FPFormat(4, 3, specials="fn"), E4M3_FNUZ}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        E4M3.bias = 8

    @dataclasses.dataclass(frozen=True)
    class Policy:
        forward: FPFormat = E4M3
        backward: FPFormat = E5M2

    assert hash(Policy()) == hash(Policy())


def test_format_is_a_static_jit_argument():
    traces = []

    def scaled_max(x, fmt):
        traces.append(fmt)
        return x * fmt.max

    f = jax.jit(scaled_max, static_argnums=1)
    assert float(f(jnp.float32(1), E4M3)) == 448.0
    assert float(f(jnp.float32(1), FPFormat(4, 3, specials="fn"))) == 448.0
    assert float(f(jnp.float32(1), E4M3_FNUZ)) == 240.0
    assert traces == [E4M3, E4M3_FNUZ]


def test_repr_round_trips_and_names_are_readable():
    assert repr(E4M3) == "FPFormat(4, 3, bias=7, specials='fn')"
    assert eval(repr(E5M2_FNUZ), {"FPFormat": FPFormat}) == E5M2_FNUZ
    names = [f.name for f in (FP32, BF16, FP16, E4M3, E5M2, E4M3_FNUZ, E2M1)]
    assert names == ["FP32", "BF16", "FP16", "E4M3FN", "E5M2", "E4M3FNUZ", "E2M1NS"]
    assert FPFormat(4, 3, bias=11, specials="fnuz").name == "E4M3B11FNUZ"
    assert str(E5M2) == "E5M2"


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("fp32", FP32),
        ("FP32", FP32),
        ("bf16", BF16),
        ("fp16", FP16),
        ("e4m3", E4M3),
        ("E4M3", E4M3),
        ("e5m2", E5M2),
        ("e4m3_fnuz", E4M3_FNUZ),
        ("E4M3-FNUZ", E4M3_FNUZ),
        ("e5m2fnuz", E5M2_FNUZ),
        ("e5m2_fnuz", E5M2_FNUZ),
        ("e2m1", E2M1),
        ("e3m2", E3M2),
        ("e2m3", E2M3),
        ("e3m4", FPFormat(3, 4, bias=3)),
        ("e4m3b11fnuz", FPFormat(4, 3, bias=11, specials="fnuz")),
        ("float8_e4m3fn", E4M3),
        ("Float8_E5M2FNUZ", E5M2_FNUZ),
        ("float8_e4m3", FPFormat(4, 3)),  # ml_dtypes' IEEE-style E4M3, not OCP's
    ],
)
def test_format_from_name(name, fmt):
    assert format_from_name(name) == fmt


@pytest.mark.parametrize("name", [r[0] for r in TABLE] + ["float32"])
def test_every_ml_dtypes_name_gives_its_dtype(name):
    assert format_from_name(name).dtype == _dtype(name)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"name='e9m9'.*valid names:.*e4m3.*float8_e5m2"):
        format_from_name("e9m9")
    with pytest.raises(TypeError, match="name must be a str"):
        format_from_name(8)


@pytest.mark.parametrize(
    "args, kwargs, error, message",
    [
        ((0, 3), {}, ValueError, "exponent_bits must be >= 1, got 0"),
        ((4, -1), {}, ValueError, "mantissa_bits must be >= 0, got -1"),
        ((4.0, 3), {}, TypeError, "exponent_bits must be an int"),
        ((4, 3.0), {}, TypeError, "mantissa_bits must be an int"),
        ((True, 3), {}, TypeError, "exponent_bits must be an int"),
        ((4, 3), {"bias": 7.5}, TypeError, "bias must be an int"),
        ((4, 3), {"bias": "7"}, TypeError, "bias must be an int"),
        ((4, 3), {"specials": "nan"}, ValueError, "specials='nan' is unknown"),
        ((4, 3), {"specials": None}, ValueError, "specials=None is unknown"),
        ((8, 24), {}, ValueError, "mantissa_bits=24 exceeds float32"),
        ((9, 3), {}, ValueError, "exponent_bits=9 .* wider than float32 for any bias"),
        ((8, 23), {"bias": 126}, ValueError, "bias=126 .* beyond float32"),
        ((8, 7), {"bias": 150}, ValueError, "bias=150 puts min_subnormal at 2\\^-156"),
        ((1, 0), {}, ValueError, "leave no positive finite value"),
        ((1, 0), {"specials": "fn"}, ValueError, "leave no positive finite value"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        FPFormat(*args, **kwargs)


def test_numpy_integers_are_accepted():
    assert FPFormat(np.int64(4), np.int32(3), bias=np.int8(7)) == FPFormat(4, 3)


def test_as_format_accepts_a_format_a_name_a_mapping_or_none_and_names_the_argument():
    from unitscale.formats import E4M3, as_format

    assert as_format(E4M3, "fmt") is E4M3 and as_format(None, "fmt") is None
    assert as_format("e4m3", "fmt") == E4M3
    assert as_format(dataclasses.asdict(E4M3), "fmt") == E4M3
    with pytest.raises(TypeError, match="^weights must be an FPFormat"):
        as_format(8, "weights")
