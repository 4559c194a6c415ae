"""A function's jaxpr flattened into one list of ops, with the tensors scale tracking looks at.

:func:`flatten` inlines the calls that only group code (user ``jit``, ``closed_call``,
``checkpoint``/``remat``) and keeps as single ops what has its own derivative rule or its own
name: ``custom_jvp``/``custom_vjp`` calls (e.g. unit scaling's ``scale``, which must stay whole
so its backward scale survives re-evaluation), ``jit``-wrapped functions of JAX's own library
(``log_softmax``, ``where``, ...), loops and conditionals. Each op carries its ``jax.named_scope``
path, which is how module names reach the records.

What is tracked: the floating-point outputs of live ops that depend on a float input. Views
(reshape, transpose, broadcast, copy, widening cast, stop_gradient) repeat their input's values
and gradient and are skipped; custom calls that are the identity in the forward pass (unit
scaling's ``scale_bwd``) keep only their gradient. A tracked tensor *has a gradient* when a
differentiable path leads from it to the function's output. Ops inside loops and conditionals
are not visible: the loop or conditional is one op, and its outputs are tracked.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.extend.core as jcore
import jax.numpy as jnp

__all__ = ["Const", "Op", "Program", "flatten", "evaluate"]

_JAX_DIR = os.path.dirname(jax.__file__)
_INLINED = frozenset({"pjit", "jit", "closed_call", "core_call", "checkpoint", "remat", "remat2"})
_VIEWS = frozenset({
    "reshape", "squeeze", "expand_dims", "transpose", "broadcast_in_dim", "copy", "copy_p",
    "stop_gradient", "optimization_barrier", "sharding_constraint", "device_put",
})  # fmt: skip
# Outputs that carry no gradient to their inputs (their derivative is zero or undefined).
_NO_GRADIENT = frozenset({"stop_gradient", "sign", "floor", "ceil", "round", "is_finite", "argmax", "argmin"})


@dataclasses.dataclass(frozen=True, eq=False)
class Const:
    """A literal operand of an op (hashed by identity: its value may be an array)."""

    value: Any


@dataclasses.dataclass(frozen=True)
class Op:
    """One atomic equation over global value ids (int) and literal operands (:class:`Const`)."""

    eqn: Any = dataclasses.field(repr=False)
    inputs: tuple[Any, ...]
    outputs: tuple[int, ...]
    path: str
    name: str
    track_forward: bool  # False for views and identity custom calls (they repeat an input's values)
    track_backward: bool  # False for views (their gradient repeats their input's gradient)


@dataclasses.dataclass(frozen=True)
class Program:
    """Flattened ops in program order; ``inputs`` / ``outputs`` are value ids of the function's flat
    arguments and results; ``consts`` maps ids to captured arrays; ``avals`` maps ids to
    ``jax.core.ShapedArray``s."""

    ops: tuple[Op, ...]
    inputs: tuple[int, ...]
    outputs: tuple[Any, ...]
    consts: dict[int, Any] = dataclasses.field(repr=False)
    avals: dict[int, Any] = dataclasses.field(repr=False)


def _is_float(aval: Any) -> bool:
    return hasattr(aval, "dtype") and jnp.issubdtype(aval.dtype, jnp.floating)


def _library_function(eqn: Any) -> bool:
    """A ``jit`` whose function is defined inside JAX (``jnp.where``, ``jax.nn.log_softmax``)."""
    info = getattr(eqn.params["jaxpr"].jaxpr, "debug_info", None)
    where = getattr(info, "func_src_info", None) or ""
    return " at " in where and where.split(" at ", 1)[1].startswith(_JAX_DIR)


def _custom_call_name(eqn: Any) -> str:
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    where = getattr(info, "func_src_info", None) or ""
    return where.split(" at ", 1)[0].lstrip("_") or eqn.primitive.name


def _op_name(eqn: Any) -> str:
    prim = eqn.primitive.name
    if prim in ("pjit", "jit"):
        return str(eqn.params.get("name", prim)).lstrip("_") or prim
    if prim.startswith("custom_") and "call_jaxpr" in eqn.params:
        return _custom_call_name(eqn)
    return prim


def _forwards_input(eqn: Any) -> bool:
    """Whether every output of an opaque custom call is literally one of its inputs."""
    inner = eqn.params.get("call_jaxpr")
    if inner is None:
        return False
    jaxpr = inner.jaxpr
    return not jaxpr.eqns and all(v in jaxpr.invars for v in jaxpr.outvars)


def _is_view(eqn: Any) -> bool:
    """Whether the outputs repeat an input's values and gradients (reshape, widening cast, ...)."""
    prim = eqn.primitive.name
    if prim in _VIEWS:
        return True
    if prim == "convert_element_type":
        src, dst = eqn.invars[0].aval.dtype, eqn.outvars[0].aval.dtype
        return (
            jnp.issubdtype(src, jnp.floating)
            and jnp.issubdtype(dst, jnp.floating)
            and jnp.promote_types(src, dst) == dst
        )
    return False


def _join(outer: str, inner: str) -> str:
    return f"{outer}/{inner}" if outer and inner else outer or inner


@dataclasses.dataclass
class _Flattener:
    ops: list = dataclasses.field(default_factory=list)
    consts: dict = dataclasses.field(default_factory=dict)
    avals: dict = dataclasses.field(default_factory=dict)
    _next: int = 0

    def new(self, aval: Any) -> int:
        self._next += 1
        self.avals[self._next] = aval
        return self._next

    def run(self, closed: Any, inputs: Sequence[Any], path: str) -> list:
        jaxpr = closed.jaxpr if isinstance(closed, jcore.ClosedJaxpr) else closed
        consts = closed.consts if isinstance(closed, jcore.ClosedJaxpr) else ()
        env: dict = {}
        for var, value in zip(jaxpr.constvars, consts, strict=True):
            env[var] = self.new(var.aval)
            self.consts[env[var]] = value
        env.update(zip(jaxpr.invars, inputs, strict=True))
        for eqn in jaxpr.eqns:
            ins = [Const(x.val) if isinstance(x, jcore.Literal) else env[x] for x in eqn.invars]
            outs = self.eqn(eqn, ins, _join(path, str(eqn.source_info.name_stack)))
            env.update(zip(eqn.outvars, outs, strict=True))
        return [Const(x.val) if isinstance(x, jcore.Literal) else env[x] for x in jaxpr.outvars]

    def eqn(self, eqn: Any, ins: list, path: str) -> list:
        prim = eqn.primitive.name
        if prim in _INLINED and not (prim in ("pjit", "jit") and _library_function(eqn)):
            return self.run(eqn.params["jaxpr"], ins, path)
        outs = [self.new(v.aval) for v in eqn.outvars]
        view = _is_view(eqn)
        # An identity in the forward pass may still scale the gradient (unit scaling's scale_bwd).
        forward = not view and not (prim.startswith("custom_") and _forwards_input(eqn))
        self.ops.append(Op(eqn, tuple(ins), tuple(outs), path, _op_name(eqn), forward, not view))
        return outs


def flatten(fn: Callable, *args: Any) -> Program:
    """The :class:`Program` of ``fn(*args)`` (arguments as for ``jax.make_jaxpr``), dead code removed."""
    closed = jax.make_jaxpr(fn)(*args)
    flat = _Flattener()
    inputs = [flat.new(v.aval) for v in closed.jaxpr.invars]
    outputs = flat.run(closed, inputs, "")
    live_ops = _live(flat.ops, outputs)
    return Program(tuple(live_ops), tuple(inputs), tuple(outputs), flat.consts, flat.avals)


def _ids(values: Sequence[Any]) -> list[int]:
    return [v for v in values if isinstance(v, int)]


def _live(ops: Sequence[Op], outputs: Sequence[Any]) -> list[Op]:
    """The ops the outputs need (effectful ops are kept)."""
    needed, kept = set(_ids(outputs)), []
    for op in reversed(ops):
        if needed.intersection(op.outputs) or op.eqn.effects:
            needed.update(_ids(op.inputs))
            kept.append(op)
    return kept[::-1]


def depends_on(program: Program, sources: set[int]) -> set[int]:
    """Ids of values computed from any of ``sources`` (including the sources)."""
    reached = set(sources)
    for op in program.ops:
        if reached.intersection(_ids(op.inputs)):
            reached.update(op.outputs)
    return reached


def reaches_output(program: Program, output: int) -> set[int]:
    """Ids of float values with a differentiable path to ``output``."""
    reached = {output}
    for op in reversed(program.ops):
        if op.eqn.primitive.name in _NO_GRADIENT or not reached.intersection(op.outputs):
            continue
        if not any(_is_float(program.avals[o]) for o in reached.intersection(op.outputs)):
            continue
        reached.update(i for i in _ids(op.inputs) if _is_float(program.avals[i]))
    return reached


def is_float(program: Program, value: int) -> bool:
    """Whether value ``value`` of ``program`` has a floating-point dtype."""
    return _is_float(program.avals[value])


def evaluate(
    program: Program,
    inputs: Sequence[jax.Array],
    on_value: Callable[[int, jax.Array], jax.Array] | None = None,
) -> list[jax.Array]:
    """Run ``program`` on flat ``inputs``; ``on_value(id, value)`` may replace each op output.

    Every op is re-bound as ``jax.core.eval_jaxpr`` does, so custom derivative rules hold.
    """
    env: dict[int, Any] = dict(program.consts)
    env.update(zip(program.inputs, inputs, strict=True))
    read = lambda v: v.value if isinstance(v, Const) else env[v]  # noqa: E731
    for op in program.ops:
        params = op.eqn.primitive.get_bind_params(op.eqn.params)
        with op.eqn.ctx.manager:
            outs = op.eqn.primitive.bind(*map(read, op.inputs), **params)
        outs = outs if op.eqn.primitive.multiple_results else [outs]
        for value_id, value in zip(op.outputs, outs, strict=True):
            env[value_id] = on_value(value_id, value) if on_value is not None else value
    return [read(v) for v in program.outputs]
