"""Chip specifications of Graphcore IPUs: GC2 (Mk1), GC200 and Bow (Mk2), and the C600 card.

Every constant cites its row in ``docs/reference/ipu_hardware.md`` ("Chips" table unless noted), or
says how it was derived from rows there. Numbers that are properties of the model rather than of the
chip (vertex overheads, code sizes, ...) live in :mod:`ipu_sim.params`.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Mapping

KIB = 1024


@dataclass(frozen=True)
class AmpRate:
    """Peak rate of the AMP (accumulating matrix product) unit of one tile for one precision.

    ``inputs`` and ``partials`` are precision classes: "fp32", "fp16" (float16 and bfloat16) or
    "fp8"; ``flops_per_cycle`` counts a multiply-accumulate as two FLOPs.
    """

    inputs: str
    partials: str
    flops_per_cycle: int


@dataclass(frozen=True)
class Chip:
    """One IPU: the numbers the performance model needs, all per tile unless the name says otherwise.

    Peak FLOP/s = ``tiles * clock_hz * flops_per_cycle`` of an :class:`AmpRate`.
    """

    name: str
    tiles: int
    workers: int  # worker threads per tile; a worker issues once every `workers` cycles
    sram_bytes: int  # per tile: code, tensors, vertex state, exchange buffers all live here
    clock_hz: float
    amp: tuple[AmpRate, ...]
    vector_bytes: int  # width of one vector (non-AMP) instruction: 64 bits (f32v2, f16v4) [ISA]
    load_bytes_per_cycle: int  # widest load per tile per cycle (ld128) [J19 local memory row]
    store_bytes_per_cycle: int
    exchange_bytes_per_cycle: int  # per tile, each direction
    sync_cycles: int  # one global (on-chip) sync
    exchange_latency_cycles: tuple[int, int]  # first word, nearest / farthest tile pair
    ipu_links: int
    link_bytes_per_s: float  # one link, one direction
    streaming_bytes_per_s: float  # off-chip (streaming) memory per IPU; 0 if none
    host_bytes_per_s: float  # host link per IPU; 0 if not given by the reference
    power_watts: float  # per IPU (share of the machine's cap where the reference gives a machine)

    @property
    def total_sram_bytes(self) -> int:
        return self.tiles * self.sram_bytes

    def amp_flops_per_cycle(self, inputs: str, partials: str) -> int:
        """FLOP/cycle/tile of the AMP for ``inputs`` x ``inputs`` accumulated in ``partials``.

        A precision the chip lacks runs at the nearest one it has: FP8 inputs without FP8 hardware
        are widened to FP16 (as Poplar would cast them); FP16 partials without a faster FP16.16 mode
        accumulate at the FP16.32 rate.
        """
        _check_precision("inputs", inputs, ("fp32", "fp16", "fp8"))
        _check_precision("partials", partials, ("fp32", "fp16"))
        if inputs == "fp32":
            return self._rate("fp32", "fp32")
        if inputs == "fp8" and self.supports("fp8"):
            return max(r.flops_per_cycle for r in self.amp if r.inputs == "fp8")
        rates = {r.partials: r.flops_per_cycle for r in self.amp if r.inputs == "fp16"}
        if partials == "fp16" and "fp16" in rates:
            return rates["fp16"]
        return rates["fp32"]

    def peak_flops(self, inputs: str = "fp16", partials: str = "fp16") -> float:
        """Peak FLOP/s of the whole chip: tiles x clock x AMP FLOP/cycle/tile."""
        return self.tiles * self.clock_hz * self.amp_flops_per_cycle(inputs, partials)

    def vector_lanes(self, itemsize: int) -> int:
        """Elements per vector instruction (2 for fp32, 4 for fp16); 8-bit data is widened to fp16."""
        return max(1, self.vector_bytes // max(itemsize, 2))

    def seconds(self, cycles: float) -> float:
        return cycles / self.clock_hz

    def supports(self, inputs: str) -> bool:
        """Whether the AMP has a mode for ``inputs`` ("fp32", "fp16", "fp8")."""
        return any(r.inputs == inputs for r in self.amp)

    def _rate(self, inputs: str, partials: str) -> int:
        return next(r.flops_per_cycle for r in self.amp if (r.inputs, r.partials) == (inputs, partials))


def _check_precision(arg: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{arg} must be one of {valid}, got {value!r}")


# Shared by all chips: the tile micro-architecture is the same on Mk1 and Mk2.
# - vector width 8 B: "vector (non-AMP) code ... FP32 7.8, mixed 15.6 TFLOP/s on GC2" (J19 row) is
#   2 fp32 / 4 fp16 lanes x 2 FLOPs (FMA) x 1216 tiles x 1.6 GHz = 7.8 / 15.6 TFLOP/s.
# - loads 16 B/cycle, stores 8 B/cycle: "local memory bandwidth: 16 B/cycle read + 8 B/cycle write
#   per tile" (GC2). Mk2 rows give aggregates that match the same widths: 24 B x 1472 x 1.325 GHz
#   = 46.8 TB/s ("45 TB/s"), 24 B x 1472 x 1.85 GHz = 65.4 TB/s ("65 TB/s").
# - exchange 4 B/cycle/tile: "exchange bandwidth 6.34 GB/s per tile ... (~4 B/cycle/tile)" (J19 row,
#   GC2); assumed unchanged on Mk2, whose exchange is the same 32-bit-per-tile design.
# - exchange latency 59-95 cycles: "on-chip latency, on-tile timed (no sync) 59-95 cycles" (J19 row).
# - sync 136 cycles: "tile-to-tile latency (host-timed, incl. sync) 0.133 us idle" = 213 cycles at
#   1.6 GHz, minus the mean on-tile latency (59+95)/2 = 77 cycles. Measured on GC2 only; we keep the
#   same cycle count on Mk2 (the sync is a hardware barrier clocked with the tiles).
_TILE = dict(
    workers=6,  # "worker threads per tile: 6" row
    vector_bytes=8,
    load_bytes_per_cycle=16,
    store_bytes_per_cycle=8,
    exchange_bytes_per_cycle=4,
    sync_cycles=213 - 77,
    exchange_latency_cycles=(59, 95),
)

GB = 1e9

GC2 = Chip(
    name="gc2",
    tiles=1216,  # "tiles" row
    sram_bytes=256 * KIB,  # "SRAM per tile" row
    clock_hz=1.6e9,  # "clock" row
    amp=(
        AmpRate("fp32", "fp32", 16),  # "FLOP/cycle/tile FP32" row; 16 x 1216 x 1.6e9 = 31.1 TFLOP/s
        AmpRate("fp16", "fp32", 64),  # "FP16.32" 64 -> 124.5 TFLOP/s; no FP16.16 mode on Mk1 ("-")
    ),
    ipu_links=10,  # "IPU-Links: 10 x 64 GB/s bidirectional" row
    link_bytes_per_s=32 * GB,  # 64 GB/s bidirectional = 32 GB/s each way
    streaming_bytes_per_s=0.0,  # "streaming memory: none" row
    host_bytes_per_s=6 * GB,  # J19 "host link ~6 GB/s per IPU (PCIe Gen3 x8)"
    power_watts=150.0,  # "power" row
    **_TILE,
)

GC200 = Chip(
    name="gc200",
    tiles=1472,  # "tiles" row
    sram_bytes=624 * KIB,  # "SRAM per tile" row
    clock_hz=1.325e9,  # "clock" row
    amp=(
        AmpRate("fp32", "fp32", 32),  # 32 x 1472 x 1.325e9 = 62.4 TFLOP/s ("FP32 peak" row)
        AmpRate("fp16", "fp32", 64),  # 124.8 ("~125 (1 of 2 AMP sets)")
        AmpRate("fp16", "fp16", 128),  # 249.7 ("FP16 in / FP16 accumulate" row)
    ),
    ipu_links=10,  # "10 links, 320 GB/s" row
    link_bytes_per_s=32 * GB,  # 320 GB/s / 10 links
    streaming_bytes_per_s=20 * GB,  # "~20 GB/s per IPU via gateway" row
    host_bytes_per_s=0.0,
    power_watts=1500.0 / 4,  # "IPU-M2000 cap 1500 W (4 IPUs)"
    **_TILE,
)

BOW = Chip(
    name="bow",
    tiles=1472,
    sram_bytes=624 * KIB,
    clock_hz=1.85e9,  # "clock" row
    amp=(
        AmpRate("fp32", "fp32", 32),  # 87.2 TFLOP/s ("FP32 peak" row)
        AmpRate("fp16", "fp32", 64),  # 174 ("~174" row)
        AmpRate("fp16", "fp16", 128),  # 348.6 ("348.5 (350 marketed)" row)
    ),
    ipu_links=10,  # "same" as GC200
    link_bytes_per_s=32 * GB,
    streaming_bytes_per_s=20 * GB,  # "same" as GC200
    host_bytes_per_s=0.0,
    power_watts=1700.0 / 4,  # "Bow-2000 cap 1700 W" (4 IPUs)
    **_TILE,
)

# C600: a PCIe card with one Bow IPU ("C600 card (Bow IPU)" column). The reference gives card-level
# rates only: FP16.16 280 TFLOP/s and FP8 560. With Bow's 1472 tiles and 128 FLOP/cycle/tile for
# FP16.16, the clock is 280e12 / (1472 x 128) = 1.486 GHz; FP8 then is 560e12 / (1472 x 1.486e9)
# = 256 FLOP/cycle/tile, twice FP16. FP32 and FP16.32 keep Bow's per-cycle rates (same tile).
C600_CLOCK_HZ = 280e12 / (1472 * 128)

C600 = Chip(
    name="c600",
    tiles=1472,
    sram_bytes=624 * KIB,  # "~900 MB" = Bow's 1472 x 624 KiB
    clock_hz=C600_CLOCK_HZ,
    amp=(
        AmpRate("fp32", "fp32", 32),
        AmpRate("fp16", "fp32", 64),
        AmpRate("fp16", "fp16", 128),  # 280 TFLOP/s ("FP16 in / FP16 accumulate" row)
        AmpRate("fp8", "fp16", 256),  # 560 TFLOP/s ("FP8" row)
    ),
    ipu_links=4,  # "4 links" row
    link_bytes_per_s=32 * GB,  # per link as on Mk2 (the reference gives only the count)
    streaming_bytes_per_s=0.0,  # "streaming memory: none" row
    host_bytes_per_s=0.0,
    power_watts=185.0,  # "185 W TDP" row
    **_TILE,
)

CHIPS: Mapping[str, Chip] = types.MappingProxyType(
    {c.name: c for c in (GC2, GC200, BOW, C600)}
)


def get_chip(chip: str | Chip) -> Chip:
    """The :class:`Chip` called ``chip`` (case-insensitive), or ``chip`` itself if it is one."""
    if isinstance(chip, Chip):
        return chip
    if not isinstance(chip, str):
        raise TypeError(f"chip must be a chip name or a Chip, got {type(chip).__name__}")
    key = chip.lower().replace("-", "").replace("_", "")
    if key not in CHIPS:
        raise ValueError(f"unknown chip {chip!r}; valid chips: {', '.join(CHIPS)}")
    return CHIPS[key]


# ---------------------------------------------------------------------------------------------------
# Systems: IPUs joined by IPU-Links inside a machine and across machines, gateways beyond.


@dataclass(frozen=True)
class Links:
    """Point-to-point IPU-Link performance between two IPUs, one direction.

    A transfer of ``b`` bytes from IPU x to IPU y costs ``latency + b / bandwidth``; IPUs in the
    same machine use the ``same_machine_*`` numbers, IPUs in machines ``d`` apart (``d >= 1``)
    ``cross_machine_bytes_per_s`` and ``cross_machine_latency_s + (d - 1) * hop_latency_s``.
    """

    same_machine_bytes_per_s: float
    cross_machine_bytes_per_s: float
    same_machine_latency_s: float
    cross_machine_latency_s: float
    hop_latency_s: float


# J19 measured IPU-to-IPU rates on GC2 C2 cards (2 IPUs per board): "same board 55 GB/s one-way;
# across boards 27.7 one-way" and latencies "same board 0.633 us, direct link 0.524 us ... +0.16 us
# per hop" (reference, microbenchmark rows). Mk2 IPUs have the same links ("IPU-Links: 10 links,
# 320 GB/s" = GC2's 10 x 32 GB/s per direction, chips row), so we take the measured rates as the
# Mk2 ones, with a machine (IPU-M2000 / Bow-2000) in the place of J19's board.
MK2_LINKS = Links(
    same_machine_bytes_per_s=55 * GB,
    cross_machine_bytes_per_s=27.7 * GB,
    same_machine_latency_s=0.633e-6,
    cross_machine_latency_s=0.524e-6,
    hop_latency_s=0.16e-6,
)

# Assumption (not in the reference): IPU-Links join at most a POD64 (16 machines); bigger PODs are
# POD64s joined through the machines' gateways (see ipu_sim.system.SystemParams for their rate).
IPU_LINK_DOMAIN_IPUS = 64
# "DDR4 on the IPU-Machine, shared by 4 IPUs" (streaming memory row); also "IPU-M2000 ... (4 IPUs)".
IPUS_PER_MACHINE = 4


@dataclass(frozen=True)
class System:
    """A training system: ``ipus`` chips in machines of ``ipus_per_machine``.

    IPU ``i`` sits in machine ``i // ipus_per_machine`` and IPU-Link domain
    ``i // link_domain_ipus``; machines of one domain form a ring of IPU-Links.
    """

    name: str
    chip: Chip
    ipus: int
    ipus_per_machine: int
    link_domain_ipus: int
    links: Links | None  # None: a single IPU, nothing to link
    description: str

    @property
    def machines(self) -> int:
        return -(-self.ipus // self.ipus_per_machine)

    @property
    def has_streaming_memory(self) -> bool:
        return self.chip.streaming_bytes_per_s > 0

    def machine_of(self, ipu: int) -> int:
        return ipu // self.ipus_per_machine

    def domain_of(self, ipu: int) -> int:
        return ipu // self.link_domain_ipus


def _single(name: str, chip: Chip, description: str) -> System:
    return System(name, chip, 1, 1, 1, None, description)


def _machines(chip: Chip, name: str, ipus: int, description: str) -> System:
    return System(name, chip, ipus, IPUS_PER_MACHINE, min(ipus, IPU_LINK_DOMAIN_IPUS), MK2_LINKS,
                  description)


def _build_systems() -> dict[str, System]:
    systems = [
        _single("gc2-ipu", GC2, "one GC2 (Mk1) IPU"),
        _single("gc200-ipu", GC200, "one GC200 (Mk2) IPU"),
        _single("bow-ipu", BOW, "one Bow IPU"),
        _single("c600", C600, "C600 PCIe card: one Bow IPU at card clock, FP8, no streaming memory"),
        _machines(GC200, "gc200-m2000", 4, "IPU-M2000: 4 GC200 IPUs"),
        _machines(BOW, "bow-m2000", 4, "Bow-2000: 4 Bow IPUs"),
    ]
    for chip, label in ((GC200, "gc200"), (BOW, "bow")):
        machine = "IPU-M2000" if chip is GC200 else "Bow-2000"
        chip_label = "GC200" if chip is GC200 else "Bow"
        for ipus in (16, 64, 128, 256):
            systems.append(_machines(chip, f"{label}-pod{ipus}", ipus,
                                     f"{chip_label} POD{ipus}: {ipus // 4} {machine}s"))
    return {s.name: s for s in systems}


SYSTEMS: Mapping[str, System] = types.MappingProxyType(_build_systems())
# Other names people use; a bare chip name means one IPU of that chip.
SYSTEM_ALIASES: Mapping[str, str] = types.MappingProxyType({
    "ipu-m2000": "gc200-m2000", "m2000": "gc200-m2000", "bow-2000": "bow-m2000",
    "gc2": "gc2-ipu", "gc200": "gc200-ipu", "bow": "bow-ipu", "c600-ipu": "c600",
})


def get_system(system: str | System) -> System:
    """The :class:`System` called ``system`` (case-insensitive; aliases and chip names accepted)."""
    if isinstance(system, System):
        return system
    if not isinstance(system, str):
        raise TypeError(f"system must be a system name or a System, got {type(system).__name__}")
    key = system.lower().replace("_", "-")
    key = SYSTEM_ALIASES.get(key, key)
    if key not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; valid systems: {', '.join(SYSTEMS)} "
                         "(`python -m ipu_sim --system list` describes them)")
    return SYSTEMS[key]
