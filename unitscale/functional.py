"""Unit-scaled ops with the names, arguments and scaling rules of unit-scaling 0.3.5's
``unit_scaling.functional`` (Blake, Orr, Luschi, ICML 2023; u-muP, Blake et al., 2024).

Each op multiplies its output by a static forward scale and each input gradient by its own static
backward scale (via :func:`unitscale.scale.scale`), chosen so that unit-variance inputs and
output gradients give (approximately) unit-variance outputs and input gradients. ``constraint=``
ties the scales of tensors on a non-cut path into one value (see :mod:`unitscale.constraints`).
Every docstring lists the op's forward scale and each backward scale.

The standard twin, :mod:`unitscale.standard`, has the same ops and signatures and computes them
without scales; a model picks one of the two (:attr:`unitscale.nn.Numerics.ops`). Both check their
arguments with :mod:`unitscale.op_args`.

JAX conventions where they differ from PyTorch:
  * pure functions; randomness from a keyword-only PRNG key ``rng`` on every op with dropout;
  * weights in Flax layout: ``linear`` kernels are ``(in_features, out_features)``, embedding tables
    ``(vocab, d)``;
  * attention tensors are ``(..., seq, heads, d_head)``, as in ``jax.nn.dot_product_attention``;
  * bfloat16/float16 inputs: statistics, softmax, attention logits, non-linearities and scaled
    sums run in float32 and round once to the input dtype; matmuls run in the input dtype as
    ``jnp.matmul`` does, with the forward scale applied before the product is rounded.

Scales come from the shapes an op sees. Under ``jax.vmap`` the mapped axis is invisible to the op,
so counts that run over it (the weight-gradient scales of ``linear``/``matmul``/``embedding``, the
affine-gradient scales of the norms, the ``cross_entropy`` mean) are per mapped example.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from unitscale import op_args, standard
from unitscale.constraints import ConstraintLike, apply_constraint
from unitscale.scale import scale, scale_bwd, scale_fwd
from unitscale.grouped_conv import grouped_conv1d
from unitscale.softmax_attention import softmax_attention

__all__ = [
    "matmul",
    "linear",
    "linear_readout",
    "gelu",
    "silu",
    "silu_glu",
    "softmax",
    "dropout",
    "layer_norm",
    "rms_norm",
    "add",
    "residual_split",
    "residual_add",
    "residual_apply",
    "embedding",
    "scaled_dot_product_attention",
    "cross_entropy",
    "mse_loss",
    "tanh",
    "conv1d",
    "rnn",
]


# ---------------------------------------------------------------------------------------------
# Fitted scale models


def _log_interpolate(alpha: float, lower: float, upper: float) -> float:
    """``lower^(1-alpha) * upper^alpha``: constant-ratio interpolation between two limits.

    The fitted scale models of gelu, silu, softmax and attention below interpolate this way
    between a small-``mult`` and a large-``mult`` limit (unit-scaling 0.3.5, core.functional).
    """
    return math.exp(alpha * math.log(upper) + (1.0 - alpha) * math.log(lower))


# ---------------------------------------------------------------------------------------------
# Matrix products


def _scaled_matmul(
    left: jax.Array, right: jax.Array, out_s: float, left_s: float, right_s: float
) -> jax.Array:
    """``out_s * (left @ right)``; backward ``left_s * g @ right^T`` and ``right_s * left^T @ g``.

    The forward factor rides on the smaller operand (usually the weight) and the other operand's
    backward factor is divided by it, which gives the same gradients. So no activation-sized
    tensor is multiplied in the forward pass (none in the backward either when a constraint ties
    the scales), the product is already scaled when it is rounded to a 16-bit dtype, and the
    matmuls run in the input dtype like plain ``jnp.matmul``.
    """
    if left.dtype == right.dtype == jnp.float16 and left.ndim >= 2 and right.ndim == 2:
        return _float16_matmul(left, right, out_s, left_s, right_s)
    if right.size <= left.size:
        left, right = scale_bwd(left, left_s / out_s), scale(right, out_s, right_s)
    else:
        left, right = scale(left, out_s, left_s), scale_bwd(right, right_s / out_s)
    return jnp.matmul(left, right)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _float16_matmul(left, right, out_s, left_s, right_s):
    """``_scaled_matmul`` for float16 ``left (..., k)`` and weight ``right (k, n)``. float16's range
    ends at 65504, and a weight gradient ``left^T @ g`` summed over a large batch exceeds it long
    before its backward factor ``batch^-1/2`` brings it back to unit scale; so each backward product
    takes float16 operands with a float32 result (as FP16.32 matmul units do), is scaled in float32
    and rounded to float16 once (the forward product as in ``_scaled_matmul``)."""
    if right.size <= left.size:
        return jnp.matmul(left, (right * out_s).astype(right.dtype))
    return jnp.matmul((left * out_s).astype(left.dtype), right)


def _float16_matmul_fwd(left, right, out_s, left_s, right_s):
    return _float16_matmul(left, right, out_s, left_s, right_s), (left, right)


def _float16_matmul_bwd(out_s, left_s, right_s, residuals, g):
    left, right = residuals
    rows, g_rows = left.reshape(-1, left.shape[-1]), g.reshape(-1, g.shape[-1]).astype(right.dtype)
    d_left = jax.lax.dot_general(g_rows, right, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    d_right = jax.lax.dot_general(rows, g_rows, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return ((left_s * d_left).astype(left.dtype).reshape(left.shape),
            (right_s * d_right).astype(right.dtype))


_float16_matmul.defvjp(_float16_matmul_fwd, _float16_matmul_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _float16_bias(out, bias, out_s, bias_s):
    """``out + out_s * bias`` for float16, the bias gradient (a sum of ``g`` over every row) summed
    in float32 and scaled by ``bias_s`` before rounding, for the reason of :func:`_float16_matmul`."""
    return out + (bias * out_s).astype(out.dtype)


def _float16_bias_fwd(out, bias, out_s, bias_s):
    return _float16_bias(out, bias, out_s, bias_s), bias


def _float16_bias_bwd(out_s, bias_s, bias, g):
    d_bias = bias_s * jnp.sum(g.astype(jnp.float32), axis=tuple(range(g.ndim - 1)))
    return g, d_bias.astype(bias.dtype)


_float16_bias.defvjp(_float16_bias_fwd, _float16_bias_bwd)


def matmul(
    left: ArrayLike, right: ArrayLike, constraint: ConstraintLike = "to_output_scale"
) -> jax.Array:
    """Unit-scaled matrix product ``left @ right`` with ``jnp.matmul`` broadcasting.

    Shapes: left ``(..., m, k)``, right ``(..., k, n)``; 1-D operands as in ``jnp.matmul``.

    Forward: ``k^-1/2``.
    Backward left: ``(n * b_l)^-1/2``, b_l = broadcast batch size that left is reused across.
    Backward right: ``(m * b_r)^-1/2``, b_r likewise (for a 2-D right: all rows of left).
    Constraint ties all three (default ``to_output_scale``).

    unit-scaling 0.3.5 counts only ``left.shape[-2]`` rows for the right gradient; counting every
    row that sums into it (as the paper's rule states) keeps it unit when left has batch axes.
    """
    left, right = op_args.float_array(left, "left"), op_args.float_array(right, "right")
    l_shape, r_shape, batch = op_args.matmul_shapes(left, right)
    (m, k), n = l_shape[-2:], r_shape[-1]
    out_batch = math.prod(batch)
    left_terms = n * out_batch // math.prod(l_shape[:-2])
    right_terms = m * out_batch // math.prod(r_shape[:-2])
    out_s, left_s, right_s = apply_constraint(
        constraint, k**-0.5, left_terms**-0.5, right_terms**-0.5
    )
    return _scaled_matmul(left, right, out_s, left_s, right_s)


def linear(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    constraint: ConstraintLike = "to_output_scale",
    scale_power: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> jax.Array:
    """Unit-scaled affine map ``(input @ weight + bias) * s_out``; weight is ``(fan_in, fan_out)``.

    Forward: ``fan_in^-p0`` (applied to the bias too, as in unit-scaling 0.3.5).
    Backward input: ``fan_out^-p1``.
    Backward weight, bias: ``batch^-p2``, batch = ``input.size / fan_in``.
    Constraint ties forward and input-gradient scales (default ``to_output_scale``);
    ``scale_power = (p0, p1, p2)``. ``fan_in`` and ``fan_out`` must be >= 1 (a scale ``0^-p``
    does not exist).
    """
    input, weight, bias, (p_out, p_in, p_w) = op_args.linear_args(input, weight, bias, scale_power)
    fan_in, fan_out = weight.shape
    batch = max(input.size // fan_in, 1)
    out_s, in_s = apply_constraint(constraint, fan_in**-p_out, fan_out**-p_in)
    w_s = batch**-p_w
    out = _scaled_matmul(input, weight, out_s, in_s, w_s)
    if bias is not None:
        out = _float16_bias(out, bias, out_s, w_s) if out.dtype == jnp.float16 else out + scale(bias, out_s, w_s)
    return out.astype(jnp.result_type(input, weight))


def linear_readout(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    constraint: ConstraintLike = None,
) -> jax.Array:
    """Unit-scaled output layer with the muP readout scale; weight is ``(fan_in, fan_out)``.

    Forward: ``1/fan_in`` (so outputs shrink as width grows, as muP needs at the readout).
    Backward input: ``fan_out^-1/2``.
    Backward weight, bias: ``batch^-1/2``.
    Default ``constraint=None``: the scales stay independent.
    """
    return linear(input, weight, bias, constraint=constraint, scale_power=(1.0, 0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# Element-wise non-linearities


def _scaled_elementwise(
    fn: Callable[[jax.Array], jax.Array],
    input: jax.Array,
    out_scale: float,
    grad_scale: float,
    constraint: ConstraintLike,
    out_dtype: jnp.dtype | None = None,
) -> jax.Array:
    out_scale, grad_scale = apply_constraint(constraint, out_scale, grad_scale)
    # For a one-input op, scaling the incoming gradient equals scaling the input gradient (the
    # vector-Jacobian product is linear). Doing it at the output keeps the backward chain of `fn`
    # ending in its own ops, which XLA then computes once instead of fusing (and recomputing) an
    # expensive chain such as erf's polynomial into each consumer of the scaled gradient.
    return scale(fn(op_args.upcast(input)), out_scale, grad_scale).astype(out_dtype or input.dtype)


def gelu(
    input: ArrayLike,
    mult: float = 1.0,
    constraint: ConstraintLike = "to_output_scale",
    approximate: str = "none",
) -> jax.Array:
    """Unit-scaled GELU, ``gelu(mult * x) / mult``; ``approximate`` is ``"none"`` or ``"tanh"``.

    With ``a = sigmoid(log(4 mult^2))`` (fitted model, unit-scaling 0.3.5):
    Forward: ``2^(1-a) * (2 / (1 - 1/pi))^(a/2)``.
    Backward input: ``2^(1-a) * 2^(a/2)``.
    Constraint ties both (default ``to_output_scale``).
    """
    input = op_args.float_array(input, "input")
    mult = op_args.positive(mult, "mult")
    op_args.check_approximate(approximate)
    alpha = 1.0 / (1.0 + 0.25 / mult**2)
    out_s = _log_interpolate(alpha, 2.0, (2.0 / (1.0 - 1.0 / math.pi)) ** 0.5)
    grad_s = _log_interpolate(alpha, 2.0, 2.0**0.5)
    tanh = approximate == "tanh"
    return _scaled_elementwise(
        lambda x: jax.nn.gelu(x * mult, approximate=tanh) / mult, input, out_s, grad_s, constraint
    )


def _silu(x: jax.Array, mult: float) -> jax.Array:
    return x * jax.nn.sigmoid(x * mult)


def silu(
    input: ArrayLike, mult: float = 1.0, constraint: ConstraintLike = "to_output_scale"
) -> jax.Array:
    """Unit-scaled SiLU (swish), ``x * sigmoid(mult * x)``.

    Fitted model (unit-scaling 0.3.5), ``a = sigmoid(log(4 mult^2))``, ``b = sigmoid(log(mult^2))``:
    Forward: ``2^(1-a) * (2 / (1 - 1/pi))^(a/2)``.
    Backward input: ``2^(1-b) * 2^(b/2)``.
    Constraint ties both (default ``to_output_scale``).
    """
    input = op_args.float_array(input, "input")
    mult = op_args.positive(mult, "mult")
    out_s = _log_interpolate(
        1.0 / (1.0 + 0.25 / mult**2), 2.0, (2.0 / (1.0 - 1.0 / math.pi)) ** 0.5
    )
    grad_s = _log_interpolate(1.0 / (1.0 + 1.0 / mult**2), 2.0, 2.0**0.5)
    return _scaled_elementwise(lambda x: _silu(x, mult), input, out_s, grad_s, constraint)


def silu_glu(input: ArrayLike, gate: ArrayLike, mult: float = 1.0) -> jax.Array:
    """Unit-scaled SiLU-gated linear unit ``input * gate * sigmoid(mult * gate)``.

    One scale ``s = 2^(1-b) * 2^(b/2)``, ``b = sigmoid(log(mult^2))`` (unit-scaling 0.3.5):
    Forward: ``s``.
    Backward input: ``s``.
    Backward gate: ``s``.
    """
    input, gate = op_args.float_array(input, "input"), op_args.float_array(gate, "gate")
    op_args.equal_shapes(input, gate, "input", "gate")
    mult = op_args.positive(mult, "mult")
    s = _log_interpolate(1.0 / (1.0 + 1.0 / mult**2), 2.0, 2.0**0.5)
    # Both inputs share the backward scale, so it can act on the incoming gradient.
    out = scale(op_args.upcast(input) * _silu(op_args.upcast(gate), mult), s, s)
    return out.astype(jnp.result_type(input, gate))


def softmax(
    input: ArrayLike,
    dim: int = -1,
    dtype: jnp.dtype | None = None,
    constraint: ConstraintLike = "to_output_scale",
    mult: float = 1.0,
) -> jax.Array:
    """Unit-scaled softmax of ``mult * x`` along ``dim``, computed in float32.

    Fitted model (unit-scaling 0.3.5), n = ``input.shape[dim]``, ``a = sigmoid(log(mult^2 / 4))``,
    interpolating between the flat (a=0) and one-hot (a=1) limits:
    Forward: ``n^(1 - a/2)``.
    Backward input: ``(n/mult)^(1 - a/2)``.
    Constraint ties both (default ``to_output_scale``). Returns ``dtype`` or the input dtype.
    """
    input = op_args.float_array(input, "input")
    dim = op_args.axis(dim, input.ndim, "dim")
    mult = op_args.positive(mult, "mult")
    n = input.shape[dim]
    alpha = 1.0 / (1.0 + 4.0 / mult**2)
    out_s = _log_interpolate(alpha, n, n**0.5)
    grad_s = _log_interpolate(alpha, n / mult, (n / mult) ** 0.5)
    out_dtype = jnp.dtype(dtype) if dtype is not None else None
    return _scaled_elementwise(
        lambda x: jax.nn.softmax(x * mult, axis=dim), input, out_s, grad_s, constraint, out_dtype
    )


def dropout(
    input: ArrayLike, p: float = 0.5, training: bool = True, *, rng: jax.Array | None = None
) -> jax.Array:
    """Unit-scaled dropout: zero each element with probability ``p``, keep the rest times
    ``(1-p)^-1/2``.

    Equivalent to PyTorch's inverted dropout followed by a ``(1-p)^1/2`` scale, so eval mode
    (``training=False``, no key needed) returns ``(1-p)^1/2 * x``, the training-mode expectation.
    Forward: ``(1-p)^1/2`` (on top of inverted dropout's ``1/(1-p)``).
    Backward input: ``(1-p)^1/2``, the same (no constraint needed).
    """
    input = op_args.float_array(input, "input")
    p = op_args.rate(p, "p")
    s = (1.0 - p) ** 0.5
    if not training or p == 0.0:
        return scale(input, s, s)
    op_args.require_rng(rng, f"dropout with p={p} in training mode")
    keep = jax.random.bernoulli(rng, 1.0 - p, input.shape)
    kept = jnp.where(keep, input, jnp.zeros((), input.dtype))
    # Forward and backward factors coincide, so this is the plain function with its true gradient.
    return scale(kept, 1.0 / s, 1.0 / s)


# ---------------------------------------------------------------------------------------------
# Normalisation


def _affine_grad_scale(input: jax.Array, shape: tuple[int, ...]) -> float:
    """``(prod(shape) / input.size)^1/2``: each element of a norm's gain or offset sums the gradient
    over ``input.size / prod(shape)`` normalised vectors."""
    return (math.prod(shape) / max(input.size, 1)) ** 0.5


def layer_norm(
    input: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """Layer norm over the trailing ``normalized_shape`` axes (statistics in float32).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, var biased, as ``torch.nn.functional``.
    Forward: 1 (the normalisation already gives unit scale).
    Backward input: 1.
    Backward weight, bias: ``(prod(normalized_shape) / input.size)^1/2``.
    """
    input, shape, params = op_args.norm_args(input, normalized_shape, {"weight": weight, "bias": bias})
    s = _affine_grad_scale(input, shape)
    axes = tuple(range(-len(shape), 0))
    x = op_args.upcast(input)
    centred = x - x.mean(axes, keepdims=True)
    y = centred * jax.lax.rsqrt((centred**2).mean(axes, keepdims=True) + eps)
    if params["weight"] is not None:
        y = y * scale_bwd(op_args.upcast(params["weight"]), s)
    if params["bias"] is not None:
        y = y + scale_bwd(op_args.upcast(params["bias"]), s)
    return y.astype(input.dtype)


def rms_norm(
    input: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """RMS norm over the trailing ``normalized_shape`` axes: ``x / sqrt(mean(x^2) + eps) * weight``.

    Forward: 1.
    Backward input: 1.
    Backward weight: ``(prod(normalized_shape) / input.size)^1/2``.
    """
    input, shape, params = op_args.norm_args(input, normalized_shape, {"weight": weight})
    axes = tuple(range(-len(shape), 0))
    x = op_args.upcast(input)
    y = x * jax.lax.rsqrt((x**2).mean(axes, keepdims=True) + eps)
    if params["weight"] is not None:
        y = y * scale_bwd(op_args.upcast(params["weight"]), _affine_grad_scale(input, shape))
    return y.astype(input.dtype)


# ---------------------------------------------------------------------------------------------
# Addition and residual branches


def add(
    input: ArrayLike | float,
    other: ArrayLike | float,
    constraint: ConstraintLike = "to_output_scale",
) -> jax.Array:
    """Unit-scaled ``input + other`` with broadcasting.

    Forward: ``2^-1/2``; 1 if either operand has a single element (a constant shifts, not widens).
    Backward input: ``r_input^-1/2``, r = how many times broadcasting reuses each element.
    Backward other: ``r_other^-1/2``.
    Constraint ties all three (default ``to_output_scale``).
    A Python scalar operand gives a plain add.
    """
    if isinstance(input, numbers.Number) or isinstance(other, numbers.Number):
        return jnp.add(input, other)
    a, b, out_size = op_args.add_operands(input, other)
    dtype = jnp.result_type(a, b)
    if out_size == 0:
        return jnp.add(a, b)
    out_s = 1.0 if min(a.size, b.size) == 1 else 2**-0.5
    out_s, a_s, b_s = apply_constraint(
        constraint, out_s, (a.size / out_size) ** 0.5, (b.size / out_size) ** 0.5
    )
    a = scale_bwd(op_args.upcast(a.astype(dtype)), a_s)
    b = scale_bwd(op_args.upcast(b.astype(dtype)), b_s)
    return scale_fwd(a + b, out_s).astype(dtype)


def _tau_weights(tau: object) -> tuple[float, float]:
    tau = op_args.tau(tau)
    denom = (1.0 + tau**2) ** 0.5
    return tau / denom, 1.0 / denom


def residual_split(input: ArrayLike, tau: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Fork ``input`` into ``(residual, skip)`` for a branch weighted ``tau`` against the skip.

    Forward: 1 on both (the weighting happens in :func:`residual_add`).
    Backward residual: ``tau / (1+tau^2)^1/2``.
    Backward skip: ``1 / (1+tau^2)^1/2``.
    Together the two gradients sum to unit scale at ``input``.
    """
    input = op_args.float_array(input, "input")
    w_res, w_skip = _tau_weights(tau)
    return scale_bwd(input, w_res), scale_bwd(input, w_skip)


def residual_add(residual: ArrayLike, skip: ArrayLike, tau: float = 1.0) -> jax.Array:
    """Join a residual branch and its skip: ``(tau * residual + skip) / (1+tau^2)^1/2``.

    Forward residual: ``tau / (1+tau^2)^1/2``; forward skip: ``1 / (1+tau^2)^1/2``.
    Backward residual, skip: 1 (:func:`residual_split` applies the weights on the way back).
    """
    residual, skip = op_args.float_array(residual, "residual"), op_args.float_array(skip, "skip")
    op_args.equal_shapes(residual, skip, "residual", "skip")
    w_res, w_skip = _tau_weights(tau)
    out = scale_fwd(op_args.upcast(residual), w_res) + scale_fwd(op_args.upcast(skip), w_skip)
    return out.astype(jnp.result_type(residual, skip))


def residual_apply(
    fn: Callable[[jax.Array], jax.Array], input: ArrayLike, tau: float = 1.0
) -> jax.Array:
    """``residual_add(fn(residual), skip, tau)``, ``residual, skip = residual_split(input, tau)``.

    Forward: ``fn``'s branch weighted ``tau / (1+tau^2)^1/2``, the skip ``1 / (1+tau^2)^1/2``.
    Backward input: branch gradient times ``tau / (1+tau^2)^1/2`` plus skip's ``1 / (1+tau^2)^1/2``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    residual, skip = residual_split(input, tau)
    return residual_add(fn(residual), skip, tau)


# ---------------------------------------------------------------------------------------------
# Embedding and attention


def embedding(input: ArrayLike, weight: ArrayLike, padding_idx: int | None = None) -> jax.Array:
    """Look up rows of the table ``weight`` (vocab, d) at integer ids ``input``.

    Forward: 1 (a row of a unit-variance table is unit-variance).
    Backward weight: ``(vocab / input.size)^1/2``.
    Rows at ``padding_idx`` receive no gradient. Ids outside ``[-vocab, vocab)`` give NaN rows
    (``jnp.take`` fill mode; negative ids count from the end, as in NumPy).
    """
    ids, weight = op_args.embedding_args(input, weight, padding_idx)
    # The lookup itself is the standard one; only the table's gradient is scaled.
    table = scale_bwd(weight, (weight.shape[0] / max(ids.size, 1)) ** 0.5)
    return standard.embedding(ids, table, padding_idx)


def _attention_scale(seq: int, d_head: int, mult: float, dropout_p: float, causal: bool) -> float:
    # Fitted model of the attention output std (unit-scaling 0.3.5, functional): near-uniform
    # attention (small mult/d_head) averages seq values (causal: ~log(seq) of them on average),
    # near-one-hot attention copies one value.
    flat = (math.log(seq) if causal and seq > 1 else 1.0) / seq
    alpha = 1.0 / (1.0 + 4.0 * d_head / mult**2)
    return (1.0 - dropout_p) ** 0.5 / _log_interpolate(alpha, flat**0.5, 1.0)


def scaled_dot_product_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    attn_mask: ArrayLike | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    mult: float = 1.0,
    *,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Unit-scaled attention ``softmax(mult/d_head * q k^T + mask) v``, muP-style logits.

    Layout: query ``(..., q_seq, heads, d_head)``, key/value ``(..., kv_seq, heads, d_head)``;
    returns ``(..., q_seq, heads, d_head)``. ``attn_mask`` broadcasts to ``(..., heads, q_seq,
    kv_seq)``: boolean (True = attend) or an additive float bias. ``is_causal`` masks key
    positions after the query position (top-left aligned, as PyTorch). Dropout on the attention
    probabilities follows PyTorch (kept entries / (1 - dropout_p)). Softmax runs in float32.

    One scale s, with S = kv_seq, ``a = sigmoid(log(mult^2 / (4 d_head)))`` (unit-scaling 0.3.5):
    ``s = (1-dropout_p)^1/2 / (f^(1-a))``, ``f = (1/S)^1/2`` or, causal, ``(log(S)/S)^1/2``.
    Forward: ``s``.
    Backward query, key, value: ``s`` each.
    The muP logit scale makes query/key gradients small by design: for near-uniform attention
    their std is about ``mult * d_head^-1/2``; output and value gradient are about unit.
    The scale assumes values independent across key positions: a component shared by all positions
    passes the average unchanged and leaves multiplied by ``s`` (about 5 for causal S = 128 and
    ``mult`` 1). In post-norm stacks this compounds until training collapses; a larger ``mult``
    (sharper softmax, ``s`` near 1) avoids it (see :class:`unitscale.models.config.TransformerConfig`).
    """
    q, k, v, keep, bias, dropout_p = op_args.attention_args(query, key, value, attn_mask, dropout_p, rng)
    mult = op_args.positive(mult, "mult")
    d_head = q.shape[-1]
    s = _attention_scale(k.shape[-3], d_head, mult, dropout_p, bool(is_causal))
    # q, k and v share one backward scale, and the output is linear in the probabilities, so a
    # single scale on them (float32, fused into the softmax and its gradient) scales all of it.
    out = softmax_attention(q, k, v, logit_scale=mult / d_head, is_causal=bool(is_causal), keep=keep,
                            bias=bias, prob_scale=(s, s), dropout_p=dropout_p, rng=rng)
    return out.astype(jnp.result_type(q, k, v))


# ---------------------------------------------------------------------------------------------
# Losses


@jax.custom_jvp
def _mean_forward_only(total: jax.Array, count: jax.Array) -> jax.Array:
    """``total / count`` in the forward pass; the gradient to ``total`` passes through undivided."""
    return total / count


@_mean_forward_only.defjvp
def _mean_forward_only_jvp(primals, tangents):
    (total, count), (d_total, _) = primals, tangents
    return total / count, d_total


def cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    mult: float = 1.0,
) -> jax.Array:
    """Unit-scaled softmax cross-entropy of logits ``input`` (..., V) against int ``target`` (...).

    The loss value equals the standard one (``reduction="mean"`` averages over targets that are not
    ``ignore_index``, as PyTorch and optax do); only the gradient is rescaled:
    Forward logits: ``mult`` (applied before the softmax; forward only).
    Forward loss: ``1/count`` for the mean (forward only), 1 for the sum.
    Backward logits: ``V / (V-1)^1/2`` (the std of ``softmax - onehot`` is about ``(V-1)^1/2 / V``).
    Targets equal to ``ignore_index`` get zero gradient; a mean over no valid target is NaN (as in
    PyTorch). unit-scaling 0.3.5 divides the mean by all targets, ignored ones included; dividing
    by the valid count keeps the value equal to the standard loss.

    Labels must be classes in ``[0, V)`` or ``ignore_index``: concrete labels are checked
    (ValueError naming ``target``); traced ones (under ``jit``) cannot be, and there a label >= V
    gives a NaN loss and a negative one counts from the end, as NumPy indexing does.
    """
    logits, target = op_args.cross_entropy_args(input, target, ignore_index, reduction)
    mult = op_args.positive(mult, "mult")
    vocab = logits.shape[-1]
    x = scale_fwd(op_args.upcast(logits), mult)
    log_probs = jax.nn.log_softmax(x, axis=-1)
    valid = target != ignore_index
    safe_target = jnp.where(valid, target, 0)[..., None]
    nll = -jnp.take_along_axis(log_probs, safe_target, axis=-1)[..., 0]
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    if reduction == "mean":
        total = _mean_forward_only(total, jnp.sum(valid).astype(total.dtype))
    # Scaling the scalar loss's gradient scales the logit gradient, at the cost of one multiply.
    return scale_bwd(total, vocab / (vocab - 1) ** 0.5).astype(logits.dtype)


def mse_loss(input: ArrayLike, target: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    """Unit-scaled squared error ``sum((input - target)^2)``, over ``input.size`` for the mean.

    Forward: ``1/input.size`` for the mean (forward only), 1 for the sum: the standard loss value.
    Backward input: ``8^-1/2`` (``2 (input - target)`` has std ``8^1/2`` for unit inputs).
    Backward target: ``8^-1/2``.
    """
    input, target = op_args.float_array(input, "input"), op_args.float_array(target, "target")
    op_args.equal_shapes(input, target, "input", "target")
    op_args.check_reduction(reduction)
    total = jnp.sum((op_args.upcast(input) - op_args.upcast(target)) ** 2)
    fwd = 1.0 / max(input.size, 1) if reduction == "mean" else 1.0
    # Both inputs share the backward scale, so it acts on the scalar loss's gradient.
    return scale(total, fwd, 8**-0.5).astype(jnp.result_type(input, target))


# ---------------------------------------------------------------------------------------------
# Sequence mixers: tanh, grouped 1-D convolution, Elman recurrence


def _gaussian_mean(fn: Callable[[float], float]) -> float:
    """``E[fn(Z)]`` for ``Z ~ N(0, 1)``; the trapezoid rule is spectrally accurate for such integrands."""
    step = 1e-3
    points = (i * step for i in range(-12_000, 12_001))
    return step * sum(fn(z) * math.exp(-0.5 * z * z) for z in points) / math.sqrt(2.0 * math.pi)


# Moments of tanh at a unit-normal pre-activation, derived once at import (no fitted numbers):
# E[tanh(Z)^2] ~ 0.3943 (forward variance), E[tanh'(Z)^2] = E[(1 - tanh(Z)^2)^2] ~ 0.4644 (backward).
_TANH_FWD_VAR = _gaussian_mean(lambda z: math.tanh(z) ** 2)
_TANH_BWD_VAR = _gaussian_mean(lambda z: (1.0 - math.tanh(z) ** 2) ** 2)


def tanh(input: ArrayLike, constraint: ConstraintLike = "to_output_scale") -> jax.Array:
    """Unit-scaled ``tanh`` (computed in float32).

    For ``x ~ N(0, 1)``, ``tanh(x)`` has variance ``v = E[tanh(Z)^2] ~ 0.394`` and the derivative
    ``u = E[tanh'(Z)^2] ~ 0.464`` (Gaussian expectations evaluated numerically at import).
    Forward: ``v^-1/2`` (~1.593).
    Backward input: ``u^-1/2`` (~1.467).
    Constraint ties both (default ``to_output_scale``).
    """
    input = op_args.float_array(input, "input")
    return _scaled_elementwise(
        jnp.tanh, input, _TANH_FWD_VAR**-0.5, _TANH_BWD_VAR**-0.5, constraint
    )


def conv1d(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    stride: int = 1,
    padding: int | str = "causal",
    dilation: int = 1,
    groups: int = 1,
    constraint: ConstraintLike = "to_output_scale",
) -> jax.Array:
    """Unit-scaled grouped 1-D convolution (cross-correlation) along the sequence axis.

    Layout (Flax): input ``(..., seq, in_channels)``, weight ``(kernel, in_channels/groups,
    out_channels)``, bias ``(out_channels,)``; returns ``(..., out_seq, out_channels)``.
    ``padding="causal"`` pads ``dilation*(kernel-1)`` zeros on the left, so output t sees inputs
    ``<= t``; ``"same"``, ``"valid"`` or an int (both sides) as usual. ``groups=in_channels`` with
    ``out_channels=in_channels`` is a depthwise convolution.

    Each output sums ``fan_in = kernel * in_channels/groups`` products; each input element feeds
    ``fan_out = kernel * out_channels/(groups * stride)`` outputs; each weight element sums over
    ``batch = input.size/(seq * in_channels) * out_seq`` positions.
    Forward: ``fan_in^-1/2`` (applied to the bias too, as in :func:`linear`).
    Backward input: ``fan_out^-1/2``.
    Backward weight, bias: ``batch^-1/2``.
    Constraint ties forward and input-gradient scales (default ``to_output_scale``). The counts
    ignore zero padding: with causal padding the first ``kernel-1`` outputs see fewer inputs, so
    their variance is lower (for seq 256 and kernel 7 the mean variance is 1.2% below 1).
    """
    input, weight, bias, shape = op_args.conv1d_args(input, weight, bias, stride, padding, dilation, groups)
    lead, seq, in_channels, kernel, in_per_group, out_channels, (lo, hi), out_seq = shape
    n = math.prod(lead)
    fan_in = kernel * in_per_group
    fan_out = kernel * out_channels / (groups * stride)
    out_s, in_s = apply_constraint(constraint, fan_in**-0.5, fan_out**-0.5)
    w_s = max(n * out_seq, 1) ** -0.5
    x = scale_bwd(input, in_s).reshape(n, seq, in_channels)
    out = grouped_conv1d(
        x, scale_bwd(weight, w_s), stride=stride, padding=(lo, hi), dilation=dilation, groups=groups,
        accumulate=op_args.compute_dtype(jnp.result_type(input, weight)),
    )
    if bias is not None:
        out = out + scale_bwd(op_args.upcast(bias), w_s)
    out = scale_fwd(out, out_s).reshape(*lead, out_seq, out_channels)
    return out.astype(jnp.result_type(input, weight))


def _rnn_gains(hidden: int) -> tuple[float, float]:
    """Fixed input and recurrent multipliers of :func:`rnn`: ``(2^-1/2, (2 hidden v)^-1/2)``."""
    return 0.5**0.5, (2.0 * hidden * _TANH_FWD_VAR) ** -0.5


def rnn(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    initial_state: ArrayLike | None = None,
    constraint: ConstraintLike = "to_output_scale",
) -> jax.Array:
    """Unit-scaled Elman recurrence over an already projected input sequence (``jax.lax.scan``).

    Shapes: input ``(..., seq, hidden)`` (e.g. ``linear(x, W_in)``), weight ``(hidden, hidden)``,
    bias ``(hidden,)``, initial_state ``(..., hidden)`` (zeros by default); returns the hidden states
    ``(..., seq, hidden)`` times the output scale. The recurrence, in float32:

        a_t = 2^-1/2 x_t + (2 hidden v)^-1/2 h_{t-1} W + b,   h_t = tanh(a_t),

    with ``v = E[tanh(Z)^2] ~ 0.394``, ``u = E[tanh'(Z)^2] ~ 0.464``. Derivation (mean field, long
    sequences, N(0, 1) weights, zero bias): if ``Var(a) = 1`` then ``Var(h) = v`` and
    ``Var(a) = 1/2 + 1/2 = 1`` again, a stable fixed point. Backward, for a unit gradient g_t on the
    hidden states: ``dh_t = g_t + (2 hidden v)^-1/2 W da_{t+1}``, ``da_t = tanh'(a_t) dh_t``, so
    ``Var(dh) = 1 / (1 - u/(2v)) ~ 2.43`` (the gain ``u/(2v) ~ 0.59 < 1`` keeps it finite) and
    ``Var(da) = u Var(dh) ~ 1.13``. These in-recurrence multipliers are part of the function (the same
    in both passes); the op's own scales are:
    Forward: ``v^-1/2`` (~1.593).
    Backward input: ``(Var(da)/2)^-1/2`` (~1.33).
    Backward weight: ``(batch (seq-1) Var(da) / (2 hidden))^-1/2``, batch = ``input.size/(seq hidden)``.
    Backward bias: ``(batch seq Var(da))^-1/2``.
    Constraint ties forward and input-gradient scales (default ``to_output_scale``). The first few
    steps are below unit scale (``Var(a_0) = 1/2`` from a zero state) and so are the last few
    gradients (no future steps feed them), each decaying geometrically at rate ~0.6 per step.
    """
    input, weight, bias, initial_state = op_args.rnn_args(input, weight, bias, initial_state)
    *lead, seq, hidden = input.shape
    batch = math.prod(lead)
    grad_var = _TANH_BWD_VAR / (1.0 - _TANH_BWD_VAR / (2.0 * _TANH_FWD_VAR))
    out_s, in_s = apply_constraint(constraint, _TANH_FWD_VAR**-0.5, (grad_var / 2.0) ** -0.5)
    w_s = (max(batch * (seq - 1), 1) * grad_var / (2.0 * hidden)) ** -0.5
    b_s = (max(batch * seq, 1) * grad_var) ** -0.5
    in_gain, rec_gain = _rnn_gains(hidden)

    drive = op_args.upcast(scale_bwd(input, in_s)) * in_gain
    if bias is not None:
        drive = drive + scale_bwd(op_args.upcast(bias), b_s)
    recurrent = scale_bwd(op_args.upcast(weight), w_s) * rec_gain
    # The recurrence itself is the standard one, run in float32 on the scaled drive and weight.
    states = standard.rnn(drive, recurrent, None, initial_state)
    return scale_fwd(states, out_s).astype(jnp.result_type(input, weight))
