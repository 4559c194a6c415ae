"""Tile mapping: where each value lives and what each op costs on the tiles it runs on.

Layout rules (Poplar / poplibs conventions):

* Program inputs and constants are variables spread linearly over as many tiles as their size
  allows (at least ``min_bytes_per_tile`` each). Matmul operands that are variables are laid out
  for their plan (see :mod:`ipu_sim.planner`).
* Element-wise ops (and reductions, cumulative ops) run where their first full-size, non-broadcast
  operand lives and write their output with the same mapping; every operand with another mapping
  (a transposed or broadcast view, another op's output layout) is received over the exchange. With
  no such operand the output is mapped freshly.
* Reshape-like views keep the mapping; transposes, slices and broadcasts are views with a new
  mapping (their consumers pay the exchange); a broadcast of a literal is a one-element constant.
* Reductions reduce locally first, then exchange partials in one or two stages, choosing the
  number of stages with the fewest cycles (poplibs reduce: intermediate-to-intermediate, then
  intermediate-to-output); each received region of partials costs the reduce vertex a walk.
  Gathers / scatters (multiSlice / multiUpdate) broadcast the indices to the tiles of the table,
  which check each index against their rows; gathered rows go to freshly mapped output tiles,
  scattered updates arrive split by column groups. Copies (concatenate, pad) are pure exchange
  into a fresh mapping.

Each op gets an :class:`OpMapping`: its tiles, its supersteps (per execution), its per-tile
temporaries and the vertices / exchange programs / codelets it leaves in always-live memory.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from ipu_sim.costs import (Step, ceil_div, exchange_cycles, partials_cycles, vector_cycles,
                           worker_cycles)
from ipu_sim.hardware import Chip
from ipu_sim.outline import NO_OUTLINE, Outline
from ipu_sim.params import ModelParams
from ipu_sim.planner import MatmulPlan, plan_matmul
from ipu_sim.trace import (CONSTANT, COPY, CUMULATIVE, ELEMENTWISE, GATHER, MATMUL, REDUCE, RNG,
                           SCATTER, SORT, VIEW, Op, Program, Value, VectorWork)

_KEEP_MAPPING = frozenset({"reshape", "squeeze", "expand_dims", "stop_gradient", "device_put",
                           "optimization_barrier", "sharding_constraint", "random_wrap",
                           "random_unwrap", "random_clone", "bitcast_convert_type"})
_INDEX_BYTES = 4


@dataclass(frozen=True)
class Layout:
    """Where a value's storage lives: ``tiles`` tiles from the start tile the scheduler gives
    ``anchor`` (an op index, or ``-1 - k`` for the k-th program input / constant). Values with equal
    ``mapping`` have identical element-to-tile maps."""

    mapping: int
    tiles: int
    anchor: int
    broadcast: bool = False


@dataclass(frozen=True)
class OpMapping:
    """How one op runs: on ``tiles`` tiles placed at ``anchor``, as ``steps`` (per execution)."""

    op: int
    tiles: int
    anchor: int
    steps: tuple[Step, ...]
    temp_bytes: int
    vertices: int = 1
    exchange_phases: int = 0
    codelets: tuple[str, ...] = ()
    plan: MatmulPlan | None = None
    shared_code: bool = False  # an identical op of an earlier layer holds its code (outlining)


@dataclass(frozen=True)
class TileMap:
    """Layouts of all values and mappings of all ops of a program."""

    layouts: Mapping[int, Layout]
    ops: tuple[OpMapping, ...]
    storage_bytes: Mapping[int, int]  # root value id -> bytes of storage


def map_program(program: Program, chip: Chip, params: ModelParams,
                available_memory_proportion: float, outlined: Outline = NO_OUTLINE) -> TileMap:
    """Layouts and op mappings for ``program`` on ``chip``; ``outlined`` says which ops share
    code with an identical op of an earlier layer and which copy values in and out
    (:mod:`ipu_sim.outline`)."""
    if not 0.0 < available_memory_proportion <= 1.0:
        raise ValueError("available_memory_proportion must be in (0, 1], got "
                         f"{available_memory_proportion}")
    m = _Mapper(program, chip, params, int(available_memory_proportion * chip.sram_bytes))
    ops = tuple(m.map(op) for op in program.ops)
    ops = tuple(_with_outlining(m, op, outlined) for op in ops)
    return TileMap(m.layouts, ops, m.storage)


def _with_outlining(m: "_Mapper", op: OpMapping, outlined: Outline) -> OpMapping:
    """An outlined op's copies in and out of its subgraph: on-tile copies (the subgraph's tensors
    are mapped like the caller's) live while the op runs; a shared op keeps no code of its own."""
    values = outlined.copies.get(op.op, ())
    per_tile = sum(ceil_div(m.storage.get(r, 0), m.layouts[r].tiles) for r in values)
    if per_tile and op.steps:
        cycles = m.params.vertex_overhead_cycles + worker_cycles(
            ceil_div(per_tile, m.chip.vector_bytes), 2, m.chip)  # load + store per 64-bit word
        op = replace(op, steps=op.steps + (Step(0, cycles, 1, "outline copy"),),
                     temp_bytes=op.temp_bytes + per_tile)
    return replace(op, shared_code=True) if op.op in outlined.shared else op


class _Mapper:
    def __init__(self, program: Program, chip: Chip, params: ModelParams, budget: int):
        self.chip, self.params, self.budget = chip, params, budget
        self.roots = program.roots()
        self.variables = {v.id for v in program.inputs + program.constants}
        self.storage = {v.id: v.nbytes for v in program.inputs + program.constants}
        self.layouts: dict[int, Layout] = {}
        self._mappings = itertools.count()
        self._plans: dict[tuple, MatmulPlan] = {}  # shapes repeat across layers: plan each once
        for k, v in enumerate(program.inputs + program.constants):
            self.layouts[v.id] = self.fresh(v.nbytes, -1 - k)

    # -- helpers -------------------------------------------------------------------------------------
    def fresh(self, nbytes: int, anchor: int, broadcast: bool = False) -> Layout:
        tiles = int(min(self.chip.tiles, max(1, ceil_div(nbytes, self.params.min_bytes_per_tile))))
        return Layout(next(self._mappings), tiles, anchor, broadcast)

    def source_bytes(self, v: Value) -> int:
        return self.storage.get(self.roots[v.id], v.nbytes)

    def received(self, inputs, layout: Layout, per_tile: int) -> int:
        """Bytes a tile with ``per_tile`` elements receives for operands not mapped like ``layout``."""
        total = 0
        for v in inputs:
            if self.layouts[v.id].mapping != layout.mapping:
                total += min(self.source_bytes(v), per_tile * v.itemsize)
        return total

    def driver(self, op: Op, elements: int) -> Layout | None:
        for v in op.inputs:
            lay = self.layouts[v.id]
            if v.size == elements and not lay.broadcast:
                return lay
        return None

    def follow_or_fresh(self, op: Op, elements: int, itemsize: int) -> Layout:
        lay = self.driver(op, elements)
        return lay if lay is not None else self.fresh(elements * itemsize, op.index)

    def instructions(self, work: VectorWork) -> int:
        p = self.params
        return (work.simple + p.transcendental_instructions * work.transcendental
                + p.software_function_instructions * work.software)

    def vec(self, elements: int, itemsize: int, instructions: int) -> int:
        return int(vector_cycles(elements, itemsize, instructions, self.chip, self.params))

    def xchg(self, bytes_in: int, bytes_out: int = 0) -> int:
        return int(exchange_cycles(bytes_in, bytes_out, self.chip))

    def set_outputs(self, op: Op, layout: Layout) -> None:
        for v in op.outputs:
            self.layouts[v.id] = layout
            self.storage.setdefault(self.roots[v.id], v.nbytes)

    # -- per kind ------------------------------------------------------------------------------------
    def map(self, op: Op) -> OpMapping:
        if any(v.size == 0 for v in op.inputs + op.outputs):  # empty arrays: nothing to do
            for v in op.outputs:
                self.layouts[v.id] = self.fresh(v.nbytes, op.index)
                self.storage.setdefault(self.roots[v.id], v.nbytes)
            return OpMapping(op.index, 1, op.index, (), 0, vertices=0)
        handler = {MATMUL: self.matmul, ELEMENTWISE: self.elementwise, REDUCE: self.reduce,
                   CUMULATIVE: self.cumulative, GATHER: self.gather, SCATTER: self.scatter,
                   COPY: self.copy, VIEW: self.view, RNG: self.rng, SORT: self.sort,
                   CONSTANT: self.constant}[op.kind]
        return handler(op)

    def view(self, op: Op) -> OpMapping:
        if not op.inputs:  # broadcast of a literal: a one-element constant
            for v in op.outputs:
                self.storage[self.roots[v.id]] = v.itemsize
                self.layouts[v.id] = Layout(next(self._mappings), 1, op.index, True)
            return OpMapping(op.index, 1, op.index, (), 0, vertices=0)
        for v, j in zip(op.outputs, op.aliases or (0,) * len(op.outputs)):
            if j < 0:  # a literal passed through (optimization_barrier): a one-element constant
                self.storage[self.roots[v.id]] = v.itemsize
                self.layouts[v.id] = Layout(next(self._mappings), 1, op.index, True)
                continue
            src = op.inputs[j]
            lay = self.layouts[src.id]
            if op.primitive in _KEEP_MAPPING:
                new = lay
            elif op.primitive in ("slice", "split", "unstack"):
                tiles = max(1, round(lay.tiles * v.size / max(src.size, 1)))
                new = Layout(next(self._mappings), tiles, lay.anchor, lay.broadcast)
            else:  # transpose, rev, broadcast_in_dim
                new = Layout(next(self._mappings), lay.tiles, lay.anchor,
                             lay.broadcast or op.primitive == "broadcast_in_dim")
            self.layouts[v.id] = new
        return OpMapping(op.index, 0, op.index, (), 0, vertices=0)

    def elementwise(self, op: Op) -> OpMapping:
        out = op.outputs[0]
        size = max(v.itemsize for v in op.inputs + op.outputs)
        lay = self.follow_or_fresh(op, out.size, out.itemsize)
        per_tile = ceil_div(out.size, lay.tiles)
        recv = self.received(op.inputs, lay, per_tile)
        loads = sum(1 for v in op.inputs if v.size > 1)
        instr = loads + len(op.outputs) + self.instructions(op.work)
        step = Step(self.xchg(recv, recv), self.vec(per_tile, size, instr), 1, "vector")
        self.set_outputs(op, lay)
        return OpMapping(op.index, lay.tiles, lay.anchor, (step,), recv,
                         exchange_phases=int(recv > 0), codelets=(f"{op.name}:{out.dtype}",))

    def reduce(self, op: Op) -> OpMapping:
        out = op.outputs[0]
        outputs, reduced = out.size, op.detail.reduced
        elements = outputs * reduced
        size = max(v.itemsize for v in op.inputs) if op.inputs else out.itemsize
        lay = self.follow_or_fresh(op, elements, size)
        per_tile = ceil_div(elements, lay.tiles)
        recv = self.received(op.inputs, lay, per_tile)
        loads = sum(1 for v in op.inputs if v.size > 1)
        local = self.vec(per_tile, size, loads + self.instructions(op.work))
        partials = ceil_div(per_tile, reduced) if op.detail.minor else min(per_tile, outputs)
        contributions = ceil_div(lay.tiles * partials, max(outputs, 1))
        acc = max(4, out.itemsize) if out.dtype.startswith(("float", "bfloat")) else out.itemsize
        steps = [Step(self.xchg(recv, recv), local, 1, "reduce")]
        stages = self.reduce_stages(outputs, contributions, acc) if contributions > 1 else []
        steps += [s for s, _, _ in stages]
        out_tiles = stages[-1][1] if stages else min(lay.tiles, max(1, outputs))
        self.set_outputs(op, Layout(next(self._mappings), out_tiles, lay.anchor))
        temp = recv + partials * acc + max((r for _, _, r in stages), default=0)
        return OpMapping(op.index, lay.tiles, lay.anchor, tuple(steps), temp,
                         vertices=1 + len(stages), exchange_phases=int(recv > 0) + len(stages),
                         codelets=(f"reduce:{out.dtype}",))

    def reduce_stages(self, outputs: int, contributions: int, acc: int) -> list[tuple[Step, int, int]]:
        """The cheaper of 1 or 2 exchange-and-add stages combining ``contributions`` partials per
        output: [(step, tiles used, bytes received per tile)].

        Two at most: poplibs reduce has an optional intermediate-to-intermediate stage and the
        intermediate-to-output stage after the on-tile one, each a superstep (sync, exchange,
        compute set). Each received partial is a region the reduce vertex walks.
        """
        best, best_cycles = [], None
        for stages in (1, 2):
            fan_in = math.ceil(contributions ** (1 / stages) - 1e-9)
            left, plan = contributions, []
            while left > 1:
                f = min(fan_in, left)
                left = ceil_div(left, f)
                groups = outputs * left
                tiles = min(self.chip.tiles, groups)
                per_tile = ceil_div(groups, tiles)
                recv = per_tile * f * acc
                add = int(partials_cycles(per_tile, f, acc, 2 * f + 1, self.chip, self.params))
                step = Step(self.xchg(recv, recv), add, 1, "reduce")
                plan.append((step, tiles, recv))
            cycles = sum(s.cycles + self.chip.sync_cycles for s, _, _ in plan)
            if best_cycles is None or cycles < best_cycles:
                best, best_cycles = plan, cycles
        return best

    def cumulative(self, op: Op) -> OpMapping:
        out = op.outputs[0]
        lay = self.follow_or_fresh(op, out.size, out.itemsize)
        per_tile = ceil_div(out.size, lay.tiles)
        recv = self.received(op.inputs, lay, per_tile)
        instr = 2 + self.instructions(op.work)
        steps = [Step(self.xchg(recv, recv), self.vec(per_tile, out.itemsize, instr), 1, "scan")]
        if not op.detail.minor or op.detail.reduced > per_tile:
            # Rows span tiles: pass each tile's running totals on, then add them in.
            rows = ceil_div(per_tile, op.detail.reduced) if op.detail.minor else per_tile
            carry = rows * out.itemsize
            steps.append(Step(self.xchg(carry, carry), self.vec(per_tile, out.itemsize, 3), 1, "scan"))
        self.set_outputs(op, lay)
        return OpMapping(op.index, lay.tiles, lay.anchor, tuple(steps), recv,
                         vertices=len(steps), exchange_phases=len(steps),
                         codelets=(f"{op.primitive}:{out.dtype}",))

    def gather(self, op: Op) -> OpMapping:
        table, out = op.inputs[0], op.outputs[0]
        lay = self.layouts[table.id]
        slices = op.detail.slices
        out_lay = self.fresh(out.nbytes, lay.anchor)
        check = worker_cycles(slices, self.params.index_check_instructions, self.chip)
        copy = worker_cycles(ceil_div(ceil_div(out.nbytes, lay.tiles), 8), 2, self.chip)
        index_bytes = slices * _INDEX_BYTES if len(op.inputs) > 1 else 0
        scan = Step(self.xchg(index_bytes), self.params.vertex_overhead_cycles + check + copy, 1,
                    "gather")
        send = Step(self.xchg(ceil_div(out.nbytes, out_lay.tiles), ceil_div(out.nbytes, lay.tiles)),
                    0, 1, "gather")
        self.set_outputs(op, out_lay)
        temp = index_bytes + ceil_div(out.nbytes, lay.tiles)
        return OpMapping(op.index, max(lay.tiles, out_lay.tiles), lay.anchor, (scan, send), temp,
                         exchange_phases=2, codelets=(f"multislice:{out.dtype}",))

    def scatter(self, op: Op) -> OpMapping:
        j = op.aliases[0] if op.aliases else 0
        target = op.inputs[j]
        updates = [v for i, v in enumerate(op.inputs) if i != j and v.size > 1]
        update_bytes = max((v.nbytes for v in updates), default=0)
        lay = self.layouts[target.id]
        if lay.broadcast:  # scattering into a broadcast constant materialises it
            lay = self.fresh(target.nbytes, op.index)
        slices, cols = op.detail.slices, op.detail.slice_elements
        groups = int(min(lay.tiles, max(1, ceil_div(cols * target.itemsize,
                                                    self.params.min_bytes_per_tile))))
        index_bytes = slices * _INDEX_BYTES if slices > 1 else 0
        recv = ceil_div(update_bytes, groups) + index_bytes
        check = worker_cycles(slices, self.params.index_check_instructions, self.chip)
        instr = 3 + self.instructions(op.work)  # load update, load target, store (+ combine)
        apply = self.vec(ceil_div(update_bytes // max(target.itemsize, 1), lay.tiles),
                         target.itemsize, instr)
        step = Step(self.xchg(recv, ceil_div(update_bytes, lay.tiles)), check + apply, 1, "scatter")
        self.set_outputs(op, lay)
        return OpMapping(op.index, lay.tiles, lay.anchor, (step,), recv, exchange_phases=1,
                         codelets=(f"multiupdate:{target.dtype}",))

    def copy(self, op: Op) -> OpMapping:
        out = op.outputs[0]
        lay = self.driver(op, out.size) if len(op.inputs) == 1 else None
        if lay is not None:  # same mapping: an on-tile memcpy
            per_tile = ceil_div(out.nbytes, lay.tiles)
            step = Step(0, self.params.vertex_overhead_cycles
                        + worker_cycles(ceil_div(per_tile, 8), 2, self.chip), 1, "copy")
            lay = Layout(next(self._mappings), lay.tiles, lay.anchor)
            self.set_outputs(op, lay)
            return OpMapping(op.index, lay.tiles, lay.anchor, (step,), 0, codelets=("copy",))
        lay = self.fresh(out.nbytes, op.index)
        per_tile = ceil_div(out.nbytes, lay.tiles)
        self.set_outputs(op, lay)
        return OpMapping(op.index, lay.tiles, lay.anchor,
                         (Step(self.xchg(per_tile, per_tile), 0, 1, "copy"),), 0, vertices=0,
                         exchange_phases=1)

    def rng(self, op: Op) -> OpMapping:
        # The random values are the largest output (rng_bit_generator also returns its new state).
        out = max(op.outputs, key=lambda v: v.nbytes)
        lay = self.fresh(out.nbytes, op.index)
        per_tile = ceil_div(out.size, lay.tiles)
        recv = sum(v.nbytes for v in op.inputs)
        # Hardware PRNG: one 64-bit random word per instruction, then a store.
        step = Step(self.xchg(recv), self.vec(per_tile, out.itemsize, 2), 1, "rng")
        self.set_outputs(op, lay)
        return OpMapping(op.index, lay.tiles, lay.anchor, (step,), recv,
                         exchange_phases=int(recv > 0), codelets=("rng",))

    def sort(self, op: Op) -> OpMapping:
        """Bitonic sort along the axis: log2(n)(log2(n)+1)/2 compare-exchange passes; a pass whose
        partner distance reaches past a tile's elements exchanges all of them."""
        x = op.inputs[0]
        lay = self.follow_or_fresh(op, x.size, x.itemsize)
        per_tile = ceil_div(x.size, lay.tiles)
        levels = max(1, math.ceil(math.log2(max(op.detail.reduced, 2))))
        near = max(0, min(levels, math.ceil(math.log2(max(per_tile, 1)))))
        crossing = sum(levels - j for j in range(near, levels))
        passes = levels * (levels + 1) // 2
        row_bytes = per_tile * sum(v.itemsize for v in op.inputs)
        compute = self.vec(per_tile, x.itemsize, 4 * len(op.inputs))
        steps = [Step(0, (passes - crossing) * compute, 1, "sort")]
        if crossing:
            steps.append(Step(self.xchg(row_bytes, row_bytes), compute, crossing, "sort"))
        for v in op.outputs:
            self.layouts[v.id] = lay if v.size == x.size else self.fresh(v.nbytes, lay.anchor)
            self.storage.setdefault(self.roots[v.id], v.nbytes)
        return OpMapping(op.index, lay.tiles, lay.anchor, tuple(steps), row_bytes,
                         exchange_phases=len(steps) - 1, codelets=(f"sort:{x.dtype}",))

    def constant(self, op: Op) -> OpMapping:
        out = op.outputs[0]
        lay = self.fresh(out.nbytes, op.index)
        self.set_outputs(op, lay)
        if op.work == VectorWork():  # an allocation (a scan's stacked-output buffer)
            return OpMapping(op.index, lay.tiles, lay.anchor, (), 0, vertices=0)
        step = Step(0, self.vec(ceil_div(out.size, lay.tiles), out.itemsize, 2), 1, "constant")
        return OpMapping(op.index, lay.tiles, lay.anchor, (step,), 0, codelets=(op.primitive,))

    def matmul(self, op: Op) -> OpMapping:
        lhs, rhs = op.inputs[0], op.inputs[1]
        key = (op.detail, self.roots[lhs.id] in self.variables, self.roots[rhs.id] in self.variables)
        if key not in self._plans:
            self._plans[key] = plan_matmul(op.detail, self.chip, self.params, self.budget, *key[1:])
        plan = self._plans[key]
        out = op.outputs[0]
        self.set_outputs(op, Layout(next(self._mappings), plan.tiles, op.index))
        codelets = (f"amp:{op.detail.inputs}{op.detail.partials}",)
        if plan.k_split > 1:
            codelets += (f"reduce:{op.detail.partials}",)
        return OpMapping(op.index, plan.tiles, op.index, plan.steps, plan.temp_bytes,
                         vertices=1 + (plan.k_split > 1), exchange_phases=plan.exchange_phases,
                         codelets=codelets, plan=plan)


def tile_range(start: int, tiles: int, chip: Chip) -> tuple[int, int]:
    """[first, last) tiles of a block of ``tiles`` placed at ``start``, kept on the chip."""
    tiles = int(min(max(tiles, 1), chip.tiles))
    first = int(min(max(start, 0), chip.tiles - tiles))
    return first, first + tiles


def spread(nbytes: int, tiles: int) -> int:
    """Bytes per tile of ``nbytes`` spread over ``tiles`` tiles (the busiest tile)."""
    return int(np.ceil(nbytes / max(tiles, 1)))
