"""Depthwise convolution, forward and backward: ``unitscale.grouped_conv`` (shifted products) against
``lax.conv_general_dilated`` with ``feature_group_count`` (what the op twins ran before), timed in
interleaved rounds at the char LMs' shapes, float32 and float16 inputs (float32 sums).

    python -m benchmarks.conv [--rounds 7] [--reps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from unitscale.grouped_conv import grouped_conv1d, lax_conv1d

# (batch, seq, channels, kernel): the char-LM grid's small rows, and the paper's model.
SHAPES = ((8, 128, 64, 7), (16, 256, 128, 7))


def forward_backward(conv, shape: tuple[int, int, int, int], dtype):
    """A jitted ``(x, w) -> (d x, d w)`` of ``sum(conv(x, w)^2)`` and its arguments."""
    batch, seq, channels, kernel = shape
    x = jax.random.normal(jax.random.key(0), (batch, seq, channels)).astype(dtype)
    w = jax.random.normal(jax.random.key(1), (kernel, 1, channels)).astype(dtype)
    options = dict(stride=1, padding=(kernel - 1, 0), dilation=1, groups=channels, accumulate=jnp.float32)
    step = jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w, **options) ** 2), argnums=(0, 1)))
    jax.block_until_ready(step(x, w))
    return step, (x, w)


def median_ms(steps: dict, rounds: int, reps: int) -> dict[str, float]:
    """Median milliseconds per call of each ``name -> (step, args)``, rounds interleaved."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, (step, args) in steps.items():
            start = time.perf_counter()
            for _ in range(reps):
                out = step(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / reps * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default: 7)")
    parser.add_argument("--reps", type=int, default=20, help="calls per round (default: 20)")
    args = parser.parse_args(argv)
    print("depthwise conv forward + backward, median ms per call; ratio = lax / shifted products")
    for shape in SHAPES:
        for dtype in (jnp.float32, jnp.float16):
            steps = {"shifted": forward_backward(grouped_conv1d, shape, dtype),
                     "lax": forward_backward(lax_conv1d, shape, dtype)}
            ms = median_ms(steps, args.rounds, args.reps)
            print(f"  batch {shape[0]}, seq {shape[1]}, channels {shape[2]}, kernel {shape[3]}, "
                  f"{jnp.dtype(dtype).name}: shifted {ms['shifted']:.2f}, lax {ms['lax']:.2f}, "
                  f"ratio {ms['lax'] / ms['shifted']:.1f}x")


if __name__ == "__main__":
    main()
