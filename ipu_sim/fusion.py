"""Element-wise fusion, as an XLA backend for the IPU would do before lowering to Poplar.

Rule (XLA's loop and input fusion, restricted to the safe case): an element-wise op with one output
that is read by exactly one op, is not a program output, and has as many elements as that
consumer's iteration space (its output for an element-wise consumer, its operand for a reduction)
is fused into the consumer, also through reshape-like views in between. The fused op runs as one
vertex per tile in one superstep: its vector work is the sum of the parts, its inputs are the
parts' external inputs, and the intermediate never exists in memory.
"""

from __future__ import annotations

from dataclasses import replace

from ipu_sim.trace import ELEMENTWISE, REDUCE, VIEW, Op, Program, Value

_RESHAPES = frozenset({"reshape", "squeeze", "expand_dims", "bitcast_convert_type"})


def fuse(program: Program) -> Program:
    """``program`` with element-wise producers fused into their single consumers."""
    consumers: dict[int, int] = {}
    for op in program.ops:
        for vid in {v.id for v in op.inputs}:
            consumers[vid] = consumers.get(vid, 0) + 1
    for v in program.outputs:
        consumers[v.id] = consumers.get(v.id, 0) + 1
    producer: dict[int, int] = {}
    ops: list[Op | None] = []
    for op in program.ops:
        if op.kind in (ELEMENTWISE, REDUCE):
            op = _absorb(op, ops, producer, consumers)
        for v in op.outputs:
            producer[v.id] = len(ops)
        ops.append(op)
    kept = tuple(replace(op, index=i) for i, op in enumerate(o for o in ops if o is not None))
    return replace(program, ops=kept)


def _absorb(op: Op, ops: list, producer: dict, consumers: dict) -> Op:
    """Fuse every qualifying producer of ``op``'s operands into it (producers are already fused).

    Operands are taken once per value: an op reading a value in several operand slots (``d * d``)
    is still its single consumer, and once the producer is fused every slot reads the fused-in
    computation, so no slot may keep a reference to the removed intermediate.
    """
    span = op.outputs[0].size if op.kind == ELEMENTWISE else op.inputs[0].size if op.inputs else 0
    inputs: list[Value] = []
    for v in {v.id: v for v in op.inputs}.values():
        chain = _fusable_chain(v, ops, producer, consumers, op, span)
        if chain is None:
            inputs.append(v)
            continue
        src = ops[chain[-1]]
        for i in chain:
            ops[i] = None
        inputs.extend(src.inputs)
        op = replace(op, work=src.work + op.work, flops=op.flops + src.flops,
                     fused=(src.fused or (src.primitive,)) + (op.fused or (op.primitive,)))
    unique = tuple({v.id: v for v in inputs}.values())
    return replace(op, inputs=unique)


def _fusable_chain(v: Value, ops: list, producer: dict, consumers: dict, op: Op, span: int):
    """Indices of [views..., element-wise producer] feeding ``v`` that may be fused into ``op``."""
    chain = []
    while True:
        i = producer.get(v.id)
        if i is None or ops[i] is None or consumers.get(v.id, 0) != 1:
            return None
        src = ops[i]
        if src.loops != op.loops or src.count != op.count or len(src.outputs) != 1:
            return None
        chain.append(i)
        if src.kind == VIEW and src.primitive in _RESHAPES and src.inputs:
            v = src.inputs[0]
            continue
        if src.kind == ELEMENTWISE and src.outputs[0].size == span:
            return chain
        return None
