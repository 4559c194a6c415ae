"""Scale statistics of one tensor, reduced in float32 on the host.

For the n values x_i of a tensor (upcast exactly to float32):

    mean      = sum x_i / n
    std       = sqrt(sum (x_i - mean)^2 / n)          (population, ddof = 0)
    rms       = sqrt(sum x_i^2 / n)
    mean_abs  = sum |x_i| / n
    abs_max   = max |x_i|,   abs_min = min {|x_i| : x_i != 0}   (NaN if every value is 0)
    zero_fraction = #{x_i == 0} / n,   nonfinite_fraction = #{x_i is inf or NaN} / n

Sums are NumPy's pairwise float32 sums of ``x / abs_max``, multiplied back, so ``x^2`` cannot
overflow or underflow float32 for any finite tensor. NumPy keeps float32 subnormals (XLA:CPU
flushes them to zero), so the tiniest gradients are counted as what they are. A non-finite value
makes the moments NaN or inf, which is what they are.

``log2_histogram`` counts the non-zero finite values per binade: bin ``e`` holds
``2^e <= |x| < 2^(e+1)`` for e in [-149, 127].
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
from jax.typing import ArrayLike

__all__ = ["STAT_NAMES", "TensorStats", "tensor_stats", "log2_histogram", "as_float32"]

STAT_NAMES: tuple[str, ...] = (
    "mean", "std", "rms", "mean_abs", "abs_max", "abs_min", "zero_fraction", "nonfinite_fraction",
)  # fmt: skip

_INF_BITS = np.uint32(0x7F800000)


@dataclasses.dataclass(frozen=True)
class TensorStats:
    """The scale of a tensor: moments, extremes and special-value fractions (module docstring)."""

    numel: int
    mean: float
    std: float
    rms: float
    mean_abs: float
    abs_max: float
    abs_min: float
    zero_fraction: float
    nonfinite_fraction: float

    def get(self, stat: str) -> float:
        """The statistic named ``stat`` (one of ``STAT_NAMES``)."""
        if stat not in STAT_NAMES:
            raise ValueError(f"stat={stat!r} is unknown; expected one of {STAT_NAMES}")
        return getattr(self, stat)


def as_float32(x: ArrayLike, name: str = "x") -> np.ndarray:
    """``x`` as a flat float32 NumPy array (exact for real floats of at most 32 bits)."""
    x = np.asarray(x)
    try:
        bits = ml_dtypes.finfo(x.dtype).bits  # also knows bfloat16 and the float8 types
    except ValueError:
        bits = None
    if bits is None or np.issubdtype(x.dtype, np.complexfloating):
        raise TypeError(f"{name} must be a real floating-point array, got dtype {x.dtype}")
    if bits > 32:
        raise TypeError(f"{name} must have at most 32 bits per value, got dtype {x.dtype}")
    return x.astype(np.float32).ravel()


def abs_bits(x: np.ndarray) -> np.ndarray:
    """float32 ``|x|`` as uint32 bits: ordered like the magnitudes, NaNs above inf."""
    return x.view(np.uint32) & np.uint32(0x7FFFFFFF)


def _moments(x: np.ndarray, abs_max: np.float32) -> tuple[float, float, float, float]:
    unit = abs_max if np.isfinite(abs_max) and abs_max > 0 else np.float32(1)
    y = x / unit
    n = np.float32(x.size)
    mean = y.sum(dtype=np.float32) / n
    std = np.sqrt(np.square(y - mean).sum(dtype=np.float32) / n)
    rms = np.sqrt(np.square(y).sum(dtype=np.float32) / n)
    mean_abs = np.abs(y).sum(dtype=np.float32) / n
    return tuple(float(np.float32(v) * unit) for v in (mean, std, rms, mean_abs))


def stats_of(x: np.ndarray) -> TensorStats:
    """:class:`TensorStats` of a flat float32 array."""
    n = x.size
    if n == 0:
        return TensorStats(0, *([np.nan] * len(STAT_NAMES)))
    bits = abs_bits(x)
    nonzero = bits != 0
    abs_max = bits.max().view(np.float32)
    abs_min = float(bits[nonzero].min().view(np.float32)) if nonzero.any() else np.nan
    with np.errstate(invalid="ignore", over="ignore"):
        moments = _moments(x, abs_max)
    return TensorStats(
        n, *moments, float(abs_max), abs_min,
        float(np.count_nonzero(~nonzero) / n), float(np.count_nonzero(bits >= _INF_BITS) / n),
    )  # fmt: skip


def histogram_of(x: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Non-empty binades of a flat float32 array as ``((e, count), ...)``."""
    bits = abs_bits(x)
    field = bits >> np.uint32(23)  # biased exponent: e + 127 for normals; 0 zero/subnormal; 255 inf/NaN
    counts = np.bincount(field, minlength=256).astype(np.int64)
    pairs = {int(f) - 127: int(counts[f]) for f in np.flatnonzero(counts[1:255]) + 1}
    subnormal = x[(field == 0) & (bits != 0)]
    if subnormal.size:
        _, exponent = np.frexp(subnormal)  # |x| = m 2^exponent, m in [0.5, 1)
        for e, n in zip(*np.unique(exponent.astype(np.int64) - 1, return_counts=True)):
            pairs[int(e)] = int(n)
    return tuple(sorted(pairs.items()))


def tensor_stats(x: ArrayLike) -> TensorStats:
    """The :class:`TensorStats` of a floating-point array of at most 32 bits per value."""
    return stats_of(as_float32(x))


def log2_histogram(x: ArrayLike) -> tuple[tuple[int, int], ...]:
    """``((e, count), ...)``: how many values have ``2^e <= |x| < 2^(e+1)``, non-empty binades in
    increasing order; zeros and non-finite values are not counted."""
    return histogram_of(as_float32(x))
