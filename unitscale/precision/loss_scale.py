"""Loss scaling, with the semantics of DeepMind's ``jmp`` (0.0.4) as pytrees that live in a train state.

Multiplying the loss by ``S`` multiplies every gradient of the backward pass by ``S``, lifting small
gradients of a narrow format (FP16, E5M2) out of its underflow range; the parameter gradients are
divided by ``S`` again before the optimiser sees them. Use::

    loss_scale = DynamicLossScale(2.0**15)
    grads = loss_scale.unscale(grad(lambda p: loss_scale.scale(loss(p)))(params))
    finite = all_finite(grads)
    loss_scale = loss_scale.adjust(finite)
    params, opt_state = apply_if_finite(...)   # skip the update when not finite

or let :func:`unitscale.precision.value_and_grad_with_recipe` do all of it.

Differences from jmp 0.0.4 (read for its documented semantics):

* scales are powers of two (checked when concrete), so scaling and unscaling are exact;
* ``StaticLossScale`` keeps its scale as static metadata (a pytree without leaves), as jmp does, but
  takes a Python number only;
* ``DynamicLossScale`` keeps ``min_scale`` through flattening (jmp 0.0.4 leaves it out of the pytree
  metadata, so every unflatten, e.g. each ``jit`` boundary, resets it to 1) and requires ``factor`` to
  be a power of two >= 2;
* :func:`all_finite` looks at floating leaves only (integer counters, PRNG keys are ignored);
* every loss scale has ``skips_nonfinite``: whether a training loop should skip (True, dynamic) or
  stop (False) on a non-finite step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import ClassVar, TypeVar, Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "DynamicLossScale",
    "LossScale",
    "NoOpLossScale",
    "StaticLossScale",
    "all_finite",
    "select_tree",
]

T = TypeVar("T")


def _concrete(value: object) -> bool:
    """Whether ``value`` is a concrete number or array (pytree unflattening also passes tracers,
    abstract shapes and placeholder objects, which must pass through unchecked)."""
    if isinstance(value, jax.core.Tracer):
        return False
    return isinstance(value, (numbers.Real, np.ndarray, np.generic, jax.Array))


def _power_of_two(value: object, name: str) -> None:
    """Raise unless a concrete ``value`` is a positive finite power of two (others pass)."""
    if not _concrete(value):
        return
    if np.size(value) != 1:
        raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
    v = float(np.asarray(value))
    if not (math.isfinite(v) and v > 0 and math.frexp(v)[0] == 0.5):
        raise ValueError(f"{name} must be a positive power of two, got {v!r}")


def _scaled(tree: T, factor) -> T:
    """Every floating leaf times ``factor`` in its own dtype (integer leaves untouched)."""

    def one(x):
        x = jnp.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.inexact):
            return x
        return x * jnp.asarray(factor, x.dtype)

    return jax.tree.map(one, tree)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class NoOpLossScale:
    """No loss scaling: ``scale`` and ``unscale`` return the tree unchanged."""

    skips_nonfinite: ClassVar[bool] = False

    @property
    def loss_scale(self) -> float:
        return 1.0

    def scale(self, tree: T) -> T:
        return tree

    def unscale(self, tree: T) -> T:
        return tree

    def adjust(self, grads_finite: jax.Array) -> NoOpLossScale:
        return self


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class StaticLossScale:
    """A fixed power-of-two loss scale ``loss_scale`` (static: no array leaves).

    ``backward_only=True`` scales the backward pass and never divides the gradients by the scale again
    (``unscale`` returns them as they are), as the unit scaling paper's FP16 baseline did: Adam's update
    ``m / (sqrt(v) + eps)`` is invariant to a fixed factor on every gradient (up to ``eps``), and the
    first moment stored in FP16 keeps the scaled, representable values.
    """

    loss_scale: float
    backward_only: bool = False
    skips_nonfinite: ClassVar[bool] = False

    def __post_init__(self):
        if isinstance(self.loss_scale, bool) or not isinstance(self.loss_scale, numbers.Real):
            raise TypeError(f"loss_scale must be a Python number, got {type(self.loss_scale).__name__}")
        _power_of_two(self.loss_scale, "loss_scale")
        object.__setattr__(self, "loss_scale", float(self.loss_scale))
        if not isinstance(self.backward_only, bool):
            raise TypeError(f"backward_only must be a bool, got {self.backward_only!r}")

    def scale(self, tree: T) -> T:
        return _scaled(tree, self.loss_scale)

    def unscale(self, tree: T) -> T:
        return tree if self.backward_only else _scaled(tree, 1.0 / self.loss_scale)

    def adjust(self, grads_finite: jax.Array) -> StaticLossScale:
        return self


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DynamicLossScale:
    """A loss scale that grows by ``factor`` after ``period`` finite steps in a row and shrinks by
    ``factor`` (not below ``min_scale``) on a non-finite one, after which the update is skipped::

        finite:      counter += 1; if counter == period: counter = 0, scale *= factor (if finite)
        non-finite:  counter = 0;  scale = max(min_scale, scale / factor)

    ``loss_scale`` (float32) and ``counter`` (int32) are the pytree's leaves; ``period``, ``factor``
    and ``min_scale`` are static. Defaults follow jmp's documentation: period 2000, factor 2.
    """

    loss_scale: jax.Array
    counter: jax.Array = dataclasses.field(default_factory=lambda: np.zeros((), np.int32))
    period: int = dataclasses.field(default=2000, metadata=dict(static=True))
    factor: int = dataclasses.field(default=2, metadata=dict(static=True))
    min_scale: float = dataclasses.field(default=1.0, metadata=dict(static=True))
    skips_nonfinite: ClassVar[bool] = True

    def __post_init__(self):
        if _concrete(self.loss_scale):
            _power_of_two(self.loss_scale, "loss_scale")
            object.__setattr__(self, "loss_scale", jnp.asarray(self.loss_scale, jnp.float32))
        if isinstance(self.period, bool) or not isinstance(self.period, int) or self.period < 1:
            raise ValueError(f"period must be an int >= 1, got {self.period!r}")
        if isinstance(self.factor, bool) or not isinstance(self.factor, int) or self.factor < 2:
            raise ValueError(f"factor must be a power of two >= 2, got {self.factor!r}")
        _power_of_two(self.factor, "factor")
        _power_of_two(self.min_scale, "min_scale")

    def scale(self, tree: T) -> T:
        return _scaled(tree, self.loss_scale)

    def unscale(self, tree: T) -> T:
        return _scaled(tree, 1.0 / self.loss_scale)

    def adjust(self, grads_finite: jax.Array) -> DynamicLossScale:
        """The next state after a step whose gradients were ``grads_finite`` (a boolean scalar)."""
        finite = jnp.asarray(grads_finite)
        if finite.shape != () or finite.dtype != jnp.bool_:
            raise ValueError(f"grads_finite must be a boolean scalar, got {finite.dtype}{list(finite.shape)}")
        grown = self.loss_scale * self.factor
        at_period = self.counter == self.period - 1
        scale_if_finite = jnp.where(at_period & jnp.isfinite(grown), grown, self.loss_scale)
        scale_if_not = jnp.maximum(jnp.float32(self.min_scale), self.loss_scale / self.factor)
        counter = jnp.where(finite, (self.counter + 1) % self.period, 0).astype(jnp.int32)
        return dataclasses.replace(self, loss_scale=jnp.where(finite, scale_if_finite, scale_if_not),
                                   counter=counter)


LossScale = Union[NoOpLossScale, StaticLossScale, DynamicLossScale]


def all_finite(tree) -> jax.Array:
    """True iff every element of every floating leaf of ``tree`` is finite (True for no leaves)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
    return functools.reduce(jnp.logical_and, leaves, jnp.bool_(True))


def select_tree(pred: jax.Array, a: T, b: T) -> T:
    """``a`` where the boolean scalar ``pred`` is True, else ``b``, leaf by leaf (bit-exact)."""
    pred = jnp.asarray(pred)
    if pred.shape != () or pred.dtype != jnp.bool_:
        raise ValueError(f"pred must be a boolean scalar, got {pred.dtype}{list(pred.shape)}")
    if jax.tree.structure(a) != jax.tree.structure(b):
        raise ValueError("a and b must have the same tree structure")
    return jax.tree.map(lambda x, y: jax.lax.select(pred, jnp.asarray(x), jnp.asarray(y)), a, b)
