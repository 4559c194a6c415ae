"""Rewrites of a traced :class:`~ipu_sim.trace.Program` that model system-level choices.

* :func:`recompute_layers` -- activation checkpointing at segment (layer) boundaries: just before
  the first backward op of a segment, the forward ops of the segment that make the activations its
  backward reads run again; the backward reads the fresh copies, so the originals die at the end of
  the forward (only values crossing segment boundaries stay live). Costs one more forward.
* :func:`stream_inputs` -- program inputs held in streaming (off-chip) memory: each arrives on the
  tiles just before its first reader (a ``stream_in`` copy) and dies after its last reader; matching
  outputs leave for streaming memory as they are made instead of staying live to the end.
* :func:`with_matmul_precision` -- every matmul runs with given input / partials precisions (as a
  recipe that casts operands right before the matmul would; the casts themselves are not added).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from typing import Iterable

from ipu_sim.placement import BACKWARD, FORWARD, RECOMPUTE, Placement
from ipu_sim.report import scope
from ipu_sim.trace import COPY, MATMUL, MatmulDims, Op, Program, Value

# precision name -> (matmul inputs, partials, operand bytes)
PRECISIONS = {"fp32": ("fp32", "fp32", 4), "fp16.32": ("fp16", "fp32", 2),
              "fp16": ("fp16", "fp16", 2), "fp8": ("fp8", "fp16", 1)}


def recompute_layers(program: Program, placement: Placement) -> tuple[Program, Placement]:
    """``program`` with each recompute segment's forward run again before its backward, and the
    placement of the new op list (recomputed ops: phase ``recompute``, same layer, IPU, stage).

    Segments are the layers, and per pipeline stage the ops outside layers grouped by their
    top-level named scope (e.g. ``embeddings``). With more than one stage, the last stage is not
    recomputed: it runs forward and backward of a micro-batch in the same pipeline cycle, so its
    activations never wait and recomputing them would only cost time.
    """
    ops = program.ops
    producer = {v.id: op.index for op in ops for v in op.outputs}
    keys = _segments(program, placement)
    members: dict[tuple, tuple[set[int], list[int]]] = {}
    for i, key in enumerate(keys):
        if key is not None and placement.phase[i] in (FORWARD, BACKWARD):
            fwd, bwd = members.setdefault(key, (set(), []))
            (fwd.add(i) if placement.phase[i] == FORWARD else bwd.append(i))
    clones: dict[int, list[int]] = {}  # first backward op of a segment -> forward ops to clone
    rewire: dict[int, tuple] = {}  # backward op -> its segment (reads the clones)
    for key, (fwd, bwd) in members.items():
        saved = {producer[v.id] for i in bwd for v in ops[i].inputs
                 if producer.get(v.id, -1) in fwd}
        if saved:
            clones.setdefault(bwd[0], []).extend(sorted(_ancestors(saved, fwd, ops, producer)))
            rewire.update({i: key for i in bwd})
    ids = itertools.count(_max_id(program) + 1)
    renamed: dict[tuple, dict[int, int]] = {}  # segment -> original value id -> clone id
    new_ops: list[Op] = []
    labels: list[tuple[str, int, int, int]] = []

    def emit(op: Op, label: tuple[str, int, int, int]) -> None:
        new_ops.append(replace(op, index=len(new_ops)))
        labels.append(label)

    for op in ops:
        i = op.index
        for j in clones.get(i, ()):
            src = ops[j]
            names = renamed.setdefault(keys[j], {})
            outs = tuple(Value(next(ids), v.shape, v.dtype, v.itemsize) for v in src.outputs)
            inputs = _renamed(src.inputs, names)
            names.update({v.id: w.id for v, w in zip(src.outputs, outs)})
            emit(replace(src, inputs=inputs, outputs=outs, recomputed=True),
                 (RECOMPUTE, placement.layer[j], placement.ipu[j], placement.stage[j]))
        if i in rewire:
            op = replace(op, inputs=_renamed(op.inputs, renamed.get(rewire[i], {})))
        emit(op, (placement.phase[i], placement.layer[i], placement.ipu[i], placement.stage[i]))
    phase, layer, ipu, stage = (tuple(x) for x in zip(*labels)) if labels else ((),) * 4
    return (Program(tuple(new_ops), program.inputs, program.outputs, program.constants),
            replace(placement, phase=phase, layer=layer, ipu=ipu, stage=stage))


def _segments(program: Program, placement: Placement) -> list[tuple | None]:
    """Recompute segment of every op: (stage, layer) or (stage, top-level scope); None if its
    stage is not recomputed."""
    last = len(placement.chain) - 1 if len(placement.chain) > 1 else None
    keys: list[tuple | None] = []
    for op, lay, k in zip(program.ops, placement.layer, placement.stage):
        if k < 0 or k == last:
            keys.append(None)
        else:
            keys.append((k, lay) if lay >= 0 else (k, scope(op.path).split("/")[0]))
    return keys


def _ancestors(seeds: set[int], within: set[int], ops, producer) -> set[int]:
    """``seeds`` and every op of ``within`` they depend on."""
    out, todo = set(), list(seeds)
    while todo:
        i = todo.pop()
        if i in out:
            continue
        out.add(i)
        todo.extend(producer[v.id] for v in ops[i].inputs if producer.get(v.id, -1) in within)
    return out


def _renamed(values: tuple[Value, ...], names: dict[int, int]) -> tuple[Value, ...]:
    return tuple(replace(v, id=names[v.id]) if v.id in names else v for v in values)


def _max_id(program: Program) -> int:
    ids = [v.id for v in program.inputs + program.constants]
    ids += [v.id for op in program.ops for v in op.outputs]
    return max(ids, default=-1)


def stream_inputs(program: Program, streamed: Iterable[int],
                  streamed_outputs: Iterable[int] = ()) -> Program:
    """``program`` with the inputs of ids ``streamed`` loaded from streaming memory just before
    their first reader, and the outputs of ids ``streamed_outputs`` stored as they are made."""
    streamed, gone = set(streamed), set(streamed_outputs)
    first: dict[int, int] = {}
    for op in program.ops:
        for v in op.inputs:
            if v.id in streamed:
                first.setdefault(v.id, op.index)
    loads: dict[int, list[Value]] = {}
    for v in program.inputs:
        if v.id in first:
            loads.setdefault(first[v.id], []).append(v)
    ops: list[Op] = []
    for op in program.ops:
        for v in loads.get(op.index, ()):
            ops.append(Op(len(ops), "stream_in", COPY, (), (v,), source="streaming memory"))
        ops.append(replace(op, index=len(ops)))
    inputs = tuple(v for v in program.inputs if v.id not in first)
    outputs = tuple(v for v in program.outputs if v.id not in gone)
    return Program(tuple(ops), inputs, outputs, program.constants)


def with_matmul_precision(program: Program, precision: str) -> Program:
    """``program`` with every matmul taking ``precision`` operands (see :data:`PRECISIONS`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    inputs, partials, size = PRECISIONS[precision]
    ops = []
    for op in program.ops:
        if op.kind == MATMUL:
            d: MatmulDims = op.detail
            op = replace(op, detail=replace(d, inputs=inputs, partials=partials, lhs_itemsize=size,
                                            rhs_itemsize=size))
        ops.append(op)
    return replace(program, ops=tuple(ops))
