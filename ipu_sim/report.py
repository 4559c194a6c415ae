"""The result of an estimate: time, throughput, breakdowns, per-tile memory; text, JSON, plots.

Utilisation is achieved FLOP/s over the chip's peak for the matmul precision carrying the most
FLOPs (FP32 AMP peak for programs without matmuls).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ipu_sim.calibration import CALIBRATION, Calibration, TimeRange, time_range
from ipu_sim.hardware import Chip
from ipu_sim.memory import CATEGORIES, MemoryMap
from ipu_sim.schedule import Schedule
from ipu_sim.tiles import TileMap
from ipu_sim.trace import MATMUL, REDUCE, Program, scope  # noqa: F401  (scope: re-exported)


@dataclass(frozen=True)
class OpCost:
    """One op's share of the estimate: FLOPs and critical-path cycles over all its executions."""

    index: int
    name: str
    kind: str
    path: str
    source: str
    count: int
    tiles: int
    flops: float
    compute_cycles: int
    exchange_cycles: int
    sync_cycles: int
    supersteps: int
    temp_bytes: int
    plan: str = ""

    @property
    def cycles(self) -> int:
        return self.compute_cycles + self.exchange_cycles + self.sync_cycles

    def components(self) -> dict[str, int]:
        """Cycles by calibration component (:mod:`ipu_sim.calibration`): matmuls and reductions
        whole, as J19 timed them; other ops split into vector compute, exchange and sync."""
        if self.kind in (MATMUL, REDUCE):
            return {self.kind: self.cycles}
        return {"vector": self.compute_cycles, "exchange": self.exchange_cycles,
                "sync": self.sync_cycles}


def component_seconds(ops, chip: Chip) -> dict[str, float]:
    """Seconds of ``ops`` (:class:`OpCost`) by calibration component."""
    cycles: dict[str, int] = {}
    for o in ops:
        for key, c in o.components().items():
            cycles[key] = cycles.get(key, 0) + c
    return {key: chip.seconds(c) for key, c in cycles.items() if c}


@dataclass(frozen=True)
class Estimate:
    """What one call of the traced function costs on one IPU."""

    chip: Chip
    available_memory_proportion: float
    cycles: int
    flops: float
    peak_flops: float
    peak_precision: str
    supersteps: int
    ops: tuple[OpCost, ...]
    memory: MemoryMap
    out_of_memory: str | None

    @property
    def seconds(self) -> float:
        return self.chip.seconds(self.cycles)

    @property
    def tflops(self) -> float:
        """Achieved TFLOP/s = FLOPs / time."""
        return self.flops / self.seconds / 1e12 if self.cycles else 0.0

    @property
    def utilisation(self) -> float:
        """Achieved FLOP/s / peak FLOP/s of ``peak_precision``."""
        return self.tflops * 1e12 / self.peak_flops

    @property
    def fits(self) -> bool:
        return self.memory.fits

    def seconds_range(self, calibration: Calibration = CALIBRATION) -> TimeRange:
        """:attr:`seconds` and the range the calibration error of its components allows."""
        low, high = calibration.bounds(component_seconds(self.ops, self.chip))
        return time_range(self.seconds, low, high, 0.0)

    @property
    def compute_cycles(self) -> int:
        return sum(o.compute_cycles for o in self.ops)

    @property
    def exchange_cycles(self) -> int:
        return sum(o.exchange_cycles for o in self.ops)

    @property
    def sync_cycles(self) -> int:
        return sum(o.sync_cycles for o in self.ops)

    def by_kind(self) -> dict[str, dict[str, float]]:
        """Per op kind: cycles split into compute / exchange / sync, and FLOPs."""
        out: dict[str, dict[str, float]] = {}
        for o in self.ops:
            row = out.setdefault(o.kind, dict(compute=0, exchange=0, sync=0, cycles=0, flops=0.0))
            row["compute"] += o.compute_cycles
            row["exchange"] += o.exchange_cycles
            row["sync"] += o.sync_cycles
            row["cycles"] += o.cycles
            row["flops"] += o.flops
        return dict(sorted(out.items(), key=lambda kv: -kv[1]["cycles"]))

    def by_scope(self, depth: int | None = None) -> dict[str, int]:
        """Cycles per ``jax.named_scope`` path cut to ``depth`` components, forward and backward
        (and recomputation) of a scope summed: ``transpose(jvp(layer3))/attn`` counts as
        ``layer3/attn``."""
        out: dict[str, int] = {}
        for o in self.ops:
            parts = scope(o.path).split("/")
            key = "/".join(parts[:depth] if depth else parts) or "<top>"
            out[key] = out.get(key, 0) + o.cycles
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def by_phase(self) -> dict[str, int]:
        """Cycles of the forward pass (under ``jvp``), backward pass (under ``transpose``) and the
        rest (e.g. the optimizer update)."""
        out = dict(forward=0, backward=0, other=0)
        for o in self.ops:
            key = ("backward" if "transpose(" in o.path else "forward" if "jvp(" in o.path
                   else "other")
            out[key] += o.cycles
        return out

    def summary(self, top: int = 8) -> str:
        c = self.chip
        span = self.seconds_range()
        lines = [
            f"ipu_sim estimate on {c.name} ({c.tiles} tiles, {c.clock_hz / 1e9:.3g} GHz), "
            f"availableMemoryProportion {self.available_memory_proportion:g}",
            f"time {self.seconds * 1e3:.4g} ms ({self.cycles:,} cycles, {self.supersteps:,} "
            f"supersteps); {span.low * 1e3:.4g}-{span.high * 1e3:.4g} ms within the model's "
            "calibration error",
            f"work {self.flops / 1e9:.4g} GFLOP -> {self.tflops:.4g} TFLOP/s = "
            f"{100 * self.utilisation:.1f}% of {self.peak_flops / 1e12:.4g} ({self.peak_precision})",
            "time split: " + _shares(dict(compute=self.compute_cycles,
                                          exchange=self.exchange_cycles, sync=self.sync_cycles)),
            "by op kind: " + _shares({k: v["cycles"] for k, v in self.by_kind().items()}),
        ]
        m = self.memory
        verdict = "fits" if m.fits else "DOES NOT FIT"
        lines.append(f"memory: peak {m.max_bytes:,} B on tile {m.worst_tile} of {m.sram_bytes:,} "
                     f"({100 * m.max_bytes / m.sram_bytes:.1f}%): {verdict}")
        tile = m.worst_tile
        lines.append("  at that peak: " + ", ".join(
            f"{name} {m.category(name)[tile]:,}" for name in CATEGORIES))
        if self.out_of_memory:
            lines.append("  " + self.out_of_memory)
        lines.append(f"top {top} ops by time:")
        for o in sorted(self.ops, key=lambda o: -o.cycles)[:top]:
            share = o.cycles / self.cycles if self.cycles else 0.0
            lines.append(f"  {100 * share:5.1f}% #{o.index} {o.name} x{o.count} on {o.tiles} tiles "
                         f"[{o.path or 'top'}] {o.plan}".rstrip())
        return "\n".join(lines)

    def to_dict(self, tiles: bool = False, ops: bool = True) -> dict:
        """Plain data; per-tile memory lists only with ``tiles=True``."""
        m = self.memory
        span = self.seconds_range()
        d = dict(
            chip=self.chip.name, available_memory_proportion=self.available_memory_proportion,
            seconds=self.seconds, seconds_range=[span.low, span.high],
            tflops_range=[self.flops / span.high / 1e12 if span.high else 0.0,
                          self.flops / span.low / 1e12 if span.low else 0.0],
            uncertainty=uncertainty_dict(component_seconds(self.ops, self.chip)),
            cycles=self.cycles, flops=self.flops, tflops=self.tflops,
            utilisation=self.utilisation, peak_flops=self.peak_flops,
            peak_precision=self.peak_precision, supersteps=self.supersteps,
            compute_cycles=self.compute_cycles, exchange_cycles=self.exchange_cycles,
            sync_cycles=self.sync_cycles, by_kind=self.by_kind(),
            memory=dict(fits=m.fits, sram_bytes=m.sram_bytes, max_bytes=m.max_bytes,
                        worst_tile=m.worst_tile, out_of_memory=self.out_of_memory,
                        at_worst_tile={k: v[m.worst_tile] for k, v in m.categories}),
        )
        if tiles:
            d["memory"]["peak"] = list(m.peak)
            d["memory"]["categories"] = {k: list(v) for k, v in m.categories}
        if ops:
            d["ops"] = [dict(index=o.index, name=o.name, kind=o.kind, path=o.path, source=o.source,
                             count=o.count, tiles=o.tiles, flops=o.flops, cycles=o.cycles,
                             compute=o.compute_cycles, exchange=o.exchange_cycles,
                             sync=o.sync_cycles, temp_bytes=o.temp_bytes, plan=o.plan)
                        for o in self.ops if o.cycles or o.flops]
        return d

    def to_json(self, tiles: bool = False, ops: bool = True, **kwargs) -> str:
        return json.dumps(self.to_dict(tiles=tiles, ops=ops), **kwargs)

    def plot_memory(self, ax=None):
        """PopVision-style memory map: stacked bytes per tile by category, with the SRAM line."""
        import matplotlib.pyplot as plt
        import numpy as np

        if ax is None:
            _, ax = plt.subplots(figsize=(10, 3.5))
        tiles = np.arange(len(self.memory.peak))
        bottom = np.zeros(len(tiles))
        for name, values in self.memory.categories:
            v = np.asarray(values) / 1024
            ax.fill_between(tiles, bottom, bottom + v, step="mid", label=name, linewidth=0)
            bottom += v
        ax.axhline(self.memory.sram_bytes / 1024, color="k", linestyle="--", label="tile SRAM")
        ax.set_xlabel("tile")
        ax.set_ylabel("peak live memory (KiB)")
        ax.set_xlim(0, len(tiles) - 1)
        ax.legend(loc="upper right", fontsize="small", ncol=3)
        ax.set_title(f"memory per tile on {self.chip.name}")
        return ax

    def plot_time(self, ax=None, top: int = 20):
        """Time per op (the ``top`` slowest), split into compute / exchange / sync."""
        import matplotlib.pyplot as plt

        ops = sorted(self.ops, key=lambda o: -o.cycles)[:top][::-1]
        if ax is None:
            _, ax = plt.subplots(figsize=(8, 0.3 * len(ops) + 1))
        us = 1e6 / self.chip.clock_hz
        labels = [f"#{o.index} {o.name[:24]} [{scope(o.path)[:20] or 'top'}]" for o in ops]
        left = [0.0] * len(ops)
        for part in ("compute", "exchange", "sync"):
            width = [getattr(o, f"{part}_cycles") * us for o in ops]
            ax.barh(labels, width, left=left, label=part)
            left = [a + b for a, b in zip(left, width)]
        ax.set_xlabel("time (us)")
        ax.legend(loc="lower right", fontsize="small")
        ax.set_title(f"time per op on {self.chip.name}")
        return ax


def uncertainty_dict(seconds: dict[str, float], calibration: Calibration = CALIBRATION) -> dict:
    """Plain data: seconds per component, each component's error factors and the J19 rows they
    come from, and which components no row calibrates."""
    table = calibration.describe()
    return dict(components={k: dict(seconds=v, **table.get(k, dict(factors=[1.0, 1.0], rows={})))
                            for k, v in sorted(seconds.items())},
                uncalibrated=sorted(k for k, v in seconds.items() if k not in table and v),
                source="J19 GC2 microbenchmarks, ipu_sim.calibration")


def _shares(parts: dict) -> str:
    total = sum(parts.values()) or 1
    return "  ".join(f"{k} {100 * v / total:.1f}%" for k, v in parts.items())


def make_estimate(program: Program, tilemap: TileMap, sched: Schedule, memory: MemoryMap,
                  chip: Chip, available_memory_proportion: float) -> Estimate:
    """Assemble an :class:`Estimate` from the stages of the model."""
    costs = []
    for op, m, t in zip(program.ops, tilemap.ops, sched.times):
        costs.append(OpCost(op.index, op.name, op.kind, op.path, op.source, op.count, m.tiles,
                            op.flops * op.count, t.compute, t.exchange, t.sync, t.supersteps,
                            m.temp_bytes, m.plan.describe() if m.plan else ""))
    by_precision = program.matmul_flops()
    if by_precision:
        inputs, partials = max(by_precision, key=by_precision.get)
    else:
        inputs, partials = "fp32", "fp32"
    label = f"{inputs} in, {partials} partials"
    return Estimate(chip, available_memory_proportion, sched.cycles, program.flops,
                    chip.peak_flops(inputs, partials), label, sched.supersteps, tuple(costs),
                    memory, memory.out_of_memory(program))
