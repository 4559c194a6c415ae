"""Cycle models of the three things a tile does: vector code, AMP code and exchange.

All functions work element-wise on numpy integer arrays as well as on Python ints, so the matmul
planner can cost thousands of candidate plans at once.

The 6-thread issue rule: a tile has 6 worker contexts sharing one issue slot round-robin, so a worker
issues one instruction every 6 cycles and the tile reaches one instruction per cycle only with all 6
busy. Work split into ``v`` equal pieces over the workers therefore takes ``ceil(v / 6) * 6 * i``
cycles for ``i`` instructions per piece: with fewer than 6 pieces the tile is proportionally slower.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ipu_sim.hardware import Chip
from ipu_sim.params import ModelParams


@dataclass(frozen=True)
class Step:
    """One BSP superstep of one op on its tiles, repeated ``repeat`` times in a row.

    A superstep is a global sync, an exchange phase and a compute phase; the op's busiest tile
    sets both phase lengths (cycles, per execution of the op).
    """

    exchange: int
    compute: int
    repeat: int = 1
    label: str = ""

    @property
    def cycles(self) -> int:
        return self.exchange + self.compute


def ceil_div(a, b):
    """ceil(a / b) for non-negative ints or integer arrays."""
    return -(-a // b)


def worker_cycles(pieces, instructions, chip: Chip):
    """Cycles for ``pieces`` independent work items of ``instructions`` each, shared by the workers."""
    return ceil_div(pieces, chip.workers) * chip.workers * instructions


def vector_cycles(elements, itemsize: int, instructions, chip: Chip, params: ModelParams):
    """Cycles of one vertex streaming ``elements`` through ``instructions`` per 64-bit vector.

    ``instructions`` counts loads, arithmetic and stores separately: poplibs' generic codelets do not
    dual-issue memory and arithmetic instructions. This is what J19's reduction throughput implies
    (~1 fp32 per cycle per tile for a load + add loop); see ``benchmarks/ipu_calibration.py``.
    """
    vectors = ceil_div(elements, chip.vector_lanes(itemsize))
    busy = worker_cycles(vectors, instructions, chip)
    return np.where(np.asarray(elements) > 0, params.vertex_overhead_cycles + busy, 0)


def partials_cycles(outputs, regions, itemsize: int, instructions, chip: Chip, params: ModelParams):
    """Cycles of a vertex combining ``regions`` regions of partials into ``outputs`` values.

    Each region is the partials one tile sent (or the tile's own); the workers share the output
    vectors, and each worker walks every region's descriptor for its slice:
    ``overhead + worker_cycles(vectors, instructions) + workers * regions * region_instructions``,
    with ``instructions`` per output vector (loads, adds, store, cast).
    """
    walk = chip.workers * regions * params.partials_region_instructions
    return vector_cycles(outputs, itemsize, instructions, chip, params) + np.where(
        np.asarray(outputs) > 0, walk, 0)


def amp_geometry(inputs_itemsize: int, flops_per_cycle: int, params: ModelParams) -> tuple[int, int]:
    """(input channels, output channels) of one AMP weight block.

    Each AMP instruction consumes one 64-bit word of an input row (``e`` elements) and multiplies it
    into ``cols`` accumulators, i.e. ``2 * e * cols`` FLOPs per cycle at full issue, so
    ``cols = flops_per_cycle / (2 e)`` (GC2 FP32: 4, Mk2 FP16.16: 16). A block is
    ``amp_words_per_row`` words deep.
    """
    per_word = 8 // inputs_itemsize
    return params.amp_words_per_row * per_word, max(1, flops_per_cycle // (2 * per_word))


def amp_cycles(rows, depth, cols, inputs_itemsize: int, flops_per_cycle: int, chip: Chip,
               params: ModelParams):
    """Cycles of one AMP (ConvPartial1x1Out-like) vertex computing a (rows x depth) @ (depth x cols) block.

    depth and cols are padded to the weight-block geometry. Per weight block the supervisor loads
    the weights into the AMP, one 64-bit word per instruction while the workers wait; like any
    context it issues once every ``workers`` cycles. Then the workers share the rows (6-thread
    rule), each row taking ``amp_words_per_row`` AMP instructions.
    """
    block_k, block_n = amp_geometry(inputs_itemsize, flops_per_cycle, params)
    blocks = ceil_div(depth, block_k) * ceil_div(cols, block_n)
    load = ceil_div(block_k * block_n * inputs_itemsize, chip.vector_bytes) * chip.workers
    per_block = load + params.amp_block_overhead_cycles + worker_cycles(
        rows, params.amp_words_per_row, chip)
    return params.vertex_overhead_cycles + blocks * per_block


def exchange_cycles(bytes_in, bytes_out, chip: Chip):
    """Cycles of one exchange phase for a tile receiving ``bytes_in`` and sending ``bytes_out``.

    Send and receive proceed in parallel at the exchange rate; the phase pays the latency of the
    farthest tile pair once (a phase ends when its slowest message has landed).
    """
    moved = np.maximum(bytes_in, bytes_out)
    data = ceil_div(moved, chip.exchange_bytes_per_cycle)
    return np.where(moved > 0, chip.exchange_latency_cycles[1] + data, 0)


def load_cycles(nbytes, load_bytes: int, chip: Chip, params: ModelParams):
    """Cycles of a vertex that reads ``nbytes`` of tile memory with ``load_bytes``-wide loads."""
    if load_bytes not in (4, 8, 16) or load_bytes > chip.load_bytes_per_cycle:
        raise ValueError(f"load_bytes must be 4, 8 or 16 (the widest load), got {load_bytes}")
    return params.vertex_overhead_cycles + worker_cycles(ceil_div(nbytes, load_bytes), 1, chip)
