"""Step time of a unit-scaled transformer stack vs the same stack in plain jax.nn / jnp.

A jitted forward + backward (value_and_grad over all parameters) of a pre-norm transformer
(default: 4 layers, batch 8, seq 256, d_model 256, 4 heads, FFN x4, causal attention, erf GELU),
built once from ``unitscale.functional`` and once from plain ops with identical shapes and dtype.
The two steps run interleaved, repetition by repetition, so machine noise hits both alike; the
script prints median and best wall times, process CPU times, their ratios (goal: unit / plain
<= 1.05), and the operation counts of both optimised HLO modules, to show where a difference
comes from.

    python benchmarks/ops.py [--reps 20] [--dtype float32] [--layers 4] ...
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import jax
import jax.numpy as jnp

import unitscale.functional as U


@dataclass(frozen=True)
class Shape:
    layers: int = 4
    batch: int = 8
    seq: int = 256
    d_model: int = 256
    heads: int = 4
    ffn: int = 4


def init_params(shape: Shape, key: jax.Array, dtype) -> list[dict[str, jax.Array]]:
    """Unit-normal weights (unit scaling's init); the plain stack rescales them by fan_in^-1/2."""
    d, f = shape.d_model, shape.ffn * shape.d_model
    layers = []
    for layer_key in jax.random.split(key, shape.layers):
        k = jax.random.split(layer_key, 4)
        layers.append(
            dict(
                ln1_w=jnp.ones(d, dtype), ln1_b=jnp.zeros(d, dtype),
                w_qkv=jax.random.normal(k[0], (d, 3 * d), dtype),
                w_o=jax.random.normal(k[1], (d, d), dtype),
                ln2_w=jnp.ones(d, dtype), ln2_b=jnp.zeros(d, dtype),
                w_up=jax.random.normal(k[2], (d, f), dtype),
                b_up=jnp.zeros(f, dtype),
                w_down=jax.random.normal(k[3], (f, d), dtype),
                b_down=jnp.zeros(d, dtype),
            )  # fmt: skip
        )
    return layers


def _heads(t: jax.Array, heads: int) -> jax.Array:
    return t.reshape(*t.shape[:-1], heads, t.shape[-1] // heads)


def _merge(t: jax.Array) -> jax.Array:
    return t.reshape(*t.shape[:-2], t.shape[-2] * t.shape[-1])


def unit_stack(params, x, shape: Shape):
    tau = (1.0 / (2 * shape.layers)) ** 0.5  # a fixed residual weight; its value costs nothing
    for p in params:

        def attention(h, p=p):
            h = U.layer_norm(h, shape.d_model, p["ln1_w"], p["ln1_b"])
            q, k, v = (_heads(t, shape.heads) for t in jnp.split(U.linear(h, p["w_qkv"]), 3, -1))
            mixed = U.scaled_dot_product_attention(q, k, v, is_causal=True)
            return U.linear(_merge(mixed), p["w_o"])

        def mlp(h, p=p):
            h = U.layer_norm(h, shape.d_model, p["ln2_w"], p["ln2_b"])
            return U.linear(U.gelu(U.linear(h, p["w_up"], p["b_up"])), p["w_down"], p["b_down"])

        x = U.residual_apply(attention, x, tau)
        x = U.residual_apply(mlp, x, tau)
    return x


def _plain_layer_norm(x, w, b, eps=1e-5):
    centred = x - x.mean(-1, keepdims=True)
    return centred * jax.lax.rsqrt(jnp.square(centred).mean(-1, keepdims=True) + eps) * w + b


def _plain_causal_attention(q, k, v):
    # einsum + softmax: on XLA:CPU this ran ~4% faster per step than jax.nn.dot_product_attention,
    # so it makes the stricter baseline.
    logits = jnp.einsum("...tnh,...snh->...nts", q, k) / q.shape[-1] ** 0.5
    causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))
    probs = jax.nn.softmax(jnp.where(causal, logits, jnp.finfo(logits.dtype).min), axis=-1)
    return jnp.einsum("...nts,...snh->...tnh", probs, v)


def plain_stack(params, x, shape: Shape):
    for p in params:
        h = _plain_layer_norm(x, p["ln1_w"], p["ln1_b"])
        q, k, v = (_heads(t, shape.heads) for t in jnp.split(h @ p["w_qkv"], 3, -1))
        x = x + _merge(_plain_causal_attention(q, k, v)) @ p["w_o"]
        h = _plain_layer_norm(x, p["ln2_w"], p["ln2_b"])
        h = jax.nn.gelu(h @ p["w_up"] + p["b_up"], approximate=False)
        x = x + h @ p["w_down"] + p["b_down"]
    return x


def make_step(stack, shape: Shape):
    def loss(params, x, cotangent):
        return jnp.sum(stack(params, x, shape).astype(jnp.float32) * cotangent)

    return jax.jit(jax.value_and_grad(loss))


def hlo_op_counts(step, *args) -> Counter:
    """Instruction opcodes of the optimised HLO (fusions counted as one, plus their bodies)."""
    text = step.lower(*args).compile().as_text()
    return Counter(re.findall(r"= \S+ ([a-z][a-z0-9-]*)\(", text))


def time_interleaved(steps: dict, args: dict, reps: int) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds per step (CPU time is steadier when others share the host)."""
    for name, step in steps.items():  # compile and warm up
        jax.block_until_ready(step(*args[name]))
    times = {name: {"wall": [], "cpu": []} for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            wall, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(step(*args[name]))
            times[name]["wall"].append(time.perf_counter() - wall)
            times[name]["cpu"].append(time.process_time() - cpu)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    for field, default in Shape().__dict__.items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=default)
    opts = parser.parse_args()
    shape = Shape(**{f: getattr(opts, f) for f in Shape().__dict__})
    dtype = jnp.dtype(opts.dtype)

    key = jax.random.key(0)
    unit_params = init_params(shape, key, dtype)
    plain_params = jax.tree.map(
        lambda w: w / w.shape[0] ** 0.5 if w.ndim == 2 else w, unit_params
    )
    x = jax.random.normal(jax.random.key(1), (shape.batch, shape.seq, shape.d_model), dtype)
    cotangent = jax.random.normal(jax.random.key(2), x.shape, jnp.float32)
    steps = {"unit": make_step(unit_stack, shape), "plain": make_step(plain_stack, shape)}
    args = {"unit": (unit_params, x, cotangent), "plain": (plain_params, x, cotangent)}

    print(f"{shape}, dtype={dtype.name}, {opts.reps} interleaved repetitions, "
          f"{jax.device_count()} {jax.default_backend()} device(s)")  # fmt: skip
    times = time_interleaved(steps, args, opts.reps)
    for name, t in times.items():
        wall, cpu = statistics.median(t["wall"]), statistics.median(t["cpu"])
        print(f"  {name:6s} wall median {wall * 1e3:8.2f} ms, best {min(t['wall']) * 1e3:8.2f} ms; "
              f"cpu median {cpu:7.3f} s")  # fmt: skip
    unit, plain = times["unit"], times["plain"]
    ratios = {
        "wall median": statistics.median(unit["wall"]) / statistics.median(plain["wall"]),
        "wall best": min(unit["wall"]) / min(plain["wall"]),
        "wall paired median": statistics.median(
            u / p for u, p in zip(unit["wall"], plain["wall"])
        ),
        "cpu median": statistics.median(unit["cpu"]) / statistics.median(plain["cpu"]),
    }
    print("  step-time ratio unit/plain (goal <= 1.05): "
          + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))

    counts = {name: hlo_op_counts(steps[name], *args[name]) for name in steps}
    interesting = ["fusion", "dot", "convolution", "custom-call", "multiply", "copy", "transpose"]
    print("  optimised HLO instructions (unit / plain):")
    for op in interesting:
        print(f"    {op:12s} {counts['unit'][op]:5d} / {counts['plain'][op]:5d}")
    total_u, total_p = sum(counts["unit"].values()), sum(counts["plain"].values())
    print(f"    {'all':12s} {total_u:5d} / {total_p:5d}")


if __name__ == "__main__":
    main()
