"""Outlining: identical layers share one copy of their code, as PopART compiles them.

PopART's session option ``enableOutlining`` (default true) extracts repeated parts of the graph into
subgraphs that are compiled once and called wherever they occur, so identical layers keep one copy
of their vertex state, exchange programs and control program; Graphcore's PopTorch BERT relies on
it to reuse one encoder layer's code for all of them (graphcore/examples
nlp/bert/pytorch/modeling.py, ``outline_attribute``), the TF2 BERT outlines its layers explicitly.
A call pays copies: an input made outside the subgraph is copied into the subgraph's tensor just
before the op that first reads it, and an output read outside is copied out after the op that makes
it (PopART's ``SubgraphCopyingStrategy::JustInTime``, which the PopTorch BERT selects).

The unit of outlining here is a *segment*: the forward, the backward or the recomputation of one
layer (the ``layer_{i}`` named scopes of :mod:`ipu_sim.placement`). An op's *signature* is what it
computes (kind, primitive, fused chain, extra detail), on which shapes and dtypes, where in its layer
(its scope path with the layer number removed), how often it runs, and whether it is a recomputed
copy (PopART keeps ops marked for recomputation and their recomputed copies in different outlining
classes, so a recomputation never shares code with the forward pass). Segments of different layers
with the same sequence of signatures are *outlined*; every one after the first *shares* the first's
code. Whole segments, not single ops: PopART outlines high-value sequences, not a lone cheap op that
two different layers happen to share. Ops outside layers, and segments that occur in one layer
only, compile as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from ipu_sim.trace import VIEW, Op, Program, layer_index

_LAYER_PART = re.compile(r"\blayers?[_\-.]?\d+\b")


@dataclass(frozen=True)
class Outline:
    """Which ops share code and which values outlined ops copy in and out (root value ids)."""

    shared: frozenset[int]  # op indices whose code an identical op of an earlier layer holds
    copies: Mapping[int, tuple[int, ...]]  # outlined op index -> values it copies in or out

    @property
    def outlined(self) -> frozenset[int]:
        """Ops of outlined segments that run code (views run none)."""
        return frozenset(self.copies)


NO_OUTLINE = Outline(frozenset(), {})


def signature(op: Op) -> tuple:
    """What makes two ops of different layers the same code (see the module docstring)."""
    return (op.kind, op.primitive, op.fused, op.detail, op.count, len(op.loops), op.recomputed,
            _LAYER_PART.sub("layer", op.path),
            tuple((v.shape, v.dtype) for v in op.inputs),
            tuple((v.shape, v.dtype) for v in op.outputs))


def outline(program: Program) -> Outline:
    """The :class:`Outline` of ``program``: segments of different layers that run the same op
    sequence share one copy of its code."""
    layers = [layer_index(op.path) for op in program.ops]
    segments: dict[tuple, list[int]] = {}
    for op, layer in zip(program.ops, layers):
        if layer >= 0:
            segments.setdefault(_segment(op, layer), []).append(op.index)
    classes: dict[tuple, list[tuple]] = {}  # op sequence -> segments running it, in order
    for key, ops in segments.items():
        classes.setdefault(tuple(signature(program.ops[i]) for i in ops), []).append(key)
    outlined = [False] * len(program.ops)
    shared = set()
    for keys in classes.values():
        if len({key[0] for key in keys}) < 2:  # one layer: nothing to share
            continue
        for n, key in enumerate(keys):
            for i in segments[key]:
                outlined[i] = True
                if n:
                    shared.add(i)
    return Outline(frozenset(shared), _copies(program, layers, outlined))


def _segment(op: Op, layer: int) -> tuple:
    """The call an op belongs to: its layer's forward, backward or recomputation."""
    return layer, "transpose(" in op.path, op.recomputed


def _copies(program: Program, layers: list[int], outlined: list[bool]) -> dict[int, tuple[int, ...]]:
    """Per outlined op that runs code, the values it copies: inputs whose storage another call
    makes (copied in before the op that first reads them in its call) and outputs another call
    reads (copied out after the op)."""
    roots = program.roots()
    calls = [_segment(op, layer) if layer >= 0 else None for op, layer in zip(program.ops, layers)]
    made_by = {v.id: calls[op.index] for op in program.ops for v in op.outputs}
    read_by: dict[int, set] = {}
    for op in program.ops:
        for v in op.inputs:
            read_by.setdefault(roots[v.id], set()).add(calls[op.index])
    program_outputs = {roots[v.id] for v in program.outputs}
    copied_in: set[tuple] = set()  # (root, call): copied once per call
    out: dict[int, tuple[int, ...]] = {}
    for op, call, yes in zip(program.ops, calls, outlined):
        if not yes or op.kind == VIEW:  # a view runs no code: its reader copies the source
            continue
        values = []
        for v in op.inputs:
            r = roots[v.id]
            if made_by.get(r) != call and (r, call) not in copied_in:
                copied_in.add((r, call))
                values.append(r)
        for v in op.outputs:
            r = roots[v.id]
            if r == v.id and (read_by.get(r, set()) - {call} or r in program_outputs):
                values.append(r)
        out[op.index] = tuple(values)
    return out
