"""Automatic pipeline balancing: how many layers each IPU holds.

1. Work per layer: the model's forward and backward ops estimated once on one IPU (the same
   single-IPU model), each op's seconds summed into the layer it belongs to (ops pinned to an IPU
   into that IPU's fixed load); with recomputation a layer's forward counts twice.
2. Split: the contiguous split of layers over ``S`` IPUs that minimises the largest IPU load (the
   steady pipeline cycle), by dynamic programming; ties go to the split with more layers on later
   IPUs (earlier stages stash more micro-batches). Every IPU gets a layer or pinned work.
3. Memory: the split is costed for real (per-IPU programs and memory); an IPU that does not fit
   gets at most one layer fewer and the split is searched again, until all fit or no split is left
   (then the split closest to fitting is returned, marked as not fitting).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence, TypeVar

from ipu_sim.estimator import estimate_program
from ipu_sim.hardware import Chip
from ipu_sim.params import ModelParams
from ipu_sim.placement import FORWARD, PASSES, Anchors
from ipu_sim.trace import Program

T = TypeVar("T")


def layer_work(program: Program, anchors: Anchors, chip: Chip, *, recompute: bool = False,
               available_memory_proportion: float = 0.6,
               params: ModelParams | None = None) -> tuple[list[float], dict[int, float]]:
    """(seconds per micro-batch of each layer, seconds of the work pinned to each IPU)."""
    passes = [i for i, p in enumerate(anchors.phase) if p in PASSES]
    est = estimate_program(program.stage(passes), chip, available_memory_proportion, params,
                           fuse=False, donate=False)
    work = [0.0] * anchors.layers
    pinned: dict[int, float] = defaultdict(float)
    for i, cost in zip(passes, est.ops):
        seconds = chip.seconds(cost.cycles)
        if recompute and anchors.layer[i] >= 0 and anchors.phase[i] == FORWARD:
            seconds *= 2
        if anchors.pin[i] >= 0:
            pinned[anchors.pin[i]] += seconds
        elif anchors.home[i] >= 0:
            work[anchors.home[i]] += seconds
    return work, dict(pinned)


def split_layers(work: Sequence[float], pinned: Sequence[float],
                 caps: Sequence[int]) -> tuple[int, ...] | None:
    """Layers per IPU (contiguous, at most ``caps[s]`` on IPU ``s``) minimising
    ``max_s pinned[s] + sum of its layers' work``; None if no split satisfies the caps."""
    n_layers, n_ipus = len(work), len(caps)
    prefix = [0.0]
    for w in work:
        prefix.append(prefix[-1] + w)
    inf = float("inf")
    tol = 1e-9 * (prefix[-1] + sum(pinned) + 1e-30)  # equal loads of identical layers are ties
    best = [[inf] * (n_layers + 1) for _ in range(n_ipus + 1)]
    start = [[-1] * (n_layers + 1) for _ in range(n_ipus + 1)]
    best[0][0] = 0.0
    for s in range(1, n_ipus + 1):
        for j in range(n_layers + 1):
            for i in range(max(0, j - caps[s - 1]), j + 1):
                if best[s - 1][i] == inf or (i == j and pinned[s - 1] <= 0):
                    continue
                load = max(best[s - 1][i], pinned[s - 1] + prefix[j] - prefix[i])
                if load < best[s][j] - tol:
                    best[s][j], start[s][j] = load, i
    if best[n_ipus][n_layers] == inf:
        return None
    split, j = [], n_layers
    for s in range(n_ipus, 0, -1):
        i = start[s][j]
        split.append(j - i)
        j = i
    return tuple(reversed(split))


def balance(work: Sequence[float], pinned: Sequence[float],
            check: Callable[[tuple[int, ...]], tuple[T, dict[int, int]]]
            ) -> tuple[tuple[int, ...], T, bool]:
    """(split, ``check``'s result for it, whether it fits). ``check(split)`` returns a result and
    the bytes over per IPU that does not fit (empty if all fit)."""
    n_ipus = len(pinned)
    caps = [len(work)] * n_ipus
    closest = None
    for _ in range(len(work) * n_ipus + 1):
        split = split_layers(work, pinned, caps)
        if split is None:
            break
        result, over = check(split)
        if not over:
            return split, result, True
        if closest is None or sum(over.values()) < closest[2]:
            closest = (split, result, sum(over.values()))
        for ipu in over:
            caps[ipu] = split[ipu] - 1
            if caps[ipu] < 0:
                return (*closest[:2], False)
    if closest is None:
        raise ValueError(f"pipeline: cannot spread {len(work)} layers over {n_ipus} IPUs with "
                         "every IPU holding a layer or a pinned scope")
    return (*closest[:2], False)
