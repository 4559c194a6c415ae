"""How the op set reads its arguments: the checks both twins share, and the dtype they compute in.

The unit-scaled ops (:mod:`unitscale.functional`) and the standard ones (:mod:`unitscale.standard`)
take the same arguments, so one function here checks each op's arguments for both: the twins reject
the same bad input with the same message, which names the argument. Checks read only static facts
(shapes, dtypes, Python numbers), so they cost nothing under ``jit``; the one check of values,
:func:`check_targets`, runs only when the labels are concrete.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unitscale.constraints import ConstraintLike, resolve_constraint

__all__ = [
    "Conv1dShape",
    "add_operands",
    "attention_args",
    "attention_mask",
    "axis",
    "bias_vector",
    "check_approximate",
    "check_constraint",
    "check_reduction",
    "check_targets",
    "compute_dtype",
    "conv1d_args",
    "cross_entropy_args",
    "embedding_args",
    "equal_shapes",
    "float_array",
    "int_array",
    "linear_args",
    "matmul_shapes",
    "norm_args",
    "positive",
    "positive_int",
    "rate",
    "require_rng",
    "rnn_args",
    "static_number",
    "tau",
    "upcast",
]


# ---------------------------------------------------------------------------------------------
# Arrays, numbers and dtypes


def float_array(x: ArrayLike, name: str) -> jax.Array:
    """``x`` as a floating-point array; TypeError naming ``name`` otherwise."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
    return x


def int_array(x: ArrayLike, name: str) -> jax.Array:
    """``x`` as an integer array; TypeError naming ``name`` otherwise."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {x.dtype}")
    return x


def static_number(value: object, name: str) -> float:
    """A finite Python number as a float. Scales are computed in Python at trace time, so their
    inputs cannot be traced values."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a static Python number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def positive(value: object, name: str) -> float:
    """A static number > 0."""
    value = static_number(value, name)
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def rate(value: object, name: str) -> float:
    """A static probability in ``[0, 1)``."""
    value = static_number(value, name)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must lie in [0, 1), got {value}")
    return value


def positive_int(value: object, name: str) -> int:
    """A Python int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def axis(value: int, ndim: int, name: str) -> int:
    """An axis of an ``ndim``-dimensional array, made non-negative."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not -ndim <= value < ndim:
        raise ValueError(f"{name}={value} is out of range for an input with {ndim} dimensions")
    return value % ndim


def tau(value: object) -> float:
    """A residual branch weight: a static number >= 0."""
    value = static_number(value, "tau")
    if value < 0:
        raise ValueError(f"tau must be non-negative, got {value}")
    return value


def compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32 for sub-32-bit floats (bf16, f16, fp8), else the dtype itself."""
    return jnp.dtype(jnp.float32) if jnp.dtype(dtype).itemsize < 4 else jnp.dtype(dtype)


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in its :func:`compute_dtype`."""
    return x.astype(compute_dtype(x.dtype))


def check_constraint(constraint: ConstraintLike) -> None:
    """A constraint name, callable or None (the standard twin ties no scales but takes the same
    argument, so a misspelt name fails in both twins)."""
    resolve_constraint(constraint)


def check_approximate(approximate: str) -> None:
    """GELU's ``approximate``: ``"none"`` (erf) or ``"tanh"``."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")


def check_reduction(reduction: str) -> None:
    """A loss's ``reduction``: ``"mean"`` or ``"sum"``."""
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def require_rng(rng: jax.Array | None, what: str) -> None:
    """Random ops need an explicit key: ValueError naming ``rng`` when it is missing."""
    if rng is None:
        raise ValueError(f"rng: {what} needs a PRNG key `rng`")


def equal_shapes(a: jax.Array, b: jax.Array, a_name: str, b_name: str) -> None:
    """ValueError naming both arguments unless ``a`` and ``b`` have one shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have equal shapes, got {a.shape} and {b.shape}"
        )


def bias_vector(bias: ArrayLike | None, size: int) -> jax.Array | None:
    """``bias`` as a float array of shape ``(size,)``, or None."""
    if bias is None:
        return None
    bias = float_array(bias, "bias")
    if bias.shape != (size,):
        raise ValueError(f"bias must have shape ({size},), got {bias.shape}")
    return bias


def add_operands(input: ArrayLike, other: ArrayLike) -> tuple[jax.Array, jax.Array, int]:
    """``(input, other, element count of their sum)``; at least one must be floating-point and
    their shapes must broadcast."""
    a, b = jnp.asarray(input), jnp.asarray(other)
    if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(b.dtype, jnp.floating)):
        raise TypeError(f"input or other must be floating-point, got {a.dtype} and {b.dtype}")
    try:
        return a, b, math.prod(jnp.broadcast_shapes(a.shape, b.shape))
    except ValueError:
        raise ValueError(f"shapes of input {a.shape} and other {b.shape} do not broadcast") from None


# ---------------------------------------------------------------------------------------------
# Matrix products


def matmul_shapes(left: jax.Array, right: jax.Array) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``(left shape, right shape, broadcast batch shape)`` of ``jnp.matmul(left, right)``, with
    1-D operands promoted to matrices as ``jnp.matmul`` does. Every matrix dimension must be
    positive: a product over (or into) nothing has no scale."""
    if left.ndim == 0 or right.ndim == 0:
        raise ValueError("left and right must have at least one dimension")
    l_shape = left.shape if left.ndim > 1 else (1, *left.shape)
    r_shape = right.shape if right.ndim > 1 else (*right.shape, 1)
    (m, k), (k_right, n) = l_shape[-2:], r_shape[-2:]
    if k != k_right:
        raise ValueError(
            f"left's last dimension ({k}) must equal right's contracted dimension ({k_right}); "
            f"got shapes {left.shape} and {right.shape}"
        )
    if 0 in (m, k, n):
        raise ValueError(
            f"left and right must have non-empty matrix dimensions, got shapes {left.shape} and {right.shape}"
        )
    try:
        batch = jnp.broadcast_shapes(l_shape[:-2], r_shape[:-2])
    except ValueError:
        raise ValueError(
            f"batch dimensions of left {left.shape} and right {right.shape} do not broadcast"
        ) from None
    return l_shape, r_shape, batch


def linear_args(
    input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None, scale_power: Sequence[float]
) -> tuple[jax.Array, jax.Array, jax.Array | None, tuple[float, ...]]:
    """``(input, weight, bias, scale_power)`` of a linear map with a ``(fan_in, fan_out)`` weight."""
    input, weight = float_array(input, "input"), float_array(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must be 2-D (fan_in, fan_out), got shape {weight.shape}")
    fan_in, fan_out = weight.shape
    if fan_in < 1 or fan_out < 1:
        raise ValueError(
            f"weight must have fan_in and fan_out >= 1, got shape {weight.shape} (fan_in, fan_out)"
        )
    if input.ndim == 0 or input.shape[-1] != fan_in:
        raise ValueError(
            f"input's last dimension must equal weight's fan_in {fan_in}; got input shape "
            f"{input.shape}, weight shape {weight.shape}"
        )
    bias = bias_vector(bias, fan_out)
    if len(scale_power) != 3:
        raise ValueError(f"scale_power must have 3 entries, got {scale_power!r}")
    powers = tuple(static_number(p, "scale_power") for p in scale_power)
    return input, weight, bias, powers


# ---------------------------------------------------------------------------------------------
# Normalisation, embedding


def norm_args(
    input: ArrayLike, normalized_shape: int | Sequence[int], params: dict[str, ArrayLike | None]
) -> tuple[jax.Array, tuple[int, ...], dict[str, jax.Array | None]]:
    """``(input, normalized_shape as a tuple, params)``; each non-None param (weight, bias) must
    have the normalised shape."""
    input = float_array(input, "input")
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or len(shape) > input.ndim or input.shape[-len(shape) :] != shape:
        raise ValueError(
            f"normalized_shape {shape} must match the trailing dimensions of input {input.shape}"
        )
    checked = {}
    for name, value in params.items():
        if value is not None:
            value = float_array(value, name)
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
        checked[name] = value
    return input, shape, checked


def embedding_args(
    input: ArrayLike, weight: ArrayLike, padding_idx: int | None
) -> tuple[jax.Array, jax.Array]:
    """``(ids, table)``; ``padding_idx`` must index a row (negative counts from the end)."""
    ids, weight = int_array(input, "input"), float_array(weight, "weight")
    if weight.ndim != 2:
        raise ValueError(f"weight must be a 2-D (vocab, d) table, got shape {weight.shape}")
    vocab = weight.shape[0]
    if padding_idx is not None and (not isinstance(padding_idx, int) or not -vocab <= padding_idx < vocab):
        raise ValueError(f"padding_idx must be an int in [-{vocab}, {vocab}), got {padding_idx!r}")
    return ids, weight


# ---------------------------------------------------------------------------------------------
# Attention


def _attention_shapes(q: jax.Array, k: jax.Array, v: jax.Array) -> None:
    if min(q.ndim, k.ndim, v.ndim) < 3:
        raise ValueError(
            "query, key and value must be (..., seq, heads, d_head); got shapes "
            f"{q.shape}, {k.shape}, {v.shape}"
        )
    if not q.shape[:-3] == k.shape[:-3] == v.shape[:-3]:
        raise ValueError(
            f"query, key and value must share batch dimensions; got {q.shape}, {k.shape}, {v.shape}"
        )
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"key and value must share (seq, heads); got {k.shape} and {v.shape}")
    if q.shape[-2:] != k.shape[-2:]:
        raise ValueError(f"query and key must share (heads, d_head); got {q.shape} and {k.shape}")


def attention_mask(
    attn_mask: ArrayLike | None, logits_shape: tuple[int, ...]
) -> tuple[jax.Array | None, jax.Array | None]:
    """``attn_mask`` as a boolean keep-mask or an additive float32 bias (the other None)."""
    if attn_mask is None:
        return None, None
    mask = jnp.asarray(attn_mask)
    try:
        fits = jnp.broadcast_shapes(mask.shape, logits_shape) == logits_shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(
            f"attn_mask of shape {mask.shape} must broadcast to (..., heads, q_seq, kv_seq) "
            f"= {logits_shape}"
        )
    if mask.dtype == jnp.bool_:
        return mask, None
    if jnp.issubdtype(mask.dtype, jnp.floating):
        return None, mask.astype(jnp.float32)
    raise TypeError(f"attn_mask must be boolean or floating-point, got dtype {mask.dtype}")


def attention_args(
    query: ArrayLike, key: ArrayLike, value: ArrayLike, attn_mask: ArrayLike | None,
    dropout_p: float, rng: jax.Array | None,
):
    """``(q, k, v, keep, bias, dropout_p)`` of ``scaled_dot_product_attention``: shapes checked,
    the mask split by :func:`attention_mask`, a key required when ``dropout_p > 0``."""
    q, k, v = (float_array(t, n) for t, n in ((query, "query"), (key, "key"), (value, "value")))
    _attention_shapes(q, k, v)
    dropout_p = rate(dropout_p, "dropout_p")
    if dropout_p > 0.0:
        require_rng(rng, f"attention dropout with dropout_p={dropout_p}")
    keep, bias = attention_mask(attn_mask, (*q.shape[:-3], q.shape[-2], q.shape[-3], k.shape[-3]))
    return q, k, v, keep, bias, dropout_p


# ---------------------------------------------------------------------------------------------
# Losses


def check_targets(target: jax.Array, classes: int, ignore_index: int) -> None:
    """ValueError naming ``target`` if a concrete label is neither a class in ``[0, classes)`` nor
    ``ignore_index``. Traced labels (under ``jit``) cannot be read and are not checked."""
    if isinstance(target, jax.core.Tracer) or target.size == 0:
        return
    # numpy, so that a concrete array inside a traced function is read, not staged.
    values = np.asarray(target)
    bad = (values != ignore_index) & ((values < 0) | (values >= classes))
    if bad.any():
        raise ValueError(
            f"target must hold class indices in [0, {classes}) or ignore_index={ignore_index}; "
            f"got {values[bad].ravel()[0]} (first of {int(bad.sum())} such label(s))"
        )


def cross_entropy_args(
    input: ArrayLike, target: ArrayLike, ignore_index: int, reduction: str
) -> tuple[jax.Array, jax.Array]:
    """``(logits, target)`` of a softmax cross-entropy over the last axis of ``input``."""
    logits = float_array(input, "input")
    target = int_array(target, "target")
    check_reduction(reduction)
    if logits.ndim == 0 or target.shape != logits.shape[:-1]:
        raise ValueError(
            f"target shape {target.shape} must equal input shape without its class axis; "
            f"got input {logits.shape}"
        )
    vocab = logits.shape[-1]
    if vocab < 2:
        raise ValueError(f"input must have at least 2 classes on its last axis, got {vocab}")
    check_targets(target, vocab, ignore_index)
    return logits, target


# ---------------------------------------------------------------------------------------------
# Sequence mixers


def _conv_padding(padding: object, kernel: int, dilation: int) -> tuple[int, int]:
    span = dilation * (kernel - 1)
    if padding == "causal":
        return span, 0
    if padding == "same":
        return span // 2, span - span // 2
    if padding == "valid":
        return 0, 0
    if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
        return padding, padding
    raise ValueError(
        f"padding must be 'causal', 'same', 'valid' or a non-negative int, got {padding!r}"
    )


class Conv1dShape(NamedTuple):
    """The geometry of a grouped 1-D convolution, from :func:`conv1d_args`."""

    lead: tuple[int, ...]
    seq: int
    in_channels: int
    kernel: int
    in_per_group: int
    out_channels: int
    padding: tuple[int, int]
    out_seq: int


def conv1d_args(
    input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None, stride: int, padding: int | str,
    dilation: int, groups: int,
) -> tuple[jax.Array, jax.Array, jax.Array | None, Conv1dShape]:
    """``(input, weight, bias, shape)`` of a convolution with Flax-layout input
    ``(..., seq, in_channels)`` and weight ``(kernel, in_channels/groups, out_channels)``."""
    input, weight = float_array(input, "input"), float_array(weight, "weight")
    for value, name in ((stride, "stride"), (dilation, "dilation"), (groups, "groups")):
        positive_int(value, name)
    if weight.ndim != 3 or 0 in weight.shape:
        raise ValueError(
            f"weight must be 3-D (kernel, in_channels/groups, out_channels) with no empty axis, "
            f"got shape {weight.shape}"
        )
    kernel, in_per_group, out_channels = weight.shape
    if input.ndim < 2:
        raise ValueError(f"input must be (..., seq, channels), got shape {input.shape}")
    *lead, seq, in_channels = input.shape
    if in_channels % groups or out_channels % groups or in_channels // groups != in_per_group:
        raise ValueError(
            f"groups={groups} must divide input channels ({in_channels}) and out_channels "
            f"({out_channels}), and weight.shape[1] ({in_per_group}) must equal "
            f"in_channels/groups; got input {input.shape}, weight {weight.shape}"
        )
    lo, hi = _conv_padding(padding, kernel, dilation)
    out_seq = (seq + lo + hi - dilation * (kernel - 1) - 1) // stride + 1
    if out_seq < 1:
        raise ValueError(
            f"input seq {seq} is too short for kernel {kernel} with dilation {dilation} and "
            f"padding {padding!r}"
        )
    bias = bias_vector(bias, out_channels)
    shape = Conv1dShape(tuple(lead), seq, in_channels, kernel, in_per_group, out_channels, (lo, hi), out_seq)
    return input, weight, bias, shape


def rnn_args(
    input: ArrayLike, weight: ArrayLike, bias: ArrayLike | None, initial_state: ArrayLike | None
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """``(input, weight, bias, initial_state)`` of an Elman recurrence over ``(..., seq, hidden)``."""
    input, weight = float_array(input, "input"), float_array(weight, "weight")
    if input.ndim < 2 or input.shape[-1] == 0:
        raise ValueError(f"input must be (..., seq, hidden) with hidden >= 1, got shape {input.shape}")
    *lead, _, hidden = input.shape
    if weight.shape != (hidden, hidden):
        raise ValueError(
            f"weight must have shape ({hidden}, {hidden}) for input {input.shape}, got {weight.shape}"
        )
    bias = bias_vector(bias, hidden)
    if initial_state is not None:
        initial_state = float_array(initial_state, "initial_state")
        if initial_state.shape != (*lead, hidden):
            raise ValueError(
                f"initial_state must have shape {(*lead, hidden)}, got {initial_state.shape}"
            )
    return input, weight, bias, initial_state
