"""The model's own error: its predictions of the GC2 microbenchmarks of Jia et al. 2019 [J19].

Every row of docs/reference/ipu_hardware.md's "Microbenchmarks on GC2" table that the model can
reproduce is a :class:`CalibrationRow`: what J19 measured, what the model predicts (recorded here;
:func:`predict` recomputes it and a test keeps the two equal), and the *component* of an estimate
whose time it checks:

=========  ===============================================  ==========================================
component  time of                                          rows
=========  ===============================================  ==========================================
matmul     matmul ops, whole (their exchanges and syncs)    square matmul TFLOP/s, FP32 and FP16.32
reduce     reduction ops, whole                             reduce 1 fp32 per tile; reduce 25k per tile
vector     on-tile compute of every other op                local memory reads, 32/64/128-bit loads
exchange   on-chip exchange of every other op               exchange aggregate; all-to-all, 608 tiles
sync       syncs of every other op                          tile-to-tile latency, idle and loaded
=========  ===============================================  ==========================================

Rows that are sizes, not times (saturation size, largest square that fits) belong to no component.
Nothing in J19 measures IPU-Link transfers, all-reduce over IPUs, streaming memory or host I/O:
those parts of an estimate are *uncalibrated* and say so.

A row's time ratio ``q`` is predicted time / measured time (for a rate row, measured / predicted
rate). If a component's rows have ratios ``q_1 .. q_n``, the true time of ``t`` predicted seconds of
that component lies in ``[t / max(1, q_i), t / min(1, q_i)]``: the spread of the model's error on
the rows, widened to include the point estimate itself. Components are summed at their own
bounds (a systematic error of one component does not cancel within it). The matmul rows are large
squares; the held-out saturation rows show that mid-size matmuls can be off by more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping

COMPONENTS = ("matmul", "reduce", "vector", "exchange", "sync")
UNCALIBRATED = ("links", "allreduce", "streaming", "host")


@dataclass(frozen=True)
class CalibrationRow:
    """One J19 measurement and the model's prediction of it."""

    quantity: str
    measured: float
    predicted: float
    role: str  # input / calibrated / mechanism / held out (see benchmarks/ipu_calibration.py)
    component: str | None  # None: a size, not a time
    kind: str = "time"  # "time" (smaller is faster) or "rate" (larger is faster)

    @property
    def ratio(self) -> float:
        """predicted / measured, as the calibration benchmark prints it."""
        return self.predicted / self.measured

    @property
    def time_ratio(self) -> float:
        """Predicted time / measured time."""
        return self.ratio if self.kind == "time" else 1.0 / self.ratio


# The J19 rows (docs/reference/ipu_hardware.md, "Microbenchmarks on GC2") with the model's
# predictions as :func:`predict` computes them (tests/ipu_sim/test_calibration.py checks they agree).
ROWS: tuple[CalibrationRow, ...] = (
    CalibrationRow("square matmul FP32 TFLOP/s (n=2944)", 18.9, 18.16, "calibrated", "matmul", "rate"),
    CalibrationRow("square matmul FP32: saturates from n", 1500, 1280, "held out", None),
    CalibrationRow("square matmul FP16.32 TFLOP/s (n=2688)", 58.9, 61.58, "calibrated", "matmul",
                   "rate"),
    CalibrationRow("square matmul FP16.32: saturates from n", 1500, 1792, "held out", None),
    CalibrationRow("largest square that fits, FP32", 2944, 3008, "held out", None),
    CalibrationRow("largest square that fits, FP16.32", 2688, 3712, "held out", None),
    CalibrationRow("local memory read, 128-bit loads, TB/s", 30.70, 30.89, "input", "vector", "rate"),
    CalibrationRow("local memory read, 64-bit loads, TB/s", 15.3, 15.51, "input", "vector", "rate"),
    CalibrationRow("local memory read, 32-bit loads, TB/s", 7.59, 7.767, "input", "vector", "rate"),
    CalibrationRow("exchange, all tiles, GB/s aggregate", 7679, 7711, "input", "exchange", "rate"),
    CalibrationRow("tile-to-tile latency incl. sync, idle, us", 0.133, 0.145, "input", "sync"),
    CalibrationRow("tile-to-tile latency incl. sync, loaded, us", 0.165, 0.145, "held out", "sync"),
    CalibrationRow("all-to-all 1-word messages, 608 tiles, us", 0.552, 0.5237, "held out",
                   "exchange"),
    CalibrationRow("reduce 1 fp32 per tile to a scalar, us", 1.97, 2.12, "mechanism", "reduce"),
    CalibrationRow("reduce 25k fp32 per tile, TB/s", 6.76, 6.854, "mechanism", "reduce", "rate"),
)


@dataclass(frozen=True)
class Calibration:
    """Error bounds per component, from calibration rows."""

    rows: tuple[CalibrationRow, ...] = ROWS

    def factors(self, component: str) -> tuple[float, float]:
        """(low, high): true time / predicted time lies between them; (1, 1) if uncalibrated."""
        ratios = [r.time_ratio for r in self.rows if r.component == component]
        if not ratios:
            return 1.0, 1.0
        return min(1.0, 1.0 / max(ratios)), max(1.0, 1.0 / min(ratios))

    def bounds(self, seconds: Mapping[str, float]) -> tuple[float, float]:
        """(low, high) seconds of time split by component (unknown components count as is)."""
        low = high = 0.0
        for component, t in seconds.items():
            lo, hi = self.factors(component)
            low += t * lo
            high += t * hi
        return low, high

    def widened(self, k: float) -> "Calibration":
        """The same rows with every time ratio's error raised to the power ``k`` (k > 1: larger
        errors): a calibration ``k`` times as far from the model in log terms."""
        rows = []
        for r in self.rows:
            if r.component is None:
                rows.append(r)
                continue
            q = math.exp(k * math.log(r.time_ratio))
            predicted = r.measured * (q if r.kind == "time" else 1.0 / q)
            rows.append(replace(r, predicted=predicted))
        return Calibration(tuple(rows))

    def describe(self) -> dict[str, dict]:
        """Per component: error factors and the rows they come from (plain data)."""
        out = {}
        for c in COMPONENTS:
            lo, hi = self.factors(c)
            out[c] = dict(factors=[lo, hi], rows={r.quantity: round(r.ratio, 4)
                                                  for r in self.rows if r.component == c})
        return out


CALIBRATION = Calibration()


@dataclass(frozen=True)
class TimeRange:
    """A point estimate of seconds and the range its calibrated components' errors allow."""

    seconds: float
    low: float
    high: float
    uncalibrated_seconds: float  # of ``seconds``: parts no calibration row checks

    def to_dict(self) -> dict:
        return dict(seconds=self.seconds, range=[self.low, self.high],
                    uncalibrated_seconds=self.uncalibrated_seconds)


def time_range(point: float, low: float, high: float, uncalibrated: float) -> TimeRange:
    """A :class:`TimeRange` that contains ``point`` (float sums of the same parts may differ from
    it in the last bits; each component's factors include 1, so the range does)."""
    return TimeRange(point, min(low, point), max(high, point), uncalibrated)


# ---------------------------------------------------------------------------------------------------
# The model's predictions of the rows (what benchmarks/ipu_calibration.py prints). The estimator
# imports this module (for ranges), so these functions import it when called.

def predict() -> dict[str, float]:
    """The model's current prediction of every row of :data:`ROWS`, by quantity."""
    import jax
    import jax.numpy as jnp

    import ipu_sim
    from ipu_sim.hardware import GC2

    out: dict[str, float] = {}
    for label, dtype, partials, n_big in (("FP32", "float32", None, 2944),
                                          ("FP16.32", "float16", "float32", 2688)):
        curve = matmul_curve(dtype, partials, n_big)
        out[f"square matmul {label} TFLOP/s (n={n_big})"] = curve[n_big]
        out[f"square matmul {label}: saturates from n"] = saturation(curve, curve[n_big])
        out[f"largest square that fits, {label}"] = largest_square(dtype, partials)
    for width in (16, 8, 4):
        out[f"local memory read, {8 * width}-bit loads, TB/s"] = local_memory_tbs(width)
    x = jax.ShapeDtypeStruct((GC2.tiles, 12500), jnp.float32)
    e = ipu_sim.estimate(lambda x: jnp.concatenate([x, x]), x, chip="gc2")
    out["exchange, all tiles, GB/s aggregate"] = 2 * x.size * 4 / e.seconds / 1e9
    out["tile-to-tile latency incl. sync, idle, us"] = 1e6 * superstep_seconds(4, 4)
    out["tile-to-tile latency incl. sync, loaded, us"] = 1e6 * superstep_seconds(4, 4)
    out["all-to-all 1-word messages, 608 tiles, us"] = 1e6 * superstep_seconds(607 * 4, 607 * 4)
    one_per_tile = ipu_sim.ModelParams().replace(min_bytes_per_tile=4)
    x = jax.ShapeDtypeStruct((GC2.tiles,), jnp.float32)
    e = ipu_sim.estimate(jnp.sum, x, chip="gc2", params=one_per_tile)
    out["reduce 1 fp32 per tile to a scalar, us"] = e.seconds * 1e6
    x = jax.ShapeDtypeStruct((GC2.tiles * 25000,), jnp.float32)
    e = ipu_sim.estimate(jnp.sum, x, chip="gc2")
    out["reduce 25k fp32 per tile, TB/s"] = x.size * 4 / e.seconds / 1e12
    return out


def matmul_tflops(n: int, dtype: str, partials: str | None) -> tuple[float, bool]:
    """TFLOP/s of an n x n x n matmul on GC2 and whether it fits."""
    import ipu_sim

    e = ipu_sim.estimate_matmul(n, n, n, dtype=dtype, partials=partials, chip="gc2")
    return e.tflops, e.fits


def matmul_curve(dtype: str, partials: str | None, n_big: int) -> dict[int, float]:
    """TFLOP/s of square matmuls on GC2 for n = 256, 512, ... and ``n_big``."""
    ns = list(range(256, n_big, 256)) + [n_big]
    return {n: matmul_tflops(n, dtype, partials)[0] for n in ns}


def largest_square(dtype: str, partials: str | None, step: int = 64) -> int:
    """Largest multiple of ``step`` whose square matmul fits on GC2 (bisection)."""
    lo, hi = step, 128 * step
    while hi - lo > step:
        mid = (lo + hi) // (2 * step) * step
        if matmul_tflops(mid, dtype, partials)[1]:
            lo = mid
        else:
            hi = mid
    return lo


def saturation(curve: dict[int, float], top: float, level: float = 0.9) -> int:
    """Smallest n from which the curve stays within ``level`` of the large-n value."""
    ns = sorted(curve)
    for i, n in enumerate(ns):
        if all(curve[m] >= level * top for m in ns[i:]):
            return n
    return ns[-1]


def superstep_seconds(bytes_in: int, bytes_out: int) -> float:
    """One sync plus one exchange phase on GC2."""
    from ipu_sim.costs import exchange_cycles
    from ipu_sim.hardware import GC2

    return GC2.seconds(GC2.sync_cycles + int(exchange_cycles(bytes_in, bytes_out, GC2)))


def local_memory_tbs(load_bytes: int, per_tile: int = 128 * 1024) -> float:
    """Aggregate TB/s of reading ``per_tile`` bytes per tile with ``load_bytes``-wide loads."""
    from ipu_sim.costs import load_cycles
    from ipu_sim.hardware import GC2
    from ipu_sim.params import ModelParams

    cycles = int(load_cycles(per_tile, load_bytes, GC2, ModelParams()))
    return GC2.tiles * per_tile / GC2.seconds(cycles) / 1e12
