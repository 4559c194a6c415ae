"""ipu_sim: a performance model of the Graphcore IPU driven by jitted JAX functions.

``ipu_sim.estimate(fn, *args, chip="bow")`` traces ``fn`` to its jaxpr, maps every op onto the
chip's tiles (matmuls through a poplin-like planner under a per-tile memory budget), schedules the
result as BSP supersteps (6 worker threads per tile, exchange, sync) and checks per-tile memory with
liveness. See docs/DESIGN.md ("Performance model") and docs/reference/ipu_hardware.md.
"""

from ipu_sim.estimator import estimate, estimate_matmul, estimate_program
from ipu_sim.fusion import fuse
from ipu_sim.hardware import BOW, C600, CHIPS, GC2, GC200, AmpRate, Chip, get_chip
from ipu_sim.memory import CATEGORIES, MemoryMap, memory_map
from ipu_sim.params import ModelParams
from ipu_sim.planner import MatmulPlan, plan_matmul
from ipu_sim.report import Estimate, OpCost
from ipu_sim.schedule import Schedule, schedule
from ipu_sim.tiles import Layout, OpMapping, TileMap, map_program
from ipu_sim.trace import SUPPORTED_PRIMITIVES, MatmulDims, Op, Program, Value, trace

__all__ = [
    "AmpRate", "BOW", "C600", "CATEGORIES", "CHIPS", "Chip", "Estimate", "GC2", "GC200", "Layout",
    "MatmulDims", "MatmulPlan", "MemoryMap", "ModelParams", "Op", "OpCost", "OpMapping", "Program",
    "SUPPORTED_PRIMITIVES", "Schedule", "TileMap", "Value", "estimate", "estimate_matmul",
    "estimate_program", "fuse", "get_chip", "map_program", "memory_map", "plan_matmul", "schedule",
    "trace",
]
