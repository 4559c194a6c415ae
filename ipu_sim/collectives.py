"""Moving bytes between IPUs, machines and the host: point-to-point transfers and all-reduce.

Topology (:class:`~ipu_sim.hardware.System`): IPU ``i`` is in machine ``i // 4``; the machines of
an IPU-Link domain (at most a POD64) form a ring of IPU-Links; domains are joined through the
machines' gateways. A transfer between two IPUs costs ``latency + bytes / bandwidth`` with the
same-machine or cross-machine link numbers of :class:`~ipu_sim.hardware.Links` (latency grows by
one hop per machine on the shorter way round the ring).

All-reduce of ``n`` bytes over ``R`` IPUs of one domain: a bidirectional ring (half of every chunk
goes each way round): reduce-scatter then all-gather, ``2 (R - 1)`` steps of ``n / (2R)`` bytes per
direction, each step paced by the slowest hop of the ring (members ordered to keep hops short).
Across ``D`` domains (POD128/256): ring inside each domain (reduce-scatter), a ring over the domains
through the gateways on the ``n / R`` shard each IPU owns, then the all-gather inside the domain. The additions of the reduction run on
the tiles at >100x link speed and are not charged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

from ipu_sim.hardware import System


@dataclass(frozen=True)
class SystemParams:
    """Numbers the system model needs that docs/reference/ipu_hardware.md does not give.

    Each is a stated assumption; change them with :meth:`replace` to see what they move.
    """

    # Gateway links between IPU-Link domains, per machine and direction. Assumption: 2 x 100 Gb/s
    # GW-Links per IPU-M2000 / Bow-2000 (their datasheets; the reference lists the datasheets as a
    # source but not this number) = 25 GB/s, shared by the machine's 4 IPUs.
    gateway_bytes_per_s: float = 25e9
    # Latency of one step through the gateways. Assumption: the J19 host-link minimum latency
    # (8.81 us, "host link" row), the nearest measured off-IPU round trip.
    gateway_latency_s: float = 8.81e-6
    # Host I/O per IPU where the chip row gives none (GC200, Bow, C600). Assumption: the J19 host
    # link rate ("~6 GB/s per IPU (PCIe Gen3 x8)", measured on GC2).
    host_bytes_per_s: float = 6e9
    # Fixed cost of one host call (a run of device iterations): J19 "host link min latency 8.81 us".
    host_call_latency_s: float = 8.81e-6

    def replace(self, **changes) -> "SystemParams":
        """A copy with ``changes``; unknown names and non-positive values raise ValueError."""
        names = {f.name for f in fields(self)}
        for key, value in changes.items():
            if key not in names:
                raise ValueError(f"unknown system parameter {key!r}; valid: {', '.join(sorted(names))}")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"system parameter {key} must be a positive number, got {value!r}")
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return SystemParams(**values)


def link(system: System, a: int, b: int) -> tuple[float, float]:
    """(bytes per second, latency in seconds) from IPU ``a`` to IPU ``b`` of one IPU-Link domain."""
    if system.links is None:
        raise ValueError(f"system {system.name} has a single IPU: nothing to link")
    links = system.links
    ma, mb = system.machine_of(a), system.machine_of(b)
    if ma == mb:
        return links.same_machine_bytes_per_s, links.same_machine_latency_s
    ring = max(1, min(system.link_domain_ipus, system.ipus) // system.ipus_per_machine)
    d = abs(ma - mb) % ring
    d = max(1, min(d, ring - d))
    return links.cross_machine_bytes_per_s, links.cross_machine_latency_s + (d - 1) * links.hop_latency_s


def transfer_seconds(system: System, a: int, b: int, nbytes: float) -> float:
    """One message of ``nbytes`` from IPU ``a`` to IPU ``b``: latency + bytes / bandwidth."""
    if nbytes <= 0 or a == b:
        return 0.0
    rate, latency = link(system, a, b)
    return latency + nbytes / rate


def ring_order(system: System, members: Sequence[int]) -> list[int]:
    """``members`` in ring order: ascending, or "snaked" (every other member up, the rest back
    down) when that shortens the longest hop -- a ring over part of the machines would otherwise
    close with a hop across all of them."""
    up = sorted(members)
    snake = up[0::2] + up[1::2][::-1]
    return snake if _longest_hop(system, snake) < _longest_hop(system, up) else up


def _longest_hop(system: System, order: list[int]) -> float:
    return max(link(system, a, b)[1] for a, b in zip(order, order[1:] + order[:1]))


def ring_allreduce_seconds(system: System, members: Sequence[int], nbytes: float) -> float:
    """Bidirectional ring all-reduce of ``nbytes`` over ``members`` (IPUs of one domain)."""
    r = len(members)
    if r < 2 or nbytes <= 0:
        return 0.0
    order = ring_order(system, members)
    hops = [link(system, a, b) for a, b in zip(order, order[1:] + order[:1])]
    rate = min(h[0] for h in hops)
    latency = max(h[1] for h in hops)
    return 2 * (r - 1) * (latency + nbytes / (2 * r) / rate)


def allreduce_seconds(system: System, members: Sequence[int], nbytes: float,
                      params: SystemParams | None = None) -> float:
    """All-reduce of ``nbytes`` held by each of ``members``: ring per IPU-Link domain, ring over
    the domains through the gateways on each IPU's shard (see the module docstring)."""
    params = params or SystemParams()
    if len(members) < 2 or nbytes <= 0:
        return 0.0
    groups: dict[int, list[int]] = {}
    for ipu in members:
        groups.setdefault(system.domain_of(ipu), []).append(ipu)
    inside = max(ring_allreduce_seconds(system, g, nbytes) for g in groups.values())
    domains = len(groups)
    if domains == 1:
        return inside
    per_domain = max(len(g) for g in groups.values())
    shard = nbytes / per_domain
    rate = params.gateway_bytes_per_s / system.ipus_per_machine
    across = 2 * (domains - 1) * (params.gateway_latency_s + shard / domains / rate)
    return inside + across
