"""u-muP learning-rate rules as optax gradient transformations.

u-muP (Blake et al. 2024, arXiv 2407.17465, Table 2 and Sec. 4; rules as in the reference library
``unit_scaling.optim`` 0.3.5) gives every parameter its own learning rate ``eta * m_p``. For Adam,
whose updates are unit-scaled whatever the gradient scale, with unit-scaled (N(0, 1)) weights:

    hidden weight   m = fan_in^-1/2          (fan_in: inputs each output sums over)
    embedding       m = fan_out^-1/2         (fan_out: the model width; u-muP's change from muP's 1)
    readout         m = 1                    (its 1/fan_in forward scale does the muP work)
    bias, norm      m = 1
    and, for a parameter inside the residual stack, m *= depth^-1/2 (depth = layers of the stack).

SGD with unit-scaled gradients (the readout's scales unconstrained, as in ``unitscale.nn``) updates
by unit-scaled steps too, so it takes Adam's rule. With a ``"to_output_scale"`` readout the
gradients are no longer unit-scaled and SGD takes ``m = fan_in^1/2`` (hidden), ``fan_out^1/2``
(embedding), ``size`` (bias, norm), ``1`` (readout), times the same depth factor.

Weight decay is *independent* (``independent_weight_decay`` of the reference library): the decay of the
reference, ``lr_p * (lambda / lr_p) * w`` with peak per-parameter rate ``lr_p = eta * m_p``, removes
``s_t * lambda * w`` per step for schedule factor ``s_t = eta_t / eta``: independent of ``eta`` and
of ``m_p``. In a chain ``adam -> scale_by_umup -> add_independent_decay -> scale_by_learning_rate``
that is an added ``(lambda / eta) * w`` (:func:`add_independent_decay`).

Which rule a parameter gets comes from the metadata its module set (:mod:`unitscale.nn.params`:
kind, fan-in/out, residual membership), never from its name::

    tx = umup_adamw(1.0, model, weight_decay=2**-13)   # or umup_multipliers(model) -> inspect
    state = nnx.state(model, nnx.Param); opt_state = tx.init(state)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import jax
import optax
from flax import nnx

from unitscale.nn.params import ParamInfo, param_info
from unitscale.nn.transformer import TransformerStack

__all__ = [
    "OPTIMIZER_RULES",
    "READOUT_CONSTRAINTS",
    "lr_multiplier",
    "stack_depths",
    "umup_multipliers",
    "scale_by_umup",
    "add_independent_decay",
    "umup_adam",
    "umup_adamw",
    "umup_sgd",
]

OptimizerRule = Literal["adam", "sgd"]
OPTIMIZER_RULES: tuple[str, ...] = ("adam", "sgd")
READOUT_CONSTRAINTS: tuple[str | None, ...] = (None, "to_output_scale")
Multipliers = nnx.State


def _check_positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_rule(optimizer: str, readout_constraint: str | None) -> None:
    if optimizer not in OPTIMIZER_RULES:
        raise ValueError(f"optimizer must be one of {OPTIMIZER_RULES}, got {optimizer!r}")
    if readout_constraint not in READOUT_CONSTRAINTS:
        raise ValueError(f"readout_constraint must be one of {READOUT_CONSTRAINTS}, got {readout_constraint!r}")


def _adam_width_factor(info: ParamInfo) -> float:
    if info.kind == "hidden":
        return info.fan_in**-0.5
    if info.kind == "embedding":
        return info.fan_out**-0.5
    return 1.0  # readout, bias, norm


def _sgd_output_scale_width_factor(info: ParamInfo) -> float:
    # Gradients of a to_output_scale readout carry the forward scales: undo them per kind.
    if info.kind == "hidden":
        return info.fan_in**0.5
    if info.kind == "embedding":
        return info.fan_out**0.5
    if info.kind in ("bias", "norm"):
        return float(info.fan_out)
    return 1.0  # readout


def lr_multiplier(
    info: ParamInfo,
    *,
    depth: int | None = None,
    optimizer: OptimizerRule = "adam",
    readout_constraint: str | None = None,
) -> float:
    """u-muP learning-rate multiplier ``m_p`` of one parameter (rules in the module docstring).

    ``depth`` (layers of the residual stack holding the parameter) is needed only when
    ``info.in_residual``; the factor is then ``depth^-1/2``.
    """
    if not isinstance(info, ParamInfo):
        raise TypeError(f"info must be a ParamInfo, got {type(info).__name__}")
    _check_rule(optimizer, readout_constraint)
    if optimizer == "sgd" and readout_constraint == "to_output_scale":
        width = _sgd_output_scale_width_factor(info)
    else:
        width = _adam_width_factor(info)
    if not info.in_residual:
        return width
    if depth is None:
        raise ValueError("depth: a parameter in the residual stack needs the stack's depth (number of layers)")
    _check_positive_int("depth", depth)
    return width * depth**-0.5


def stack_depths(model: nnx.Module) -> dict[tuple, int]:
    """``{path of a TransformerStack: its number of layers}`` for every stack in ``model``."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}")
    return {tuple(path): len(module.layers) for path, module in nnx.iter_modules(model)
            if isinstance(module, TransformerStack)}


def _key_name(key: Any) -> Any:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return getattr(key, attr)
    return key


def _depth_of(path: tuple, depths: dict[tuple, int], depth: int | None) -> int | None:
    if depth is not None:
        return depth
    names = tuple(_key_name(k) for k in path)
    owners = [d for prefix, d in depths.items() if names[: len(prefix)] == prefix]
    return owners[-1] if owners else None


def umup_multipliers(
    node: nnx.Module | nnx.State,
    *,
    depth: int | None = None,
    optimizer: OptimizerRule = "adam",
    readout_constraint: str | None = None,
) -> Multipliers:
    """The multiplier ``m_p`` (a Python float) of every ``nnx.Param`` of ``node``, as a state with the
    keys of ``nnx.state(node, nnx.Param)`` (the pure form, ``nnx.as_pure``).

    The depth of a residual parameter is ``depth`` if given, else the number of layers of the
    :class:`~unitscale.nn.transformer.TransformerStack` containing it (a module is needed for that;
    for a state pass ``depth``).
    """
    if depth is not None:
        _check_positive_int("depth", depth)
    _check_rule(optimizer, readout_constraint)
    depths = stack_depths(node) if isinstance(node, nnx.Module) else {}
    infos = param_info(node)

    def rule(path: tuple, info: ParamInfo) -> float:
        return lr_multiplier(info, depth=_depth_of(path, depths, depth), optimizer=optimizer,
                             readout_constraint=readout_constraint)

    return jax.tree_util.tree_map_with_path(rule, infos)


def _as_multipliers(multipliers: Multipliers | nnx.Module, optimizer: OptimizerRule) -> Multipliers:
    if isinstance(multipliers, nnx.Module):
        return umup_multipliers(multipliers, optimizer=optimizer)
    leaves = jax.tree.leaves(multipliers)
    if not leaves:
        raise ValueError("multipliers: no parameters (pass a model or umup_multipliers(model))")
    bad = [m for m in leaves if isinstance(m, bool) or not isinstance(m, (int, float)) or not math.isfinite(m) or m <= 0]
    if bad:
        raise ValueError(f"multipliers must be positive finite Python numbers, got e.g. {bad[0]!r}")
    return multipliers


def _scale_leaves(updates: optax.Updates, multipliers: Multipliers) -> optax.Updates:
    """``u * m`` per parameter. ``multipliers`` is a prefix of ``updates``: each of its leaves covers
    a parameter, whether that is a bare array (``nnx.as_pure`` form, as ``nnx.Optimizer`` passes) or
    an ``nnx.Param`` node (as ``nnx.split`` gives)."""
    try:
        return jax.tree.map(lambda m, sub: jax.tree.map(lambda u: u * m, sub), multipliers, updates)
    except ValueError as err:
        raise ValueError(f"multipliers do not match the structure of the updates (make them with "
                         f"umup_multipliers on the model being optimised): {err}") from None


def scale_by_umup(multipliers: Multipliers | nnx.Module) -> optax.GradientTransformation:
    """Multiply each parameter's update by its u-muP multiplier: ``u_p -> m_p * u_p``.

    ``multipliers`` from :func:`umup_multipliers` (or a model, for Adam's rule). Stateless.
    """
    multipliers = _as_multipliers(multipliers, "adam")

    def update(updates, state, params=None):
        del params
        return _scale_leaves(updates, multipliers), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def add_independent_decay(
    weight_decay: float, peak_lr: float, mask: Any | Callable[[optax.Params], Any] | None = None
) -> optax.GradientTransformation:
    """Add ``(weight_decay / peak_lr) * w`` to the updates (before ``scale_by_learning_rate``), so
    each step removes ``(lr_t / peak_lr) * weight_decay * w``: the decay does not depend on the peak
    learning rate or the u-muP multipliers. ``mask`` selects the decayed parameters (optax mask:
    a pytree of bools or a function of the params); None decays all of them."""
    for name, value in (("weight_decay", weight_decay), ("peak_lr", peak_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if peak_lr <= 0:
        raise ValueError(f"peak_lr must be > 0, got {peak_lr!r}")
    return optax.add_decayed_weights(weight_decay / peak_lr, mask)


def _peak(learning_rate: optax.ScalarOrSchedule, peak_lr: float | None, weight_decay: float) -> float | None:
    if callable(learning_rate):
        if peak_lr is None and weight_decay:
            raise ValueError("peak_lr: with a learning-rate schedule, independent weight decay needs the peak "
                             "learning rate it is relative to")
        return peak_lr
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) or not learning_rate > 0:
        raise ValueError(f"learning_rate must be a positive number or a schedule, got {learning_rate!r}")
    return float(learning_rate) if peak_lr is None else peak_lr


def _finish(
    core: list[optax.GradientTransformation], multipliers: Multipliers, learning_rate: optax.ScalarOrSchedule,
    weight_decay: float, peak_lr: float | None, mask: Any,
) -> optax.GradientTransformation:
    peak = _peak(learning_rate, peak_lr, weight_decay)
    parts = [*core, scale_by_umup(multipliers)]
    if weight_decay:
        parts.append(add_independent_decay(weight_decay, peak, mask))
    return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))


def umup_adamw(
    learning_rate: optax.ScalarOrSchedule,
    multipliers: Multipliers | nnx.Module,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    peak_lr: float | None = None,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    """u-muP AdamW: ``chain(scale_by_adam, scale_by_umup, add_independent_decay, scale_by_learning_rate)``,
    i.e. ``w <- w - eta_t (m_p * adam_p + (lambda / eta) w)``.

    ``multipliers``: :func:`umup_multipliers` of the model (Adam rule), or the model itself.
    ``peak_lr``: the ``eta`` the decay is relative to; defaults to a constant ``learning_rate`` and
    is required with a schedule when ``weight_decay > 0``. ``mask``: decayed parameters (None: all).
    """
    multipliers = _as_multipliers(multipliers, "adam")
    core = [optax.scale_by_adam(b1=b1, b2=b2, eps=eps)]
    return _finish(core, multipliers, learning_rate, weight_decay, peak_lr, mask)


def umup_adam(
    learning_rate: optax.ScalarOrSchedule,
    multipliers: Multipliers | nnx.Module,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """u-muP Adam: :func:`umup_adamw` without weight decay."""
    return umup_adamw(learning_rate, multipliers, b1=b1, b2=b2, eps=eps)


def umup_sgd(
    learning_rate: optax.ScalarOrSchedule,
    multipliers: Multipliers | nnx.Module,
    *,
    momentum: float | None = None,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    peak_lr: float | None = None,
    mask: Any | Callable[[optax.Params], Any] | None = None,
) -> optax.GradientTransformation:
    """u-muP SGD: ``chain(trace(momentum), scale_by_umup, add_independent_decay, scale_by_learning_rate)``.

    ``multipliers``: :func:`umup_multipliers` with ``optimizer="sgd"`` (and the readout constraint
    of the model), or the model itself (unconstrained readout). The decay is decoupled (applied
    after momentum), independent as in :func:`umup_adamw`.
    """
    multipliers = _as_multipliers(multipliers, "sgd")
    if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, (int, float))
                                 or not 0 <= momentum < 1):
        raise ValueError(f"momentum must be None or in [0, 1), got {momentum!r}")
    core = [optax.trace(decay=momentum, nesterov=nesterov)] if momentum else []
    return _finish(core, multipliers, learning_rate, weight_decay, peak_lr, mask)
