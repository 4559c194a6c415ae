"""Range coverage: where a tensor's values land when rounded to nearest in a format.

Rounding ``|x|`` to nearest (``quantize(x, fmt)``, ties to even) is monotone in ``|x|``, so each
format splits the non-negative float32 line at three points, u <= n <= o, and every value of a
tensor falls in exactly one class:

    zero       x == 0
    underflow  0 < |x| < u        rounds to zero
    subnormal  u <= |x| < n       rounds to a non-zero value below ``fmt.min_normal``
    normal     n <= |x| < o       rounds into [min_normal, max]: representable
    overflow   o <= |x| < inf     rounds past ``fmt.max`` (to inf/NaN, or clipped when saturating)
    nonfinite  inf or NaN

The thresholds are found by searching float32 bit patterns with :func:`unitscale.formats.quantize`
itself, so they are exact and agree with the quantiser bit for bit. Formats with
``specials="none"`` always saturate, so for them ``o`` follows the same rule on the unbounded grid:
the midpoint between ``max`` and the next grid point ``max + ulp(max)`` rounds up (max's code is
odd).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unitscale.analysis.stats import abs_bits, as_float32
from unitscale.formats import FPFormat, quantize

__all__ = ["COVERAGE_CLASSES", "Coverage", "RangeThresholds", "range_thresholds", "range_coverage", "coverages_of"]

COVERAGE_CLASSES: tuple[str, ...] = ("zero", "underflow", "subnormal", "normal", "overflow", "nonfinite")

_INF_BITS = 0x7F800000
_SEARCH_WIDTH = 1025  # candidates per round of the k-ary search (one compilation of quantize)


@dataclasses.dataclass(frozen=True)
class RangeThresholds:
    """float32 bit patterns of ``|x|`` where a format's classes start: ``underflow`` ends at
    ``nonzero``, ``subnormal`` at ``normal``, ``normal`` at ``overflow`` (module docstring)."""

    format: str
    nonzero: int
    normal: int
    overflow: int

    def as_floats(self) -> tuple[float, float, float]:
        """The three thresholds as float32 values (u, n, o)."""
        bits = np.array([self.nonzero, self.normal, self.overflow], np.uint32)
        return tuple(float(v) for v in bits.view(np.float32))


@dataclasses.dataclass(frozen=True)
class Coverage:
    """Fractions of a tensor's values per class (``COVERAGE_CLASSES``) in ``format``; they sum to 1.

    ``underflow`` is the share of values that become zero (e.g. "this gradient loses 40% of its
    values in FP16"); ``normal`` the share held at full relative precision.
    """

    format: str
    zero: float
    underflow: float
    subnormal: float
    normal: float
    overflow: float
    nonfinite: float

    def get(self, name: str) -> float:
        """The fraction of class ``name`` (one of ``COVERAGE_CLASSES``)."""
        if name not in COVERAGE_CLASSES:
            raise ValueError(f"name={name!r} is not a coverage class; expected one of {COVERAGE_CLASSES}")
        return getattr(self, name)


def _check_format(fmt: object) -> FPFormat:
    if not isinstance(fmt, FPFormat):
        raise TypeError(f"fmt must be an FPFormat, got {type(fmt).__name__}; use format_from_name")
    return fmt


def _rounded_bits(fmt: FPFormat, bits: np.ndarray) -> np.ndarray:
    """``|quantize(x, fmt, saturate=False)|`` as float32 bits, for float32 bit patterns ``bits``."""
    x = jnp.asarray(bits.astype(np.uint32).view(np.float32))
    return np.asarray(quantize(x, fmt, saturate=False)).view(np.uint32) & 0x7FFFFFFF


def _first_true(predicate, lo: int, hi: int) -> int:
    """Smallest ``b`` in [lo, hi] with ``predicate(b)``, for a monotone predicate true at ``hi``."""
    while lo < hi:
        candidates = np.linspace(lo, hi, _SEARCH_WIDTH).astype(np.int64)
        holds = predicate(candidates)
        first = int(np.argmax(holds))
        if first == 0:
            return int(candidates[0])
        lo, hi = int(candidates[first - 1]) + 1, int(candidates[first])
    return hi


def _none_overflow_bits(fmt: FPFormat) -> int:
    """Where rounding passes max on the unbounded grid of a saturating ("none") format."""
    max_bits = int(np.float32(fmt.max).view(np.uint32))
    if fmt.mantissa_bits >= 23:
        return max_bits + 1  # the float32 grid is fmt's grid: the next float32 is past max
    return max_bits + (1 << (22 - fmt.mantissa_bits))  # max + ulp/2: the tie rounds up


@functools.cache
def range_thresholds(fmt: FPFormat) -> RangeThresholds:
    """The exact class boundaries of ``fmt`` for float32 inputs (cached per format)."""
    fmt = _check_format(fmt)
    normal_bits = int(np.float32(fmt.min_normal).view(np.uint32))
    nonzero = _first_true(lambda b: _rounded_bits(fmt, b) != 0, 1, _INF_BITS)
    normal = _first_true(lambda b: _rounded_bits(fmt, b) >= normal_bits, 1, _INF_BITS)
    if fmt.specials == "none":
        overflow = min(_none_overflow_bits(fmt), _INF_BITS)
    else:
        overflow = _first_true(lambda b: _rounded_bits(fmt, b) >= _INF_BITS, 1, _INF_BITS)
    return RangeThresholds(fmt.name, nonzero, min(normal, overflow), overflow)


def _boundaries(thresholds: RangeThresholds) -> np.ndarray:
    """Class boundaries in ``COVERAGE_CLASSES`` order: class i holds bits in [b[i], b[i+1])."""
    return np.array(
        [0, 1, thresholds.nonzero, thresholds.normal, thresholds.overflow, _INF_BITS], np.uint32
    )


def coverages_of(x: np.ndarray, formats: Sequence[FPFormat]) -> tuple[Coverage, ...]:
    """:class:`Coverage` of a flat float32 array in each of ``formats``: one counting pass per
    distinct class boundary of all the formats (NaN fractions for an empty array)."""
    if not formats:
        return ()
    if x.size == 0:
        return tuple(Coverage(f.name, *([float("nan")] * len(COVERAGE_CLASSES))) for f in formats)
    bounds = [_boundaries(range_thresholds(_check_format(f))) for f in formats]
    bits = abs_bits(x)
    # How many values lie at or above each distinct boundary of all the formats.
    at_least = {int(b): np.count_nonzero(bits >= b) for b in np.unique(np.concatenate(bounds))}
    out = []
    for fmt, b in zip(formats, bounds):
        ge = np.array([at_least[int(v)] for v in b])
        counts = ge - np.append(ge[1:], 0)  # class i: at least b[i] but not b[i+1]
        out.append(Coverage(fmt.name, *(float(c) / x.size for c in counts)))
    return tuple(out)


def range_coverage(x: ArrayLike, fmt: FPFormat) -> Coverage:
    """Fractions of ``x``'s values that are zero, underflow to zero, land in subnormals, are
    representable in the normal range, overflow, or are already inf/NaN when rounded to
    nearest in ``fmt``. ``x``: a real floating-point array of at most 32 bits per value."""
    fmt = _check_format(fmt)
    return coverages_of(as_float32(x), (fmt,))[0]
