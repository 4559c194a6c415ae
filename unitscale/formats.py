"""Exact binary floating-point formats and the one quantiser.

A format has a sign bit, ``e`` exponent bits, ``m`` mantissa bits, an integer ``bias`` and a
special-value convention. A code with exponent field ``E`` and mantissa field ``M`` means

    E == 0:  (-1)^s * M * 2^(1 - bias - m)            (zero and subnormals)
    E >= 1:  (-1)^s * (2^m + M) * 2^(E - bias - m)    (normals)

except for the codes the convention reserves:

    "ieee"  E all ones is +-inf (M == 0) or NaN (M != 0), as IEEE 754, OCP E5M2, float16.
    "fn"    only E and M both all ones is NaN; no inf (OCP E4M3).
    "fnuz"  only the negative-zero code (sign 1, E == M == 0) is NaN; no inf, no -0
            (Graphcore / AMD FP8). Default bias 2^(e-1) instead of 2^(e-1) - 1.
    "none"  every code is a finite number (OCP MX FP6 / FP4 elements); casts saturate.

Facts checked against: docs/reference/number_formats.md (ml_dtypes 0.6.0, OCP FP8 and MX v1.0,
Noune et al. 2022). Every number here is derived from (e, m, bias, specials).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
from collections.abc import Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

Specials = Literal["ieee", "fn", "fnuz", "none"]
Rounding = Literal["nearest", "stochastic"]
_SPECIALS = ("ieee", "fn", "fnuz", "none")
_ROUNDINGS = ("nearest", "stochastic")

# float32 encoding, the domain every quantisation is computed in.
_F32_MANT = 23
_F32_BIAS = 127
_F32_INF = np.uint32(0x7F800000)
_F32_NAN = np.uint32(0x7FC00000)
_F32_SIGN = np.uint32(0x80000000)


@dataclasses.dataclass(frozen=True)
class FPFormat:
    """A sign + ``exponent_bits`` + ``mantissa_bits`` binary floating-point format.

    ``bias`` defaults to 2^(e-1) - 1 (2^(e-1) for ``specials="fnuz"``); ``specials`` is one of
    "ieee" (default), "fn", "fnuz", "none" (see the module docstring).

    ``exponent_bits=1`` is allowed: the exponent field has codes 0 (subnormal) and 1 (the single
    normal binade), so the finite values form a sign-magnitude fixed-point grid with step
    2^(1 - bias - m). Under "ieee" code 1 is inf/NaN, so all finite values are subnormals and
    ``min_normal`` (always 2^(1 - bias)) lies above ``max``.

    Every value must be exactly representable in float32 (quantisation computes there), so
    ``mantissa_bits <= 23``, ``min_subnormal >= 2^-149`` and ``max <= float32 max``; the format
    needs at least one positive finite value.

    Instances are frozen and hashable: use them as static jit arguments and config fields.
    """

    exponent_bits: int
    mantissa_bits: int
    bias: int | None = dataclasses.field(default=None, kw_only=True)
    specials: Specials = dataclasses.field(default="ieee", kw_only=True)

    def __post_init__(self) -> None:
        _check_int("exponent_bits", self.exponent_bits, minimum=1)
        _check_int("mantissa_bits", self.mantissa_bits, minimum=0)
        if self.specials not in _SPECIALS:
            raise ValueError(f"specials={self.specials!r} is unknown; expected one of {_SPECIALS}")
        if self.bias is None:
            half = 2 ** (self.exponent_bits - 1)
            object.__setattr__(self, "bias", half if self.specials == "fnuz" else half - 1)
        else:
            _check_int("bias", self.bias)
            object.__setattr__(self, "bias", int(self.bias))
        object.__setattr__(self, "exponent_bits", int(self.exponent_bits))
        object.__setattr__(self, "mantissa_bits", int(self.mantissa_bits))
        self._check_float32_range()

    def _check_float32_range(self) -> None:
        if self._max_code <= 0:
            raise ValueError(
                f"exponent_bits={self.exponent_bits}, mantissa_bits={self.mantissa_bits} with "
                f"specials={self.specials!r} leave no positive finite value"
            )
        if self.mantissa_bits > _F32_MANT:
            raise ValueError(
                f"mantissa_bits={self.mantissa_bits} exceeds float32's {_F32_MANT}; "
                "quantize computes exactly in float32"
            )
        low = self._emin - self.mantissa_bits
        top = (self._max_code >> self.mantissa_bits) - self.bias
        if top - low > _F32_BIAS + (_F32_BIAS - 1 + _F32_MANT):  # float32: 2^-149..2^127
            raise ValueError(
                f"exponent_bits={self.exponent_bits} with mantissa_bits={self.mantissa_bits} "
                f"spans 2^{low}..2^{top}, wider than float32 for any bias"
            )
        if low < 1 - _F32_BIAS - _F32_MANT:
            raise ValueError(
                f"bias={self.bias} puts min_subnormal at 2^{low}, below float32's 2^-149"
            )
        if top > _F32_BIAS:
            raise ValueError(
                f"bias={self.bias} (exponent_bits={self.exponent_bits}) puts max at 2^{top}, "
                f"beyond float32's range (2^{_F32_BIAS})"
            )

    # --- derived properties -------------------------------------------------------------------

    @property
    def bits(self) -> int:
        """Storage width 1 + e + m."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def max(self) -> float:
        """Largest finite value: the value of the largest non-special code."""
        return self._decode(self._max_code)

    @property
    def min_normal(self) -> float:
        """2^(1 - bias): smallest value with exponent field 1."""
        return math.ldexp(1.0, self._emin)

    @property
    def min_subnormal(self) -> float:
        """2^(1 - bias - m): the grid step below ``min_normal`` (= min_normal when m = 0)."""
        return math.ldexp(1.0, self._emin - self.mantissa_bits)

    @property
    def epsilon(self) -> float:
        """2^-m: the gap between 1 and the next value on a normal binade's grid."""
        return math.ldexp(1.0, -self.mantissa_bits)

    @functools.cached_property
    def dtype(self) -> np.dtype | None:
        """The numpy / ml_dtypes dtype with exactly this encoding, or None."""
        for candidate in _CANDIDATE_DTYPES:
            if _format_of_dtype(candidate) == self:
                return candidate
        return None

    @property
    def name(self) -> str:
        """Short name: FP32/BF16/FP16, else E<e>M<m>[B<bias> if not default][FN|FNUZ|NS]."""
        for short, (e, m) in (("FP32", (8, 23)), ("BF16", (8, 7)), ("FP16", (5, 10))):
            if self == FPFormat(e, m):
                return short
        default_bias = FPFormat(self.exponent_bits, self.mantissa_bits, specials=self.specials).bias
        bias = "" if self.bias == default_bias else f"B{self.bias}"
        tag = {"ieee": "", "fn": "FN", "fnuz": "FNUZ", "none": "NS"}[self.specials]
        return f"E{self.exponent_bits}M{self.mantissa_bits}{bias}{tag}"

    def __repr__(self) -> str:
        return (
            f"FPFormat({self.exponent_bits}, {self.mantissa_bits}, bias={self.bias}, "
            f"specials={self.specials!r})"
        )

    def __str__(self) -> str:
        return self.name

    # --- encoding helpers ---------------------------------------------------------------------

    @property
    def _emin(self) -> int:
        return 1 - self.bias

    @property
    def _max_code(self) -> int:
        """Largest positive finite code (sign bit excluded)."""
        all_ones = (1 << (self.exponent_bits + self.mantissa_bits)) - 1
        if self.specials == "ieee":
            return all_ones - (1 << self.mantissa_bits)  # top exponent minus one, mantissa ones
        if self.specials == "fn":
            return all_ones - 1
        return all_ones

    def _decode(self, code: int) -> float:
        exponent, mantissa = code >> self.mantissa_bits, code & ((1 << self.mantissa_bits) - 1)
        if exponent == 0:
            return math.ldexp(mantissa, self._emin - self.mantissa_bits)
        significand = (1 << self.mantissa_bits) + mantissa
        return math.ldexp(significand, exponent - self.bias - self.mantissa_bits)


def _check_int(name: str, value: object, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


# --- ml_dtypes correspondence ---------------------------------------------------------------

_DTYPE_NAMES = (
    "float32", "float16", "bfloat16",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz",
    "float8_e4m3b11fnuz", "float8_e4m3", "float8_e3m4",
    "float6_e3m2fn", "float6_e2m3fn", "float4_e2m1fn",
)  # fmt: skip
_CANDIDATE_DTYPES = tuple(
    np.dtype(getattr(ml_dtypes, n, None) or getattr(np, n))
    for n in _DTYPE_NAMES
    if hasattr(ml_dtypes, n) or hasattr(np, n)
)


@functools.cache
def _format_of_dtype(dtype: np.dtype) -> FPFormat:
    """Read (e, m, bias, specials) off a dtype's finfo and how it casts inf, NaN and -0."""
    info = ml_dtypes.finfo(dtype)
    probe = np.array([np.inf, np.nan, -0.0], np.float32).astype(dtype).astype(np.float32)
    if np.isinf(probe[0]):
        specials = "ieee"
    elif not np.isnan(probe[1]):
        specials = "none"
    elif not np.signbit(probe[2]):
        specials = "fnuz"
    else:
        specials = "fn"
    return FPFormat(int(info.nexp), int(info.nmant), bias=1 - int(info.minexp), specials=specials)


def _holds(dtype: np.dtype, fmt: FPFormat) -> bool:
    """Whether every finite value of ``fmt`` is a value of ``dtype`` (power-of-two grids nest)."""
    host = _format_of_dtype(np.dtype(dtype))
    return (
        fmt.mantissa_bits <= host.mantissa_bits
        and fmt.min_subnormal >= host.min_subnormal
        and fmt.max <= host.max
    )


# --- named formats --------------------------------------------------------------------------

FP32 = FPFormat(8, 23)
BF16 = FPFormat(8, 7)
FP16 = FPFormat(5, 10)
E4M3 = FPFormat(4, 3, specials="fn")  # OCP E4M3: max 448
E5M2 = FPFormat(5, 2)  # OCP E5M2: IEEE-like, max 57344
E4M3_FNUZ = FPFormat(4, 3, specials="fnuz")  # Graphcore / AMD: bias 8, max 240
E5M2_FNUZ = FPFormat(5, 2, specials="fnuz")  # Graphcore / AMD: bias 16
E2M1 = FPFormat(2, 1, specials="none")  # OCP MX FP4
E3M2 = FPFormat(3, 2, specials="none")  # OCP MX FP6
E2M3 = FPFormat(2, 3, specials="none")  # OCP MX FP6

_NAMED = {
    ("fp32", "float32"): FP32,
    ("bf16", "bfloat16"): BF16,
    ("fp16", "float16", "half"): FP16,
    ("e4m3", "e4m3fn", "float8_e4m3fn"): E4M3,
    ("e5m2", "float8_e5m2"): E5M2,
    ("e4m3_fnuz", "float8_e4m3fnuz"): E4M3_FNUZ,
    ("e5m2_fnuz", "float8_e5m2fnuz"): E5M2_FNUZ,
    ("e4m3b11_fnuz", "float8_e4m3b11fnuz"): FPFormat(4, 3, bias=11, specials="fnuz"),
    ("e4m3_ieee", "float8_e4m3"): FPFormat(4, 3),
    ("e3m4", "float8_e3m4"): FPFormat(3, 4),
    ("e2m1", "fp4", "float4_e2m1fn"): E2M1,
    ("e3m2", "float6_e3m2fn"): E3M2,
    ("e2m3", "float6_e2m3fn"): E2M3,
}


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


_BY_NAME = types.MappingProxyType(
    {_normalise(alias): fmt for aliases, fmt in _NAMED.items() for alias in aliases}
)


def format_from_name(name: str) -> FPFormat:
    """Look up a named format, case-insensitively, ignoring '_' and '-' ("E4M3-FNUZ" works).

    Short names follow the papers ("e4m3" is OCP E4M3, finite); ml_dtypes names keep ml_dtypes'
    meaning ("float8_e4m3" is the IEEE-style E4M3 with inf, max 240).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    try:
        return _BY_NAME[_normalise(name)]
    except KeyError:
        valid = ", ".join(alias for aliases in _NAMED for alias in aliases)
        raise ValueError(f"name={name!r} is not a known format; valid names: {valid}") from None


def as_format(value: object, name: str) -> FPFormat | None:
    """``value`` as a format: an :class:`FPFormat` or None as it is, a name through
    :func:`format_from_name`, a mapping as ``FPFormat(**value)``; TypeError naming argument ``name``
    otherwise (policies and storages accept all three spellings, e.g. from JSON)."""
    if value is None or isinstance(value, FPFormat):
        return value
    if isinstance(value, str):
        return format_from_name(value)
    if isinstance(value, Mapping):
        return FPFormat(**value)
    raise TypeError(f"{name} must be an FPFormat, a format name or None, got {type(value).__name__}")


# --- quantisation -----------------------------------------------------------------------------


def _check_input(x: jax.Array, fmt: FPFormat) -> None:
    if not isinstance(fmt, FPFormat):
        raise TypeError(
            f"fmt must be an FPFormat, got {type(fmt).__name__}; use format_from_name for strings"
        )
    if x.dtype not in (jnp.float32, jnp.bfloat16, jnp.float16):
        raise TypeError(f"x must be float32, bfloat16 or float16, got dtype {x.dtype}")
    if not _holds(x.dtype, fmt):
        raise ValueError(
            f"fmt={fmt.name} has values that x's dtype {x.dtype} cannot hold (e.g. its max "
            f"{fmt.max!r}), so the result could not lie on fmt's grid; quantize "
            "x.astype(jnp.float32) instead"
        )


def _u32(value) -> jax.Array:
    return jnp.asarray(value, jnp.uint32)


def _round_magnitude(a: jax.Array, fmt: FPFormat, random: jax.Array | None) -> jax.Array:
    """Round float32 magnitude bits ``a`` onto fmt's grid; the result may exceed fmt.max.

    Where |x| has float32 exponent E, fmt keeps ``shift`` = 23 - m + max(0, emin - E) fewer
    mantissa bits than float32, so rounding drops the low ``shift`` bits of ``a`` and lets the
    carry run into the exponent. At shift >= 24 (|x| < min_subnormal) the result is 0 or
    min_subnormal.
    """
    m = fmt.mantissa_bits
    exp_field = (a >> 23).astype(jnp.int32)
    shift = jnp.maximum(23 - m, 23 - m + fmt._emin + _F32_BIAS - jnp.maximum(exp_field, 1))
    shift = jnp.minimum(shift, 63).astype(jnp.uint32)
    significand = (a & 0x7FFFFF) | jnp.where(exp_field > 0, _u32(1 << 23), _u32(0))
    mask = (_u32(1) << jnp.minimum(shift, _u32(24))) - 1
    dropped = significand & mask
    if random is None:
        up, up_tiny = _nearest_goes_up(a, fmt, shift, mask, dropped)
    else:
        up = up_tiny = _stochastic_goes_up(random, shift, significand, dropped)
    rounded = (a - dropped) + (up.astype(jnp.uint32) << jnp.minimum(shift, _u32(31)))
    step = np.float32(fmt.min_subnormal).view(np.uint32)
    return jnp.where(shift >= 24, jnp.where(up_tiny, step, _u32(0)), rounded)


def _nearest_goes_up(a, fmt, shift, mask, dropped) -> tuple[jax.Array, jax.Array]:
    """Round half to even: up past half, or at half when the kept code is odd."""
    half = (mask >> 1) + 1
    # At shift 23 bit 23 of ``a`` is float32's exponent bit, not the code's last bit; fmt's code
    # parity there is that of E + bias + m + 1 (the same on both sides of emin).
    exponent = (a >> 23) & 1
    parity = (exponent + (fmt.bias + fmt.mantissa_bits + 1) % 2) & 1
    last = jnp.where(shift == 23, parity, (a >> jnp.minimum(shift, _u32(31))) & 1)
    up = (dropped > half) | ((dropped == half) & (last == 1))
    up_tiny = a > np.float32(fmt.min_subnormal / 2).view(np.uint32)  # tie goes to 0, even
    return up, up_tiny


def _stochastic_goes_up(random, shift, significand, dropped) -> jax.Array:
    """Up with probability dropped / 2^shift: 32 uniform bits against it scaled by 2^32.

    Exact for shift <= 32; beyond (|x| < 2^-9 min_subnormal) the threshold is truncated.
    """
    kept = jnp.minimum(shift, _u32(32))
    threshold = jnp.where(
        shift <= 32,
        dropped << jnp.minimum(_u32(32) - kept, _u32(31)),  # dropped == 0 at shift 0
        significand >> jnp.minimum(shift - 32, _u32(31)),
    )
    return random < threshold


def _quantize_f32(x: jax.Array, fmt: FPFormat, random: jax.Array | None, saturate: bool):
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    sign, a = bits & _F32_SIGN, bits & ~_F32_SIGN
    r = _round_magnitude(a, fmt, random)
    max_bits = np.float32(fmt.max).view(np.uint32)
    if saturate or fmt.specials == "none":
        overflow = max_bits
    else:
        overflow = _F32_INF if fmt.specials == "ieee" else _F32_NAN
    r = jnp.where(r > max_bits, overflow, r)
    r = jnp.where(a > _F32_INF, _F32_NAN, r)
    if fmt.specials == "fnuz":
        sign = jnp.where(r == 0, np.uint32(0), sign)
    return jax.lax.bitcast_convert_type(r | sign, jnp.float32)


@functools.partial(jax.jit, static_argnames=("fmt", "rounding", "saturate"))
def quantize(
    x: jax.Array,
    fmt: FPFormat,
    *,
    rounding: Rounding = "nearest",
    key: jax.Array | None = None,
    saturate: bool = True,
) -> jax.Array:
    """Round ``x`` onto ``fmt``'s grid, returning values of x's dtype (float32/bfloat16/float16).

    rounding="nearest": round to nearest, ties to the even code (IEEE 754 RNE), subnormals kept.
    rounding="stochastic": round to one of the two neighbouring grid points, up with probability
    (x - lo) / (hi - lo), so E[q(x)] = x inside the range. Uses 32 random bits per element from
    ``key`` (required); the probability is exact (a multiple of 2^-32) except for
    |x| < 2^-9 min_subnormal, where it is truncated to a multiple of 2^-32.

    saturate=True clips to +-max (also +-inf); saturate=False gives fmt's own overflow: +-inf for
    "ieee", NaN for "fn"/"fnuz"; "none" formats always saturate. Overflow means rounding
    (nearest or stochastic) lands beyond max. NaN stays NaN; -0 stays -0 except under "fnuz".

    Computed exactly with float32 bit arithmetic. bfloat16/float16 inputs must be able to hold
    every value of fmt (e.g. FP16 on bfloat16 raises ValueError: 65504 is no bfloat16); quantize
    ``x.astype(jnp.float32)`` in that case. Jittable and vmappable; fmt, rounding, saturate
    are static. Its derivative is zero almost everywhere (a step function): for gradients use
    ``quantize_fwd`` (straight-through) or ``quantize_bwd``.
    """
    x = jnp.asarray(x)
    _check_input(x, fmt)
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is unknown; expected one of {_ROUNDINGS}")
    random = None
    if rounding == "stochastic":
        if key is None:
            raise ValueError("key is required for rounding='stochastic' (a jax.random key)")
        random = jax.random.bits(key, x.shape, jnp.uint32)
    q = _quantize_f32(x.astype(jnp.float32), fmt, random, saturate)
    return q.astype(x.dtype)


# --- straight-through variants ----------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _quantize_fwd(x, fmt, rounding, saturate, key):
    return quantize(x, fmt, rounding=rounding, key=key, saturate=saturate)


def _quantize_fwd_fwd(x, fmt, rounding, saturate, key):
    return _quantize_fwd(x, fmt, rounding, saturate, key), None


def _quantize_fwd_bwd(fmt, rounding, saturate, _, g):
    return g, None


_quantize_fwd.defvjp(_quantize_fwd_fwd, _quantize_fwd_bwd)


def quantize_fwd(
    x: jax.Array,
    fmt: FPFormat,
    *,
    rounding: Rounding = "nearest",
    key: jax.Array | None = None,
    saturate: bool = True,
) -> jax.Array:
    """Forward: ``quantize(x, fmt, ...)``; backward: the gradient passes through unchanged.

    Straight-through everywhere, including where saturation clipped x.
    """
    _check_rounding_key(rounding, key)
    return _quantize_fwd(x, fmt, rounding, saturate, key)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _quantize_bwd(x, fmt, rounding, saturate, key):
    return x


def _quantize_bwd_fwd(x, fmt, rounding, saturate, key):
    return x, key


def _quantize_bwd_bwd(fmt, rounding, saturate, key, g):
    return quantize(g, fmt, rounding=rounding, key=key, saturate=saturate), None


_quantize_bwd.defvjp(_quantize_bwd_fwd, _quantize_bwd_bwd)


def quantize_bwd(
    x: jax.Array,
    fmt: FPFormat,
    *,
    rounding: Rounding = "nearest",
    key: jax.Array | None = None,
    saturate: bool = True,
) -> jax.Array:
    """Forward: identity; backward: ``quantize(g, fmt, ...)`` of the incoming gradient ``g``.

    For stochastic rounding ``key`` is carried to the backward pass as a residual and used
    only there; give it a key no forward quantisation uses (e.g. from ``jax.random.split``).
    """
    _check_rounding_key(rounding, key)
    x = jnp.asarray(x)
    _check_input(x, fmt)  # here, not in the backward pass, so mistakes surface at the call
    return _quantize_bwd(x, fmt, rounding, saturate, key)


def _check_rounding_key(rounding: str, key: jax.Array | None) -> None:
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding={rounding!r} is unknown; expected one of {_ROUNDINGS}")
    if rounding == "stochastic" and key is None:
        raise ValueError("key is required for rounding='stochastic' (a jax.random key)")


# --- real low-precision arrays ----------------------------------------------------------------


def cast(x: jax.Array, fmt: FPFormat, *, saturate: bool = True) -> jax.Array:
    """``x`` as an array of ``fmt.dtype`` (round to nearest even), e.g. float8_e4m3fn.

    saturate=True clips to +-max first (ml_dtypes' fn/fnuz casts turn overflow into NaN);
    saturate=False keeps the dtype's own overflow (inf or NaN). "none" dtypes always saturate
    and turn NaN into a zero (its sign differs between XLA and ml_dtypes; ``quantize`` keeps
    NaN). Raises ValueError when fmt has no dtype or JAX's backend cannot hold it (float6 on
    CPU): use ``quantize`` to simulate those.
    """
    if not isinstance(fmt, FPFormat):
        raise TypeError(f"fmt must be an FPFormat, got {type(fmt).__name__}")
    if fmt.dtype is None:
        raise ValueError(f"fmt={fmt!r} has no numpy/ml_dtypes dtype; use quantize to simulate it")
    if not _backend_holds(fmt.dtype, jax.default_backend()):
        raise ValueError(
            f"fmt={fmt.name}: JAX's {jax.default_backend()} backend cannot hold dtype "
            f"{fmt.dtype}; use quantize to simulate it"
        )
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating) or jnp.finfo(x.dtype).bits > 32:
        raise TypeError(f"x must be a floating-point array of <= 32 bits, got dtype {x.dtype}")
    return _cast(x, fmt, saturate)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _cast(x: jax.Array, fmt: FPFormat, saturate: bool) -> jax.Array:
    x32 = x.astype(jnp.float32)  # exact, so the cast below rounds once
    if saturate:
        x32 = _clip_magnitude(x32, fmt.max)
    return x32.astype(fmt.dtype)


def _clip_magnitude(x: jax.Array, limit: float) -> jax.Array:
    """clip(x, -limit, limit) on float32 bits: XLA:CPU's float min/max flush subnormals to 0."""
    bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    sign, a = bits & _F32_SIGN, bits & ~_F32_SIGN
    limit_bits = np.float32(limit).view(np.uint32)
    a = jnp.where((a > limit_bits) & (a <= _F32_INF), limit_bits, a)
    return jax.lax.bitcast_convert_type(a | sign, jnp.float32)


@functools.cache
def _backend_holds(dtype: np.dtype, backend: str) -> bool:
    """Whether ``backend`` can hold arrays of ``dtype`` (XLA:CPU has no float6 types)."""
    try:
        jax.device_put(np.zeros((), dtype), jax.devices(backend)[0]).block_until_ready()
    except Exception:  # noqa: BLE001 - XLA reports unknown types with several exception classes
        return False
    return True
