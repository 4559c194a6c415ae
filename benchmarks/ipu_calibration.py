"""ipu_sim against the GC2 microbenchmarks of Jia et al. 2019 (docs/reference/ipu_hardware.md).

Prints predicted / measured for each row with its role:
  input      - the model's constant was derived from this row (agreement is by construction)
  calibrated - a model parameter was fitted to this row (amp_block_overhead_cycles: one
               parameter fitted to the two square-matmul rows jointly)
  mechanism  - the row chose a modelling rule, not a number (vector code is not dual-issued;
               a reduction has at most two exchange stages, each walking one region per
               received partial -- params.partials_region_instructions, an ISA count, not fitted)
  held out   - nothing was fitted to it: a real prediction
Goal: every ratio within [0.85, 1.15].

    python benchmarks/ipu_calibration.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import ipu_sim
from ipu_sim.costs import exchange_cycles, load_cycles

GC2 = ipu_sim.GC2
LOW, HIGH = 0.85, 1.15


def matmul_tflops(n: int, dtype: str, partials: str | None) -> tuple[float, bool]:
    e = ipu_sim.estimate_matmul(n, n, n, dtype=dtype, partials=partials, chip="gc2")
    return e.tflops, e.fits


def largest_square(dtype: str, partials: str | None, step: int = 64) -> int:
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
    cycles = GC2.sync_cycles + int(exchange_cycles(bytes_in, bytes_out, GC2))
    return GC2.seconds(cycles)


def local_memory_tbs(load_bytes: int, per_tile: int = 128 * 1024) -> float:
    cycles = int(load_cycles(per_tile, load_bytes, GC2, ipu_sim.ModelParams()))
    return GC2.tiles * per_tile / GC2.seconds(cycles) / 1e12


def main() -> None:
    rows = []

    def row(name, measured, predicted, role, unit=""):
        rows.append((name, measured, predicted, role, unit))

    curves = {}
    for label, dtype, partials, n_big, measured in (("FP32", "float32", None, 2944, 18.9),
                                                    ("FP16.32", "float16", "float32", 2688, 58.9)):
        ns = list(range(256, n_big, 256)) + [n_big]
        curve = {n: matmul_tflops(n, dtype, partials)[0] for n in ns}
        curves[label] = curve
        row(f"square matmul {label} TFLOP/s (n={n_big})", measured, curve[n_big], "calibrated")
        row(f"square matmul {label}: saturates from n", 1500, saturation(curve, curve[n_big]),
            "held out")
    row("largest square that fits, FP32", 2944, largest_square("float32", None), "held out")
    row("largest square that fits, FP16.32", 2688, largest_square("float16", "float32"), "held out")
    for width, measured in ((16, 30.70), (8, 15.3), (4, 7.59)):
        row(f"local memory read, {8 * width}-bit loads, TB/s", measured, local_memory_tbs(width),
            "input")
    x = jax.ShapeDtypeStruct((GC2.tiles, 12500), jnp.float32)
    e = ipu_sim.estimate(lambda x: jnp.concatenate([x, x]), x, chip="gc2")
    row("exchange, all tiles, GB/s aggregate", 7679, 2 * x.size * 4 / e.seconds / 1e9, "input")
    row("tile-to-tile latency incl. sync, idle, us", 0.133, 1e6 * superstep_seconds(4, 4), "input")
    row("tile-to-tile latency incl. sync, loaded, us", 0.165, 1e6 * superstep_seconds(4, 4),
        "held out")
    row("all-to-all 1-word messages, 608 tiles, us", 0.552, 1e6 * superstep_seconds(607 * 4, 607 * 4),
        "held out")
    one_per_tile = ipu_sim.ModelParams().replace(min_bytes_per_tile=4)
    x = jax.ShapeDtypeStruct((GC2.tiles,), jnp.float32)
    e = ipu_sim.estimate(jnp.sum, x, chip="gc2", params=one_per_tile)
    row("reduce 1 fp32 per tile to a scalar, us", 1.97, e.seconds * 1e6, "mechanism")
    x = jax.ShapeDtypeStruct((GC2.tiles * 25000,), jnp.float32)
    e = ipu_sim.estimate(jnp.sum, x, chip="gc2")
    row("reduce 25k fp32 per tile, TB/s", 6.76, x.size * 4 / e.seconds / 1e12, "mechanism")

    print("ipu_sim vs J19 GC2 microbenchmarks (predicted / measured)")
    print(f"{'quantity':52s} {'measured':>10s} {'predicted':>10s} {'ratio':>6s}  role")
    inside = 0
    for name, measured, predicted, role, _ in rows:
        ratio = predicted / measured
        ok = LOW <= ratio <= HIGH
        inside += ok
        flag = "" if ok else "  <-- outside [0.85, 1.15]"
        print(f"{name:52s} {measured:10.4g} {predicted:10.4g} {ratio:6.3f}  {role}{flag}")
    bound = 1e6 * superstep_seconds(4, 0)
    print(f"{'broadcast 1 word to all tiles, us (bound < 0.2)':52s} {'< 0.2':>10s} {bound:10.4g}"
          f" {'ok' if bound < 0.2 else 'FAIL':>6s}  held out")
    print(f"\n{inside} of {len(rows)} ratios within [{LOW}, {HIGH}]")
    print("\npredicted square-matmul TFLOP/s vs n on GC2:")
    for label, curve in curves.items():
        print(f"  {label:8s} " + "  ".join(f"{n}:{t:.1f}" for n, t in curve.items()))


if __name__ == "__main__":
    main()
