"""Model parameters: the numbers the performance model needs that are not chip facts.

Each one is named after the mechanism it stands for and says how its value was chosen. One
(``amp_block_overhead_cycles``) is fitted to the GC2 microbenchmarks of
``docs/reference/ipu_hardware.md`` (see ``benchmarks/ipu_calibration.py``); the rest are
order-of-magnitude choices from the structure of Poplar programs and only move memory or small-op
latency.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class ModelParams:
    """Tunable constants of the model (defaults are the calibrated values)."""

    # -- vertices (compute phase) ------------------------------------------------------------------
    # One vertex call: the supervisor starts the workers, each runs its prologue (load its vertex
    # state, set up the loop) and epilogue: ~10 instructions of one context at one issue slot in 6.
    # Not fitted; matters for small ops only.
    vertex_overhead_cycles: int = 60
    # AMP weight block depth in 64-bit input words: 4 words = 16 halves / 8 floats / 32 fp8 input
    # channels per block, the input-channel grouping of poplibs' ConvPartial1x1Out vertex.
    amp_words_per_row: int = 4
    # Per AMP weight block, on top of loading its weights (see costs.amp_cycles): each worker reads
    # its row list, sets up pointers, fills and drains the AMP pipeline -- 70 instruction slots of
    # one worker at one issue in 6 cycles. The one parameter fitted to the J19 square-matmul rows
    # (FP32 18.9 and FP16.32 58.9 TFLOP/s, both at once): predicted / measured 0.96 and 1.05.
    amp_block_overhead_cycles: int = 420
    # Vector instructions per 64-bit vector for functions the ISA has as single-lane (fp32) or
    # two-lane (fp16) instructions (exp, log, tanh, sigmoid, sqrt, reciprocal): half the lanes of a
    # plain vector op, so 2 instructions per vector.
    transcendental_instructions: int = 2
    # Functions without a hardware instruction (sin, erf, lgamma, ...): range reduction plus a
    # polynomial of ~6 FMAs on 2 lanes; order of magnitude, only matters for programs using them.
    software_function_instructions: int = 12
    # Reducing partials received from other tiles: each source tile's partials land in a region of
    # their own, which the reduce vertex reads through a list of (pointer, size) descriptors. Per
    # region each worker loads the descriptor, unpacks pointer and size and sets up its inner
    # loop: ~4 instructions [ISA: ld32, and/shr to unpack, rpt]. Not fitted; it is what makes a
    # small-output reduction cost per partial rather than per vector (J19's 1.97 us reduction).
    partials_region_instructions: int = 4
    # Gather / scatter (popops multiSlice / multiUpdate): per index, each tile holding part of the
    # table compares the index with its row range (load, compare, branch).
    index_check_instructions: int = 3

    # -- tile mapping -------------------------------------------------------------------------------
    # A freshly mapped tensor gets at least this many bytes per tile (8 vectors): below it the vertex
    # overhead dominates and poplibs' linear mapping stops spreading.
    min_bytes_per_tile: int = 64

    # -- always-live memory per tile (code, control, vertex state) ---------------------------------
    # Poplar runtime, supervisor and 6 worker stacks.
    runtime_bytes: int = 8 * 1024
    # Control program per superstep on every tile: sync, exchange call, compute-set call (3 words).
    control_bytes_per_step: int = 12
    # Exchange program per exchange phase on each participating tile (a handful of instructions).
    exchange_code_bytes: int = 24
    # State of one vertex: header plus edge pointers / sizes (~8 words).
    vertex_state_bytes: int = 32
    # Machine code of one codelet (vertex type x dtype); loaded once per tile that runs it.
    codelet_bytes: int = 1024
    amp_codelet_bytes: int = 4096

    def replace(self, **changes) -> "ModelParams":
        """A copy with ``changes``; unknown names and negative values raise ValueError."""
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown model parameter {key!r}; valid: {', '.join(sorted(names))}")
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"model parameter {key} must be a non-negative int, got {value!r}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return ModelParams(**values)
