"""Speed of ``quantize`` against a plain multiply and an ml_dtypes cast round trip (CPU, jit).

Prints ratios measured side by side in one run (best of N, interleaved), since absolute times on a
shared machine mean little. Goal: quantize(x, E4M3) nearest <= 2x the float8_e4m3fn round trip.

    python benchmarks/formats.py [--size 4194304] [--repeats 30]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from unitscale.formats import E4M3, quantize


def best_times(fns: dict, x: jax.Array, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` wall time per function, calls interleaved so load drifts hit all."""
    for fn in fns.values():
        jax.block_until_ready(fn(x))  # compile and warm up
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(x))
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1 << 22)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()

    x = jax.random.normal(jax.random.key(0), (args.size,), jnp.float32) * 100.0
    key = jax.random.key(1)
    fns = {
        "x * 2": jax.jit(lambda x: x * 2),
        "e4m3fn cast round trip": jax.jit(
            lambda x: x.astype(jnp.float8_e4m3fn).astype(jnp.float32)
        ),
        "quantize nearest": jax.jit(lambda x: quantize(x, E4M3)),
        "quantize stochastic": jax.jit(lambda x: quantize(x, E4M3, rounding="stochastic", key=key)),
        "random bits alone": jax.jit(lambda x: jax.random.bits(key, x.shape, jnp.uint32)),
    }
    best = best_times(fns, x, args.repeats)
    mul, cast = best["x * 2"], best["e4m3fn cast round trip"]
    print(f"{args.size} float32 elements, best of {args.repeats}, {jax.devices()[0].platform}")
    print(f"{'':26s} {'ms':>8s} {'/ x*2':>8s} {'/ cast':>8s}")
    for name, t in best.items():
        print(f"{name:26s} {t * 1e3:8.2f} {t / mul:8.2f} {t / cast:8.2f}")
    ratio = best["quantize nearest"] / cast
    verdict = "met" if ratio <= 2.0 else f"missed by {ratio / 2.0:.2f}x"
    print(f"goal nearest <= 2x cast round trip: {ratio:.2f}x ({verdict})")


if __name__ == "__main__":
    main()
