"""Step time of the unit-scaled models against the standard ones (CPU, jit).

One training step = forward + backward + Adam update, jitted in the split/merge form of
``experiments/train_step.py``, at a small-but-real size (d_model 256, depth 4, seq 256, byte
vocabulary). The two parametrisations of each model are timed interleaved (best and median of N),
since absolute times on a shared machine mean little; XLA's own cost estimate (flops, bytes
accessed) of the two compiled steps is printed too, as a load-independent check. Goal:
unit-scaled / standard <= 1.05.

    python benchmarks/models.py [--batch 4] [--repeats 15] [--models gpt bert gpt-conv gpt-rnn]
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

from unitscale.models import BERT, GPT, BERTConfig, GPTConfig, lm_loss, mlm_loss

SIZE = dict(vocab_size=256, d_model=256, depth=4, heads=4, max_len=256)


def _batches(kind: str, batch: int, seq: int) -> dict:
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(0, 255, (batch, seq + 1)), jnp.int32)
    if kind == "bert":
        chosen = jnp.asarray(rng.random((batch, seq)) < 0.15)
        return {"inputs": jnp.where(chosen, 255, ids[:, :-1]), "labels": jnp.where(chosen, ids[:, :-1], -100)}
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


def _model(kind: str, unit_scaled: bool) -> tuple[nnx.Module, callable]:
    if kind == "bert":
        return BERT(BERTConfig(**SIZE, unit_scaled=unit_scaled), rngs=nnx.Rngs(0)), mlm_loss
    mixer = kind.split("-")[1] if "-" in kind else "attention"
    return GPT(GPTConfig(**SIZE, mixer=mixer, unit_scaled=unit_scaled), rngs=nnx.Rngs(0)), lm_loss


def make_step(model: nnx.Module, loss_fn, lr: float = 1e-3):
    """A jitted ``(params, opt_state, rest, batch) -> (params, opt_state, loss)`` and its start state."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = optax.adam(lr)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, rest, batch):
        merged = nnx.merge(graphdef, params, rest)
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(merged, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, [params, opt.init(params), rest]


def _cost(step, state, data) -> tuple[float, float]:
    """XLA's estimate of (flops, bytes accessed) of the compiled step."""
    cost = step.lower(*state, data).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost.get("flops", float("nan")), cost.get("bytes accessed", float("nan"))


def time_pair(kind: str, batch: int, repeats: int) -> tuple[dict[str, list[float]], dict[str, tuple]]:
    """Step times (and XLA cost estimates) of the standard and unit-scaled ``kind``; calls are
    interleaved, alternating which goes first."""
    data = _batches(kind, batch, SIZE["max_len"])
    runs, costs = {}, {}
    for unit_scaled in (False, True):
        name = "unit" if unit_scaled else "standard"
        step, state = make_step(*_model(kind, unit_scaled))
        costs[name] = _cost(step, state, data)
        state[0], state[1], loss = step(*state, data)  # compile and warm up
        jax.block_until_ready(loss)
        runs[name] = (step, state)
    times = {name: [] for name in runs}
    for r in range(repeats):
        for name in (("standard", "unit") if r % 2 == 0 else ("unit", "standard")):
            step, state = runs[name]
            start = time.perf_counter()
            state[0], state[1], loss = step(*state, data)
            jax.block_until_ready(loss)
            times[name].append(time.perf_counter() - start)
    return times, costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--models", nargs="+", default=["gpt", "bert"],
                        choices=["gpt", "bert", "gpt-conv", "gpt-rnn"])
    args = parser.parse_args()
    print(f"d_model {SIZE['d_model']}, depth {SIZE['depth']}, seq {SIZE['max_len']}, batch {args.batch}, "
          f"vocab {SIZE['vocab_size']}; best / median of {args.repeats} interleaved steps, "
          f"{jax.devices()[0].platform}")
    print(f"{'model':10s} {'standard ms':>12s} {'unit ms':>10s} {'ratio best':>11s} {'ratio median':>13s} "
          f"{'flops ratio':>12s} {'bytes ratio':>12s}")
    for kind in args.models:
        times, costs = time_pair(kind, args.batch, args.repeats)
        best = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        ratio, ratio_median = best["unit"] / best["standard"], median["unit"] / median["standard"]
        flops, nbytes = (costs["unit"][i] / costs["standard"][i] for i in (0, 1))
        verdict = "met" if ratio <= 1.05 else "missed"
        print(f"{kind:10s} {best['standard'] * 1e3:12.1f} {best['unit'] * 1e3:10.1f} {ratio:11.3f} "
              f"{ratio_median:13.3f} {flops:12.3f} {nbytes:12.3f}  goal <= 1.05: {verdict}")


if __name__ == "__main__":
    main()
