"""Which IPU runs each op of a traced training step, and in which pipeline stage.

**Contract for a pipelined model.** Each layer's ops are under ``jax.named_scope("layer_{i}")``
(``"layer{i}"``, ``"layers_{i}"`` also match; the scope may be nested, e.g. ``encoder/layer_3/attn``),
layers ``0 .. L-1`` are unrolled (a Python loop, not ``lax.scan``), and the gradient comes from
``jax.grad`` / ``jax.vjp`` so that JAX names forward ops ``jvp(...)`` and backward ops
``transpose(...)``. Ops outside every layer scope may be *pinned* to an IPU by the name of a scope
they are in (``place={"embeddings": 0, "head": 0}``); the rest follow the data (below).

**Phases.** ``backward``: under ``transpose(...)``. ``forward``: under ``jvp(...)``, or anything
else not downstream of a backward op (work done once per micro-batch). ``update``: outside the
gradient and downstream of it (the optimizer), done once per weight update.

**Anchors** (independent of the layer split). Layer ``l`` sits at forward position ``2l + 1``.
Forward ops outside the layers take the position and home of their latest-positioned forward
producer (else of their earliest forward consumer); a pinned one sits just after (before) it, on its
pinned IPU. Backward ops in a layer or pinned scope go with that scope's forward ops; the others with
their latest forward producer (the saved activations they read), else their earliest-positioned
backward producer. Update ops go with the producer handing them the most bytes (the gradient), else
with the home of the weights / optimizer state they read.

**Placement** (given layers per IPU). Forward ops sorted by position form runs on one IPU: those
runs are the pipeline stages, in forward order (an IPU may hold several, e.g. embeddings and the
tied head on IPU 0). Backward ops belong to the stage of their anchor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ipu_sim.trace import Program, layer_index, scope

FORWARD, BACKWARD, UPDATE, RECOMPUTE = "forward", "backward", "update", "recompute"
PASSES = (FORWARD, BACKWARD, RECOMPUTE)  # phases run once per micro-batch


def op_phases(program: Program) -> tuple[str, ...]:
    """Phase of every op (see the module docstring).

    An op outside ``jvp`` / ``transpose`` is ``update`` if it is downstream of the gradient, or if
    it reads only program inputs and feeds no forward or backward op (e.g. a weight norm of LAMB or
    Adam's bias correction); otherwise ``forward``.
    """
    producer = _producers(program)
    phases: list[str | None] = []
    for op in program.ops:
        if "transpose(" in op.path:
            phases.append(BACKWARD)
        elif "jvp(" in op.path:
            phases.append(FORWARD)
        else:
            before = {phases[producer[v.id]] for v in op.inputs if v.id in producer}
            phases.append(UPDATE if before & {BACKWARD, UPDATE} else
                          FORWARD if FORWARD in before else None)
    feeds = [False] * len(phases)
    for op in reversed(program.ops):
        i = op.index
        if phases[i] is None:
            phases[i] = FORWARD if feeds[i] else UPDATE
        if phases[i] in (FORWARD, BACKWARD):
            for v in op.inputs:
                if v.id in producer:
                    feeds[producer[v.id]] = True
    return tuple(phases)


def op_layers(program: Program) -> tuple[int, ...]:
    """Layer index of every op from its ``layer_{i}`` name scope, -1 outside layers."""
    return tuple(layer_index(op.path) for op in program.ops)


def layer_count(layers: Sequence[int]) -> int:
    """Number of layers; raises unless the layer scopes are exactly 0 .. L-1."""
    found = sorted(set(layers) - {-1})
    if found and found != list(range(len(found))):
        missing = sorted(set(range(found[-1] + 1)) - set(found))
        raise ValueError(f"layer scopes must be numbered 0 .. L-1 without gaps; missing {missing}")
    return len(found)


@dataclass(frozen=True)
class Anchors:
    """Where each op belongs, before layers are assigned to IPUs (see the module docstring).

    ``home[i]`` is the layer whose IPU runs op ``i`` (-1: pinned or no layers); ``pin[i]`` its
    pinned IPU (-1: none); ``slot[i]`` its forward position.
    """

    phase: tuple[str, ...]
    layer: tuple[int, ...]
    slot: tuple[float, ...]
    home: tuple[int, ...]
    pin: tuple[int, ...]
    layers: int


def anchor_ops(program: Program, place: Mapping[str, int] | None = None) -> Anchors:
    """The :class:`Anchors` of ``program``'s ops; ``place`` pins scopes outside layers to IPUs."""
    place = dict(place or {})
    for key, ipu in place.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"place keys must be scope names, got {key!r}")
        if not isinstance(ipu, int) or isinstance(ipu, bool) or ipu < 0:
            raise ValueError(f"place[{key!r}] must be an IPU index >= 0, got {ipu!r}")
    phase, layer = op_phases(program), op_layers(program)
    n_layers = layer_count(layer)
    pins, keys = _pins(program, layer, place)
    a = _Anchoring(program, phase, layer, pins, keys, eps=1.0 / (len(program.ops) + 2))
    a.forward()
    a.backward()
    a.update()
    return Anchors(phase, layer, tuple(a.slot), tuple(a.home), tuple(a.pin), n_layers)


def _pins(program: Program, layer, place: dict) -> tuple[list[int], list[str]]:
    """Pinned IPU (-1: none) and the pinning scope ("" if none) of every op."""
    pins, keys = [], []
    for op, lay in zip(program.ops, layer):
        parts = scope(op.path).split("/") if lay < 0 and place else ()
        key = next((k for k in place if k in parts), "")
        pins.append(place[key] if key else -1)
        keys.append(key)
    unused = sorted(set(place) - set(keys))
    if unused:
        raise ValueError(f"place: no op outside the layers is in named scope(s) {unused}")
    return pins, keys


def _producers(program: Program) -> dict[int, int]:
    return {v.id: op.index for op in program.ops for v in op.outputs}


class _Anchoring:
    """The passes of :func:`anchor_ops` over mutable per-op lists."""

    def __init__(self, program: Program, phase, layer, pins, keys, eps: float):
        self.program, self.phase, self.layer, self.keys, self.eps = program, phase, layer, keys, eps
        n = len(program.ops)
        self.slot: list[float | None] = [None] * n
        self.home = [-1] * n
        self.pin = list(pins)
        producer = _producers(program)
        self.producers = [sorted({producer[v.id] for v in op.inputs if v.id in producer})
                          for op in program.ops]
        self.consumers: list[list[int]] = [[] for _ in range(n)]
        for i, ps in enumerate(self.producers):
            for j in ps:
                self.consumers[j].append(i)

    def inherit(self, i: int, j: int, offset: float = 0.0) -> None:
        """Op ``i`` goes with op ``j``; a pinned op keeps its IPU and sits ``offset`` from j
        (level with j if j is pinned by the same scope, so a scope's ops stay one run)."""
        if self.pin[i] >= 0:
            same = self.keys[i] and self.keys[i] == self.keys[j]
            self.slot[i] = self.slot[j] + (0.0 if same else offset)
        else:
            self.slot[i], self.home[i], self.pin[i] = self.slot[j], self.home[j], self.pin[j]

    def done(self, js, phases) -> list[int]:
        return [j for j in js if self.phase[j] in phases and self.slot[j] is not None]

    def forward(self) -> None:
        ops = [i for i, p in enumerate(self.phase) if p == FORWARD]
        for i in ops:
            if self.layer[i] >= 0:
                self.slot[i], self.home[i], self.pin[i] = 2 * self.layer[i] + 1, self.layer[i], -1
                continue
            fp = self.done(self.producers[i], (FORWARD,))
            if fp:
                self.inherit(i, max(fp, key=lambda j: self.slot[j]), self.eps)
        for i in reversed(ops):
            if self.slot[i] is None:
                fc = self.done(self.consumers[i], (FORWARD,))
                if fc:
                    self.inherit(i, min(fc, key=lambda j: self.slot[j]), -self.eps)
        latest: dict[str, float] = {}  # pinning scope -> its latest placed forward op's slot
        for i in ops:
            if self.keys[i] and self.slot[i] is not None:
                latest[self.keys[i]] = max(latest.get(self.keys[i], self.slot[i]), self.slot[i])
        for i in ops:
            if self.slot[i] is None and self.keys[i] in latest:  # e.g. a constant of the scope
                self.slot[i] = latest[self.keys[i]]
            elif self.slot[i] is None:
                self.default(i)

    def default(self, i: int) -> None:
        if self.pin[i] >= 0:
            self.slot[i] = 0.0
        else:
            self.slot[i], self.home[i] = 1.0, 0

    def backward(self) -> None:
        keys = self.keys
        ops = [i for i, p in enumerate(self.phase) if p == BACKWARD]
        pinned_forward: dict[str, int] = {}  # pinning scope -> its latest forward op
        for i, p in enumerate(self.phase):
            if p == FORWARD and keys[i]:
                j = pinned_forward.get(keys[i])
                if j is None or self.slot[i] >= self.slot[j]:
                    pinned_forward[keys[i]] = i
        for i in ops:
            if self.layer[i] >= 0:
                self.slot[i], self.home[i], self.pin[i] = 2 * self.layer[i] + 1, self.layer[i], -1
            elif keys[i] in pinned_forward:
                self.slot[i] = self.slot[pinned_forward[keys[i]]]
            else:
                fp = self.done(self.producers[i], (FORWARD,))
                bp = self.done(self.producers[i], (BACKWARD,))
                if fp:
                    self.inherit(i, max(fp, key=lambda j: self.slot[j]))
                elif bp:
                    self.inherit(i, min(bp, key=lambda j: self.slot[j]))
        for i in reversed(ops):
            if self.slot[i] is None:
                bc = self.done(self.consumers[i], (BACKWARD,))
                if bc:
                    self.inherit(i, max(bc, key=lambda j: self.slot[j]))
                else:
                    self.default(i)

    def update(self) -> None:
        ops = [i for i, p in enumerate(self.phase) if p == UPDATE]
        for i in ops:
            best = self.largest_producer(i)
            if best is not None:
                self.inherit(i, best)
        homes = self.input_homes()
        for i in ops:
            if self.slot[i] is None:
                held = [homes[v.id] for v in self.program.ops[i].inputs if v.id in homes]
                if held:
                    self.inherit(i, min(held))  # the earliest reader: deterministic
        for i in reversed(ops):
            if self.slot[i] is None:
                uc = self.done(self.consumers[i], (UPDATE,))
                if uc:
                    self.inherit(i, uc[0])
                else:
                    self.default(i)

    def largest_producer(self, i: int) -> int | None:
        sizes: dict[int, int] = {}
        producer = {v.id: j for j in self.producers[i] for v in self.program.ops[j].outputs}
        for v in self.program.ops[i].inputs:
            j = producer.get(v.id)
            if j is not None and self.slot[j] is not None:
                sizes[j] = sizes.get(j, 0) + v.nbytes
        return max(sizes, key=lambda j: (sizes[j], -j)) if sizes else None

    def input_homes(self) -> dict[int, int]:
        """Program input id -> first anchored op reading it (forward/backward readers first)."""
        homes: dict[int, int] = {}
        inputs = {v.id for v in self.program.inputs + self.program.constants}
        for phases in ((FORWARD, BACKWARD), (UPDATE,)):
            for op in self.program.ops:
                if self.phase[op.index] in phases and self.slot[op.index] is not None:
                    for v in op.inputs:
                        if v.id in inputs:
                            homes.setdefault(v.id, op.index)
        return homes


@dataclass(frozen=True)
class Placement:
    """Ops on IPUs and pipeline stages for one split of the layers.

    ``ipu[i]`` runs op ``i``; ``stage[i]`` is its pipeline stage (-1 for update ops); stage ``k``
    runs on IPU ``chain[k]``; IPU ``s`` holds ``layers_per_ipu[s]`` layers.
    """

    phase: tuple[str, ...]
    layer: tuple[int, ...]
    ipu: tuple[int, ...]
    stage: tuple[int, ...]
    chain: tuple[int, ...]
    layers_per_ipu: tuple[int, ...]

    @property
    def ipus(self) -> int:
        return len(self.layers_per_ipu)

    def ops_on(self, ipu: int, phases: Sequence[str]) -> list[int]:
        """Indices of the ops of ``phases`` that run on ``ipu``, in program order."""
        return [i for i, (p, d) in enumerate(zip(self.phase, self.ipu)) if d == ipu and p in phases]

    def stage_layers(self, k: int) -> list[int]:
        """Layers whose forward ops are in stage ``k``."""
        return sorted({lay for lay, s, p in zip(self.layer, self.stage, self.phase)
                       if s == k and lay >= 0 and p == FORWARD})


def place_ops(anchors: Anchors, layers_per_ipu: Sequence[int]) -> Placement:
    """Assign ops to IPUs and pipeline stages for ``layers_per_ipu`` (summing to the layer count)."""
    counts = tuple(int(c) for c in layers_per_ipu)
    if sum(counts) != anchors.layers:
        raise ValueError(f"pipeline assigns {sum(counts)} layers, but the program has "
                         f"{anchors.layers}")
    n = len(counts)
    layer_ipu = [s for s, c in enumerate(counts) for _ in range(c)]
    pinned = {p for p in anchors.pin if p >= 0}
    if pinned and max(pinned) >= n:
        raise ValueError(f"place pins ops to IPU {max(pinned)}, but the pipeline has {n} IPU(s)")
    ipu = tuple(p if p >= 0 else layer_ipu[h] if h >= 0 and layer_ipu else 0
                for p, h in zip(anchors.pin, anchors.home))
    stage, chain = _stages(anchors, ipu)
    empty = sorted(set(range(n)) - {d for d, p in zip(ipu, anchors.phase) if p != UPDATE})
    if empty:
        raise ValueError(f"pipeline: IPU {empty[0]} would hold no ops (0 layers and no scope placed "
                         "on it); give it layers or pin a scope to it with place=")
    return Placement(anchors.phase, anchors.layer, ipu, stage, chain, counts)


def _stages(anchors: Anchors, ipu: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    fwd = sorted((i for i, p in enumerate(anchors.phase) if p == FORWARD),
                 key=lambda i: (anchors.slot[i], i))
    chain: list[int] = []
    key_stage: dict[tuple[float, int], int] = {}
    for i in fwd:
        if not chain or chain[-1] != ipu[i]:
            chain.append(ipu[i])
        key_stage.setdefault((anchors.slot[i], ipu[i]), len(chain) - 1)
    if not chain:
        chain = [0]
    first_on = {d: chain.index(d) for d in chain}
    stage = []
    for i, p in enumerate(anchors.phase):
        if p == UPDATE:
            stage.append(-1)
        else:
            stage.append(key_stage.get((anchors.slot[i], ipu[i]), first_on.get(ipu[i], 0)))
    return tuple(stage), tuple(chain)
