"""Every scaling recipe of unitscale.precision through the one training loop, experiments.train.train.

A tiny GPT (d_model 16, depth 1, seq 16, batch 4) trains 8 steps on the shipped tiny text in
combinations of precision preset x {unit-scaled, standard} x scaling recipe, and must end with a
finite loss below its start; combinations the library rejects must raise ValueError naming the
recipe. Each run compiles its own train step (5-20 s on a loaded 2-core machine). By default every
accepted combination runs (78 runs, 5-7 minutes on an idle 2-core machine, 15-25 under load);
``PRECISION_LOOP_MATRIX=cover`` runs a covering set of 12: every preset, every recipe with both
parametrisations, the 16-bit and MX presets with and without loss scaling, per-tensor FP8 with each
tensor scaling (under dynamic loss scaling it is covered by the skipped-step test, which runs the
same train step).

A skipped step (non-finite gradients under dynamic loss scaling) is checked bit for bit on the
loop's own train step (:func:`experiments.train_step.make_train_step`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments import data
from experiments.optimizers import OptimizerConfig
from experiments.results import read_jsonl
from experiments.train import TrainConfig, train
from experiments.train_step import init_state, make_train_step
from unitscale.models.gpt import GPT, GPTConfig, lm_loss
from unitscale.nn.linear import Linear
from unitscale.nn.numerics import Numerics
from unitscale.precision.loss_scale import DynamicLossScale
from unitscale.precision.matmul import AmaxHistory, RangeCounts
from unitscale.precision.policy import PRESETS
from unitscale.precision.recipe import scaling_recipe, value_and_grad_with_recipe
from unitscale.precision.stats import STAT_NAMES

TINY = Path(__file__).parent / "data" / "tiny.txt"
TEXT = TINY.read_text(encoding="utf-8")
VOCAB = data.build_char_vocab(TEXT)
IDS = VOCAB.encode(TEXT)
B, T, STEPS = 4, 16, 8
SCALINGS = ("none", "static", "dynamic", "delayed", "current")
TENSOR_SCALINGS = ("delayed", "current")
# experiments.gpt's learning rates: unit-scaled weights are N(0, 1), so their steps are larger.
LR = {True: 3e-2, False: 3e-3}


def accepted(preset: str, scaling: str) -> bool:
    """Whether the library takes the pair: tensor scaling needs a preset with matmul formats."""
    return PRESETS[preset].quantized or scaling not in TENSOR_SCALINGS


FULL = [(p, s, u) for p in PRESETS for s in SCALINGS for u in (True, False) if accepted(p, s)]
COVER = [
    ("fp32", "static", False), ("bf16", "dynamic", True), ("fp16", "none", True), ("fp16", "dynamic", False),
    ("fp8", "none", True), ("fp8", "delayed", False), ("fp8", "current", True), ("fp8_fnuz", "current", False),
    ("umup_fp8", "delayed", True), ("mxfp8", "dynamic", False), ("mxfp6", "static", True), ("mxfp4", "none", False),
    ("fp16_paper", "static", False),
]
# Measured over the full matrix (8 steps each). Loss scaling multiplies gradients that unit scaling
# already keeps near 1, so FP16 / E5M2 overflow until a dynamic scale has backed off. (FP16 unit-scaled
# with the static scale 2048 overflowed too until float16 weight gradients were scaled before rounding.)
_BACKS_OFF = ("jmp's starting scale 2^15 times unit-scaled gradients saturates E5M2: 3 of the 8 steps are "
              "skipped while the scale backs off (unit scaling needs no loss scale)")
_LOST_AMAXES = ("delayed scaling's cold start in a 4-6-bit format (confirmed by reading the histories): the "
                "zero amaxes are the oldest entries, steps 1-2. With an empty history the scale is 1, as in "
                "Transformer Engine's recipe. E2M1's smallest subnormal is 0.5, so the standard model's "
                "N(0, 0.02^2) weights and ~1e-5 output-gradients flush to zero at step 1. Then attn-out and "
                "ffn-down see zero inputs, and the matmuls below them see zero gradients for one more step, "
                "because their gradient arrives through a matmul whose own history was still empty. E2M3 "
                "(mxfp6) loses the step-1 gradients only; FP8 E4M3 / E5M2 lose none")
XFAILS = {
    ("fp16", "dynamic", True): "jmp's starting scale 2^15 times unit-scaled gradients overflows float16: 6 of the 8 "
                               "steps are skipped while the scale backs off",
    ("fp16_paper", "dynamic", True): "jmp's starting scale 2^15 times unit-scaled gradients overflows float16: 4 of "
                                     "the 8 steps are skipped while the scale backs off (the FP16 weights change "
                                     "nothing in that)",
    ("fp8", "dynamic", True): _BACKS_OFF,
    ("fp8_fnuz", "dynamic", True): _BACKS_OFF,
    ("umup_fp8", "dynamic", True): _BACKS_OFF,
    ("mxfp4", "delayed", False): _LOST_AMAXES,
    ("mxfp6", "delayed", False): _LOST_AMAXES,
}


def _param(preset: str, scaling: str, unit_scaled: bool):
    reason = XFAILS.get((preset, scaling, unit_scaled))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(preset, scaling, unit_scaled, marks=marks,
                        id=f"{preset}-{scaling}-{'unit' if unit_scaled else 'standard'}")


# The "done when" asks for every combination in the suite: the full matrix is the default (about
# 5-7 minutes of an otherwise idle 2-core machine); PRECISION_LOOP_MATRIX=cover runs the covering set.
RUNS = [_param(*run) for run in (COVER if os.environ.get("PRECISION_LOOP_MATRIX") == "cover" else FULL)]


def test_the_covering_set_covers_what_it_claims():
    assert set(COVER) <= set(FULL) and set(XFAILS) <= set(FULL) and not set(COVER) & set(XFAILS)
    assert {p for p, _, _ in COVER} == set(PRESETS)
    assert {(s, u) for _, s, u in COVER} == {(s, u) for s in SCALINGS for u in (True, False)}
    families = {p: ("fp8" if PRESETS[p].scaling == "none" else "mx") if PRESETS[p].quantized else "float"
                for p in PRESETS}
    kinds = {(families[p], "loss" if s in ("static", "dynamic") else s) for p, s, _ in COVER}
    # per-tensor FP8 under dynamic loss scaling is left to the skipped-step test below (same train step)
    assert {("float", "none"), ("float", "loss"), ("fp8", "none"), ("fp8", "delayed"), ("fp8", "current"),
            ("mx", "none"), ("mx", "loss")} <= kinds


@pytest.mark.parametrize("preset", [p for p in PRESETS if not PRESETS[p].quantized])
@pytest.mark.parametrize("scaling", [*TENSOR_SCALINGS, "mx"])
def test_tensor_scaling_without_matmul_formats_is_rejected(preset, scaling):
    with pytest.raises(ValueError, match="scaling"):
        scaling_recipe(preset, scaling)


def _train(preset: str, scaling: str, unit_scaled: bool, out: Path):
    policy, loss_scale = scaling_recipe(preset, scaling)
    config = GPTConfig(vocab_size=VOCAB.size, max_len=T, d_model=16, depth=1, heads=2, ffn_ratio=2.0,
                       unit_scaled=unit_scaled, precision=policy)
    model = GPT(config, rngs=nnx.Rngs(0))
    train_config = TrainConfig(
        steps=STEPS, batch_size=B, seq_len=T, log_every=1, eval_every=1000, checkpoint_every=1000,
        optimizer=OptimizerConfig(lr=LR[unit_scaled], warmup_steps=0, schedule="constant"),
        out_dir=str(out), progress=False, ipu_estimate=False, resume=False)
    result = train(model, lm_loss, train_config, value_and_grad=value_and_grad_with_recipe, recipe_state=loss_scale,
                   batches=lambda start: data.lm_batches(IDS, batch_size=B, seq_len=T, start_step=start))
    records = [r for r in read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    return policy, loss_scale, result, records


@pytest.mark.parametrize("preset, scaling, unit_scaled", RUNS)
def test_tiny_gpt_trains_through_the_loop(preset, scaling, unit_scaled, tmp_path):
    policy, loss_scale, result, records = _train(preset, scaling, unit_scaled, tmp_path)
    assert result.step == STEPS and len(records) == STEPS
    applied = [r for r in records if r["steps"] == 1]
    losses = [r["loss"] for r in applied]
    assert all(math.isfinite(v) for v in losses), losses
    assert len(losses) >= 6, f"{STEPS - len(losses)} of {STEPS} steps skipped"
    start, end = np.mean(losses[:2]), np.mean(losses[-2:])
    assert end < start - 0.05, losses

    # the recipe is what ran: loss scale per step, range counts of quantised matmuls, histories
    scales = [r["loss_scale"] for r in records]
    if scaling == "static":
        assert loss_scale.loss_scale == 2048.0 and scales == [2048.0] * STEPS
    elif scaling == "dynamic":
        assert scales[0] == 2.0**15 and all(b in (a, a / 2) for a, b in zip(scales, scales[1:]))
        # a step is skipped exactly when the scale it used is halved for the next one
        assert [r["skipped"] for r in records[:-1]] == [int(b < a) for a, b in zip(scales, scales[1:])]
    else:
        assert scales == [1.0] * STEPS and not any(r["skipped"] for r in records)
    counted = policy.quantized and policy.stats
    assert all(set(STAT_NAMES) <= set(r) for r in records) == counted
    if counted:
        assert all(r[k] >= 0 for r in records for k in STAT_NAMES)
    histories = jax.tree.leaves(nnx.state(result.model, AmaxHistory))
    assert bool(histories) == (policy.scaling == "delayed")
    for h in histories:  # every matmul saw STEPS amaxes of each of x, W and g
        assert np.all(np.asarray(h)[:, :STEPS] > 0) and not np.any(np.asarray(h)[:, STEPS:])


# --- a skipped step leaves the state bit-identical --------------------------------------------------


class TwoLayers(nnx.Module):
    """Two Linears of one precision preset: FP16 arithmetic (gradients overflow to inf) or FP8 matmuls
    (output-gradients saturate at E5M2's max)."""

    def __init__(self, precision: str):
        numerics = Numerics(unit_scaled=True, precision=precision)
        self.a = Linear(8, 16, role="ffn_up", numerics=numerics, rngs=nnx.Rngs(0))
        self.b = Linear(16, 4, role="ffn_down", numerics=numerics, rngs=nnx.Rngs(1))

    def __call__(self, x):
        return self.b(jax.nn.relu(self.a(x)))


def _mse(model, batch):
    x, y = batch
    err = model(x).astype(jnp.float32) - y
    return jnp.mean(err**2), {"sq": jnp.sum(err**2), "count": jnp.float32(err.size)}


def _bits(tree) -> list[bytes]:
    return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


# fp16: 2^24 times the loss overflows the float16 backward pass (inf). fp8: 2^24 times the gradients
# saturates E5M2 (finite values, counted as overflow), which under dynamic loss scaling is not finite.
@pytest.mark.parametrize("precision, exponent", [("fp16", 24), ("fp8", 24)])
def test_a_skipped_step_leaves_params_and_optimizer_state_bit_identical(precision, exponent):
    model = TwoLayers(precision)
    optimizer = optax.adamw(1e-2)
    key = jax.random.key(11)
    batch = (jax.random.normal(jax.random.fold_in(key, 0), (32, 8)), jax.random.normal(jax.random.fold_in(key, 1),
                                                                                        (32, 4)))
    loss_scale = DynamicLossScale(2.0**exponent, period=2)
    graphdef, state = init_state(model, _mse, optimizer, batch, loss_scale, value_and_grad_with_recipe)
    step = jax.jit(make_train_step(graphdef, _mse, optimizer, log_every=100, value_and_grad=value_and_grad_with_recipe,
                                   skips_nonfinite=True))
    skipped = 0
    while True:
        before = state
        state = step(before, batch)
        if float(state.recipe_state.loss_scale) >= float(before.recipe_state.loss_scale):
            break  # a good step
        skipped += 1
        assert _bits(state.params) == _bits(before.params)
        assert _bits(state.opt_state) == _bits(before.opt_state)
        assert int(state.step) == int(before.step) + 1 and int(state.halted_at) == -1
        assert float(state.recipe_state.loss_scale) == float(before.recipe_state.loss_scale) / 2
        assert skipped < 24
    assert skipped >= 1 and float(state.sums["skipped"]) == skipped
    assert _bits(state.params) != _bits(before.params)  # the first finite step updates
    if precision == "fp8":  # range counts are carried on skipped steps too
        assert jax.tree.leaves(nnx.filter_state(state.rest, RangeCounts))
