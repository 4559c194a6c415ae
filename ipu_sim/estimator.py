"""The public entry points: trace -> fuse -> map to tiles -> BSP schedule -> memory -> Estimate.

Each stage is a plain function over frozen data, so a multi-IPU layer can trace once, cut the
:class:`~ipu_sim.trace.Program` into pipeline stages and call :func:`estimate_program` per stage.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from ipu_sim.fusion import fuse as fuse_program
from ipu_sim.hardware import Chip, get_chip
from ipu_sim.memory import memory_map
from ipu_sim.outline import NO_OUTLINE
from ipu_sim.outline import outline as outline_program
from ipu_sim.params import ModelParams
from ipu_sim.report import Estimate, make_estimate
from ipu_sim.schedule import schedule
from ipu_sim.tiles import map_program
from ipu_sim.trace import Program, trace


def estimate(fn: Callable, *args: Any, chip: str | Chip = "bow",
             available_memory_proportion: float = 0.6, params: ModelParams | None = None,
             cond: str = "max", while_trip_counts: int | Mapping[str, int] | None = None,
             fuse: bool = True, mimd: bool = True, donate: bool = True,
             outline: bool = True) -> Estimate:
    """Estimate one call of ``fn(*args)`` on one IPU.

    ``args`` are arrays or ``jax.ShapeDtypeStruct``s (nothing is computed). ``cond`` and
    ``while_trip_counts`` control tracing (see :mod:`ipu_sim.trace`); ``fuse`` element-wise fusion,
    ``mimd`` packing of independent ops on disjoint tiles, ``donate`` in-place update of inputs by
    outputs of the same shape and dtype, ``outline`` one copy of the code of identical layers
    (:mod:`ipu_sim.outline`).
    """
    chip = get_chip(chip)
    _check_proportion(available_memory_proportion)
    program = trace(fn, *args, cond=cond, while_trip_counts=while_trip_counts)
    return estimate_program(program, chip=chip,
                            available_memory_proportion=available_memory_proportion,
                            params=params, fuse=fuse, mimd=mimd, donate=donate, outline=outline)


def estimate_program(program: Program, chip: str | Chip = "bow",
                     available_memory_proportion: float = 0.6, params: ModelParams | None = None,
                     fuse: bool = True, mimd: bool = True, donate: bool = True,
                     outline: bool = True) -> Estimate:
    """Estimate an already traced :class:`Program` (e.g. one pipeline stage of a larger one)."""
    chip = get_chip(chip)
    _check_proportion(available_memory_proportion)
    params = params or ModelParams()
    if not isinstance(params, ModelParams):
        raise TypeError(f"params must be a ModelParams, got {type(params).__name__}")
    if fuse:
        program = fuse_program(program)
    outlined = outline_program(program) if outline else NO_OUTLINE
    tilemap = map_program(program, chip, params, available_memory_proportion, outlined)
    sched = schedule(program, tilemap, chip, mimd=mimd)
    memory = memory_map(program, tilemap, sched, chip, params, donate=donate)
    return make_estimate(program, tilemap, sched, memory, chip, available_memory_proportion)


_PARTIALS = {None: None, "float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}


def estimate_matmul(m: int, k: int, n: int, *, batch: int = 1, dtype: str = "float16",
                    partials: str | None = None, chip: str | Chip = "bow",
                    available_memory_proportion: float = 0.6,
                    params: ModelParams | None = None) -> Estimate:
    """Estimate ``C = A @ B`` with A (batch, m, k), B (batch, k, n) program variables of ``dtype``
    accumulated (and returned) in ``partials`` (default: ``dtype``)."""
    for name, value in (("m", m), ("k", k), ("n", n), ("batch", batch)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be a positive size, got {value}")
    if partials not in _PARTIALS:
        raise ValueError(f"partials must be one of {list(_PARTIALS)}, got {partials!r}")
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"dtype {dtype!r} is not a dtype") from e
    lead = (batch,) if batch > 1 else ()
    a = jax.ShapeDtypeStruct(lead + (m, k), dt)
    b = jax.ShapeDtypeStruct(lead + (k, n), dt)
    pref = _PARTIALS[partials]

    def matmul(a, b):
        return jnp.matmul(a, b, preferred_element_type=pref)

    return estimate(matmul, a, b, chip=chip, available_memory_proportion=available_memory_proportion,
                    params=params)


def _check_proportion(p: float) -> None:
    if not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0:
        raise ValueError(f"available_memory_proportion must be in (0, 1], got {p!r}")
