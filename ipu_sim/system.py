"""Training on IPU systems: pipelines, replicas, gradient accumulation, recomputation, streaming memory.

``estimate_system(step, *args, system=..., ...)`` estimates one *weight update* (optimizer step) of
a data-parallel, pipelined training run from one traced call of ``step`` on one micro-batch:

1. trace and fuse ``step`` (:mod:`ipu_sim.trace`); optionally set every matmul's precision;
2. place its ops on the IPUs of one replica and cut the pipeline stages
   (:mod:`ipu_sim.placement`: the ``layer_{i}`` named-scope contract), optionally with
   per-layer recomputation (:mod:`ipu_sim.transforms`);
3. estimate each IPU's micro-batch program and update program with the single-IPU model
   (:mod:`ipu_sim.replica`);
4. compose: ``step = pipeline + all-reduce + weight update + host I/O`` where

   * ``pipeline``: ``grad_accum`` micro-batches through the stages in pipeline cycles, with the
     ramp-up / ramp-down bubble and IPU-Link transfers of activations and gradients
     (:mod:`ipu_sim.pipeline`); each micro-batch also adds its gradients into accumulators
     (when ``grad_accum > 1``);
   * ``all-reduce``: each IPU's gradients over the ``replicas`` IPUs holding the same stage
     (:mod:`ipu_sim.collectives`: ring per IPU-Link domain, gateways between domains); the IPUs
     of a replica reduce in parallel, the slowest sets the time;
   * ``weight update``: the slowest IPU's update program, plus streaming its optimizer state and
     master weights in and out of streaming memory (``offload_optimizer``) at the chip's
     streaming rate, plus transfers between IPUs during the update (tied weights);
   * ``host I/O``: every micro-batch's input data over the host link, plus one host-call latency
     per ``device_iterations`` steps.

Memory per IPU (per tile, the quantity that decides whether Poplar compiles): the larger of

* during the pipeline: the micro-batch program's peak (weights, one micro-batch's activations,
  temporaries, code) plus, spread evenly over the tiles, the activations stashed for the other
  micro-batches in flight, the gradients (accumulators when ``grad_accum > 1``; with one
  micro-batch, an upper bound: all of them as at the end of the backward) and the optimizer state
  (unless off-chip);
* during the update: the update program's peak (optimizer state streamed tensor by tensor when
  off-chip);

each plus the other program's code (both are always loaded). A configuration that does not fit
names the IPU, tile and bytes over; the report gives every IPU's margin (tile memory left on its
fullest tile).

Uncertainty: the step time comes with the range the model's calibration error allows
(:mod:`ipu_sim.calibration`): every stage's forward and backward, the gradient accumulation and the
update programs at the low, then the high end of their components' errors, composed the same way;
IPU-Link transfers, all-reduce, streaming and host I/O, which no calibration row checks, as they are.

Replica ``r`` uses IPUs ``r * S .. r * S + S - 1`` of the system (``S`` IPUs per replica), so a
replica of 4 fills one IPU-M2000 / Bow-2000.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import jax
import numpy as np

from ipu_sim.balance import balance, layer_work
from ipu_sim.calibration import CALIBRATION, Calibration, TimeRange, time_range
from ipu_sim.collectives import SystemParams, allreduce_seconds, transfer_seconds
from ipu_sim.fusion import fuse
from ipu_sim.hardware import Chip, System, get_system
from ipu_sim.params import ModelParams
from ipu_sim.pipeline import PipelineTime, in_flight, pipeline_time
from ipu_sim.placement import Anchors, anchor_ops, place_ops
from ipu_sim.report import component_seconds
from ipu_sim.replica import IPUPrograms, ReplicaCosts, cost_replica, per_ipu_proportions
from ipu_sim.trace import Program, trace
from ipu_sim.transforms import with_matmul_precision


@dataclass(frozen=True)
class IPUMemory:
    """Peak live bytes of an IPU's fullest tile over a whole weight update."""

    ipu: int
    sram_bytes: int
    peak_bytes: int
    worst_tile: int
    phase: str  # "pipeline" or "update": when the fullest tile peaks
    at_worst_tile: dict[str, int]  # bytes by category on that tile at that time
    total_bytes: int  # sum over tiles of their peaks

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.sram_bytes

    @property
    def over_bytes(self) -> int:
        return max(0, self.peak_bytes - self.sram_bytes)

    @property
    def margin_bytes(self) -> int:
        """Tile memory left on the fullest tile (negative: bytes over)."""
        return self.sram_bytes - self.peak_bytes


@dataclass(frozen=True)
class IPUReport:
    """One IPU of a replica: what it holds, its time and its memory."""

    ipu: int
    scopes: tuple[str, ...]
    layers: tuple[int, ...]
    stages: tuple[int, ...]
    forward_seconds: float  # per micro-batch, all its stages
    backward_seconds: float  # per micro-batch, with recomputation and accumulation
    busy_seconds: float  # per weight update: pipeline work + update + streaming
    flops: float  # per weight update
    peak_flops: float
    memory: IPUMemory
    available_memory_proportion: float  # the matmul planner's share of tile memory on this IPU

    def holds(self) -> str:
        """e.g. ``embeddings, layers 0-2, head``; ``unscoped ops`` for a step without scopes."""
        parts, layers = [], list(self.layers)
        for name in self.scopes:
            if name == "<top>":
                parts.append("unscoped ops")
                continue
            if name.startswith("layer"):
                if layers:
                    parts.append(_layer_range(layers))
                    layers = []
            else:
                parts.append(name)
        if layers:
            parts.append(_layer_range(layers))
        return ", ".join(parts) or "-"


def _temporaries_hint(r: IPUReport, largest: str) -> str:
    """Where matmul temporaries dominate: the option that bounds them (Poplar's
    availableMemoryProportion; Graphcore's BERT recipes tune it to 0.05-0.28 per IPU to fit)."""
    if largest != "temporaries":
        return ""
    return (f" (temporaries are bounded by availableMemoryProportion, {r.available_memory_proportion:g}"
            " on this IPU; Graphcore's BERT recipes set 0.05-0.28 per IPU)")


def _duration(seconds: float) -> str:
    """``12.34 ms`` below a second, ``1.234 s`` from a second on."""
    return f"{seconds:,.4g} s" if seconds >= 1 else f"{seconds * 1e3:,.4g} ms"


def _layer_range(layers: list[int]) -> str:
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ",".join(map(str, layers))


@dataclass(frozen=True)
class SystemEstimate:
    """What one weight update costs on a system, per replica and in total."""

    system: System
    precision: str
    layers_per_ipu: tuple[int, ...]
    chain: tuple[int, ...]
    replicas: int
    micro_batch: int
    grad_accum: int
    seq: int | None
    device_iterations: int
    recompute: bool
    offload_optimizer: bool
    pipeline: PipelineTime
    allreduce_seconds: float
    update_seconds: float  # slowest IPU's update incl. streaming and transfers
    streaming_seconds: float  # of update_seconds: optimizer state in/out of streaming memory
    host_seconds: float
    ipus: tuple[IPUReport, ...]
    notes: tuple[str, ...] = ()
    costs: ReplicaCosts | None = field(default=None, repr=False, compare=False)
    # step_seconds and the range the calibration error of its components allows
    # (ipu_sim.calibration); None: not computed (then the point estimate stands alone).
    step_range: TimeRange | None = None
    calibration: Calibration = field(default=CALIBRATION, repr=False, compare=False)

    @property
    def step_seconds(self) -> float:
        """Seconds per weight update: pipeline + all-reduce + update + host I/O."""
        return self.pipeline.seconds + self.allreduce_seconds + self.update_seconds + self.host_seconds

    @property
    def step_seconds_range(self) -> tuple[float, float]:
        """(low, high) seconds per weight update within the model's calibration error."""
        r = self.step_range
        return (r.low, r.high) if r is not None else (self.step_seconds, self.step_seconds)

    @property
    def samples_per_second_range(self) -> tuple[float, float]:
        low, high = self.step_seconds_range
        return self.samples_per_step / high, self.samples_per_step / low

    @property
    def tokens_per_second_range(self) -> tuple[float, float] | None:
        if self.seq is None:
            return None
        low, high = self.samples_per_second_range
        return low * self.seq, high * self.seq

    @property
    def ipus_per_replica(self) -> int:
        return len(self.layers_per_ipu)

    @property
    def ipus_used(self) -> int:
        return self.ipus_per_replica * self.replicas

    @property
    def samples_per_step(self) -> int:
        return self.micro_batch * self.grad_accum * self.replicas

    @property
    def samples_per_second(self) -> float:
        return self.samples_per_step / self.step_seconds

    @property
    def tokens_per_second(self) -> float | None:
        return None if self.seq is None else self.samples_per_second * self.seq

    @property
    def utilisation(self) -> float:
        """Achieved FLOP/s over the peak of all IPUs used (each at its dominant matmul precision)."""
        peak = sum(r.peak_flops for r in self.ipus)
        return sum(r.flops for r in self.ipus) / (self.step_seconds * peak)

    @property
    def fits(self) -> bool:
        return all(r.memory.fits for r in self.ipus)

    @property
    def out_of_memory(self) -> str | None:
        """Which IPUs do not fit, on which tile, by how much; None if all fit."""
        lines = []
        for r in self.ipus:
            m = r.memory
            if m.fits:
                continue
            top = sorted(m.at_worst_tile.items(), key=lambda kv: -kv[1])[:4]
            lines.append(
                f"IPU {r.ipu} ({r.holds()}) does not fit: tile {m.worst_tile} needs "
                f"{m.peak_bytes:,} B of {m.sram_bytes:,} ({m.over_bytes:,} B over) during the "
                f"{m.phase}; largest there: " + ", ".join(f"{k} {v:,}" for k, v in top)
                + _temporaries_hint(r, top[0][0]))
        return "\n".join(lines) or None

    def breakdown(self) -> dict[str, float]:
        """Seconds per weight update by part (they sum to ``step_seconds``)."""
        p = self.pipeline
        steady = p.micro_batches * p.steady_cycle_seconds
        return {"pipeline steady state": min(steady, p.seconds),
                "pipeline ramp up/down": max(0.0, p.seconds - steady),
                "gradient all-reduce": self.allreduce_seconds,
                "weight update": self.update_seconds - self.streaming_seconds,
                "optimizer state streaming": self.streaming_seconds,
                "host I/O": self.host_seconds}

    def summary(self) -> str:
        s = self.system
        lines = [
            f"{s.name} ({s.description}); {self.precision}",
            f"pipeline {list(self.layers_per_ipu)} layers per IPU x {self.replicas} replica(s) = "
            f"{self.ipus_used} of {s.ipus} IPUs; micro-batch {self.micro_batch}, gradient "
            f"accumulation {self.grad_accum} -> {self.samples_per_step:,} samples per weight update",
            f"recomputation {'on' if self.recompute else 'off'}, optimizer state "
            f"{'in streaming memory' if self.offload_optimizer else 'on chip'}, "
            f"device iterations {self.device_iterations}, availableMemoryProportion "
            + "/".join(f"{r.available_memory_proportion:g}" for r in self.ipus),
            f"step {_duration(self.step_seconds)}: {self.samples_per_second:,.1f} samples/s"
            + (f", {self.tokens_per_second:,.0f} tokens/s" if self.seq else "")
            + f"; {100 * self.utilisation:.1f}% of peak FLOP/s",
            self._range_line(),
            "breakdown: " + "  ".join(f"{k} {100 * v / self.step_seconds:.1f}%"
                                      for k, v in self.breakdown().items() if v > 0),
            f"pipeline: {len(self.chain)} stage(s) on IPUs {list(self.chain)}, "
            f"{self.pipeline.cycles} cycles, bubble {100 * self.pipeline.bubble_fraction:.1f}%, "
            f"inter-IPU transfers {100 * self.pipeline.transfer_seconds / self.step_seconds:.1f}% "
            "of the step",
            f"{'IPU':>3} {'holds':32s} {'fwd+bwd/mb':>11s} {'busy':>6s} {'FLOP util':>9s} "
            f"{'peak tile':>16s} {'margin':>9s} {'total MB':>9s}  fits",
        ]
        lines += [self._row(r) for r in self.ipus]
        if not self.fits:
            lines.append("DOES NOT FIT: " + self.out_of_memory)
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _range_line(self) -> str:
        low, high = self.step_seconds_range
        s_low, s_high = self.samples_per_second_range
        uncalibrated = self.step_range.uncalibrated_seconds if self.step_range else self.step_seconds
        return (f"within the model's calibration error: step {_duration(low)} to {_duration(high)}, "
                f"{s_low:,.1f}-{s_high:,.1f} samples/s ({100 * uncalibrated / self.step_seconds:.1f}% "
                "of the step is in parts no calibration row checks: IPU-Link transfers, "
                "all-reduce, streaming memory, host I/O)")

    def _row(self, r: IPUReport) -> str:
        m = r.memory
        mb_ms = (r.forward_seconds + r.backward_seconds) * 1e3
        return (f"{r.ipu:>3} {r.holds()[:32]:32s} {mb_ms:9.3f}ms "
                f"{100 * r.busy_seconds / self.step_seconds:5.1f}% "
                f"{100 * self.ipu_utilisation(r):8.1f}% "
                f"{m.peak_bytes / 1024:7.1f}/{m.sram_bytes / 1024:.0f}KiB "
                f"{m.margin_bytes / 1024:6.1f}KiB {m.total_bytes / 1e6:9.1f}  {'yes' if m.fits else 'NO'}")

    def ipu_utilisation(self, report: IPUReport) -> float:
        """An IPU's achieved FLOP/s over its peak."""
        return report.flops / (self.step_seconds * report.peak_flops)

    def to_dict(self) -> dict:
        """Plain data (what ``--json`` prints)."""
        p = self.pipeline
        return dict(
            system=self.system.name, chip=self.system.chip.name, system_ipus=self.system.ipus,
            precision=self.precision, layers_per_ipu=list(self.layers_per_ipu),
            pipeline_stages=list(self.chain), replicas=self.replicas, ipus_used=self.ipus_used,
            micro_batch=self.micro_batch, grad_accum=self.grad_accum, seq=self.seq,
            device_iterations=self.device_iterations, recompute=self.recompute,
            offload_optimizer=self.offload_optimizer, samples_per_step=self.samples_per_step,
            step_seconds=self.step_seconds, samples_per_second=self.samples_per_second,
            tokens_per_second=self.tokens_per_second,
            step_seconds_range=list(self.step_seconds_range),
            samples_per_second_range=list(self.samples_per_second_range),
            tokens_per_second_range=(list(self.tokens_per_second_range)
                                     if self.seq is not None else None),
            uncertainty=self._uncertainty(), utilisation=self.utilisation,
            fits=self.fits, out_of_memory=self.out_of_memory, breakdown=self.breakdown(),
            pipeline=dict(cycles=p.cycles, seconds=p.seconds, bubble_fraction=p.bubble_fraction,
                          steady_cycle_seconds=p.steady_cycle_seconds,
                          transfer_seconds=p.transfer_seconds, in_flight=list(p.in_flight)),
            ipus=[dict(ipu=r.ipu, holds=r.holds(), layers=list(r.layers), stages=list(r.stages),
                       forward_seconds=r.forward_seconds, backward_seconds=r.backward_seconds,
                       busy_fraction=r.busy_seconds / self.step_seconds,
                       utilisation=self.ipu_utilisation(r), flops=r.flops,
                       available_memory_proportion=r.available_memory_proportion,
                       memory=dict(fits=r.memory.fits, peak_bytes=r.memory.peak_bytes,
                                   sram_bytes=r.memory.sram_bytes, over_bytes=r.memory.over_bytes,
                                   margin_bytes=r.memory.margin_bytes,
                                   worst_tile=r.memory.worst_tile, phase=r.memory.phase,
                                   total_bytes=r.memory.total_bytes,
                                   at_worst_tile=dict(r.memory.at_worst_tile)))
                  for r in self.ipus],
            notes=list(self.notes))

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def _uncertainty(self) -> dict:
        r = self.step_range
        return dict(step_seconds=r.to_dict() if r else None,
                    calibration=self.calibration.describe(),
                    uncalibrated=["IPU-Link transfers", "all-reduce", "streaming memory",
                                  "host I/O"],
                    source="J19 GC2 microbenchmarks, ipu_sim.calibration")


# ---------------------------------------------------------------------------------------------------
# Composition.

def compose(costs: ReplicaCosts, system: str | System, *, replicas: int = 1, grad_accum: int = 1,
            micro_batch: int = 1, seq: int | None = None, device_iterations: int = 1,
            system_params: SystemParams | None = None, precision: str = "",
            notes: Sequence[str] = (), calibration: Calibration = CALIBRATION) -> SystemEstimate:
    """A :class:`SystemEstimate` from one replica's ``costs`` run ``replicas`` times on ``system``
    with ``grad_accum`` micro-batches of ``micro_batch`` samples per weight update; its step-time
    range comes from ``calibration`` (:mod:`ipu_sim.calibration`)."""
    system = get_system(system)
    sp = system_params or SystemParams()
    for name, value in (("replicas", replicas), ("grad_accum", grad_accum),
                        ("micro_batch", micro_batch), ("device_iterations", device_iterations)):
        _check_count(name, value)
    if seq is not None:
        _check_count("seq", seq)
    if costs.chip != system.chip:
        raise ValueError(f"costs were made for chip {costs.chip.name}, but system {system.name} "
                         f"has {system.chip.name}")
    n_ipus = costs.placement.ipus
    _check_fits_system(system, n_ipus, replicas)
    m = grad_accum
    backward = tuple(b + (a if m > 1 else 0.0) for b, a in zip(costs.backward, costs.accumulate))
    pipe = _pipeline(costs, system, costs.forward, backward, m)
    allreduce = max(allreduce_seconds(system, [p.ipu + r * n_ipus for r in range(replicas)],
                                      p.gradient_bytes, sp) for p in costs.ipus)
    update = [_update_seconds(system, p, sp) for p in costs.ipus]
    slowest = max(range(n_ipus), key=lambda i: sum(update[i]))
    host_rate = system.chip.host_bytes_per_s or sp.host_bytes_per_s
    host = max(p.data_bytes for p in costs.ipus) * m / host_rate \
        + sp.host_call_latency_s / device_iterations
    busy = dict(zip(pipe_ipus(costs.chain), pipe.busy_seconds))
    reports = tuple(_report(p, costs, backward, m, busy.get(p.ipu, 0.0) + sum(update[p.ipu]))
                    for p in costs.ipus)
    step = pipe.seconds + allreduce + sum(update[slowest]) + host
    # No calibration row checks IPU-Link transfers, all-reduce, streaming memory or host I/O.
    uncalibrated = allreduce + host + pipe.transfer_seconds + sum(update[slowest][1:])
    span = _step_range(costs, system, m, update, step, allreduce + host, uncalibrated, calibration)
    return SystemEstimate(system, precision, costs.placement.layers_per_ipu, costs.chain, replicas,
                          micro_batch, grad_accum, seq, device_iterations, costs.recompute,
                          costs.offload_optimizer, pipe, allreduce, sum(update[slowest]),
                          update[slowest][1], host, reports, tuple(notes), costs, span,
                          calibration)


def _step_range(costs: ReplicaCosts, system: System, m: int, update, step: float, outside: float,
                uncalibrated: float, calibration: Calibration) -> TimeRange | None:
    """The step time with every calibrated component at the low, then the high end of its error
    (pipeline stages, gradient accumulation, update programs); IPU-Link transfers, all-reduce,
    streaming and host I/O as they are (no calibration row checks them)."""
    if not costs.forward_parts:
        return None
    ends = []
    for end in (0, 1):
        fwd = [calibration.bounds(p)[end] for p in costs.forward_parts]
        bwd = [calibration.bounds(p)[end] + (calibration.bounds(a)[end] if m > 1 else 0.0)
               for p, a in zip(costs.backward_parts, costs.accumulate_parts)]
        pipe = _pipeline(costs, system, fwd, bwd, m)
        compute = [calibration.bounds(component_seconds(p.update.ops, costs.chip))[end]
                   if p.update else 0.0 for p in costs.ipus]
        ends.append(pipe.seconds + outside + max(c + u[1] + u[2] for c, u in zip(compute, update)))
    return time_range(step, ends[0], ends[1], uncalibrated)


def pipe_ipus(chain: Sequence[int]) -> list[int]:
    """The IPUs of a pipeline, in the order of :attr:`PipelineTime.busy_seconds`."""
    return sorted(set(chain))


def _pipeline(costs: ReplicaCosts, system: System, forward, backward, m: int) -> PipelineTime:
    chain = costs.chain

    def send(per_stage) -> list[float]:
        return [max((transfer_seconds(system, chain[k], d, b) for d, b in sends), default=0.0)
                for k, sends in enumerate(per_stage)]

    return pipeline_time(chain, forward, backward, m, send(costs.sends_forward),
                         send(costs.sends_backward))


def _report(p: IPUPrograms, costs: ReplicaCosts, backward, m: int, busy: float) -> IPUReport:
    stages = tuple(k for k, d in enumerate(costs.chain) if d == p.ipu)
    layers = tuple(sorted({lay for k in stages for lay in costs.placement.stage_layers(k)}))
    flops = m * p.micro_batch.flops + (p.update.flops if p.update else 0.0)
    return IPUReport(p.ipu, p.scopes, layers, stages, sum(costs.forward[k] for k in stages),
                     sum(backward[k] for k in stages), busy, flops, p.micro_batch.peak_flops,
                     _memory(p, costs, m, in_flight(len(costs.chain), m)),
                     p.micro_batch.available_memory_proportion)


def _update_seconds(system: System, p: IPUPrograms, sp: SystemParams) -> tuple[float, float, float]:
    """(update program, streaming in and out, transfers to other IPUs) of one IPU, seconds."""
    compute = p.update.seconds if p.update else 0.0
    streaming = p.streamed_bytes / system.chip.streaming_bytes_per_s if p.streamed_bytes else 0.0
    sends = max((transfer_seconds(system, p.ipu, d, b) for d, b in p.update_sends), default=0.0)
    return compute, streaming, sends


def _memory(p: IPUPrograms, costs: ReplicaCosts, m: int, stage_in_flight) -> IPUMemory:
    chip = costs.chip
    tiles = chip.tiles
    stages = [k for k, d in enumerate(costs.chain) if d == p.ipu]
    extras = {"stashed_activations": sum((stage_in_flight[k] - 1) * costs.stash_bytes[k]
                                         for k in stages),
              "gradients": p.gradient_bytes,  # accumulators, or awaiting the update if m == 1
              "optimizer_state": 0 if costs.offload_optimizer else p.state_bytes}
    per_tile = {k: math.ceil(v / tiles) for k, v in extras.items() if v}
    runtime = costs.params.runtime_bytes  # counted once although both programs include it
    mb = p.micro_batch.memory
    peaks = {"pipeline": np.asarray(mb.peak, float) + sum(per_tile.values()),
             "update": np.zeros(tiles)}
    other_code = {"pipeline": np.zeros(tiles), "update": np.asarray(mb.category("code")) - runtime}
    if p.update is not None:
        up = p.update.memory
        peaks["update"] = np.asarray(up.peak, float)
        other_code["pipeline"] = np.asarray(up.category("code"), float) - runtime
    peaks = {k: v + other_code[k] for k, v in peaks.items()}
    total = np.maximum(peaks["pipeline"], peaks["update"])
    tile = int(np.argmax(total))
    phase = "pipeline" if peaks["pipeline"][tile] >= peaks["update"][tile] else "update"
    source = mb if phase == "pipeline" else p.update.memory
    cats = {name: int(values[tile]) for name, values in source.categories}
    cats["code"] += int(other_code[phase][tile])
    if phase == "pipeline":
        cats.update(per_tile)
    return IPUMemory(p.ipu, chip.sram_bytes, int(round(total[tile])), tile, phase, cats,
                     int(total.sum()))


def _check_count(name: str, value) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")


def _check_proportions(value) -> None:
    """Each availableMemoryProportion in (0, 1] (the count per IPU is checked once placed)."""
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    if not values:
        raise ValueError("available_memory_proportion: give one value or one per IPU")
    per_ipu_proportions(tuple(values), len(values))


def _check_fits_system(system: System, ipus_per_replica: int, replicas: int) -> None:
    need = ipus_per_replica * replicas
    if need > system.ipus:
        raise ValueError(f"pipeline x replicas = {ipus_per_replica} x {replicas} = {need} IPUs, but "
                         f"{system.name} has {system.ipus}")


# ---------------------------------------------------------------------------------------------------
# The entry point.

def estimate_system(fn_or_program: Callable | Program, *args: Any, system: str | System = "bow-ipu",
                    pipeline: Sequence[int] | int | None = None, place: dict[str, int] | None = None,
                    micro_batch: int = 1, seq: int | None = None, replicas: int = 1,
                    grad_accum: int = 1, recompute: bool = False, offload_optimizer: bool = False,
                    precision: str | None = None, device_iterations: int = 1,
                    batch_argnums: Sequence[int] | None = None,
                    available_memory_proportion: float | Sequence[float] = 0.6,
                    params: ModelParams | None = None,
                    system_params: SystemParams | None = None,
                    outline: bool = True) -> SystemEstimate:
    """Estimate one weight update of training with ``fn_or_program`` on ``system``.

    ``fn_or_program(*args)`` is one micro-batch of the training step (arrays or
    ``jax.ShapeDtypeStruct``s; nothing is run) -- or an already traced :class:`Program`.

    The single-IPU case needs no scopes: ``estimate_system(train_step, *args)`` (on one Bow IPU)
    estimates any jittable step. The training loop's call, for a step ``(state, batch) -> state``
    on ``batch_size`` sequences of ``seq_len`` tokens::

        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), (state, batch))
        est = ipu_sim.estimate_system(step, *abstract, system="bow-ipu",
                                      micro_batch=batch_size, seq=seq_len)
        est.step_seconds, est.tokens_per_second, est.utilisation, est.fits, est.to_dict()

    Data parallelism needs nothing more either: ``system="bow-pod16", replicas=16``.

    * ``system``: a name from ``ipu_sim.SYSTEMS`` (``bow-ipu``, ``gc200-pod16``, ``c600``, ...).
    * ``pipeline``: layers per IPU of one replica (``[3, 7, 7, 7]``), an int ``N`` to balance the
      layers over ``N`` IPUs automatically (fastest split whose every IPU fits), or None for one IPU.
      Pipelining needs the ``layer_{i}`` named scopes of :mod:`ipu_sim.placement`; ``place`` pins
      scopes outside the layers to IPUs (e.g. ``{"embeddings": 0, "head": 0}``).
    * ``micro_batch``: samples in one call of ``fn`` (for samples/s); ``seq``: tokens per sample
      (for tokens/s); ``grad_accum``: micro-batches per weight update and replica; ``replicas``:
      data-parallel copies (gradients all-reduced).
    * ``recompute``: recompute each layer's forward before its backward; ``offload_optimizer``:
      optimizer state and master weights in streaming memory; ``precision``: run every matmul with
      "fp32", "fp16.32" (fp16 inputs, fp32 partials), "fp16" or "fp8" inputs (None: as traced).
    * ``device_iterations``: weight updates per host call; ``batch_argnums``: arguments that are
      new data every micro-batch (default: inputs the step reads but does not update).
    * ``available_memory_proportion``: the share of tile memory the matmul planner may use for
      temporaries, one value or one per IPU of a replica (Graphcore's BERT recipes set e.g.
      ``[0.1, 0.15, 0.15, 0.15]``).
    * ``outline``: identical layers keep one copy of their code, as PopART's default outlining
      compiles them (:mod:`ipu_sim.outline`); False compiles every layer's own.
    """
    system = get_system(system)
    for name, value in (("micro_batch", micro_batch), ("replicas", replicas),
                        ("grad_accum", grad_accum), ("device_iterations", device_iterations)):
        _check_count(name, value)
    if offload_optimizer and not system.has_streaming_memory:
        raise ValueError(f"offload_optimizer: {system.name} has no streaming memory "
                         f"({system.chip.name} chip row: none)")
    _check_proportions(available_memory_proportion)
    program, data_ids = _traced(fn_or_program, args, batch_argnums)
    program = fuse(program)
    if precision is not None:
        program = with_matmul_precision(program, precision)
    description, notes = describe_precision(program, system.chip)
    job = _Job(program, anchor_ops(program, place), system, data_ids,
               dict(recompute=recompute, offload_optimizer=offload_optimizer,
                    available_memory_proportion=available_memory_proportion, params=params,
                    outline=outline),
               dict(replicas=replicas, grad_accum=grad_accum, micro_batch=micro_batch, seq=seq,
                    device_iterations=device_iterations, system_params=system_params,
                    precision=description), notes)
    if isinstance(pipeline, numbers.Integral) and not isinstance(pipeline, bool):
        _check_count("pipeline", pipeline)
        _check_fits_system(system, int(pipeline), replicas)
        if job.anchors.layers == 0 and pipeline > 1:
            raise ValueError(_NO_LAYERS.format(n=pipeline))
        if pipeline == 1:
            return job.finish(job.cost((job.anchors.layers,)))
        return _balanced(job, int(pipeline))
    split = _split(pipeline, job.anchors.layers)
    _check_fits_system(system, len(split), replicas)
    return job.finish(job.cost(split))


@dataclass(frozen=True)
class _Job:
    """One call of :func:`estimate_system`: the placed program and the options of both stages."""

    program: Program
    anchors: Anchors
    system: System
    data_ids: set[int] | None
    cost_options: dict
    compose_options: dict
    notes: tuple[str, ...]

    def cost(self, split: Sequence[int]) -> ReplicaCosts:
        return cost_replica(self.program, place_ops(self.anchors, split), self.system.chip,
                            data_ids=self.data_ids, **self.cost_options)

    def finish(self, costs: ReplicaCosts, extra: Sequence[str] = ()) -> SystemEstimate:
        return compose(costs, self.system, notes=self.notes + tuple(extra), **self.compose_options)


def _balanced(job: _Job, n_ipus: int) -> SystemEstimate:
    """Automatic layer split over ``n_ipus`` (:mod:`ipu_sim.balance`)."""
    options = job.cost_options
    amps = per_ipu_proportions(options["available_memory_proportion"], n_ipus)
    # Work per layer is costed once on one IPU: at the smallest proportion of the replica.
    work, pinned = layer_work(job.program, job.anchors, job.system.chip,
                              recompute=options["recompute"], available_memory_proportion=min(amps),
                              params=options["params"])

    def check(split):
        est = job.finish(job.cost(split))
        return est, {r.ipu: r.memory.over_bytes for r in est.ipus if not r.memory.fits}

    split, est, fitted = balance(work, [pinned.get(i, 0.0) for i in range(n_ipus)], check)
    note = (f"layers balanced automatically over {n_ipus} IPUs: {list(split)}" if fitted else
            f"automatic balancing found no split of {job.anchors.layers} layers over {n_ipus} "
            "IPUs that fits; showing the split closest to fitting")
    return job.finish(est.costs, (note,))


_NO_LAYERS = ("pipeline: the program has no layer scopes (jax.named_scope('layer_0'), ...), so it "
              "cannot be split over {n} IPUs; see ipu_sim.placement for the contract")


def _split(pipeline, layers: int) -> tuple[int, ...]:
    if pipeline is None:
        return (layers,)
    if isinstance(pipeline, (str, bytes)) or not isinstance(pipeline, Sequence):
        raise TypeError(f"pipeline must be a list of layers per IPU, an int or None, "
                        f"got {type(pipeline).__name__}")
    split = tuple(pipeline)
    if not split:
        raise ValueError("pipeline must list the layers of at least one IPU")
    for n in split:
        if not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 0:
            raise ValueError(f"pipeline entries must be layer counts >= 0, got {n!r}")
    if layers == 0 and len(split) > 1:
        raise ValueError(_NO_LAYERS.format(n=len(split)))
    if sum(split) != layers:
        raise ValueError(f"pipeline {','.join(map(str, split))} sums to {sum(split)} layers, but "
                         f"the model has {layers}")
    return split


def _traced(fn_or_program, args, batch_argnums) -> tuple[Program, set[int] | None]:
    if isinstance(fn_or_program, Program):
        if args or batch_argnums is not None:
            raise ValueError("a traced Program takes no args or batch_argnums")
        return fn_or_program, None
    if not callable(fn_or_program):
        raise TypeError(f"fn_or_program must be a function or a Program, "
                        f"got {type(fn_or_program).__name__}")
    program = trace(fn_or_program, *args)
    if batch_argnums is None:
        return program, None
    counts = [len(jax.tree.leaves(a)) for a in args]
    starts = np.cumsum([0] + counts)
    ids = set()
    for n in batch_argnums:
        if not isinstance(n, numbers.Integral) or not 0 <= n < len(args):
            raise ValueError(f"batch_argnums entry {n!r} is not an argument index (0..{len(args) - 1})")
        ids |= {v.id for v in program.inputs[starts[n]:starts[n + 1]]}
    return program, ids


def describe_precision(program: Program, chip: Chip) -> tuple[str, tuple[str, ...]]:
    """The dominant matmul precision and the AMP rate it runs at on ``chip``, and a note when the
    chip lacks it (FP8 without an FP8 AMP: operands move as bytes, widened to FP16 on tile)."""
    flops = program.matmul_flops()
    if not flops:
        return "no matmuls", ()
    inputs, partials = max(flops, key=flops.get)
    rate = chip.amp_flops_per_cycle(inputs, partials)
    peak = chip.peak_flops(inputs, partials) / 1e12
    text = (f"matmuls {inputs} inputs, {partials} partials: {rate} FLOP/cycle/tile "
            f"({peak:.4g} TFLOP/s peak per {chip.name} IPU)")
    notes = ()
    if inputs == "fp8" and not chip.supports("fp8"):
        notes = (f"{chip.name} has no FP8 AMP: FP8 operands move and are stored as bytes but are "
                 f"widened to FP16 on tile and multiply at the FP16 rate ({rate} FLOP/cycle/tile)",)
    elif inputs == "fp8":
        notes = (f"FP8 matmuls use the {chip.name} FP8 AMP rate ({rate} FLOP/cycle/tile)",)
    return text, notes
