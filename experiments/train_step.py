"""The train and evaluation steps of the training loop, as pure functions of a :class:`TrainState`.

The model is split once into a static ``graphdef`` and two array states: ``params`` (``nnx.Param``,
what the optimiser updates) and ``rest`` (every other variable: RNG counters, FP8 scale histories, ...).
The steps merge them back inside ``jax.jit``. Measured side by side on 2 CPU cores (a 2-layer LM,
batch 8 x 64 tokens, AdamW), ``nnx.jit`` over the module and an ``nnx.Optimizer`` took 1.47x the time
per step of this form at width 64 (2.06 vs 1.40 ms) and 1.08x at width 256 (13.6 vs 12.4 ms): about
0.6 ms of Python graph traversal per call. The functional form also gives the loop a plain pytree to
shard and checkpoint.

A loss function maps ``(model, batch)`` to ``(loss, totals)``: the scalar to differentiate, and a dict
of per-batch *sums* of per-token quantities holding a ``"count"`` entry (the number of tokens that
count), e.g. ``{"nll": sum of -log p, "correct": ..., "count": ...}``. Metrics are reported as
``totals[k] / totals["count"]``, which pools correctly over batches of any padding.

Non-finite values never enter the weights. A step whose loss or gradients are not finite halts the
state (parameters, optimiser state and step stay those of the last good step; ``halted_at`` records
the failing step) unless the gradient function's scaling recipe handles it (``skips_nonfinite``: a
dynamic loss scaler skips the update, lowers its scale and training goes on, halting only after
``max_consecutive_skips`` skips in a row). The host only reads ``halted_at`` at log points, so the
steps in between stay asynchronous.

A gradient function may add per-step metrics to the totals under keys ``"step/<name>"`` (e.g. the loss
scale and overflow counts of :func:`unitscale.precision.value_and_grad_with_recipe`, the gradient function
of every scaling recipe). They are summed over all steps taken, skipped ones included, and reported as
means per step, not per token.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from unitscale.precision.storage import Storage, apply_stored_updates
from unitscale.scale import scale_bwd

Batch = Any
LossFn = Callable[[nnx.Module, Batch], tuple[jax.Array, Mapping[str, jax.Array]]]


class GradFn(Protocol):
    """``(loss_fn, model, batch, recipe_state) -> (loss, totals, grads, new_recipe_state, grads_finite)``.

    ``grads`` are w.r.t. the ``nnx.Param`` variables, already unscaled by any loss-scaling recipe.
    ``totals`` are the loss function's, plus any per-step metrics under ``"step/<name>"`` keys. The
    function may update non-parameter variables of ``model`` (recipe state); the step carries them.
    """

    def __call__(self, loss_fn: LossFn, model: nnx.Module, batch: Batch, recipe_state: Any) -> tuple: ...


def tree_all_finite(tree) -> jax.Array:
    """True iff every element of every floating leaf of ``tree`` is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return functools.reduce(jnp.logical_and, leaves, jnp.bool_(True))


def plain_value_and_grad(loss_fn: LossFn, model: nnx.Module, batch: Batch, recipe_state: Any) -> tuple:
    """No scaling recipe: ``d loss / d params``; finite iff the loss and every gradient are finite."""
    (loss, totals), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
    return loss, totals, grads, recipe_state, jnp.isfinite(loss) & tree_all_finite(grads)


def backward_shift(value_and_grad: GradFn, shift: int) -> GradFn:
    """``value_and_grad`` with the backward pass multiplied by ``2^-shift``: the loss's gradient starts at
    ``2^-shift`` instead of 1 (:func:`unitscale.scale.scale_bwd`; the loss value is unchanged), so every
    gradient of the low-precision backward pass is ``2^shift`` times smaller, as the gradients of larger
    or longer runs are; the parameter gradients are multiplied by ``2^shift`` again in float32 (exact)
    before the optimiser sees them. A float32 backward pass is unchanged but for values that the shift
    takes below float32's normal range (2^-126), which XLA:CPU flushes to zero."""
    if isinstance(shift, bool) or not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be a non-negative int, got {shift!r}")
    if shift == 0:
        return value_and_grad

    def shifted(loss_fn: LossFn, model: nnx.Module, batch: Batch, recipe_state: Any) -> tuple:
        def small_loss(m, b):
            loss, totals = loss_fn(m, b)
            return scale_bwd(loss, 2.0**-shift), totals

        loss, totals, grads, recipe_state, finite = value_and_grad(small_loss, model, batch, recipe_state)
        restored = jax.tree.map(lambda g: g * jnp.asarray(2.0**shift, g.dtype), grads)
        return loss, totals, restored, recipe_state, finite

    return shifted


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
    """Everything a training run carries from one step to the next; a pytree, checkpointed whole.

    ``step`` counts optimiser steps taken, skipped ones included; it is also the position in the data.
    ``sums`` accumulates the metrics since the last log record (reset on the first step after one).
    """

    step: jax.Array
    params: Any
    rest: Any
    opt_state: Any
    recipe_state: Any
    sums: dict[str, jax.Array]
    halted_at: jax.Array
    skips_in_a_row: jax.Array


SUM_KEYS = ("loss", "grad_norm", "steps", "skipped")
STEP_METRIC = "step/"  # prefix of per-step metrics in a gradient function's totals


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, params, rest)``: the static structure, the ``nnx.Param`` state, everything else."""
    return nnx.split(model, nnx.Param, ...)


def parameter_count(model: nnx.Module) -> int:
    """Number of trainable parameter values of ``model`` (the ``nnx.Param`` state :func:`split_model` splits off)."""
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def eval_graphdef(model: nnx.Module) -> nnx.GraphDef:
    """The graphdef of ``model`` in evaluation mode (dropout off, running statistics used)."""
    view = nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)
    return split_model(view)[0]


def init_state(model: nnx.Module, loss_fn: LossFn, optimizer: optax.GradientTransformation, batch: Batch,
               recipe_state: Any = None, value_and_grad: GradFn | None = None) -> tuple[nnx.GraphDef, TrainState]:
    """The graphdef and step-0 state; ``batch`` (any batch of the run) fixes the keys of ``sums``, with
    the per-step metrics of ``value_and_grad`` (the loss function's totals alone when None)."""
    graphdef, params, rest = split_model(model)
    if value_and_grad is None:
        _, totals = jax.eval_shape(lambda p, r: loss_fn(nnx.merge(graphdef, p, r), batch), params, rest)
    else:
        totals = jax.eval_shape(lambda p, r, s: value_and_grad(loss_fn, nnx.merge(graphdef, p, r), batch, s)[1],
                                params, rest, recipe_state)
    if not isinstance(totals, Mapping) or "count" not in totals:
        raise ValueError(f"loss_fn must return (loss, totals) with totals a dict holding 'count', got {totals!r:.200}")
    sums = {k: jnp.zeros((), jnp.float32) for k in (*SUM_KEYS, *(f"totals/{k}" for k in totals))}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, rest=rest, opt_state=optimizer.init(params),
                       recipe_state=recipe_state, sums=sums, halted_at=jnp.full((), -1, jnp.int32),
                       skips_in_a_row=jnp.zeros((), jnp.int32))
    return graphdef, state


def _select(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def make_train_step(graphdef: nnx.GraphDef, loss_fn: LossFn, optimizer: optax.GradientTransformation, *,
                    log_every: int, value_and_grad: GradFn = plain_value_and_grad, skips_nonfinite: bool = False,
                    max_consecutive_skips: int = 100, storage: Storage | None = None
                    ) -> Callable[[TrainState, Batch], TrainState]:
    """The (unjitted) train step ``state, batch -> state`` described in the module docstring.

    ``storage`` (:class:`unitscale.precision.Storage`) keeps the parameters in a format: the update is
    applied by :func:`unitscale.precision.apply_stored_updates` (``optimizer`` must then be the
    :func:`unitscale.precision.stored_optimizer` of the same storage)."""

    def train_step(state: TrainState, batch: Batch) -> TrainState:
        # nnx.merge shares Variables with the states it is given and the forward pass updates them in
        # place; merging copies keeps `state.rest` the old value that a halted step must return.
        model = nnx.merge(graphdef, *jax.tree.map(lambda x: x, (state.params, state.rest)))
        loss, totals, grads, recipe_state, finite = value_and_grad(loss_fn, model, batch, state.recipe_state)
        _, _, rest = split_model(model)  # the forward pass may have advanced RNG counters, scale histories, ...
        finite = finite & jnp.isfinite(loss)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = apply_stored_updates(state.params, updates, opt_state, storage)

        healthy = state.halted_at < 0
        skips = jnp.where(finite, 0, state.skips_in_a_row + 1)
        if skips_nonfinite:
            give_up = skips > max_consecutive_skips
            advance, halt = healthy & ~give_up, healthy & give_up
        else:
            advance, halt = healthy & finite, healthy & ~finite
        apply = advance & finite

        base = jax.tree.map(lambda s: jnp.where(state.step % log_every == 0, 0.0, s), state.sums)
        step_sums = {"loss": loss, "grad_norm": optax.tree.norm(grads), "steps": 1.0, "skipped": 0.0,
                     **{f"totals/{k}": v for k, v in totals.items()}}
        added = {k: base[k] + jnp.where(advance if k.startswith(f"totals/{STEP_METRIC}") else apply,
                                        jnp.asarray(step_sums[k], jnp.float32), 0.0) for k in base}
        added["skipped"] = base["skipped"] + jnp.where(advance & ~finite, 1.0, 0.0)
        return TrainState(
            step=state.step + advance.astype(jnp.int32),
            params=_select(apply, params, state.params),
            rest=_select(advance, rest, state.rest),
            opt_state=_select(apply, opt_state, state.opt_state),
            recipe_state=_select(advance, recipe_state, state.recipe_state),
            sums=_select(advance, added, state.sums),
            halted_at=jnp.where(halt, state.step, state.halted_at),
            skips_in_a_row=jnp.where(advance, skips, state.skips_in_a_row),
        )

    return train_step


def make_multi_step(train_step: Callable[[TrainState, Batch], TrainState]
                    ) -> Callable[[TrainState, Batch, jax.Array], TrainState]:
    """``(state, batches, n) -> state``: ``train_step`` over the first ``n`` batches of ``batches`` (every
    leaf stacked along a new leading axis) in one on-device loop.

    One call per ``n`` steps instead of one per step: XLA:CPU maps the step's temporary buffer afresh
    on every call (400 MB for the d_model 128, batch 16 x 256 GPT), and the page faults of touching it
    cost about a fifth of a step (benchmarks/README.md); a loop reuses it. ``n`` is traced, so any
    ``n`` up to the stack's length runs the same compiled program, and the loop body is the step
    itself: the states equal those of ``n`` separate calls bit for bit (tests/experiments/test_train.py).
    """

    def multi_step(state: TrainState, batches: Batch, n: jax.Array) -> TrainState:
        return jax.lax.fori_loop(0, n, lambda i, s: train_step(s, jax.tree.map(lambda b: b[i], batches)), state)

    return multi_step


def make_eval_step(graphdef: nnx.GraphDef, loss_fn: LossFn) -> Callable[[TrainState, Batch], dict]:
    """The (unjitted) evaluation step ``state, batch -> totals``; it changes no state (RNG included)."""

    def eval_step(state: TrainState, batch: Batch) -> dict:
        _, totals = loss_fn(nnx.merge(graphdef, state.params, state.rest), batch)
        return {k: jnp.asarray(v, jnp.float32) for k, v in totals.items()}

    return eval_step


def interval_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """Means over the good steps since the last record: ``loss``, ``grad_norm``, each ``totals`` ratio,
    the number of ``steps`` and ``skipped`` steps and the ``skipped_fraction`` of all steps taken, and
    each per-step metric (``"step/<name>"`` totals) as ``<name>`` averaged over all steps taken; from host
    copies of ``TrainState.sums``."""
    n = sums["steps"]
    taken = n + sums["skipped"]
    out = {"loss": sums["loss"] / n if n else float("nan"),
           "grad_norm": sums["grad_norm"] / n if n else float("nan"),
           "steps": int(n), "skipped": int(sums["skipped"]),
           "skipped_fraction": sums["skipped"] / taken if taken else float("nan")}
    count = sums.get("totals/count", 0.0)
    for key, value in sums.items():
        if key.startswith(f"totals/{STEP_METRIC}"):
            out[key.removeprefix(f"totals/{STEP_METRIC}")] = value / taken if taken else float("nan")
        elif key.startswith("totals/") and key != "totals/count":
            out[key.removeprefix("totals/")] = value / count if count else float("nan")
    return out
