"""Per-tile memory with liveness, in the categories PopVision shows.

Every tile holds, at every point of the program:

* always-live: ``variables`` (program inputs and constants: weights, optimizer state, the batch) and
  ``code`` (Poplar runtime and worker stacks, the control program -- a few words per superstep on
  every tile --, and on the tiles each op uses: vertex state, exchange programs, codelets; loop
  bodies are compiled once, and so are identical layers, which share one copy of their code as
  PopART's outlining compiles them, :mod:`ipu_sim.outline`);
* not-always-live: ``saved_activations`` (values made in the forward pass and read by the backward
  pass, i.e. produced outside and read inside a ``transpose(...)`` name scope), other ``activations``
  (intermediate values, live from the op that makes them to their last reader; program outputs to
  the end) and the ``temporaries`` of the op running (exchange receive buffers, matmul blocks and
  partials, copies into and out of an outlined layer).

A value's storage is spread evenly over the tiles of its layout. Views and in-place updates share
their source's storage. With ``donate=True`` an output with the shape and dtype of an input (in
order) is written in place into that input, as a training step updates its weights on the IPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ipu_sim.hardware import Chip
from ipu_sim.params import ModelParams
from ipu_sim.schedule import Schedule
from ipu_sim.tiles import TileMap
from ipu_sim.trace import ELEMENTWISE, Program

CATEGORIES = ("variables", "saved_activations", "activations", "temporaries", "code")
_BACKWARD = "transpose("


@dataclass(frozen=True)
class MemoryMap:
    """Peak live bytes per tile, their split by category at that peak, and where it happens."""

    sram_bytes: int
    peak: tuple[int, ...]
    categories: tuple[tuple[str, tuple[int, ...]], ...]
    peak_op: tuple[int, ...]  # op index at each tile's peak; -1 if only always-live memory

    @property
    def fits(self) -> bool:
        return max(self.peak) <= self.sram_bytes

    @property
    def worst_tile(self) -> int:
        return int(np.argmax(self.peak))

    @property
    def max_bytes(self) -> int:
        return max(self.peak)

    @property
    def total_bytes(self) -> int:
        return sum(self.peak)

    def category(self, name: str) -> tuple[int, ...]:
        for key, values in self.categories:
            if key == name:
                return values
        raise ValueError(f"unknown memory category {name!r}; valid: {', '.join(CATEGORIES)}")

    def out_of_memory(self, program: Program) -> str | None:
        """Poplar-style message for the tile furthest over its SRAM, or None if all fit."""
        if self.fits:
            return None
        tile = self.worst_tile
        need = self.peak[tile]
        where = "in always-live memory (variables and code)"
        i = self.peak_op[tile]
        if i >= 0:
            op = program.ops[i]
            where = f"at op #{i} {op.name} ({op.path or 'top level'}, {op.source})"
        return (f"Out of memory on tile {tile}: {need:,} bytes needed, {self.sram_bytes:,} available "
                f"({need - self.sram_bytes:,} over) {where}")


def memory_map(program: Program, tilemap: TileMap, sched: Schedule, chip: Chip,
               params: ModelParams, donate: bool = True) -> MemoryMap:
    """Per-tile peak memory of ``program`` mapped by ``tilemap`` and placed by ``sched``."""
    n_ops = len(program.ops)
    roots = program.roots()
    live = _lifetimes(program, roots)
    donated = _donated(program, roots, live) if donate else set()
    backward_reads = {roots[v.id] for op in program.ops if _BACKWARD in op.path for v in op.inputs}
    variables = np.zeros(chip.tiles)
    code = _code(program, tilemap, sched, chip, params)
    alloc: list[list] = [[] for _ in range(n_ops)]
    free: list[list] = [[] for _ in range(n_ops)]
    for root, (first, last) in live.items():
        if root in donated:
            continue
        lay = tilemap.layouts[root]
        a, b = sched.range(lay.anchor, lay.tiles, chip)
        per_tile = math.ceil(tilemap.storage_bytes.get(root, 0) / (b - a))
        if first < 0:
            variables[a:b] += per_tile
            continue
        producer = program.ops[first]
        saved = _BACKWARD not in producer.path and root in backward_reads
        alloc[first].append((a, b, per_tile, saved))
        free[min(last, n_ops - 1)].append((a, b, per_tile, saved))
    return _sweep(program, tilemap, sched, chip, variables, code, alloc, free)


def _sweep(program, tilemap, sched, chip, variables, code, alloc, free) -> MemoryMap:
    always = variables + code
    saved = np.zeros(chip.tiles)
    acts = np.zeros(chip.tiles)
    peak = always.copy()
    peak_op = np.full(chip.tiles, -1)
    snap = {"saved_activations": np.zeros(chip.tiles), "activations": np.zeros(chip.tiles),
            "temporaries": np.zeros(chip.tiles)}
    for op, m in zip(program.ops, tilemap.ops):
        for a, b, per_tile, is_saved in alloc[op.index]:
            (saved if is_saved else acts)[a:b] += per_tile
        temp = np.zeros(chip.tiles)
        if m.temp_bytes and m.steps:
            a, b = sched.range(m.anchor, m.tiles, chip)
            temp[a:b] = m.temp_bytes
        total = always + saved + acts + temp
        better = total > peak
        if better.any():
            peak[better] = total[better]
            peak_op[better] = op.index
            snap["saved_activations"][better] = saved[better]
            snap["activations"][better] = acts[better]
            snap["temporaries"][better] = temp[better]
        for a, b, per_tile, is_saved in free[op.index]:
            (saved if is_saved else acts)[a:b] -= per_tile
    as_ints = lambda x: tuple(int(round(v)) for v in x)  # noqa: E731
    cats = (("variables", as_ints(variables)), ("saved_activations", as_ints(snap["saved_activations"])),
            ("activations", as_ints(snap["activations"])), ("temporaries", as_ints(snap["temporaries"])),
            ("code", as_ints(code)))
    return MemoryMap(chip.sram_bytes, as_ints(peak), cats, tuple(int(i) for i in peak_op))


def _lifetimes(program: Program, roots: dict) -> dict[int, tuple[int, int]]:
    """Root storage id -> (defining op index or -1 for inputs, last op index that needs it)."""
    live = {v.id: (-1, -1) for v in program.inputs + program.constants}
    for op in program.ops:
        for v in op.outputs:
            r = roots[v.id]
            first, last = live.get(r, (op.index, op.index))
            live[r] = (first, max(last, op.index))
        for v in op.inputs:
            r = roots[v.id]
            first, last = live[r]
            live[r] = (first, max(last, op.index))
    end = len(program.ops)
    for v in program.outputs:
        r = roots[v.id]
        live[r] = (live[r][0], end)
    return live


def _donated(program: Program, roots: dict, live: dict) -> set[int]:
    """Output roots written in place into an input of the same shape and dtype (first match).

    Only where that is safe: the input is last read before the output is made, or by the
    element-wise op making it (which reads and writes each element in the same place).
    """
    free_inputs = list(program.inputs)
    donated = set()
    input_ids = {v.id for v in program.inputs + program.constants}
    for v in program.outputs:
        r = roots[v.id]
        if r in input_ids:
            continue
        made = live[r][0]
        for k, x in enumerate(free_inputs):
            last = live[x.id][1]
            safe = last < made or (last == made and program.ops[made].kind == ELEMENTWISE)
            if x.shape == v.shape and x.dtype == v.dtype and safe:
                donated.add(r)
                del free_inputs[k]
                break
    return donated


def _code(program: Program, tilemap: TileMap, sched: Schedule, chip: Chip,
          params: ModelParams) -> np.ndarray:
    code = np.full(chip.tiles, float(params.runtime_bytes + params.control_bytes_per_step
                                     * sched.program_steps))
    has: dict[str, np.ndarray] = {}
    for m in tilemap.ops:
        if not m.steps or m.shared_code:  # outlined: an earlier identical op holds the code
            continue
        a, b = sched.range(m.anchor, m.tiles, chip)
        code[a:b] += m.vertices * params.vertex_state_bytes + m.exchange_phases * params.exchange_code_bytes
        for key in m.codelets:
            seen = has.setdefault(key, np.zeros(chip.tiles, dtype=bool))
            size = params.amp_codelet_bytes if key.startswith("amp:") else params.codelet_bytes
            code[a:b] += np.where(seen[a:b], 0, size)
            seen[a:b] = True
    return code
