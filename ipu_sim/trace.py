"""From a jittable function to the ops it runs: shapes, dtypes, FLOPs and bytes, read off its jaxpr.

``trace(fn, *args)`` runs ``jax.make_jaxpr`` and walks the jaxpr, inlining every nested call (jit,
custom_jvp / custom_vjp calls, remat / checkpoint) and flattening control flow:

* ``scan``: the body once, every op with ``count`` multiplied by ``length``; each ``xs`` operand gets
  a per-iteration ``dynamic_slice`` op and each stacked output a buffer allocated before the loop
  plus a per-iteration in-place ``dynamic_update_slice`` (what Poplar's Repeat programs do). Loop
  carries are updated in place (no copy).
* ``while``: needs a trip count. ``fori_loop``-shaped loops (counter from a literal start, ``lt``/
  ``le``/``gt``/``ge`` against a literal bound, literal step) are counted; any other loop needs
  ``while_trip_counts`` (a count for all loops, or a mapping from the loop's source location
  ``"file.py:LINE"`` or a name-scope substring to its count), else a ValueError names the loop. The
  condition runs ``trips + 1`` times.
* ``cond``: ``cond="max"`` keeps the branch with the most FLOPs (ties: most bytes) -- the IPU runs
  one branch, and the costliest is the safe estimate; ``cond="all"`` keeps every branch (an upper
  bound, as if evaluated like ``jnp.where``).

Dtypes are what the program leaves them. A ``dot_general`` counts as an FP8 matmul when both operands
are *FP8-origin*: of a float8 dtype, or produced from an FP8-origin value by ``convert_element_type``,
a layout-only op (reshape, transpose, broadcast, slice, ...) or a multiply / divide by a single-element
tensor (Poplar's FP8 type carries a power-of-two scale, so a scaled up-cast is still an FP8 operand).
Its operands then move as 1-byte values. bfloat16 is costed as float16 (same bytes; the IPU has no
separate bfloat16 unit). The accumulation precision of a matmul is its ``preferred_element_type``,
else its output dtype.

Every primitive is in one of the conscious tables below; anything else raises a ValueError naming it.
Deliberately without a cost model: collectives (``psum``, ``all_gather``, ...: data parallelism is
:mod:`ipu_sim.system`'s all-reduce, not part of a traced step), linear algebra and FFTs
(``cholesky``, ``triangular_solve``, ``fft``, ...), windowed reductions (``reduce_window*``,
``select_and_scatter_add``), the counter-based generators JAX's default PRNG does not emit
(``philox*``, ``threefry4x32``, ``mulhi``), complex numbers and host callbacks.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import jax
import jax.extend.core as jcore
import numpy as np

# Op kinds.
MATMUL = "matmul"
ELEMENTWISE = "elementwise"
REDUCE = "reduce"
CUMULATIVE = "cumulative"
GATHER = "gather"
SCATTER = "scatter"
COPY = "copy"
VIEW = "view"
RNG = "rng"
SORT = "sort"
CONSTANT = "constant"
KINDS = (MATMUL, ELEMENTWISE, REDUCE, CUMULATIVE, GATHER, SCATTER, COPY, VIEW, RNG, SORT, CONSTANT)


@dataclass(frozen=True)
class Value:
    """An array the program creates or reads: ``id`` is unique within a :class:`Program`."""

    id: int
    shape: tuple[int, ...]
    dtype: str
    itemsize: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize


@dataclass(frozen=True)
class VectorWork:
    """Arithmetic vector instructions per 64-bit vector of output, by class (costed in params)."""

    simple: int = 0
    transcendental: int = 0
    software: int = 0

    def __add__(self, other: "VectorWork") -> "VectorWork":
        return VectorWork(self.simple + other.simple, self.transcendental + other.transcendental,
                          self.software + other.software)


@dataclass(frozen=True)
class MatmulDims:
    """``batch`` independent (m x k) @ (k x n) products; precisions are "fp32" / "fp16" / "fp8"."""

    batch: int
    m: int
    k: int
    n: int
    inputs: str
    partials: str
    lhs_itemsize: int
    rhs_itemsize: int
    out_itemsize: int

    @property
    def flops(self) -> int:
        return 2 * self.batch * self.m * self.k * self.n


@dataclass(frozen=True)
class ReduceDims:
    """Each output combines ``reduced`` inputs along ``minor`` (trailing, contiguous) axes or not."""

    reduced: int
    minor: bool


@dataclass(frozen=True)
class IndexDims:
    """``slices`` index-addressed slices of ``slice_elements`` elements each."""

    slices: int
    slice_elements: int


@dataclass(frozen=True)
class Op:
    """One primitive application (or a fusion of several), executed ``count`` times per call.

    ``flops`` and the byte counts are per execution. ``aliases[i]`` is the index of the input whose
    storage output ``i`` reuses (views, in-place updates), or -1.
    """

    index: int
    primitive: str
    kind: str
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    flops: float = 0.0
    work: VectorWork = VectorWork()
    count: int = 1
    loops: tuple[int, ...] = ()
    path: str = ""
    source: str = ""
    detail: MatmulDims | ReduceDims | IndexDims | None = None
    aliases: tuple[int, ...] = ()
    fused: tuple[str, ...] = ()
    recomputed: bool = False  # a copy of a forward op run again before the backward

    @property
    def bytes_in(self) -> int:
        return sum(v.nbytes for v in self.inputs)

    @property
    def bytes_out(self) -> int:
        return sum(v.nbytes for v in self.outputs)

    @property
    def name(self) -> str:
        return "+".join(self.fused) if self.fused else self.primitive


@dataclass(frozen=True)
class Program:
    """The ops of a traced function in program order, with its inputs, outputs and constants."""

    ops: tuple[Op, ...]
    inputs: tuple[Value, ...]
    outputs: tuple[Value, ...]
    constants: tuple[Value, ...] = ()

    @property
    def flops(self) -> float:
        """Total FLOPs of one call: sum of ``flops x count`` over ops."""
        return float(sum(op.flops * op.count for op in self.ops))

    def stage(self, indices) -> "Program":
        """The sub-program of the ops at ``indices`` (e.g. one pipeline stage): its inputs are the
        values it reads but does not make, its outputs the values it makes that are read outside
        it or are outputs of the whole program."""
        chosen = sorted(set(int(i) for i in indices))
        inside = set(chosen)
        made = {v.id for i in chosen for v in self.ops[i].outputs}
        read_outside = {v.id for op in self.ops if op.index not in inside for v in op.inputs}
        read_outside |= {v.id for v in self.outputs}
        inputs, outputs = {}, {}
        for i in chosen:
            for v in self.ops[i].inputs:
                if v.id not in made:
                    inputs.setdefault(v.id, v)
            for v in self.ops[i].outputs:
                if v.id in read_outside:
                    outputs.setdefault(v.id, v)
        ops = tuple(replace(self.ops[i], index=k) for k, i in enumerate(chosen))
        const_ids = {v.id for v in self.constants}
        consts = tuple(v for v in inputs.values() if v.id in const_ids)
        ins = tuple(v for v in inputs.values() if v.id not in const_ids)
        return Program(ops, ins, tuple(outputs.values()), consts)

    def roots(self) -> dict[int, int]:
        """Value id -> id of the value whose storage it uses (itself unless produced as an alias)."""
        root = {v.id: v.id for v in self.inputs + self.constants}
        for op in self.ops:
            for i, v in enumerate(op.outputs):
                j = op.aliases[i] if i < len(op.aliases) else -1
                root[v.id] = root.get(op.inputs[j].id, op.inputs[j].id) if j >= 0 else v.id
        return root

    def matmul_flops(self) -> dict[tuple[str, str], float]:
        """FLOPs of matmuls by (input precision, partials precision)."""
        out: dict[tuple[str, str], float] = {}
        for op in self.ops:
            if op.kind == MATMUL:
                key = (op.detail.inputs, op.detail.partials)
                out[key] = out.get(key, 0.0) + op.flops * op.count
        return out


# ---------------------------------------------------------------------------------------------------
# Name-stack paths: JAX wraps scopes in transformation names (``transpose(jvp(layer_3))/mlp``).

# A layer's named scope (the pipelining contract of ipu_sim.placement): layer_3, layers_3, layer3.
LAYER_SCOPE = re.compile(r"^layers?[_\-.]?(\d+)$")


def scope(path: str) -> str:
    """A name-stack path without JAX transformation wrappers: ``transpose(jvp(a))/b`` -> ``a/b``."""
    parts = []
    for part in path.split("/"):
        while part.endswith(")") and "(" in part:
            part = part[part.index("(") + 1:-1]
        if part:
            parts.append(part)
    return "/".join(parts)


def layer_index(path: str) -> int:
    """The number of the first ``layer_{i}`` scope on ``path``; -1 if it is in no layer."""
    for part in scope(path).split("/"):
        m = LAYER_SCOPE.match(part)
        if m:
            return int(m.group(1))
    return -1


# ---------------------------------------------------------------------------------------------------
# Primitive tables (the conscious lists).

_SIMPLE = frozenset({
    "add", "add_any", "sub", "mul", "neg", "max", "min", "abs", "sign", "floor", "ceil", "round",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "is_finite", "square",
    "convert_element_type", "copysign", "nextafter", "shift_left", "shift_right_logical",
    "shift_right_arithmetic", "population_count", "clz", "select_n", "clamp", "reduce_precision",
    "eq_to", "lt_to", "le_to",
})
# Single-lane fp32 / two-lane fp16 hardware instructions (and reciprocal-based divide).
_TRANSCENDENTAL = frozenset({"exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "sqrt",
                             "rsqrt", "div"})
_SOFTWARE = frozenset({
    "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "sinh", "cosh", "asinh", "acosh", "atanh",
    "erf", "erfc", "erf_inv", "lgamma", "digamma", "igamma", "igammac", "igamma_grad_a",
    "random_gamma_grad", "bessel_i0e", "bessel_i1e", "polygamma", "zeta", "cbrt", "rem",
    "regularized_incomplete_beta",
})
_ZERO_FLOP = frozenset({
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "is_finite", "convert_element_type",
    "shift_left", "shift_right_logical", "shift_right_arithmetic", "population_count", "clz",
    "select_n", "sign", "copysign", "nextafter", "reduce_precision", "floor", "ceil", "round",
    "eq_to", "lt_to", "le_to",
})
_VIEWS = frozenset({"reshape", "squeeze", "expand_dims", "broadcast_in_dim", "transpose", "slice",
                    "rev", "stop_gradient", "split", "unstack", "sharding_constraint", "device_put",
                    "optimization_barrier", "random_wrap", "random_unwrap", "random_clone",
                    "bitcast_convert_type"})
# Copies into a fresh layout: ``stack`` is a concatenate of inputs broadcast to a new unit axis and
# ``tile`` a concatenate of an input with itself; both move bytes and compute nothing.
_COPIES = frozenset({"copy", "copy_p", "concatenate", "pad", "stack", "tile"})
_LAYOUT_ONLY = _VIEWS | _COPIES
_REDUCES = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                      "reduce_or", "reduce_xor", "argmax", "argmin"})
_CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
_RNG = frozenset({"random_bits", "random_seed", "random_fold_in", "random_split", "threefry2x32",
                  "rng_bit_generator", "rng_uniform"})
_SCATTERS = frozenset({"scatter", "scatter-add", "scatter_add", "scatter-sub", "scatter_sub",
                       "scatter-mul", "scatter_mul", "scatter-min", "scatter_min", "scatter-max",
                       "scatter_max"})
_CALLS = frozenset({"jit", "pjit", "closed_call", "core_call", "named_call", "custom_jvp_call",
                    "custom_vjp_call", "custom_vjp_call_jaxpr", "remat", "remat2", "checkpoint"})

SUPPORTED_PRIMITIVES = frozenset(
    _SIMPLE | _TRANSCENDENTAL | _SOFTWARE | _VIEWS | _REDUCES | _CUMULATIVE | _COPIES | _RNG
    | _SCATTERS | _CALLS | {"pow", "integer_pow", "dot_general", "conv_general_dilated", "gather",
                            "dynamic_slice", "dynamic_update_slice", "iota", "sort", "top_k",
                            "scan", "while", "cond"})

_JAX_DIR = os.path.dirname(jax.__file__)


# ---------------------------------------------------------------------------------------------------
# Public entry point.

def trace(fn: Callable, *args: Any, cond: str = "max",
          while_trip_counts: int | Mapping[str, int] | None = None) -> Program:
    """Trace ``fn(*args)`` (arrays or ``jax.ShapeDtypeStruct``s) to a :class:`Program`."""
    if cond not in ("max", "all"):
        raise ValueError(f"cond must be 'max' or 'all', got {cond!r}")
    _check_trip_counts(while_trip_counts)
    closed = jax.make_jaxpr(fn)(*args)
    walker = _Walker(cond, while_trip_counts)
    inputs = [walker.value(v.aval) for v in closed.jaxpr.invars]
    outs = walker.run_closed(closed, inputs, _Context())
    ops = tuple(replace(op, index=i) for i, op in enumerate(walker.ops))
    outputs = tuple(dict.fromkeys(v for v in outs if v is not None))
    return Program(ops, tuple(inputs), outputs, tuple(walker.constants))


def _check_trip_counts(counts) -> None:
    if counts is None:
        return
    values = [counts] if isinstance(counts, int) else list(dict(counts).values())
    for v in values:
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"while_trip_counts must hold non-negative ints, got {v!r}")


@dataclass(frozen=True)
class _Context:
    count: int = 1
    loops: tuple[int, ...] = ()
    path: str = ""


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a and b else a or b


def _source(eqn) -> str:
    tb = eqn.source_info.traceback
    for frame in (tb.frames if tb is not None else ()):
        if not frame.file_name.startswith(_JAX_DIR):
            return f"{os.path.basename(frame.file_name)}:{frame.line_num}"
    return "<unknown>"


def precision(dtype: str, what: str) -> str:
    """Precision class of a float dtype name: "fp32", "fp16" (float16, bfloat16) or "fp8"."""
    if dtype == "float32":
        return "fp32"
    if dtype in ("float16", "bfloat16"):
        return "fp16"
    if dtype.startswith("float8"):
        return "fp8"
    raise ValueError(f"{what} has dtype {dtype}, which the IPU model does not support "
                     "(floats of 8, 16 and 32 bits only)")


# ---------------------------------------------------------------------------------------------------
# The walker: builds ops, values and constants while recursing through nested jaxprs.

@dataclass
class _Walker:
    cond_mode: str
    trip_counts: Any
    ops: list = field(default_factory=list)
    constants: list = field(default_factory=list)
    fp8: set = field(default_factory=set)
    broadcasts: set = field(default_factory=set)  # ids of broadcast views (no storage of their own)
    _ids: Any = field(default_factory=itertools.count)
    _loop_ids: Any = field(default_factory=itertools.count)

    def value(self, aval) -> Value:
        dtype = aval.dtype
        shape = tuple(int(d) for d in aval.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"array shape {shape} has a negative size")
        v = Value(next(self._ids), shape, str(dtype), int(dtype.itemsize))
        if v.dtype.startswith("float8"):
            self.fp8.add(v.id)
        return v

    def run_closed(self, closed, inputs: list, ctx: _Context) -> list:
        jaxpr = closed.jaxpr if isinstance(closed, jcore.ClosedJaxpr) else closed
        consts = closed.consts if isinstance(closed, jcore.ClosedJaxpr) else []
        env: dict = {}
        for var, const in zip(jaxpr.constvars, consts):
            dtype = getattr(const, "dtype", None) or np.asarray(const).dtype
            v = self.value(jax.ShapeDtypeStruct(np.shape(const), dtype))
            self.constants.append(v)
            env[var] = v
        for var, val in zip(jaxpr.invars, inputs, strict=True):
            env[var] = val
        for eqn in jaxpr.eqns:
            ins = [None if isinstance(x, jcore.Literal) else env[x] for x in eqn.invars]
            outs = self.eqn(eqn, ins, ctx)
            for var, val in zip(eqn.outvars, outs, strict=True):
                env[var] = val
        return [None if isinstance(x, jcore.Literal) else env[x] for x in jaxpr.outvars]

    def eqn(self, eqn, ins: list, ctx: _Context) -> list:
        name = eqn.primitive.name
        sub = replace(ctx, path=_join(ctx.path, str(eqn.source_info.name_stack)))
        if name in _CALLS:
            return self.run_closed(_call_jaxpr(eqn), ins, sub)
        if name == "scan":
            return self.scan(eqn, ins, sub)
        if name == "while":
            return self.while_loop(eqn, ins, sub)
        if name == "cond":
            return self.cond(eqn, ins, sub)
        if name not in SUPPORTED_PRIMITIVES:
            raise ValueError(f"unsupported primitive {name!r} at {_source(eqn)}: ipu_sim has no cost "
                             "model for it (see ipu_sim.trace.SUPPORTED_PRIMITIVES)")
        outs = [self.value(v.aval) for v in eqn.outvars]
        self.emit(_primitive_op(self, eqn, ins, outs), sub, _source(eqn))
        return outs

    def emit(self, op: Op, ctx: _Context, source: str = "") -> None:
        self.ops.append(replace(op, index=len(self.ops), count=ctx.count, loops=ctx.loops,
                                path=ctx.path, source=source or op.source))

    def enter_loop(self, ctx: _Context, trips: int) -> _Context:
        return replace(ctx, count=ctx.count * trips, loops=ctx.loops + (next(self._loop_ids),))

    # -- control flow --------------------------------------------------------------------------------
    def scan(self, eqn, ins: list, ctx: _Context) -> list:
        p = eqn.params
        nc, ncar, length = p["num_consts"], p["num_carry"], p["length"]
        consts, init, xs = ins[:nc], ins[nc:nc + ncar], ins[nc + ncar:]
        buffers = []
        for var in eqn.outvars[ncar:]:
            buf = self.value(var.aval)
            self.emit(Op(0, "scan_buffer", CONSTANT, (), (buf,)), ctx, _source(eqn))
            buffers.append(buf)
        body = self.enter_loop(ctx, length)
        slices = []
        for x in xs:
            if x is None:
                slices.append(None)
                continue
            s = Value(next(self._ids), x.shape[1:], x.dtype, x.itemsize)
            self.emit(Op(0, "dynamic_slice", GATHER, (x,), (s,), detail=IndexDims(1, s.size)),
                      body, _source(eqn))
            slices.append(s)
        outs = self.run_closed(p["jaxpr"], consts + init + slices, body)
        ys = []
        for buf, y in zip(buffers, outs[ncar:]):
            if y is None:
                ys.append(buf)
                continue
            out = Value(next(self._ids), buf.shape, buf.dtype, buf.itemsize)
            self.emit(Op(0, "dynamic_update_slice", SCATTER, (buf, y), (out,),
                         detail=IndexDims(1, y.size), aliases=(0,)), body, _source(eqn))
            ys.append(out)
        return outs[:ncar] + ys

    def while_loop(self, eqn, ins: list, ctx: _Context) -> list:
        p = eqn.params
        cn, bn = p["cond_nconsts"], p["body_nconsts"]
        cond_consts, body_consts, init = ins[:cn], ins[cn:cn + bn], ins[cn + bn:]
        trips = self.trip_count(eqn, ctx)
        self.run_closed(p["cond_jaxpr"], cond_consts + init, self.enter_loop(ctx, trips + 1))
        return self.run_closed(p["body_jaxpr"], body_consts + init, self.enter_loop(ctx, trips))

    def trip_count(self, eqn, ctx: _Context) -> int:
        static = _static_trip_count(eqn)
        if static is not None:
            return static
        where = _source(eqn)
        counts = self.trip_counts
        if isinstance(counts, int):
            return counts
        for key, n in dict(counts or {}).items():
            if key == where or (key and key in ctx.path):
                return n
        raise ValueError(
            f"while_loop at {where} (name scope {ctx.path or '<none>'!r}) has no static trip count; "
            f"pass while_trip_counts={{'{where}': N}} (or one int for all loops)")

    def cond(self, eqn, ins: list, ctx: _Context) -> list:
        operands = ins[1:]
        trials = []
        for branch in eqn.params["branches"]:
            saved, self.ops = self.ops, []
            outs = self.run_closed(branch, operands, ctx)
            trials.append((self.ops, outs))
            self.ops = saved
        costs = [(sum(o.flops * o.count for o in ops), sum(o.bytes_in * o.count for o in ops))
                 for ops, _ in trials]
        best = max(range(len(trials)), key=lambda i: costs[i])
        kept = trials if self.cond_mode == "all" else [trials[best]]
        for ops, _ in kept:
            for op in ops:
                self.ops.append(replace(op, index=len(self.ops)))
        return trials[best][1]


def _call_jaxpr(eqn):
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            return eqn.params[key]
    raise ValueError(f"call primitive {eqn.primitive.name!r} at {_source(eqn)} has no jaxpr parameter")


def _static_trip_count(eqn) -> int | None:
    """Trip count of a fori_loop-shaped while: literal start, literal bound, literal step."""
    p = eqn.params
    cond, body = p["cond_jaxpr"].jaxpr, p["body_jaxpr"].jaxpr
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    if len(cond.eqns) != 1 or cond.eqns[0].primitive.name not in ("lt", "le", "gt", "ge"):
        return None
    test = cond.eqns[0]
    counter, bound = test.invars
    if not isinstance(bound, jcore.Literal) or counter not in cond.invars[cn:]:
        return None
    idx = cond.invars[cn:].index(counter)
    start = eqn.invars[cn + bn + idx]
    step = _literal_increment(body, body.invars[bn + idx], body.outvars[idx])
    if not isinstance(start, jcore.Literal) or step is None:
        return None
    lo, hi = int(start.val), int(bound.val)
    op = test.primitive.name
    if op in ("le", "ge"):
        hi += 1 if op == "le" else -1
    span = hi - lo if op in ("lt", "le") else lo - hi
    stride = step if op in ("lt", "le") else -step
    if stride <= 0:
        return None
    return max(0, -(-span // stride))


def _literal_increment(body, var_in, var_out) -> int | None:
    for e in body.eqns:
        if e.outvars and e.outvars[0] is var_out and e.primitive.name in ("add", "sub"):
            a, b = e.invars
            if a is var_in and isinstance(b, jcore.Literal):
                return int(b.val) * (1 if e.primitive.name == "add" else -1)
    return None


# ---------------------------------------------------------------------------------------------------
# Per-primitive rules: kind, FLOPs, vector work and shape details.

def _primitive_op(w: _Walker, eqn, ins: list, outs: list[Value]) -> Op:
    name = eqn.primitive.name
    arrays = tuple(v for v in ins if v is not None)
    out = outs[0] if outs else None
    base = Op(0, name, ELEMENTWISE, arrays, tuple(outs), source=_source(eqn))
    if name in _VIEWS:
        return _view(w, name, eqn, ins, base)
    _propagate_fp8(w, name, ins, outs)
    if name in ("dot_general", "conv_general_dilated"):
        dims = _matmul_dims(w, eqn, ins, out)
        return replace(base, kind=MATMUL, flops=float(dims.flops), detail=dims)
    if name in _REDUCES:
        return _reduce(eqn, arrays[0], out, base)
    if name in _CUMULATIVE:
        axis = eqn.params["axis"]
        work = VectorWork(1, 2 if name == "cumlogsumexp" else 0)
        return replace(base, kind=CUMULATIVE, flops=float(out.size), work=work,
                       detail=ReduceDims(arrays[0].shape[axis], axis == len(out.shape) - 1))
    if name in ("sort", "top_k"):
        axis = eqn.params.get("dimension", eqn.params.get("axis", -1)) % len(arrays[0].shape)
        return replace(base, kind=SORT, work=VectorWork(3),
                       detail=ReduceDims(arrays[0].shape[axis], axis == len(arrays[0].shape) - 1))
    if name in ("gather", "dynamic_slice"):
        size = math.prod(eqn.params["slice_sizes"]) if name == "gather" else out.size
        return replace(base, kind=GATHER, detail=IndexDims(max(1, out.size // max(size, 1)), size))
    if name in _SCATTERS or name == "dynamic_update_slice":
        return _scatter(w, eqn, ins, base)
    if name in _COPIES:
        return replace(base, kind=COPY)
    if name in _RNG:
        return replace(base, kind=RNG, work=VectorWork(1))
    if name == "iota":
        return replace(base, kind=CONSTANT, work=VectorWork(1))
    work, flops_per = _elementwise_work(name, eqn, ins)
    return replace(base, work=work, flops=float(flops_per * out.size))


def _view(w: _Walker, name: str, eqn, ins: list, base: Op) -> Op:
    arrays = base.inputs
    if arrays and ins[0] is not None and ins[0].id in w.fp8:
        w.fp8.update(v.id for v in base.outputs)
    if name == "broadcast_in_dim" or (arrays and ins[0] is not None and ins[0].id in w.broadcasts):
        w.broadcasts.update(v.id for v in base.outputs)
    if name == "bitcast_convert_type" and arrays and arrays[0].itemsize != base.outputs[0].itemsize:
        return replace(base, kind=COPY)
    if name in ("optimization_barrier", "device_put"):
        # Output i is input i; inputs that are literals (None) have no stored value to alias.
        positions = {v.id: k for k, v in enumerate(arrays)}
        aliases = tuple(positions[v.id] if v is not None and v.id in positions else -1 for v in ins)
    else:
        aliases = (0,) * len(base.outputs) if arrays and ins[0] is not None else ()
    if not aliases:
        return replace(base, kind=VIEW, inputs=())
    return replace(base, kind=VIEW, aliases=aliases)


def _propagate_fp8(w: _Walker, name: str, ins: list, outs: list[Value]) -> None:
    origin = [v is not None and v.id in w.fp8 for v in ins]
    if name == "convert_element_type" and origin[0]:
        w.fp8.add(outs[0].id)
    elif name in ("mul", "div") and origin[0] and (ins[1] is None or ins[1].size == 1):
        w.fp8.add(outs[0].id)
    elif name == "mul" and origin[1] and (ins[0] is None or ins[0].size == 1):
        w.fp8.add(outs[0].id)
    elif name in _LAYOUT_ONLY and any(origin):
        w.fp8.update(v.id for v in outs)


def _matmul_dims(w: _Walker, eqn, ins: list, out: Value) -> MatmulDims:
    lhs, rhs = ins[0], ins[1]
    if lhs is None or rhs is None:
        raise ValueError(f"{eqn.primitive.name} at {_source(eqn)} has a literal operand")
    where = f"{eqn.primitive.name} at {_source(eqn)}"
    if eqn.primitive.name == "dot_general":
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        batch = math.prod(lhs.shape[d] for d in lb)
        k = math.prod(lhs.shape[d] for d in lc)
        m = math.prod(d for i, d in enumerate(lhs.shape) if i not in lc and i not in lb)
        n = math.prod(d for i, d in enumerate(rhs.shape) if i not in rc and i not in rb)
    else:
        batch, m, k, n = _conv_dims(eqn, lhs, rhs, out)
    fp8 = lhs.id in w.fp8 and rhs.id in w.fp8
    if fp8:
        inputs = "fp8"
    else:
        kinds = {precision(lhs.dtype, f"{where} lhs"), precision(rhs.dtype, f"{where} rhs")}
        inputs = "fp32" if "fp32" in kinds else "fp16"
    pref = eqn.params.get("preferred_element_type")
    acc = precision(str(np.dtype(pref)) if pref is not None else out.dtype, f"{where} result")
    partials = "fp32" if acc == "fp32" else "fp16"
    size = (lambda v: 1) if fp8 else (lambda v: v.itemsize)
    return MatmulDims(batch, m, k, n, inputs, partials, size(lhs), size(rhs), out.itemsize)


def _conv_dims(eqn, lhs: Value, rhs: Value, out: Value) -> tuple[int, int, int, int]:
    """A convolution as the matmul Poplar plans it: rows = batch x output positions, depth =
    input channels per group x kernel positions, columns = output channels per group."""
    dn = eqn.params["dimension_numbers"]
    groups = eqn.params["feature_group_count"] * eqn.params["batch_group_count"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    out_spatial = math.prod(out.shape[d] for d in out_spec[2:])
    kernel = math.prod(rhs.shape[d] for d in rhs_spec[2:])
    m = out.shape[out_spec[0]] * out_spatial
    k = rhs.shape[rhs_spec[1]] * kernel
    n = rhs.shape[rhs_spec[0]] // groups
    return groups, m, k, n


def _reduce(eqn, x: Value, out: Value, base: Op) -> Op:
    axes = tuple(sorted(eqn.params["axes"]))
    reduced = math.prod(x.shape[a] for a in axes)
    minor = axes == tuple(range(len(x.shape) - len(axes), len(x.shape)))
    simple = 2 if base.primitive in ("argmax", "argmin") else 1
    return replace(base, kind=REDUCE, flops=float(x.size), work=VectorWork(simple),
                   detail=ReduceDims(reduced, minor))


def _scatter(w: _Walker, eqn, ins: list, base: Op) -> Op:
    """In place into the operand, unless the operand is a broadcast view (then it is materialised)."""
    name = eqn.primitive.name
    operand = ins[0]
    if name == "dynamic_update_slice":
        update = ins[1]
        slices, size = 1, update.size
    else:
        update = ins[2]
        dims = eqn.params["dimension_numbers"].update_window_dims
        size = math.prod(update.shape[d] for d in dims)
        slices = max(1, update.size // max(size, 1))
    combine = 0 if name in ("scatter", "dynamic_update_slice") else 1
    in_place = operand is not None and operand.id not in w.broadcasts
    alias = (base.inputs.index(operand),) if in_place else ()
    return replace(base, kind=SCATTER, work=VectorWork(combine), flops=float(combine * update.size),
                   detail=IndexDims(slices, size), aliases=alias)


# Simple instructions per vector where one is not enough. A total-order comparison (``*_to``, used by
# sorts and searchsorted to order NaNs and signed zeros) has no hardware instruction: each operand's
# bits are mapped to an ordered integer (sign-dependent xor), then compared as integers.
_SIMPLE_COUNTS = {"clamp": 2, "eq_to": 3, "lt_to": 3, "le_to": 3}


def _elementwise_work(name: str, eqn, ins: list) -> tuple[VectorWork, float]:
    if name in _SIMPLE:
        n = _SIMPLE_COUNTS.get(name, max(1, len(ins) - 2) if name == "select_n" else 1)
        return VectorWork(n), 0 if name in _ZERO_FLOP else n
    if name in _TRANSCENDENTAL:
        return VectorWork(1 if name == "div" else 0, 1), 1
    if name in _SOFTWARE:
        return VectorWork(software=1), 1
    if name == "pow":
        return VectorWork(1, 2), 1
    if name == "integer_pow":
        y = eqn.params["y"]
        muls = max(1, abs(y) - 1)
        return VectorWork(muls, 1 if y < 0 else 0), muls
    raise ValueError(f"unsupported primitive {name!r} at {_source(eqn)}")
