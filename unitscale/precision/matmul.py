"""The quantised weight matmul ``y = op(x, W, b)`` of a precision policy, with its recipe state.

``op`` is the layer's own bilinear map (``linear`` / ``linear_readout`` of its op twin,
:mod:`unitscale.functional` or :mod:`unitscale.standard`), so its forward and backward scales stay
where they are defined. Around it, for a matmul of a quantising policy:

* forward: ``x`` and ``W`` (float32; weights straight from the float32 master copy) are rounded to
  ``fwd`` as ``q = quantize(s x)`` and enter ``op`` as ``q / s`` (straight-through gradient); the
  product accumulates in float32;
* backward: the output-gradient ``g`` is rounded to ``bwd`` the same way before ``op``'s backward
  matmuls use it; those reuse the forward's rounded ``x`` and ``W``.

Order with unit scaling: what is rounded are the op's *inputs* (unit-scaled activations, N(0, 1)
weights, and ``g``, which already carries every scale downstream of the op); the op's own forward
scale multiplies the float32 product, and its backward scales the float32 products of the backward
pass. No product is rounded before its scale is applied (a weight gradient before its ``batch^-1/2``
can exceed E4M3's range; it is never rounded here).

MX (``scaling="mx"``) rounds each operand in blocks along the contraction axis of the matmul that
uses it, so the backward pass re-rounds ``W`` along its output axis (for ``g W^T``) and ``x``, ``g``
along the rows (for ``x^T g``) from the float32 values kept for it.

Recipe state lives in the module as variables of a :class:`RecipeVariable` type: per matmul an
:class:`AmaxHistory` ``(3, H)`` (rows: ``x``, ``W``, ``g``; delayed scaling) and :class:`RangeCounts`
(``STAT_NAMES`` order; ``stats=True``). The forward pass never writes them, so the model stays a pure
function under ``jit``/``eval_shape``; they are updated through the backward pass instead, as the
*gradient* of the loss with respect to them (Flax ``fp8_ops``' "overwrite with gradient"): the
gradient of an ``AmaxHistory`` is ``new - old`` and of a ``RangeCounts`` the new counts. See
:func:`unitscale.precision.recipe.value_and_grad_with_recipe` for the contract.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from unitscale import formats as F
from unitscale.formats import FPFormat
from unitscale.precision.mx import mx_quantize, mx_quantize_counted
from unitscale.precision.policy import PrecisionPolicy
from unitscale.precision.stats import STAT_NAMES, range_counts
from unitscale.precision.tensor_scaling import amax, push_amax, scale_from_amax, scale_from_history

__all__ = ["AmaxHistory", "MatmulQuantizer", "MatmulSpec", "RangeCounts", "RecipeVariable"]

Op = Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]


class RecipeVariable(nnx.Variable):
    """Recipe state written through the backward pass: after ``grad`` with respect to it,
    ``new = old + grad`` if ``accumulate`` else ``new = grad``. Not an ``nnx.Param``: optimisers
    never see it."""

    accumulate: ClassVar[bool] = False


class AmaxHistory(RecipeVariable):
    """Delayed scaling's amax histories of one matmul, ``(3, H)`` float32, newest first; rows ``x``,
    ``W``, output-gradient. Its gradient is the change, so an unused matmul keeps its history."""

    accumulate: ClassVar[bool] = True


class RangeCounts(RecipeVariable):
    """Overflow / underflow counts of one matmul's last training step (``STAT_NAMES`` order)."""


@dataclasses.dataclass(frozen=True)
class MatmulSpec:
    """How one matmul role is quantised (static; derived from a policy by :meth:`of`)."""

    fwd: FPFormat | None
    bwd: FPFormat | None
    scaling: str = "none"
    margin: int = 0
    history: int = 1
    block: int = 32
    operands: str = "simulated"
    stats: bool = False

    @classmethod
    def of(cls, policy: PrecisionPolicy, role: str) -> MatmulSpec | None:
        """The spec of ``role`` under ``policy``; None when the matmul runs in the compute dtype."""
        if not isinstance(policy, PrecisionPolicy):
            raise TypeError(f"policy must be a PrecisionPolicy, got {type(policy).__name__}")
        if policy.kept(role):
            fmt = policy.keep_format
            return None if fmt is None else cls(fmt, fmt, operands=policy.operands)
        if not policy.quantized:
            return None
        operands = "simulated" if policy.scaling == "mx" else policy.operands
        return cls(policy.matmul_fwd, policy.matmul_bwd, policy.scaling, policy.margin, policy.amax_history,
                   policy.mx_block, operands, policy.stats)


# --- rounding -----------------------------------------------------------------------------------


def _round(v: jax.Array, fmt: FPFormat, operands: str) -> jax.Array:
    """``v`` on fmt's grid: float32 from ``quantize``, or through a real ``fmt`` array ("float8"):
    8-bit formats come back as float32 (the product stays float32), 16-bit ones stay 16-bit so the
    matmul runs in them."""
    if operands == "simulated":
        return F.quantize(v, fmt)
    real = F.cast(v, fmt)
    return real.astype(jnp.float32) if fmt.bits <= 8 else real


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _straight_through(fmt: FPFormat, operands: str, v: jax.Array) -> jax.Array:
    return _round(v, fmt, operands)


def _straight_through_fwd(fmt, operands, v):
    return _round(v, fmt, operands), None


def _straight_through_bwd(fmt, operands, _, g):
    return (g.astype(jnp.float32),)


_straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def _operand(v: jax.Array, fmt: FPFormat | None, scale: jax.Array | None, operands: str):
    """``(round(s v) / s, [overflow, underflow])``: the forward operand and its range counts.

    Unscaled (``scale`` None), the scale is a 1 that XLA cannot fold away: XLA:CPU otherwise
    recomputes the bit-level quantiser inside every consumer of its result (an output-gradient has
    three: the bias sum, ``g W^T`` and ``x^T g``), which made an FP8 step 1.4x slower than one with
    scaled operands. (Multiplying and dividing by 1 is exact; only float32 subnormals, which every
    format of a policy rounds to zero anyway, may be flushed.)
    """
    if fmt is None:
        return v, jnp.zeros(2, jnp.float32)
    if scale is None:
        scale = jax.lax.optimization_barrier(jnp.ones((), jnp.float32))
    scaled = v * scale
    q = _straight_through(fmt, operands, scaled)
    counts = range_counts(jax.lax.stop_gradient(scaled), jax.lax.stop_gradient(q), fmt)
    return q / scale.astype(q.dtype), counts


def _scale(spec: MatmulSpec, v: jax.Array, fmt: FPFormat | None, history: jax.Array | None):
    """The per-tensor scale of ``v`` (None: unscaled), never differentiated."""
    if fmt is None or spec.scaling == "none":
        return None
    if spec.scaling == "current":
        return jax.lax.stop_gradient(scale_from_amax(amax(v), fmt, spec.margin))
    return scale_from_history(jax.lax.stop_gradient(history), fmt, spec.margin)


# --- per-tensor recipes (none, current, delayed) --------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gradient_boundary(spec, y, history, counts, fwd_history, fwd_counts):
    """Identity forward; backward rounds the output-gradient and emits the recipe state's updates
    as the gradients of ``history`` and ``counts`` (see the module docstring)."""
    return y


def _gradient_boundary_fwd(spec, y, history, counts, fwd_history, fwd_counts):
    return y, (history, fwd_history, fwd_counts)


def _gradient_boundary_bwd(spec, residuals, g):
    history, fwd_history, fwd_counts = residuals
    g32 = g.astype(jnp.float32)
    scale = _scale(spec, g32, spec.bwd, None if history is None else history[2])
    rounded, g_counts = _operand(g32, spec.bwd, scale, spec.operands)
    d_history = None
    if history is not None:
        d_history = jnp.concatenate([fwd_history, push_amax(history[2], amax(g32))[None]]) - history
    d_counts = None if fwd_counts is None else jnp.concatenate([fwd_counts, g_counts])
    zero = lambda a: None if a is None else jnp.zeros_like(a)  # noqa: E731
    return rounded.astype(g.dtype), d_history, d_counts, zero(fwd_history), zero(fwd_counts)


_gradient_boundary.defvjp(_gradient_boundary_fwd, _gradient_boundary_bwd)


def _per_tensor(spec: MatmulSpec, op: Op, x, w, b, history, counts) -> jax.Array:
    hist = None if history is None else jax.lax.stop_gradient(history)
    sx = _scale(spec, x, spec.fwd, None if hist is None else hist[0])
    sw = _scale(spec, w, spec.fwd, None if hist is None else hist[1])
    xq, x_counts = _operand(x, spec.fwd, sx, spec.operands)
    wq, w_counts = _operand(w, spec.fwd, sw, spec.operands)
    y = op(xq, wq, b).astype(jnp.float32)
    fwd_history = None
    if hist is not None:
        a = jax.lax.stop_gradient(jnp.stack([amax(x), amax(w)]))
        fwd_history = jnp.stack([push_amax(hist[0], a[0]), push_amax(hist[1], a[1])])
    fwd_counts = None if counts is None else jnp.concatenate([x_counts, w_counts])
    return _gradient_boundary(spec, y, history, counts, fwd_history, fwd_counts)


# --- MX -------------------------------------------------------------------------------------------


def _mx(v: jax.Array, fmt: FPFormat | None, axis: int, block: int):
    if fmt is None:
        return v, jnp.zeros(2, jnp.float32)
    return mx_quantize_counted(v, fmt, axis=axis, block=block)


def _rows(v: jax.Array, fmt: FPFormat | None, block: int) -> jax.Array:
    """``v`` rounded in blocks along its rows (all leading axes flattened): the contraction axis of
    the weight gradient ``x^T g``."""
    if fmt is None:
        return v
    return mx_quantize(v.reshape(-1, v.shape[-1]), fmt, axis=0, block=block).reshape(v.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mx_matmul(spec, op, x, w, b, counts):
    return _mx_forward(spec, op, x, w, b)[0]


def _mx_forward(spec, op, x, w, b):
    xq, x_counts = _mx(x, spec.fwd, -1, spec.block)
    wq, w_counts = _mx(w, spec.fwd, 0, spec.block)
    return op(xq, wq, b).astype(jnp.float32), jnp.concatenate([x_counts, w_counts])


def _mx_matmul_fwd(spec, op, x, w, b, counts):
    y, fwd_counts = _mx_forward(spec, op, x, w, b)
    return y, (x, w, b, None if counts is None else fwd_counts)


def _mx_matmul_bwd(spec, op, residuals, g):
    x, w, b, fwd_counts = residuals
    g_out, g_counts = _mx(g, spec.bwd, -1, spec.block)  # g W^T contracts over outputs
    w_out = _mx(w, spec.fwd, 1, spec.block)[0]
    dx = jax.vjp(lambda a: op(a, w_out, b).astype(jnp.float32), x)[1](g_out)[0]
    x_rows, g_rows = _rows(x, spec.fwd, spec.block), _rows(g, spec.bwd, spec.block)
    dw = jax.vjp(lambda v: op(x_rows, v, b).astype(jnp.float32), w)[1](g_rows)[0]
    db = None if b is None else jax.vjp(lambda c: op(x, w, c).astype(jnp.float32), b)[1](g_out)[0]
    d_counts = None if fwd_counts is None else jnp.concatenate([fwd_counts, g_counts])
    return dx, dw, db, d_counts


_mx_matmul.defvjp(_mx_matmul_fwd, _mx_matmul_bwd)


# --- the module ------------------------------------------------------------------------------------


class MatmulQuantizer(nnx.Module):
    """Applies :class:`MatmulSpec` ``spec`` to one weight matmul and holds its recipe state."""

    def __init__(self, spec: MatmulSpec):
        if not isinstance(spec, MatmulSpec):
            raise TypeError(f"spec must be a MatmulSpec, got {type(spec).__name__}")
        self.spec = spec
        delayed = spec.scaling == "delayed"
        self.history = AmaxHistory(jnp.zeros((3, spec.history), jnp.float32)) if delayed else nnx.data(None)
        self.counts = RangeCounts(jnp.zeros(len(STAT_NAMES), jnp.float32)) if spec.stats else nnx.data(None)

    def __call__(self, op: Op, x: jax.Array, w: jax.Array, b: jax.Array | None) -> jax.Array:
        """``op(x, w, b)`` with quantised inputs and output-gradient, as float32."""
        x, w = x.astype(jnp.float32), w.astype(jnp.float32)
        b = None if b is None else b.astype(jnp.float32)
        counts = self.counts[...] if self.spec.stats and self.counts is not None else None
        if self.spec.scaling == "mx":
            return _mx_matmul(self.spec, op, x, w, b, counts)
        history = None if self.history is None else self.history[...]
        return _per_tensor(self.spec, op, x, w, b, history, counts)
