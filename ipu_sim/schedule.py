"""BSP schedule: ops -> supersteps -> cycles, with MIMD packing of independent small ops.

Every superstep is a global sync, an exchange phase and a compute phase; it ends when the slowest
tile is done, so it costs ``sync + max over tiles (exchange + compute)``. An op contributes the
supersteps of its :class:`~ipu_sim.tiles.OpMapping` (executed ``count`` times inside loops).

MIMD rule: ops are taken in program order; an op joins the open group of ops when it has the same
loop nest, reads nothing the group writes and writes nothing the group reads or writes, and its
tiles are disjoint from every tile the group already uses. A group's k-th superstep then costs
``sync + max over members (exchange_k + compute_k)``: independent ops run side by side on disjoint
tile sets (each tile runs its own program) and share the syncs. Small ops that are mapped afresh
are placed at a rotating tile offset, so consecutive ones land on disjoint tiles.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field, replace
from typing import Mapping

import numpy as np

from ipu_sim.hardware import Chip
from ipu_sim.tiles import TileMap, tile_range
from ipu_sim.trace import Program


@dataclass(frozen=True)
class OpTime:
    """Cycles charged to one op over all its executions (critical path only)."""

    compute: int = 0
    exchange: int = 0
    sync: int = 0
    supersteps: int = 0

    @property
    def cycles(self) -> int:
        return self.compute + self.exchange + self.sync


@dataclass(frozen=True)
class Group:
    """Ops that share supersteps; ``cycles`` and ``supersteps`` are per execution."""

    ops: tuple[int, ...]
    count: int
    supersteps: int
    program_steps: int  # supersteps in the control program (loops and repeats compiled once)
    cycles: int
    outlined: bool = False  # all its ops run code compiled for an identical earlier layer


@dataclass(frozen=True)
class Schedule:
    """Placement of every layout anchor and the superstep groups in execution order."""

    starts: Mapping[int, int]
    groups: tuple[Group, ...]
    times: tuple[OpTime, ...]

    @property
    def cycles(self) -> int:
        return sum(g.count * g.cycles for g in self.groups)

    @property
    def supersteps(self) -> int:
        return sum(g.count * g.supersteps for g in self.groups)

    @property
    def program_steps(self) -> int:
        return sum(g.program_steps for g in self.groups)

    def range(self, anchor: int, tiles: int, chip: Chip) -> tuple[int, int]:
        return tile_range(self.starts[anchor], tiles, chip)


@dataclass
class _Open:
    loops: tuple
    count: int
    members: list = field(default_factory=list)  # (op index, steps)
    ranges: list = field(default_factory=list)
    reads: set = field(default_factory=set)
    writes: set = field(default_factory=set)
    shared: list = field(default_factory=list)  # per member: its code is an earlier op's

    def accepts(self, op, rng, reads, writes) -> bool:
        if op.loops != self.loops or op.count != self.count:
            return False
        if reads & self.writes or writes & (self.reads | self.writes):
            return False
        return all(rng[1] <= a or b <= rng[0] for a, b in self.ranges)

    def add(self, op, steps, rng, reads, writes, shared: bool = False) -> None:
        self.members.append((op.index, steps))
        self.shared.append(shared)
        self.ranges.append(rng)
        self.reads |= reads
        self.writes |= writes


def schedule(program: Program, tilemap: TileMap, chip: Chip, mimd: bool = True) -> Schedule:
    """Place layouts on tiles and group the ops' supersteps (see the module docstring)."""
    roots = program.roots()
    starts: dict[int, int] = {}
    cursor = 0

    def place(anchor: int, tiles: int) -> None:
        nonlocal cursor
        if anchor in starts:
            return
        s = 0 if tiles >= chip.tiles or cursor + tiles > chip.tiles else cursor
        starts[anchor] = s
        cursor = (s + tiles) % chip.tiles

    for k, v in enumerate(program.inputs + program.constants):
        place(-1 - k, tilemap.layouts[v.id].tiles)
    times = [OpTime()] * len(program.ops)
    groups: list[Group] = []
    open_: _Open | None = None
    for op, m in zip(program.ops, tilemap.ops):
        place(m.anchor, m.tiles)
        if not m.steps or op.count == 0:
            continue
        rng = tile_range(starts[m.anchor], m.tiles, chip)
        reads = {roots[v.id] for v in op.inputs}
        writes = {roots[v.id] for v in op.outputs}
        if not (mimd and open_ is not None and open_.accepts(op, rng, reads, writes)):
            if open_ is not None:
                groups.append(_close(open_, chip, times))
            open_ = _Open(op.loops, op.count)
        open_.add(op, m.steps, rng, reads, writes, m.shared_code)
    if open_ is not None:
        groups.append(_close(open_, chip, times))
    return Schedule(types.MappingProxyType(starts), tuple(_calls(groups)), tuple(times))


def _close(g: _Open, chip: Chip, times: list) -> Group:
    """Cost a group and charge each of its supersteps to the member on the critical path."""
    sync = chip.sync_cycles
    ids = [i for i, _ in g.members]
    if len(g.members) == 1:
        i, steps = g.members[0]
        n = sum(s.repeat for s in steps)
        comp = sum(s.compute * s.repeat for s in steps)
        exch = sum(s.exchange * s.repeat for s in steps)
        times[i] = OpTime(comp * g.count, exch * g.count, n * sync * g.count, n * g.count)
        return Group(tuple(ids), g.count, n, len(steps), comp + exch + n * sync, _outlined(g))
    seqs = [_expand(steps) for _, steps in g.members]
    length = max(len(e) for e, _ in seqs)
    exch = np.zeros((len(seqs), length), dtype=np.int64)
    comp = np.zeros_like(exch)
    for r, (e, c) in enumerate(seqs):
        exch[r, :len(e)], comp[r, :len(c)] = e, c
    crit = np.argmax(exch + comp, axis=0)
    cols = np.arange(length)
    for r, i in enumerate(ids):
        mine = crit == r
        n = int(mine.sum())
        times[i] = OpTime(int(comp[r, mine].sum()) * g.count, int(exch[r, mine].sum()) * g.count,
                          n * sync * g.count, n * g.count)
    total = int((exch + comp)[crit, cols].sum()) + length * sync
    program_steps = max(len(steps) for _, steps in g.members)
    return Group(tuple(ids), g.count, length, program_steps, total, _outlined(g))


def _outlined(g: _Open) -> bool:
    """Whether every op of the group is an outlined copy of an earlier one: its supersteps are in
    the earlier ops' code, and the control program only calls it (:func:`_calls`)."""
    return bool(g.shared) and all(g.shared)


def _calls(groups: list[Group]) -> list[Group]:
    """One control-program step (the call of the outlined code) per run of consecutive outlined
    groups, which add none of their own."""
    out, calling = [], False
    for g in groups:
        if g.outlined:
            g = replace(g, program_steps=0 if calling else 1)
        calling = g.outlined
        out.append(g)
    return out


def _expand(steps) -> tuple[np.ndarray, np.ndarray]:
    reps = [s.repeat for s in steps]
    return (np.repeat([s.exchange for s in steps], reps),
            np.repeat([s.compute for s in steps], reps))
