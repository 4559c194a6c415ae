"""Speed of the training loop's step: against the PyTorch ``unit-scaling`` peer, this machine's matmul
ceiling, and across precisions and parametrisations, all measured side by side in one run.

The step is the loop's own (:func:`experiments.train_step.make_train_step` run through
:func:`experiments.train_step.make_multi_step`, ``--steps-per-call`` steps per call, as
:func:`experiments.train.train` runs it), with Adam, on random ids of a character vocabulary (85, the
Shakespeare corpus's): speed does not depend on the text. Variants are timed in interleaved rounds
(the order rotates each round) and reported as the median over rounds of the time per step; ratios
are of medians taken in this run, since absolute times on a shared machine mean little.

1. Peer: the unit-scaled decoder at d_model 128, depth 4, 4 heads, seq 256, batch 16, float32 against
   ``unit_scaling.TransformerDecoder`` (0.3.5) of the same sizes with ``unit_scaling.optim.Adam``,
   eager, ``torch.set_num_threads(cores)`` (skipped with a message when torch or unit-scaling is not
   installed). The peer's decoder is not the same network: RMSNorm, a SwiGLU MLP (three
   ``d x 4d`` matrices where ours has two GELU ones), no biases and no position embedding; both
   FLOP counts are printed (XLA's cost analysis; torch's FlopCounterMode). Goal: peer / ours >= 2.
2. Ceiling: a 2048 x 2048 float32 matmul under ``jax.jit``, FLOP/s; the d_model 256 configuration
   of ``benchmarks/models.py`` (depth 4, 4 heads, seq 256, byte vocabulary) at ``--ceiling-batch``
   sequences reports its achieved FLOP/s against it. Goal: >= 0.5.
3. Numerics at the peer configuration: FP8-simulated, BF16 and FP16 unit-scaled steps and the
   standard FP32 step against the unit-scaled FP32 one. Goals: FP8 / FP32 <= 1.25, unit-scaled /
   standard <= 1.05.

    python -m benchmarks.train_step [--rounds 5] [--steps-per-call 8] [--ceiling-batch 16] [--no-peer]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.optimizers import OptimizerConfig, make_optimizer
from experiments.train_step import init_state, make_multi_step, make_train_step
from unitscale.models import GPT, GPTConfig, lm_loss
from unitscale.precision import scaling_recipe, value_and_grad_with_recipe

VOCAB = 85
PEER = dict(d_model=128, depth=4, heads=4, seq=256, batch=16)
CEILING_MODEL = dict(d_model=256, depth=4, heads=4, seq=256, vocab=256)  # benchmarks/models.py SIZE


@dataclasses.dataclass
class Runner:
    """One variant: ``run()`` takes ``steps`` training steps and waits for them."""

    name: str
    run: Callable[[], None]
    steps: int
    flops_per_step: float = float("nan")


def _ids(batch: int, seq: int, vocab: int, stack: int) -> dict:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, (stack, batch, seq + 1)).astype(np.int32)
    return {"inputs": jnp.asarray(ids[..., :-1]), "targets": jnp.asarray(ids[..., 1:])}


def jax_runner(name: str, *, d_model: int, depth: int, heads: int, seq: int, batch: int, vocab: int = VOCAB,
               precision: str = "fp32", unit_scaled: bool = True, steps_per_call: int = 8) -> Runner:
    """The training loop's step of a GPT, ``steps_per_call`` steps per call; FLOPs from XLA's cost
    analysis of one step."""
    policy, loss_scale = scaling_recipe(precision, "none")
    config = GPTConfig(vocab_size=vocab, max_len=seq, d_model=d_model, depth=depth, heads=heads,
                       unit_scaled=unit_scaled, precision=policy, dtype=policy.compute_dtype)
    model = GPT(config, rngs=nnx.Rngs(0))
    optimizer = make_optimizer(OptimizerConfig(name="adam", lr=1e-3 if unit_scaled else 1e-4, grad_clip=0.0,
                                               weight_decay=0.0), 10**6)
    batches = _ids(batch, seq, vocab, steps_per_call)
    one = jax.tree.map(lambda x: x[0], batches)
    graphdef, state = init_state(model, lm_loss, optimizer, one, loss_scale, value_and_grad_with_recipe)
    step = make_train_step(graphdef, lm_loss, optimizer, log_every=10**6, value_and_grad=value_and_grad_with_recipe)
    cost = jax.jit(step).lower(state, one).compile().cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan"))
    multi = jax.jit(make_multi_step(step), donate_argnums=0)
    n = np.int32(steps_per_call)
    holder = [multi(state, batches, n)]
    jax.block_until_ready(holder[0])

    def run() -> None:
        holder[0] = multi(holder[0], batches, n)
        jax.block_until_ready(holder[0])

    return Runner(name, run, steps_per_call, flops)


def peer_runner(steps: int, *, d_model: int, depth: int, heads: int, seq: int, batch: int) -> Runner | str:
    """``unit_scaling.TransformerDecoder`` with ``unit_scaling.optim.Adam``, or why it cannot run."""
    try:
        import torch
        import unit_scaling
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError as err:
        return f"skipped: {err.name} is not installed (pip install torch==2.13.0 unit-scaling==0.3.5)"
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    model = unit_scaling.TransformerDecoder(hidden_size=d_model, vocab_size=VOCAB, layers=depth, heads=heads)
    optimizer = unit_scaling.optim.Adam(model.parameters(), lr=1e-3)
    ids = torch.randint(0, VOCAB, (batch, seq + 1))  # loss() predicts ids[:, 1:] from ids[:, :-1]

    def step() -> None:
        optimizer.zero_grad()
        model.loss(ids).backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        step()
    step()

    def run() -> None:
        for _ in range(steps):
            step()

    return Runner(f"PyTorch unit-scaling {unit_scaling.__version__}", run, steps, float(counter.get_total_flops()))


def matmul_ceiling(n: int = 2048, repeats: int = 10) -> float:
    """Best float32 FLOP/s of an ``n x n`` matmul under ``jax.jit`` on this machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def time_rounds(runners: list[Runner], rounds: int) -> dict[str, float]:
    """Median seconds per step of each runner over ``rounds`` interleaved rounds (order rotating)."""
    times: dict[str, list[float]] = {r.name: [] for r in runners}
    for i in range(rounds):
        for runner in runners[i % len(runners):] + runners[:i % len(runners)]:
            start = time.perf_counter()
            runner.run()
            times[runner.name].append((time.perf_counter() - start) / runner.steps)
    return {name: statistics.median(t) for name, t in times.items()}


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (default: 5)")
    parser.add_argument("--steps-per-call", type=int, default=8, help="steps per call of our step (default: 8)")
    parser.add_argument("--ceiling-batch", type=int, nargs="+", default=[16, 4],
                        help="batch sizes of the d_model 256 ceiling configuration (default: 16 4)")
    parser.add_argument("--no-peer", action="store_true", help="skip the PyTorch peer")
    args = parser.parse_args(argv)
    k = args.steps_per_call
    print(f"{os.cpu_count()} cores, {jax.devices()[0].platform}; median of {args.rounds} interleaved rounds, "
          f"{k} steps per call of ours")

    ours = jax_runner("ours, unit-scaled fp32", **PEER, steps_per_call=k)
    peer = None if args.no_peer else peer_runner(k, **PEER)
    variants = [jax_runner(f"ours, {name}", **PEER, steps_per_call=k, **kw) for name, kw in (
        ("standard fp32", dict(unit_scaled=False)), ("unit-scaled fp8 (simulated)", dict(precision="fp8")),
        ("unit-scaled bf16", dict(precision="bf16")), ("unit-scaled fp16", dict(precision="fp16")))]
    ceiling_models = [jax_runner(f"d_model 256, batch {b}", batch=b, **CEILING_MODEL, steps_per_call=k)
                      for b in args.ceiling_batch]
    runners = [ours, *variants, *ceiling_models] + ([peer] if isinstance(peer, Runner) else [])
    medians = time_rounds(runners, args.rounds)
    ceiling = matmul_ceiling()

    print(f"\n1. Peer configuration (d_model {PEER['d_model']}, depth {PEER['depth']}, heads {PEER['heads']}, "
          f"seq {PEER['seq']}, batch {PEER['batch']}, float32, Adam)")
    for runner in [ours] + ([peer] if isinstance(peer, Runner) else []):
        seconds = medians[runner.name]
        print(f"   {runner.name:38s} {seconds * 1e3:8.1f} ms/step  {runner.flops_per_step / 1e9:6.2f} GFLOP/step  "
              f"{runner.flops_per_step / seconds / 1e9:7.1f} GFLOP/s")
    if isinstance(peer, Runner):
        ratio = medians[peer.name] / medians[ours.name]
        print(f"   peer / ours = {ratio:.2f}   goal >= 2.0: {_verdict(ratio >= 2.0)}")
    else:
        print(f"   PyTorch peer {peer or 'skipped (--no-peer)'}")

    print(f"\n2. Matmul ceiling: {ceiling / 1e9:.1f} GFLOP/s (2048 x 2048 float32, jax.jit)")
    for runner in ceiling_models:
        achieved = runner.flops_per_step / medians[runner.name]
        print(f"   {runner.name:38s} {medians[runner.name] * 1e3:8.1f} ms/step  {achieved / 1e9:7.1f} GFLOP/s = "
              f"{achieved / ceiling:.2f} of the ceiling   goal >= 0.5: {_verdict(achieved / ceiling >= 0.5)}")

    print("\n3. Numerics at the peer configuration, against unit-scaled fp32")
    goals = {"ours, unit-scaled fp8 (simulated)": 1.25, "ours, standard fp32": None}
    for runner in variants:
        ratio = medians[runner.name] / medians[ours.name]
        goal = goals.get(runner.name)
        note = f"   goal <= {goal}: {_verdict(ratio <= goal)}" if goal else ""
        print(f"   {runner.name:38s} {medians[runner.name] * 1e3:8.1f} ms/step  ratio {ratio:.3f}{note}")
    unit_vs_standard = medians[ours.name] / medians["ours, standard fp32"]
    print(f"   unit-scaled / standard = {unit_vs_standard:.3f}   goal <= 1.05: {_verdict(unit_vs_standard <= 1.05)}")


if __name__ == "__main__":
    main()
