"""Step time of the small GPT of ``benchmarks/models.py`` under each precision policy, against FP32.

One training step = forward + backward (:func:`unitscale.precision.value_and_grad_with_recipe`, the
step of every scaling recipe) + Adam update, jitted in the split/merge form of
``experiments/train_step.py``, d_model 256, depth 4, seq 256, batch 4, byte vocabulary. All variants
are timed interleaved (best and median of N; the call order rotates each round), since absolute times
on a shared machine mean little. Two clocks: wall time, and the CPU time of this process (all its
threads), which other processes' load disturbs far less. Goal: FP8-simulated / FP32 <= 1.25.

A second table splits the cost of one simulated FP8 matmul of the model's largest shape: the matmul
alone, the same matmul of quantised operands, and the quantisation alone (both operands), plus real
float8 operands (``formats.cast`` + a float8 ``dot_general`` accumulating in float32).

    python benchmarks/precision.py [--repeats 15] [--variants fp32 fp8 ...] [--standard]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from unitscale import formats as F
from unitscale.models import GPT, GPTConfig, lm_loss
from unitscale.precision import DynamicLossScale, precision_policy, value_and_grad_with_recipe

SIZE = dict(vocab_size=256, d_model=256, depth=4, heads=4, max_len=256)
VARIANTS = {
    "fp32": ("fp32", {}, None),
    "fp8": ("fp8", {}, None),
    "fp8 no stats": ("fp8", dict(stats=False), None),
    "fp8 float8 operands": ("fp8", dict(operands="float8"), None),
    "fp8 current": ("fp8", dict(scaling="current"), None),
    "fp8 delayed": ("fp8", dict(scaling="delayed"), None),
    "fp8 dynamic loss scale": ("fp8", {}, 2.0**8),
    "umup_fp8": ("umup_fp8", {}, None),
    "mxfp8": ("mxfp8", {}, None),
    "bf16": ("bf16", {}, None),
    "fp16": ("fp16", {}, None),
}
DEFAULT = ["fp32", "fp8", "fp8 no stats", "fp8 float8 operands", "fp8 current", "fp8 delayed", "umup_fp8", "bf16"]


def make_step(model: nnx.Module, lr: float = 1e-3):
    """A jitted ``(params, opt_state, rest, loss_scale, batch) -> (params, opt_state, rest, loss_scale, loss)``."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = optax.adam(lr)

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, opt_state, rest, loss_scale, batch):
        merged = nnx.merge(graphdef, params, rest)
        loss, _, grads, loss_scale, _ = value_and_grad_with_recipe(lm_loss, merged, batch, loss_scale)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, nnx.split(merged, nnx.Param, ...)[2], loss_scale, loss

    return step, [params, opt.init(params), rest]


def _batch(batch: int) -> dict:
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 255, (batch, SIZE["max_len"] + 1)), jnp.int32)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


def _interleaved(fns: dict, repeats: int) -> dict[str, dict[str, list[float]]]:
    """``{"wall": {name: seconds}, "cpu": {name: seconds}}`` per call of each zero-argument
    ``fns[name]`` (which blocks), calls interleaved."""
    times = {clock: {name: [] for name in fns} for clock in ("wall", "cpu")}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            fns[name]()
            times["cpu"][name].append(time.process_time() - cpu)
            times["wall"][name].append(time.perf_counter() - wall)
    return times


def step_times(names: list[str], batch: int, repeats: int, unit_scaled: bool) -> dict[str, dict[str, list[float]]]:
    data = _batch(batch)
    fns = {}
    for name in names:
        preset, overrides, loss_scale = VARIANTS[name]
        config = GPTConfig(**SIZE, unit_scaled=unit_scaled, precision=precision_policy(preset, **overrides))
        step, state = make_step(GPT(config, rngs=nnx.Rngs(0)))
        state.append(None if loss_scale is None else DynamicLossScale(loss_scale))

        def run(step=step, state=state):
            state[0], state[1], state[2], state[3], loss = step(*state, data)
            jax.block_until_ready(loss)

        run()  # compile and warm up
        fns[name] = run
    return _interleaved(fns, repeats)


def matmul_split(batch: int, repeats: int) -> dict[str, dict[str, list[float]]]:
    """The model's FFN up-projection, (batch * seq, d) @ (d, 4d), in four forms."""
    m, k, n = batch * SIZE["max_len"], SIZE["d_model"], 4 * SIZE["d_model"]
    x = jax.random.normal(jax.random.key(0), (m, k))
    w = jax.random.normal(jax.random.key(1), (k, n))
    F.cast(x[:1], F.E4M3)  # resolve the backend's float8 support outside a trace
    forms = {
        "matmul": jax.jit(lambda x, w: x @ w),
        "quantize + matmul": jax.jit(lambda x, w: F.quantize(x, F.E4M3) @ F.quantize(w, F.E4M3)),
        "quantize only": jax.jit(lambda x, w: (F.quantize(x, F.E4M3).sum(), F.quantize(w, F.E4M3).sum())),
        "float8 cast + dot": jax.jit(lambda x, w: jax.lax.dot_general(
            F.cast(x, F.E4M3), F.cast(w, F.E4M3), (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)),
    }
    fns = {name: (lambda f=f: jax.block_until_ready(f(x, w))) for name, f in forms.items()}
    for f in fns.values():
        f()
    return _interleaved(fns, repeats)


def _table(title: str, times: dict[str, dict[str, list[float]]], base: str,
           goal: dict[str, float] | None = None) -> None:
    """Best and median per clock, and their ratios to ``base``; the goal is judged on the CPU-time
    median ratio (the clock the machine's other load disturbs least)."""
    stat = {(clock, kind): {k: f(v) for k, v in per.items()}
            for clock, per in times.items() for kind, f in (("best", min), ("median", statistics.median))}
    print(f"\n{title}")
    heads = [f"{c} {k}" for c in ("wall", "cpu") for k in ("best", "median")]
    print(f"{'':26s}" + "".join(f"{h + ' ms':>16s}" for h in heads) + "".join(f"{'ratio ' + h:>18s}" for h in heads))
    for name in times["wall"]:
        cells = [stat[(c, k)][name] for c in ("wall", "cpu") for k in ("best", "median")]
        ratios = [stat[(c, k)][name] / stat[(c, k)][base] for c in ("wall", "cpu") for k in ("best", "median")]
        line = f"{name:26s}" + "".join(f"{x * 1e3:16.2f}" for x in cells) + "".join(f"{r:18.3f}" for r in ratios)
        if goal and name in goal:
            line += f"  goal <= {goal[name]}: {'met' if ratios[3] <= goal[name] else 'missed'}"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--standard", action="store_true", help="the standard model instead of the unit-scaled one")
    args = parser.parse_args()
    names = ["fp32", *(v for v in args.variants if v != "fp32")]
    kind = "standard" if args.standard else "unit-scaled"
    print(f"{kind} GPT d_model {SIZE['d_model']}, depth {SIZE['depth']}, seq {SIZE['max_len']}, batch {args.batch}, "
          f"vocab {SIZE['vocab_size']}; best / median of {args.repeats} interleaved steps, "
          f"{jax.devices()[0].platform}, {jax.device_count()} device(s)")
    _table("training step (value_and_grad_with_recipe + Adam)", step_times(names, args.batch, args.repeats,
                                                                          not args.standard), "fp32", {"fp8": 1.25})
    _table(f"one FFN up-projection ({args.batch * SIZE['max_len']} x {SIZE['d_model']}) @ "
           f"({SIZE['d_model']} x {4 * SIZE['d_model']}), E4M3", matmul_split(args.batch, args.repeats), "matmul")


if __name__ == "__main__":
    main()
