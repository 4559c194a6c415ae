"""Time of one weight update of a synchronous pipeline with gradient accumulation.

``K`` pipeline stages (stage ``k`` on IPU ``chain[k]``; an IPU may hold several) process ``M``
micro-batches in *pipeline cycles*, as Poplar's pipelined programs do: in each cycle every IPU runs
the work of all its active stages, then the IPUs exchange activations and gradients over IPU-Links.
Micro-batch ``m`` runs forward on stage ``k`` in cycle ``m + k`` and backward in cycle
``m + 2K - 2 - k`` (the last stage turns it round in the same cycle), so

* there are ``M + 2K - 2`` cycles: the ramp-up (filling) and ramp-down (draining) bubble is
  ``2K - 2`` cycles that are only partly busy;
* cycle ``c`` lasts ``max over IPUs (sum of its active stages' forward / backward times)`` plus the
  longest transfer sent at its end;
* stage ``k`` holds the activations of ``min(M, 2(K - 1 - k) + 1)`` micro-batches at once (those
  it has run forward and not yet backward).

``bubble_fraction = 1 - M * steady / total``, where ``steady`` is a cycle with every stage busy: the
share of the pipeline's time not explained by ``M`` steady-state cycles. It falls as ``M`` grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class PipelineTime:
    """Cycle-level time of the pipelined micro-batches of one weight update (seconds)."""

    seconds: float
    micro_batches: int
    cycles: int
    steady_cycle_seconds: float
    transfer_seconds: float  # of ``seconds``: time in inter-IPU transfers
    busy_seconds: tuple[float, ...]  # per IPU of the chain, ascending: time its stages compute
    in_flight: tuple[int, ...]  # per stage: micro-batches whose activations it holds at once

    @property
    def bubble_fraction(self) -> float:
        """1 - M * steady cycle / total: the share of time lost to filling and draining."""
        if self.seconds <= 0:
            return 0.0
        return max(0.0, 1.0 - self.micro_batches * self.steady_cycle_seconds / self.seconds)


def in_flight(stages: int, micro_batches: int) -> tuple[int, ...]:
    """Micro-batches whose activations stage ``k`` holds at once: ``min(M, 2(K - 1 - k) + 1)``."""
    return tuple(min(micro_batches, 2 * (stages - 1 - k) + 1) for k in range(stages))


def pipeline_time(chain: Sequence[int], forward: Sequence[float], backward: Sequence[float],
                  micro_batches: int, send_forward: Sequence[float] | None = None,
                  send_backward: Sequence[float] | None = None) -> PipelineTime:
    """Time of ``micro_batches`` through stages on IPUs ``chain`` taking ``forward[k]`` /
    ``backward[k]`` seconds per micro-batch; ``send_*[k]``: seconds of the transfer a stage makes
    after its forward / backward of one micro-batch (0 if it sends nothing)."""
    k_stages = len(chain)
    if not (len(forward) == len(backward) == k_stages) or k_stages == 0:
        raise ValueError("chain, forward and backward must have the same non-zero length, got "
                         f"{k_stages}, {len(forward)}, {len(backward)}")
    if not isinstance(micro_batches, int) or micro_batches < 1:
        raise ValueError(f"micro_batches must be a positive int, got {micro_batches!r}")
    zeros = [0.0] * k_stages
    f, b = np.asarray(forward, float), np.asarray(backward, float)
    sf = np.asarray(send_forward if send_forward is not None else zeros, float)
    sb = np.asarray(send_backward if send_backward is not None else zeros, float)
    cycles = micro_batches + 2 * k_stages - 2
    c = np.arange(cycles)[:, None]
    k = np.arange(k_stages)[None, :]
    fwd_on = (c - k >= 0) & (c - k < micro_batches)
    bwd_on = (c - (2 * k_stages - 2 - k) >= 0) & (c - (2 * k_stages - 2 - k) < micro_batches)
    ipus = sorted(set(chain))
    member = np.array([[d == ipu for ipu in ipus] for d in chain], float)  # stage x IPU
    work = (fwd_on * f + bwd_on * b) @ member  # cycle x IPU
    sends = np.maximum((fwd_on * sf).max(axis=1), (bwd_on * sb).max(axis=1))
    total = float(work.max(axis=1).sum() + sends.sum())
    steady = float(((f + b) @ member).max() + max(sf.max(), sb.max()))
    busy = tuple(float(x) for x in work.sum(axis=0))
    return PipelineTime(total, micro_batches, cycles, steady, float(sends.sum()), busy,
                        in_flight(k_stages, micro_batches))
