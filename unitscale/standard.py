"""The standard twin of :mod:`unitscale.functional`: the same ops, names and signatures, computing
the plain (unscaled) function with its true gradient.

A model picks one twin for all its ops (:attr:`unitscale.nn.Numerics.ops`), so the unit-scaled and
the standard parametrisation run the same layer code. Arguments are checked as in
:mod:`unitscale.functional` (:mod:`unitscale.op_args`), so bad input fails the same way in both.
Arguments that only steer unit scaling are accepted, so that a call works with either twin, and
have no effect here:

  * ``constraint`` (which scales to tie) and ``scale_power``: there are no scales to tie;
  * ``mult``: u-muP's multipliers (alpha) belong to the unit-scaled parametrisation; the standard
    one has none, so ``gelu``, ``silu``, ``silu_glu``, ``softmax``, attention and the cross-entropy
    compute as if it were 1 (``mult`` must still be a positive static number);
  * ``tau``: the residual ops add branch and skip unweighted.

Dtypes: the matrix products (``matmul``, ``linear``, ``linear_readout``) accumulate in float32 and
return that accumulator unrounded (float32 for 16-bit inputs), as
``jnp.matmul(..., preferred_element_type=jnp.float32)`` does; the caller rounds it once to its
activation dtype (:func:`unitscale.nn.dense` does). The unit-scaled products round themselves,
because their forward scale has to be applied before rounding. Element-wise ops compute in the
input dtype as ``jax.nn`` does; norms, softmax, the convolution's sums, the recurrence and the
losses compute in float32 and round once to the input dtype.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from unitscale import op_args
from unitscale.constraints import ConstraintLike
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
# Matrix products


def _accumulate(left: jax.Array, right: jax.Array) -> jax.Array:
    """``left @ right`` summed in the compute dtype of the operands (float32 for 16-bit floats)."""
    dtype = op_args.compute_dtype(jnp.result_type(left, right))
    return jnp.matmul(left, right, preferred_element_type=dtype)


def matmul(
    left: ArrayLike, right: ArrayLike, constraint: ConstraintLike = "to_output_scale"
) -> jax.Array:
    """Matrix product ``left @ right`` with ``jnp.matmul`` broadcasting, accumulated (and
    returned) in float32 for 16-bit operands. Gradients: the plain ``g @ right^T``, ``left^T @ g``."""
    left, right = op_args.float_array(left, "left"), op_args.float_array(right, "right")
    op_args.matmul_shapes(left, right)
    op_args.check_constraint(constraint)
    return _accumulate(left, right)


def linear(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    constraint: ConstraintLike = "to_output_scale",
    scale_power: tuple[float, float, float] = (0.5, 0.5, 0.5),
) -> jax.Array:
    """Affine map ``input @ weight + bias``; weight is ``(fan_in, fan_out)``.

    Accumulated in float32 for 16-bit inputs, the bias added to the float32 sum, returned
    unrounded. Gradients: the plain ones. ``constraint`` and ``scale_power`` have no effect.
    """
    input, weight, bias, _ = op_args.linear_args(input, weight, bias, scale_power)
    op_args.check_constraint(constraint)
    out = _accumulate(input, weight)
    return out if bias is None else out + bias.astype(out.dtype)


def linear_readout(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    constraint: ConstraintLike = None,
) -> jax.Array:
    """The output layer: the same affine map as :func:`linear` (the standard parametrisation has
    no readout scale)."""
    return linear(input, weight, bias, constraint=constraint)


# ---------------------------------------------------------------------------------------------
# Element-wise non-linearities


def _activation_args(input: ArrayLike, constraint: ConstraintLike, mult: float = 1.0) -> jax.Array:
    input = op_args.float_array(input, "input")
    op_args.positive(mult, "mult")
    op_args.check_constraint(constraint)
    return input


def gelu(
    input: ArrayLike,
    mult: float = 1.0,
    constraint: ConstraintLike = "to_output_scale",
    approximate: str = "none",
) -> jax.Array:
    """GELU ``x * Phi(x)`` (``approximate="tanh"``: the tanh form), as ``jax.nn.gelu``, in the input
    dtype. ``mult`` and ``constraint`` have no effect."""
    input = _activation_args(input, constraint, mult)
    op_args.check_approximate(approximate)
    return jax.nn.gelu(input, approximate=approximate == "tanh")


def silu(
    input: ArrayLike, mult: float = 1.0, constraint: ConstraintLike = "to_output_scale"
) -> jax.Array:
    """SiLU (swish) ``x * sigmoid(x)``, as ``jax.nn.silu``. ``mult`` and ``constraint`` have no effect."""
    return jax.nn.silu(_activation_args(input, constraint, mult))


def silu_glu(input: ArrayLike, gate: ArrayLike, mult: float = 1.0) -> jax.Array:
    """SiLU-gated linear unit ``input * gate * sigmoid(gate)``. ``mult`` has no effect."""
    input, gate = op_args.float_array(input, "input"), op_args.float_array(gate, "gate")
    op_args.equal_shapes(input, gate, "input", "gate")
    op_args.positive(mult, "mult")
    return input * jax.nn.silu(gate)


def softmax(
    input: ArrayLike,
    dim: int = -1,
    dtype: jnp.dtype | None = None,
    constraint: ConstraintLike = "to_output_scale",
    mult: float = 1.0,
) -> jax.Array:
    """Softmax along ``dim``, computed in float32; returns ``dtype`` or the input dtype.
    ``mult`` and ``constraint`` have no effect."""
    input = _activation_args(input, constraint, mult)
    dim = op_args.axis(dim, input.ndim, "dim")
    out = jax.nn.softmax(op_args.upcast(input), axis=dim)
    return out.astype(jnp.dtype(dtype) if dtype is not None else input.dtype)


def tanh(input: ArrayLike, constraint: ConstraintLike = "to_output_scale") -> jax.Array:
    """``tanh``, as ``jnp.tanh``, in the input dtype. ``constraint`` has no effect."""
    return jnp.tanh(_activation_args(input, constraint))


def dropout(
    input: ArrayLike, p: float = 0.5, training: bool = True, *, rng: jax.Array | None = None
) -> jax.Array:
    """Inverted dropout: zero each element with probability ``p``, keep the rest times
    ``1/(1-p)``; evaluation mode (``training=False``, no key needed) returns ``input``."""
    input = op_args.float_array(input, "input")
    p = op_args.rate(p, "p")
    if not training or p == 0.0:
        return input
    op_args.require_rng(rng, f"dropout with p={p} in training mode")
    keep = jax.random.bernoulli(rng, 1.0 - p, input.shape)
    return jnp.where(keep, input / (1.0 - p), jnp.zeros((), input.dtype)).astype(input.dtype)


# ---------------------------------------------------------------------------------------------
# Normalisation


def layer_norm(
    input: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """Layer norm over the trailing ``normalized_shape`` axes, in float32, rounded once:
    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, var biased, as ``torch.nn.functional``."""
    input, shape, params = op_args.norm_args(input, normalized_shape, {"weight": weight, "bias": bias})
    axes = tuple(range(-len(shape), 0))
    x = op_args.upcast(input)
    centred = x - x.mean(axes, keepdims=True)
    y = centred * jax.lax.rsqrt((centred**2).mean(axes, keepdims=True) + eps)
    if params["weight"] is not None:
        y = y * op_args.upcast(params["weight"])
    if params["bias"] is not None:
        y = y + op_args.upcast(params["bias"])
    return y.astype(input.dtype)


def rms_norm(
    input: ArrayLike,
    normalized_shape: int | Sequence[int],
    weight: ArrayLike | None = None,
    eps: float = 1e-5,
) -> jax.Array:
    """RMS norm over the trailing ``normalized_shape`` axes, in float32, rounded once:
    ``x / sqrt(mean(x^2) + eps) * weight``."""
    input, shape, params = op_args.norm_args(input, normalized_shape, {"weight": weight})
    axes = tuple(range(-len(shape), 0))
    x = op_args.upcast(input)
    y = x * jax.lax.rsqrt((x**2).mean(axes, keepdims=True) + eps)
    if params["weight"] is not None:
        y = y * op_args.upcast(params["weight"])
    return y.astype(input.dtype)


# ---------------------------------------------------------------------------------------------
# Addition and residual branches


def add(
    input: ArrayLike | float,
    other: ArrayLike | float,
    constraint: ConstraintLike = "to_output_scale",
) -> jax.Array:
    """``input + other`` with broadcasting. ``constraint`` has no effect."""
    op_args.check_constraint(constraint)
    if isinstance(input, numbers.Number) or isinstance(other, numbers.Number):
        return jnp.add(input, other)
    a, b, _ = op_args.add_operands(input, other)
    return a + b


def residual_split(input: ArrayLike, tau: float = 1.0) -> tuple[jax.Array, jax.Array]:
    """Fork ``input`` into ``(residual, skip)``: two references to it. ``tau`` has no effect."""
    input = op_args.float_array(input, "input")
    op_args.tau(tau)
    return input, input


def residual_add(residual: ArrayLike, skip: ArrayLike, tau: float = 1.0) -> jax.Array:
    """Join a residual branch and its skip: ``residual + skip``. ``tau`` has no effect."""
    residual, skip = op_args.float_array(residual, "residual"), op_args.float_array(skip, "skip")
    op_args.equal_shapes(residual, skip, "residual", "skip")
    op_args.tau(tau)
    return residual + skip


def residual_apply(
    fn: Callable[[jax.Array], jax.Array], input: ArrayLike, tau: float = 1.0
) -> jax.Array:
    """``fn(input) + input``: :func:`residual_add` of ``fn`` on :func:`residual_split`'s fork."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    residual, skip = residual_split(input, tau)
    return residual_add(fn(residual), skip, tau)


# ---------------------------------------------------------------------------------------------
# Embedding and attention


def embedding(input: ArrayLike, weight: ArrayLike, padding_idx: int | None = None) -> jax.Array:
    """Rows of the table ``weight`` (vocab, d) at integer ids ``input``.

    Rows at ``padding_idx`` receive no gradient. Ids outside ``[-vocab, vocab)`` give NaN rows
    (``jnp.take`` fill mode; negative ids count from the end, as in NumPy).
    """
    ids, weight = op_args.embedding_args(input, weight, padding_idx)
    out = jnp.take(weight, ids, axis=0)
    if padding_idx is not None:
        is_pad = (ids == padding_idx % weight.shape[0])[..., None]
        out = jnp.where(is_pad, jax.lax.stop_gradient(out), out)
    return out


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
    """Attention ``softmax(q k^T / sqrt(d_head) + mask) v``, as ``torch.nn.functional``'s.

    Layout, mask, causality and dropout as :func:`unitscale.functional.scaled_dot_product_attention`:
    query ``(..., q_seq, heads, d_head)``, key/value ``(..., kv_seq, heads, d_head)``; ``attn_mask``
    boolean (True = attend) or an additive float bias; softmax in float32, the output rounded to the
    inputs' dtype. ``mult`` has no effect.
    """
    q, k, v, keep, bias, dropout_p = op_args.attention_args(query, key, value, attn_mask, dropout_p, rng)
    op_args.positive(mult, "mult")
    out = softmax_attention(q, k, v, logit_scale=1.0 / math.sqrt(q.shape[-1]), is_causal=bool(is_causal),
                            keep=keep, bias=bias, dropout_p=dropout_p, rng=rng)
    return out.astype(jnp.result_type(q, k, v))


# ---------------------------------------------------------------------------------------------
# Losses


def cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    *,
    ignore_index: int = -100,
    reduction: str = "mean",
    mult: float = 1.0,
) -> jax.Array:
    """Softmax cross-entropy of logits ``input`` (..., V) against int ``target`` (...), in float32.

    ``optax.softmax_cross_entropy_with_integer_labels`` summed over the targets that are not
    ``ignore_index`` (they get zero gradient), divided by their count for ``reduction="mean"``; a
    mean over no valid target is NaN (as in PyTorch). ``mult`` has no effect.

    Labels must be classes in ``[0, V)`` or ``ignore_index``: concrete labels are checked
    (ValueError naming ``target``); traced ones (under ``jit``) cannot be, and there a label >= V
    gives a NaN loss and a negative one counts from the end, as NumPy indexing does.
    """
    logits, target = op_args.cross_entropy_args(input, target, ignore_index, reduction)
    op_args.positive(mult, "mult")
    valid = target != ignore_index
    nll = optax.softmax_cross_entropy_with_integer_labels(op_args.upcast(logits), jnp.where(valid, target, 0))
    total = jnp.sum(jnp.where(valid, nll, 0.0))
    if reduction == "mean":
        total = total / jnp.sum(valid).astype(total.dtype)
    return total.astype(logits.dtype)


def mse_loss(input: ArrayLike, target: ArrayLike, *, reduction: str = "mean") -> jax.Array:
    """Squared error ``sum((input - target)^2)`` in float32, over ``input.size`` for the mean."""
    input, target = op_args.float_array(input, "input"), op_args.float_array(target, "target")
    op_args.equal_shapes(input, target, "input", "target")
    op_args.check_reduction(reduction)
    total = jnp.sum((op_args.upcast(input) - op_args.upcast(target)) ** 2)
    if reduction == "mean":
        total = total / max(input.size, 1)
    return total.astype(jnp.result_type(input, target))


# ---------------------------------------------------------------------------------------------
# Sequence mixers


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
    """Grouped 1-D convolution (cross-correlation) along the sequence axis, summed in float32 and
    rounded once to the inputs' dtype.

    Layout and padding as :func:`unitscale.functional.conv1d`: input ``(..., seq, in_channels)``,
    weight ``(kernel, in_channels/groups, out_channels)``, bias ``(out_channels,)``;
    ``padding="causal"`` pads ``dilation*(kernel-1)`` zeros on the left. ``constraint`` has no effect.
    """
    input, weight, bias, shape = op_args.conv1d_args(input, weight, bias, stride, padding, dilation, groups)
    op_args.check_constraint(constraint)
    dtype = jnp.result_type(input, weight)
    out = grouped_conv1d(
        input.reshape(-1, shape.seq, shape.in_channels), weight, stride=stride, padding=shape.padding,
        dilation=dilation, groups=groups, accumulate=op_args.compute_dtype(dtype),
    )
    if bias is not None:
        out = out + bias.astype(out.dtype)
    return out.reshape(*shape.lead, shape.out_seq, shape.out_channels).astype(dtype)


def rnn(
    input: ArrayLike,
    weight: ArrayLike,
    bias: ArrayLike | None = None,
    initial_state: ArrayLike | None = None,
    constraint: ConstraintLike = "to_output_scale",
) -> jax.Array:
    """Elman recurrence ``h_t = tanh(x_t + h_{t-1} W + b)`` over an already projected input
    sequence (``jax.lax.scan``), in float32; returns the hidden states rounded to the inputs' dtype.

    Shapes: input ``(..., seq, hidden)``, weight ``(hidden, hidden)``, bias ``(hidden,)``,
    initial_state ``(..., hidden)`` (zeros by default). ``constraint`` has no effect.
    """
    input, weight, bias, initial_state = op_args.rnn_args(input, weight, bias, initial_state)
    op_args.check_constraint(constraint)
    drive = op_args.upcast(input)
    if bias is not None:
        drive = drive + op_args.upcast(bias)
    recurrent = op_args.upcast(weight)
    if initial_state is None:
        h0 = jnp.zeros((*input.shape[:-2], input.shape[-1]), drive.dtype)
    else:
        h0 = op_args.upcast(initial_state)

    def step(h, drive_t):
        h = jnp.tanh(drive_t + h @ recurrent)
        return h, h

    _, states = jax.lax.scan(step, h0, jnp.moveaxis(drive, -2, 0))
    return jnp.moveaxis(states, 0, -2).astype(jnp.result_type(input, weight))
