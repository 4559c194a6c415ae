"""The training-step contract of every scaling recipe: one gradient function, one update helper.

:func:`value_and_grad_with_recipe` is THE function a training loop calls instead of
``nnx.value_and_grad``; with it the loop needs no per-recipe code::

    loss, totals, grads, loss_scale, finite = value_and_grad_with_recipe(loss_fn, model, batch, loss_scale)
    params, opt_state = apply_if_finite(optimizer, grads, opt_state, params, finite)

Contract (the one training loop, ``experiments.train``, follows it):

1. ``loss_fn(model, batch) -> (loss, totals)``; ``model`` is a live module (e.g. ``nnx.merge`` of the
   step's state). ``recipe_state`` is the loss scale (:mod:`unitscale.precision.loss_scale`; None means
   no loss scaling), carried in the train state from step to step.
2. The call differentiates ``loss_scale.scale(loss)`` with respect to the ``nnx.Param`` variables
   *and* the :class:`~unitscale.precision.matmul.RecipeVariable` state of the model's quantised
   matmuls; returns the parameter gradients unscaled, and writes the recipe state's new values into
   ``model`` (histories of delayed scaling, range counts). Afterwards the loop must read every
   non-parameter variable back from ``model`` (``nnx.split(model, nnx.Param, ...)``) and carry it,
   also on a skipped step, so the histories see the overflow that caused it. A quantised matmul may
   be applied once per loss evaluation (its state update would otherwise be counted twice).
3. ``grads_finite`` (loss and every parameter gradient finite) decides the update: apply it, or skip
   it (parameters and optimiser state unchanged bit for bit, :func:`apply_if_finite`) when the loss
   scale ``skips_nonfinite`` (dynamic), else stop. The returned loss scale has already adjusted to
   ``grads_finite``; keep it on a skipped step too. Quantised gradients saturate at their format's
   max instead of becoming inf, so under a dynamic loss scale a step whose output-gradients
   overflowed (counted when the policy has ``stats``) is not finite either: the scale backs off.
   MX matmuls are exempt: each block is scaled to its own amax, so their counted saturation (the
   top binade of a block, e.g. (464, 512) x 2^e for E4M3) does not depend on the loss scale and
   shrinking it could never make such a step finite.
4. ``totals`` is the loss function's, plus per-step metrics under keys ``"step/<name>"``: the loss
   scale used and, when the policy counts them, this step's overflow / underflow counts summed over
   all quantised matmuls (``STAT_NAMES``). Average those over steps, not over tokens.

Models without quantised matmuls and a None/no-op loss scale give exactly ``nnx.value_and_grad``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from unitscale.precision.loss_scale import (DynamicLossScale, LossScale, NoOpLossScale, StaticLossScale, all_finite,
                                            select_tree)
from unitscale.precision.matmul import MatmulQuantizer, MatmulSpec, RangeCounts, RecipeVariable
from unitscale.precision.policy import PrecisionPolicy, precision_policy
from unitscale.precision.stats import STAT_NAMES

__all__ = [
    "RECIPES",
    "apply_if_finite",
    "float8_operands",
    "precision_metrics",
    "scaling_recipe",
    "value_and_grad_with_recipe",
]

RECIPES: tuple[str, ...] = ("none", "static", "static-backward", "dynamic", "delayed", "current", "mx")
# The unit scaling paper's FP16 baseline (unit_scaling_rules.md, character LMs) used loss scale 2048.
STATIC_LOSS_SCALE = 2048.0
# jmp's documented starting point for dynamic loss scaling.
DYNAMIC_LOSS_SCALE = 2.0**15


def _loss_scale(recipe_state: Any) -> LossScale:
    if recipe_state is None:
        return NoOpLossScale()
    if not isinstance(recipe_state, (NoOpLossScale, StaticLossScale, DynamicLossScale)):
        raise TypeError(f"recipe_state must be a loss scale or None, got {type(recipe_state).__name__}")
    return recipe_state


def _write_recipe_state(model: nnx.Module, grads: nnx.State) -> None:
    """Overwrite each recipe variable with its gradient (or add it, for ``accumulate`` types)."""
    old = nnx.state(model, RecipeVariable)

    def new(variable, grad):
        update = grad[...] if isinstance(grad, nnx.Variable) else grad
        return variable.replace(variable[...] + update if type(variable).accumulate else update)

    is_var = lambda v: isinstance(v, nnx.Variable)  # noqa: E731
    nnx.update(model, jax.tree.map(new, old, grads, is_leaf=is_var))


def precision_metrics(state: nnx.Module | nnx.State) -> dict[str, jax.Array]:
    """This step's counts (``STAT_NAMES``) summed over every quantised matmul of a model or state;
    empty when no matmul counts."""
    counts = jax.tree.leaves(nnx.state(state, RangeCounts) if isinstance(state, nnx.Module)
                             else nnx.filter_state(state, RangeCounts))
    if not counts:
        return {}
    total = sum(counts[1:], counts[0])
    return {name: total[i] for i, name in enumerate(STAT_NAMES)}


def _loss_scaled_overflows(model: nnx.Module) -> jax.Array:
    """This step's output-gradient overflows of the per-tensor (not MX) quantised matmuls: the ones a
    smaller loss scale would avoid."""
    index = STAT_NAMES.index("gradients_overflow")
    counts = [m.counts[...][index] for _, m in nnx.iter_modules(model)
              if isinstance(m, MatmulQuantizer) and m.spec.scaling != "mx" and m.counts is not None]
    return sum(counts, jnp.float32(0))


def value_and_grad_with_recipe(
    loss_fn: Callable[[nnx.Module, Any], tuple[jax.Array, Mapping[str, jax.Array]]],
    model: nnx.Module,
    batch: Any,
    recipe_state: LossScale | None,
) -> tuple[jax.Array, dict[str, jax.Array], nnx.State, LossScale | None, jax.Array]:
    """``(loss, totals, grads, new_recipe_state, grads_finite)`` under the contract of the module
    docstring: gradients of ``loss_scale.scale(loss)`` unscaled, recipe state written into ``model``,
    loss scale adjusted, per-step metrics in ``totals["step/..."]``."""
    loss_scale = _loss_scale(recipe_state)

    def scaled_loss(m, b):
        loss, totals = loss_fn(m, b)
        return loss_scale.scale(loss), (loss, totals)

    wrt = nnx.DiffState(0, nnx.Any(nnx.Param, RecipeVariable))
    (_, (loss, totals)), grads = nnx.value_and_grad(scaled_loss, argnums=wrt, has_aux=True)(model, batch)
    param_grads, recipe_grads = nnx.split_state(grads, nnx.Param, RecipeVariable)
    param_grads = loss_scale.unscale(param_grads)
    _write_recipe_state(model, recipe_grads)
    counts = precision_metrics(model)
    finite = jnp.isfinite(loss) & all_finite(param_grads)
    if loss_scale.skips_nonfinite and counts:
        finite = finite & (_loss_scaled_overflows(model) == 0)
    metrics = {"loss_scale": jnp.asarray(loss_scale.loss_scale, jnp.float32), **counts}
    totals = {**totals, **{f"step/{k}": v for k, v in metrics.items()}}
    new_state = None if recipe_state is None else loss_scale.adjust(finite)
    return loss, totals, param_grads, new_state, finite


def apply_if_finite(
    optimizer: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any, grads_finite: jax.Array
) -> tuple[Any, Any]:
    """``(params, opt_state)`` after one optimiser step when ``grads_finite``, else the inputs
    unchanged bit for bit (also when the step produced NaNs)."""
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    finite = jnp.asarray(grads_finite, bool)
    return select_tree(finite, new_params, params), select_tree(finite, new_opt_state, opt_state)


def scaling_recipe(precision: str | PrecisionPolicy = "fp8", scaling: str = "none") -> tuple[PrecisionPolicy, LossScale]:
    """A policy and a loss scale from a precision (preset name or policy) and a recipe name of
    ``RECIPES``: ``"none"`` adds nothing; ``"static"`` (scale 2048) and ``"dynamic"`` (jmp's 2^15,
    period 2000, factor 2) add loss scaling; ``"delayed"``, ``"current"``, ``"mx"`` set the policy's
    tensor scaling (which needs matmul formats). ``"static-backward"`` is the paper's form of the static
    scale: the backward pass runs at 2048 and the gradients reach the optimiser undivided."""
    policy = precision_policy(precision)
    if scaling not in RECIPES:
        raise ValueError(f"scaling must be one of {RECIPES}, got {scaling!r}")
    if scaling in ("static", "static-backward"):
        return policy, StaticLossScale(STATIC_LOSS_SCALE, backward_only=scaling == "static-backward")
    if scaling == "dynamic":
        return policy, DynamicLossScale(DYNAMIC_LOSS_SCALE)
    if scaling in ("delayed", "current", "mx"):
        if not policy.quantized:
            raise ValueError(f"scaling={scaling!r} scales FP8 matmul inputs; precision {policy.name!r} "
                             f"quantises none (choose an fp8 preset)")
        policy = policy.replace(scaling=scaling)
    return policy, NoOpLossScale()


def _real_formats(*fmts: Any) -> bool:
    """Whether every format given can be a real array on JAX's backend (XLA:CPU holds no float6)."""
    try:
        PrecisionPolicy(matmul_fwd=fmts[0], matmul_bwd=fmts[1], operands="float8")
    except ValueError:
        return False
    return True


def _to_float8(value: Any) -> Any:
    """``value`` with ``operands="float8"`` if it is or holds a quantising policy whose formats can be
    real arrays, else unchanged."""
    if isinstance(value, PrecisionPolicy):
        convert = (value.quantized and value.scaling != "mx"
                   and _real_formats(value.matmul_fwd, value.matmul_bwd) and _real_formats(value.keep_format, None))
        return value.replace(operands="float8") if convert else value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _to_float8(getattr(value, f.name)) for f in dataclasses.fields(value)
                   if isinstance(getattr(value, f.name), PrecisionPolicy)}
        return dataclasses.replace(value, **changes) if changes else value
    return value


def float8_operands(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` whose FP8 matmuls round through real float8 arrays (``operands="float8"``)
    instead of simulating them in float32: the same values, slower on CPU, but a cost model reading
    dtypes off the traced program (``ipu_sim``) sees FP8 matmuls. Formats the backend cannot hold
    (float6 on CPU) stay simulated, as MX always is. It counts no range statistics
    (diagnostics of the simulation, not work the hardware would do; the variables stay, unused).
    ``model`` itself if it has no quantising policy. The state keeps its structure."""
    if not any(isinstance(m, MatmulQuantizer) for _, m in nnx.iter_modules(model)):
        return model
    copy = nnx.clone(model)
    for _, module in nnx.iter_modules(copy):
        for name, value in list(vars(module).items()):
            if isinstance(value, MatmulSpec) and value.scaling != "mx" and _real_formats(value.fwd, value.bwd):
                setattr(module, name, dataclasses.replace(value, operands="float8", stats=False))
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                new = _to_float8(value)
                if new is not value:
                    setattr(module, name, new)
    return copy
