"""Matmul planner: how Poplar (poplibs ``poplin``) spreads one matmul over the tiles.

A plan splits ``batch x (m x k) @ (k x n)`` into ``b_s x m_s x k_s x n_s`` blocks, one per tile, and
runs the ``n`` axis in ``serial`` passes when the blocks would not fit. Per pass, each tile:

1. receives its operand blocks over the exchange (the left block once, the right block per pass);
   an operand that is a program variable is laid out for the plan, so a tile already holds
   ``1/r`` of a block replicated ``r`` times and receives the rest;
2. runs one AMP vertex on its (rows x depth x cols) block;
3. if ``k_s > 1``: exchanges its partial sums so each of the ``k_s`` tiles of a group owns ``1/k_s``
   of the outputs, and adds the ``k_s`` partials in a vector vertex (another superstep).

Temporary bytes per tile = left block + right block + (partials + received partials if ``k_s > 1``),
which must not exceed the budget ``available_memory_proportion x tile SRAM``. The planner searches a
fixed candidate set of splits (both orientations: ``C = A B`` and ``C^T = B^T A^T``), takes the
fewest serial passes that fit, and minimises cycles; if nothing fits it takes the plan with the least
temporary memory, as poplin does, and says so. Candidates do not depend on the shape, so a larger
problem never gets a cheaper best plan.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ipu_sim.costs import Step, amp_cycles, ceil_div, exchange_cycles, partials_cycles
from ipu_sim.hardware import Chip
from ipu_sim.params import ModelParams
from ipu_sim.trace import MatmulDims


@dataclass(frozen=True)
class MatmulPlan:
    """A chosen split and its cost; block sizes are per tile per serial pass."""

    batch_split: int
    m_split: int
    k_split: int
    n_split: int
    serial: int
    transposed: bool
    tiles: int
    block: tuple[int, int, int, int]  # (batch, rows, depth, cols) on one tile
    temp_bytes: int
    fits_budget: bool
    steps: tuple[Step, ...]
    exchange_phases: int

    @property
    def cycles_without_sync(self) -> int:
        return sum(s.cycles * s.repeat for s in self.steps)

    def describe(self) -> str:
        t = "T " if self.transposed else ""
        return (f"{t}split b{self.batch_split} m{self.m_split} k{self.k_split} n{self.n_split} "
                f"x{self.serial} serial on {self.tiles} tiles, block {self.block}, "
                f"temp {self.temp_bytes} B/tile" + ("" if self.fits_budget else " (over budget)"))


def _candidates(tiles: int) -> np.ndarray:
    values = set(range(1, 17)) | {d for d in range(1, tiles + 1) if tiles % d == 0}
    for a in range(12):
        for b in range(7):
            for c in (1, 5, 7):
                values.add(2 ** a * 3 ** b * c)
    return np.array(sorted(v for v in values if v <= tiles), dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _grid(tiles: int, batched: bool) -> tuple[np.ndarray, ...]:
    """All candidate (batch, m, k, n) splits using at most ``tiles`` tiles (read-only arrays)."""
    c = _candidates(tiles)
    ms, ks, ns = (g.ravel() for g in np.meshgrid(c, c, c, indexing="ij"))
    keep = ms * ks * ns <= tiles
    ms, ks, ns = ms[keep], ks[keep], ns[keep]
    parts = []
    for b in (c if batched else c[:1]):
        fit = b * ms * ks * ns <= tiles
        parts.append((np.full(int(fit.sum()), b), ms[fit], ks[fit], ns[fit]))
    grid = tuple(np.concatenate(x) for x in zip(*parts))
    for g in grid:
        g.flags.writeable = False
    return grid


def plan_matmul(dims: MatmulDims, chip: Chip, params: ModelParams, budget_bytes: int,
                lhs_local: bool = False, rhs_local: bool = False) -> MatmulPlan:
    """The fastest plan for ``dims`` whose temporaries fit ``budget_bytes`` per tile."""
    budget, lhs_local, rhs_local = int(budget_bytes), bool(lhs_local), bool(rhs_local)
    options = [_best(dims, chip, params, budget, lhs_local, rhs_local, transposed=False)]
    flipped = MatmulDims(dims.batch, dims.n, dims.k, dims.m, dims.inputs, dims.partials,
                         dims.rhs_itemsize, dims.lhs_itemsize, dims.out_itemsize)
    options.append(_best(flipped, chip, params, budget, rhs_local, lhs_local, transposed=True))
    return min(options, key=lambda p: (not p.fits_budget, p.cycles_without_sync
                                       + chip.sync_cycles * sum(s.repeat for s in p.steps)))


def _best(d: MatmulDims, chip: Chip, params: ModelParams, budget: int, lhs_local: bool,
          rhs_local: bool, transposed: bool) -> MatmulPlan:
    bs, ms, ks, ns = _grid(chip.tiles, d.batch > 1)
    sa, sb, so = d.lhs_itemsize, d.rhs_itemsize, d.out_itemsize
    sp = 4 if d.partials == "fp32" else 2
    bb, mb, kb = ceil_div(d.batch, bs), ceil_div(d.m, ms), ceil_div(d.k, ks)
    a_bytes = bb * mb * kb * sa
    split_k = ks > 1
    per_col = bb * kb * sb + np.where(split_k, bb * mb * sp + ceil_div(bb * mb * sp * (ks - 1), ks), 0)
    room = budget - a_bytes
    nb_max = np.where(room > 0, room // np.maximum(per_col, 1), 0)
    fits = nb_max >= 1
    serial = np.where(fits, ceil_div(d.n, ns * np.maximum(nb_max, 1)), ceil_div(d.n, ns))
    nb = ceil_div(d.n, ns * serial)
    temp = a_bytes + nb * per_col
    cyc = _cycles(d, chip, params, bs, ms, ks, ns, bb, mb, kb, nb, serial, sp, so,
                  lhs_local, rhs_local)
    if fits.any():
        i = int(np.argmin(np.where(fits, cyc, np.iinfo(np.int64).max)))
    else:
        i = int(np.lexsort((cyc, temp))[0])
    steps, phases = _steps(d, chip, params, *(int(x[i]) for x in (bs, ms, ks, ns, bb, mb, kb, nb,
                                                                  serial)), sp, so,
                           lhs_local, rhs_local)
    return MatmulPlan(int(bs[i]), int(ms[i]), int(ks[i]), int(ns[i]), int(serial[i]), transposed,
                      int(bs[i] * ms[i] * ks[i] * ns[i]),
                      (int(bb[i]), int(mb[i]), int(kb[i]), int(nb[i])), int(temp[i]),
                      bool(fits[i]), steps, phases)


def _phase_costs(d, chip, params, ms, ks, ns, bb, mb, kb, nb, sp, so, lhs_local, rhs_local):
    """(left-block bytes, right-block bytes, AMP cycles, reduction exchange, reduction compute)."""
    frac_a = (ns - 1) / ns if lhs_local else 1.0
    frac_b = (ms - 1) / ms if rhs_local else 1.0
    a_in = np.ceil(bb * mb * kb * d.lhs_itemsize * frac_a).astype(np.int64)
    b_in = np.ceil(bb * kb * nb * d.rhs_itemsize * frac_b).astype(np.int64)
    # FP8 operands move as bytes; a chip without an FP8 AMP widens them to fp16 on the tile.
    in_size = 1 if d.inputs == "fp8" and chip.supports("fp8") else 4 if d.inputs == "fp32" else 2
    rate = chip.amp_flops_per_cycle(d.inputs, d.partials)
    amp = bb * amp_cycles(mb, kb, nb, in_size, rate, chip, params)
    red_bytes = ceil_div(bb * mb * nb * sp * (ks - 1), ks)
    red_x = exchange_cycles(red_bytes, red_bytes, chip)
    owned = ceil_div(bb * mb * nb, ks)
    red_c = partials_cycles(owned, ks, sp, 2 * (ks - 1) + 1 + (so != sp), chip, params)
    red_x = np.where(ks > 1, red_x, 0)
    red_c = np.where(ks > 1, red_c, 0)
    return a_in, b_in, amp, red_x, red_c


def _cycles(d, chip, params, bs, ms, ks, ns, bb, mb, kb, nb, serial, sp, so, lhs_local, rhs_local):
    a_in, b_in, amp, red_x, red_c = _phase_costs(d, chip, params, ms, ks, ns, bb, mb, kb, nb, sp,
                                                 so, lhs_local, rhs_local)
    first = exchange_cycles(a_in + b_in, 0, chip) + amp
    rest = exchange_cycles(b_in, 0, chip) + amp
    reduce = np.where(ks > 1, chip.sync_cycles + red_x + red_c, 0)
    return (first + chip.sync_cycles + (serial - 1) * (rest + chip.sync_cycles)
            + serial * reduce)


def _steps(d, chip, params, bs, ms, ks, ns, bb, mb, kb, nb, serial, sp, so, lhs_local, rhs_local):
    a_in, b_in, amp, red_x, red_c = (int(x) for x in _phase_costs(
        d, chip, params, ms, ks, ns, bb, mb, kb, nb, sp, so, lhs_local, rhs_local))
    first = Step(int(exchange_cycles(a_in + b_in, 0, chip)), amp, 1, "amp")
    reduce = Step(red_x, red_c, 1, "reduce") if ks > 1 else None
    steps = [first] + ([reduce] if reduce else [])
    phases = 1 + (reduce is not None)
    if serial > 1:
        rest = Step(int(exchange_cycles(b_in, 0, chip)), amp, 1, "amp")
        # The passes alternate AMP and reduction supersteps; listed grouped, with the same sum.
        steps.append(Step(rest.exchange, rest.compute, serial - 1, "amp"))
        if reduce:
            steps.append(Step(red_x, red_c, serial - 1, "reduce"))
        phases += 1
    return tuple(steps), phases
