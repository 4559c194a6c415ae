"""Track the scale of every tensor of a forward and backward pass, without touching model code.

``track_scales(fn, *args)`` flattens ``fn``'s jaxpr (:mod:`unitscale.analysis.program`) and
re-evaluates it inside one ``jax.vjp``, adding a zero *probe* to every tracked op output:
``y -> y + p``. The probe leaves the forward pass unchanged, and its gradient is exactly
dL/dy, the tensor's gradient in the backward pass. So each tracked tensor gets a forward record
(its values) and a backward record (its gradient), paired on one ``index``, and weights get their
values and their gradients. One jitted computation returns every tracked value; statistics,
binade histograms and range coverage are then reduced on the host in float32
(:mod:`unitscale.analysis.stats`, :mod:`unitscale.analysis.coverage`).

Memory: the computation holds every tracked activation and gradient at once (no rematerialisation),
like a training step that stores all intermediates. Weights must be arguments: arrays ``fn``
captures are constants of its jaxpr and are not tracked.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unitscale.analysis import program as prog
from unitscale.analysis.coverage import coverages_of
from unitscale.analysis.records import ScaleRecord, ScaleReport
from unitscale.analysis.stats import as_float32, histogram_of, stats_of
from unitscale.formats import BF16, E4M3, E5M2, FP16, FPFormat

__all__ = ["DEFAULT_FORMATS", "track_scales", "track_model_scales"]

DEFAULT_FORMATS: tuple[FPFormat, ...] = (FP16, BF16, E4M3, E5M2)


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """A tracked value of the program and which of its passes are recorded."""

    value: int
    kind: str
    path: str
    op: str
    forward: bool
    backward: bool


# --- arguments ------------------------------------------------------------------------------


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _leaf_names(fn: Callable, args: tuple) -> list[str]:
    """``<argument name>/<pytree path>`` per leaf (nnx Variables' trailing ``value`` dropped)."""
    try:
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        params = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in positional]
    except (TypeError, ValueError):  # builtins and some C functions have no signature
        params = []
    names = []
    for i, arg in enumerate(args):
        arg_name = params[i] if i < len(params) else f"arg{i}"
        for path, _ in jax.tree_util.tree_flatten_with_path(arg)[0]:
            keys = [_key_name(k) for k in path]
            if keys and keys[-1] == "value" and isinstance(path[-1], jax.tree_util.GetAttrKey):
                keys = keys[:-1]
            names.append("/".join([arg_name, *keys]))
    return names


def _weight_flags(args: tuple, weight_argnums: int | Sequence[int]) -> list[bool]:
    nums = (weight_argnums,) if isinstance(weight_argnums, int) else tuple(weight_argnums)
    for n in nums:
        if not isinstance(n, int) or isinstance(n, bool) or not -len(args) <= n < len(args):
            raise ValueError(f"weight_argnums: {n!r} is not the index of one of the {len(args)} arguments")
    nums = {n % len(args) for n in nums}
    return [i in nums for i, arg in enumerate(args) for _ in jax.tree_util.tree_leaves(arg)]


def _check_formats(formats: Sequence[FPFormat]) -> tuple[FPFormat, ...]:
    formats = tuple(formats)
    for f in formats:
        if not isinstance(f, FPFormat):
            raise TypeError(f"formats must hold FPFormat instances, got {type(f).__name__} {f!r}")
    return formats


# --- what to track ----------------------------------------------------------------------------


def _output_id(program: prog.Program, grad_output: Any) -> int:
    if len(program.outputs) != 1 or not isinstance(program.outputs[0], int):
        raise TypeError("fn must return one array (or (array, aux) with has_aux=True), computed from args")
    out = program.outputs[0]
    aval = program.avals[out]
    if not prog.is_float(program, out):
        raise TypeError(f"fn must return a floating-point array, got dtype {aval.dtype}")
    if grad_output is None and aval.shape != ():
        raise ValueError(
            f"grad_output is required: fn returns shape {tuple(aval.shape)}, not a scalar loss "
            "(a scalar output is seeded with 1)"
        )
    if grad_output is not None and tuple(jnp.shape(grad_output)) != tuple(aval.shape):
        raise ValueError(f"grad_output has shape {jnp.shape(grad_output)}, fn's output has {tuple(aval.shape)}")
    return out


def _plan(program: prog.Program, names: list[str], weights: list[bool], out: int) -> list[_Tensor]:
    """Tracked tensors in program order, each argument leaf just before its first use. A value
    computed from weights alone (a scaled or cast weight) is of kind "weight" too."""
    leaf_of = {v: i for i, v in enumerate(program.inputs) if prog.is_float(program, v)}
    if not leaf_of:
        raise ValueError("args: fn has no floating-point inputs to track")
    tainted = prog.depends_on(program, set(leaf_of))
    from_data = prog.depends_on(program, {v for i, v in enumerate(program.inputs) if not weights[i]})
    has_grad = prog.reaches_output(program, out)
    tensors, seen = [], set()
    for op in program.ops:
        for v in op.inputs:
            if v in leaf_of and v not in seen:
                seen.add(v)
                i = leaf_of[v]
                kind, role = ("weight", "weight") if weights[i] else ("activation", "input")
                tensors.append(_Tensor(v, kind, names[i], role, True, v in has_grad))
        for v in op.outputs:
            fwd, bwd = (True, True) if v == out else (op.track_forward, op.track_backward)
            if v in tainted and prog.is_float(program, v) and (fwd or bwd):
                kind = "activation" if v in from_data else "weight"
                tensors.append(_Tensor(v, kind, op.path, op.name, fwd, bwd and v in has_grad))
    return tensors


# --- the instrumented pass ----------------------------------------------------------------------


def _instrumented(program: prog.Program, tensors: list[_Tensor]) -> Callable:
    """``(leaves, seed) -> (output, forward values, gradients)`` of the tracked tensors, jittable."""
    float_pos = [i for i, v in enumerate(program.inputs) if prog.is_float(program, v)]
    probed = [t for t in tensors if t.backward and t.op not in ("weight", "input")]
    slot = {t.value: k for k, t in enumerate(probed)}
    recorded = {t.value for t in tensors if t.forward}

    def run(leaves: list, seed: jax.Array):
        def probed_pass(diff_leaves, probes):
            full = list(leaves)
            for i, x in zip(float_pos, diff_leaves, strict=True):
                full[i] = x
            env = dict(zip(program.inputs, full, strict=True))

            def on_value(v, x):
                x = x + probes[slot[v]] if v in slot else x
                if v in recorded:
                    env[v] = x
                return x

            (y,) = prog.evaluate(program, full, on_value)
            return y, [env[t.value] for t in tensors if t.forward]

        diff = [leaves[i] for i in float_pos]
        zeros = [jnp.zeros(program.avals[t.value].shape, program.avals[t.value].dtype) for t in probed]
        y, pullback, forward = jax.vjp(probed_pass, diff, zeros, has_aux=True)
        grad_leaves, grad_probes = pullback(seed.astype(y.dtype))
        grads = dict(zip([program.inputs[i] for i in float_pos], grad_leaves, strict=True))
        grads.update(zip([t.value for t in probed], grad_probes, strict=True))
        return y, forward, [grads[t.value] for t in tensors if t.backward]

    return run


# XLA's backend optimisations cost more compile time than they save on one evaluation.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def _record(index: int, phase: str, t: _Tensor, value: Any, formats: tuple[FPFormat, ...]) -> ScaleRecord:
    flat = as_float32(value)
    return ScaleRecord(
        index, phase, t.kind, t.path, t.op, tuple(int(d) for d in np.shape(value)), str(value.dtype),
        stats_of(flat), coverages_of(flat, formats), histogram_of(flat),
    )  # fmt: skip


def track_scales(
    fn: Callable[..., Any],
    *args: Any,
    weight_argnums: int | Sequence[int] = (),
    has_aux: bool = False,
    grad_output: jax.Array | None = None,
    formats: Sequence[FPFormat] = DEFAULT_FORMATS,
) -> ScaleReport:
    """Scale records of every tensor of ``fn(*args)`` and of its gradient in ``jax.vjp``.

    Args:
      fn: a JAX-traceable function returning one float array (a loss), or ``(array, aux)`` with
        ``has_aux=True``; its weights must be arguments (captured arrays are constants).
      *args: pytrees of arrays, as for ``jax.grad``; every float leaf is tracked.
      weight_argnums: the arguments whose leaves are weights (``kind="weight"``), e.g. ``0`` for
        ``loss(params, batch)``; other float leaves are activations (``op="input"``).
      grad_output: the backward pass's seed dL/d(output); required unless the output is a scalar
        (seeded with 1).
      formats: formats whose range coverage each record gets.

    Returns:
      A :class:`ScaleReport`: forward records (op outputs and argument leaves) in program order,
      then backward records (their gradients) in reverse program order.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    formats = _check_formats(formats)
    leaves, treedef = jax.tree_util.tree_flatten(args)
    names, weights = _leaf_names(fn, args), _weight_flags(args, weight_argnums)

    def flat_fn(*flat):
        out = fn(*jax.tree_util.tree_unflatten(treedef, flat))
        return out[0] if has_aux else out

    program = prog.flatten(flat_fn, *leaves)
    out = _output_id(program, grad_output)
    tensors = _plan(program, names, weights, out)
    seed = jnp.ones((), jnp.float32) if grad_output is None else jnp.asarray(grad_output)
    run = jax.jit(_instrumented(program, tensors)).lower(leaves, seed).compile(_COMPILER_OPTIONS)
    y, forward, backward = jax.device_get(run(leaves, seed))
    fwd = [(i, t) for i, t in enumerate(tensors) if t.forward]
    bwd = [(i, t) for i, t in enumerate(tensors) if t.backward]
    records = [_record(i, "forward", t, x, formats) for (i, t), x in zip(fwd, forward, strict=True)]
    records += [_record(i, "backward", t, g, formats) for (i, t), g in zip(bwd, backward, strict=True)][::-1]
    output = float(np.asarray(y, np.float64).ravel()[0]) if np.size(y) == 1 else float("nan")
    return ScaleReport(tuple(records), tuple(f.name for f in formats), output)


def track_model_scales(
    model: nnx.Module,
    batch: Any,
    loss_fn: Callable[[nnx.Module, Any], Any],
    *,
    formats: Sequence[FPFormat] = DEFAULT_FORMATS,
) -> ScaleReport:
    """:func:`track_scales` of ``loss_fn(model, batch)`` for a Flax NNX model, its ``nnx.Param``s
    as weights (``path`` ``params/<module path>``), e.g. ``track_model_scales(gpt, batch, lm_loss)``.

    ``loss_fn`` returns the loss, or a tuple whose first element is the loss (as
    :func:`unitscale.models.lm_loss`). The model is not modified.
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, batch):
        out = loss_fn(nnx.merge(graphdef, params, rest), batch)
        return out[0] if isinstance(out, tuple) else out

    return track_scales(loss, params, batch, weight_argnums=0, formats=formats)
