"""ipu_sim: a performance model of the Graphcore IPU driven by jitted JAX functions.

``ipu_sim.estimate(fn, *args, chip="bow")`` traces ``fn`` to its jaxpr, maps every op onto the
chip's tiles (matmuls through a poplin-like planner under a per-tile memory budget), schedules the
result as BSP supersteps (6 worker threads per tile, exchange, sync) and checks per-tile memory with
liveness. ``ipu_sim.estimate_system(step, *args, system="bow-pod16", pipeline=[3, 7, 7, 7], ...)``
builds training on IPU systems on top of it: pipeline stages cut by ``layer_{i}`` named scopes,
micro-batches, replicas and all-reduce, recomputation, streaming memory, host I/O
(``python -m ipu_sim --help``). Every estimate carries a range on its time from the model's own
error on the J19 microbenchmarks (:mod:`ipu_sim.calibration`); :mod:`ipu_sim.published` holds
Graphcore's published BERT configurations, which must fit. See docs/DESIGN.md ("Performance
model") and docs/reference/ipu_hardware.md.
"""

from ipu_sim.calibration import CALIBRATION, Calibration, CalibrationRow, TimeRange
from ipu_sim.collectives import SystemParams
from ipu_sim.estimator import estimate, estimate_matmul, estimate_program
from ipu_sim.fusion import fuse
from ipu_sim.hardware import (BOW, C600, CHIPS, GC2, GC200, SYSTEMS, AmpRate, Chip, Links, System,
                              get_chip, get_system)
from ipu_sim.memory import CATEGORIES, MemoryMap, memory_map
from ipu_sim.params import ModelParams
from ipu_sim.pipeline import PipelineTime, pipeline_time
from ipu_sim.placement import Placement, anchor_ops, place_ops
from ipu_sim.planner import MatmulPlan, plan_matmul
from ipu_sim.replica import ReplicaCosts, cost_replica
from ipu_sim.report import Estimate, OpCost
from ipu_sim.schedule import Schedule, schedule
from ipu_sim.system import IPUMemory, IPUReport, SystemEstimate, compose, estimate_system
from ipu_sim.tiles import Layout, OpMapping, TileMap, map_program
from ipu_sim.trace import SUPPORTED_PRIMITIVES, MatmulDims, Op, Program, Value, trace

__all__ = [
    "AmpRate", "BOW", "C600", "CALIBRATION", "CATEGORIES", "CHIPS", "Calibration",
    "CalibrationRow", "Chip", "Estimate", "GC2", "GC200", "TimeRange",
    "IPUMemory", "IPUReport", "Layout", "Links", "MatmulDims", "MatmulPlan", "MemoryMap",
    "ModelParams", "Op", "OpCost", "OpMapping", "PipelineTime", "Placement", "Program",
    "ReplicaCosts", "SUPPORTED_PRIMITIVES", "SYSTEMS", "Schedule", "System", "SystemEstimate",
    "SystemParams", "TileMap", "Value", "anchor_ops", "compose", "cost_replica", "estimate",
    "estimate_matmul", "estimate_program", "estimate_system", "fuse", "get_chip", "get_system",
    "map_program", "memory_map", "pipeline_time", "place_ops", "plan_matmul", "schedule", "trace",
]
