"""One model replica cut into per-IPU programs, each costed by the single-IPU model.

For every IPU of a replica (see :mod:`ipu_sim.placement`):

* the *micro-batch program* -- its forward, backward (and recomputation) ops -- is estimated once
  with :func:`~ipu_sim.estimator.estimate_program`; its per-op cycles give each pipeline stage's
  forward and backward seconds per micro-batch, and its per-tile memory the peak of one micro-batch
  (gradients leave it for their accumulators as they are made, activations for other IPUs once
  sent: the system model adds accumulators and stashes);
* the *update program* -- its optimizer ops -- is estimated the same way (with optimizer state and
  master weights streamed in and out if they live off-chip, :func:`~ipu_sim.transforms.stream_inputs`).

Data flow classifies the program inputs: *optimizer state* is read only by update ops (moments,
master weights, step counters); *weights* are read by the passes and rewritten by the update;
*batch data* is read by the passes and not rewritten (or given by ``data_ids``). Per stage it
measures the activations one micro-batch leaves for its backward (*stash*: values made in the
forward -- or batch data -- that backward or recomputed ops read), the gradients it makes, and the
bytes it sends to other IPUs after its forward and its backward.

Nothing here depends on the number of micro-batches or replicas: :mod:`ipu_sim.system` composes
these costs into a step time and per-IPU memory.
"""

from __future__ import annotations

import numbers
import types
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import jax

from ipu_sim.estimator import estimate_program
from ipu_sim.hardware import Chip
from ipu_sim.params import ModelParams
from ipu_sim.placement import BACKWARD, FORWARD, PASSES, UPDATE, Placement
from ipu_sim.report import Estimate, component_seconds, scope
from ipu_sim.trace import VIEW, Program, Value, trace
from ipu_sim.transforms import recompute_layers, stream_inputs


@dataclass(frozen=True)
class IPUPrograms:
    """One IPU of a replica: its two programs' estimates and the bytes the system model needs."""

    ipu: int
    micro_batch: Estimate  # forward + backward (+ recomputation) of one micro-batch
    update: Estimate | None  # the optimizer step (None: no update ops on this IPU)
    gradient_bytes: int  # gradients it makes (accumulated, all-reduced)
    state_bytes: int  # optimizer state + master weights its update reads
    streamed_bytes: int  # per update when the state is off-chip: read in + written back
    data_bytes: int  # batch data from the host per micro-batch
    update_sends: tuple[tuple[int, int], ...]  # (IPU, bytes) sent during the update
    scopes: tuple[str, ...]  # what it holds, e.g. ("embeddings", "layer_0", "head")


@dataclass(frozen=True)
class ReplicaCosts:
    """Per-stage times (seconds per micro-batch) and per-IPU programs of one replica."""

    chip: Chip
    placement: Placement
    recompute: bool
    offload_optimizer: bool
    available_memory_proportion: tuple[float, ...]  # per IPU of the replica
    params: ModelParams
    forward: tuple[float, ...]
    backward: tuple[float, ...]  # including recomputation
    accumulate: tuple[float, ...]  # adding a micro-batch's gradients into the accumulators
    stash_bytes: tuple[int, ...]  # activations one micro-batch leaves for its backward
    sends_forward: tuple[tuple[tuple[int, int], ...], ...]  # per stage: (IPU, bytes) after fwd
    sends_backward: tuple[tuple[tuple[int, int], ...], ...]
    ipus: tuple[IPUPrograms, ...]
    # forward, backward and accumulate split by calibration component (ipu_sim.calibration);
    # each sums to the stage's seconds above.
    forward_parts: tuple[Mapping[str, float], ...] = ()
    backward_parts: tuple[Mapping[str, float], ...] = ()
    accumulate_parts: tuple[Mapping[str, float], ...] = ()

    @property
    def chain(self) -> tuple[int, ...]:
        return self.placement.chain


def cost_replica(program: Program, placement: Placement, chip: Chip, *, recompute: bool = False,
                 offload_optimizer: bool = False, data_ids: Iterable[int] | None = None,
                 available_memory_proportion: float | Sequence[float] = 0.6,
                 params: ModelParams | None = None, outline: bool = True) -> ReplicaCosts:
    """Cost each IPU's programs of ``program`` (fused, placed by ``placement``) on ``chip``.

    ``available_memory_proportion``: one value for every IPU, or one per IPU of the replica (as
    Graphcore's pipelined recipes set it, e.g. PopTorch's ``setAvailableMemoryProportion``);
    ``outline``: identical layers share their code (:mod:`ipu_sim.outline`)."""
    params = params or ModelParams()
    amps = per_ipu_proportions(available_memory_proportion, placement.ipus)
    if recompute:
        program, placement = recompute_layers(program, placement)
    flow = _Flow(program, placement, data_ids)
    k_stages = len(placement.chain)
    parts = {FORWARD: [defaultdict(float) for _ in range(k_stages)],
             BACKWARD: [defaultdict(float) for _ in range(k_stages)]}
    ipus = []
    for ipu in range(placement.ipus):
        indices = placement.ops_on(ipu, PASSES)
        est = estimate_program(flow.micro_batch_program(indices), chip, amps[ipu], params,
                               fuse=False, donate=False, outline=outline)
        for i, cost in zip(indices, est.ops):
            target = parts[FORWARD if placement.phase[i] == FORWARD else BACKWARD]
            for key, cycles in cost.components().items():
                target[placement.stage[i]][key] += chip.seconds(cycles)
        ipus.append(_ipu_programs(ipu, est, program, flow, chip, offload_optimizer, amps[ipu],
                                  params, outline))
    # Accumulating gradients is element-wise (no matmul): the proportion does not matter.
    accumulate = _accumulate_parts(flow, k_stages, chip, min(amps), params)
    fwd, bwd = (tuple(_frozen(d) for d in parts[key]) for key in (FORWARD, BACKWARD))
    return ReplicaCosts(chip, placement, recompute, offload_optimizer, amps, params,
                        tuple(sum(d.values()) for d in fwd), tuple(sum(d.values()) for d in bwd),
                        tuple(sum(d.values()) for d in accumulate), flow.stash_bytes(k_stages),
                        *flow.stage_sends(k_stages), tuple(ipus), fwd, bwd,
                        tuple(_frozen(d) for d in accumulate))


def _frozen(parts: Mapping[str, float]) -> Mapping[str, float]:
    return types.MappingProxyType(dict(parts))


def per_ipu_proportions(value: float | Sequence[float], ipus: int) -> tuple[float, ...]:
    """``available_memory_proportion`` as one value per IPU: a number for all ``ipus``, or a
    sequence of exactly ``ipus`` values, each in (0, 1]."""
    values = tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) \
        else (value,) * ipus
    if len(values) != ipus:
        raise ValueError(f"available_memory_proportion: {len(values)} values for {ipus} IPUs per "
                         "replica; give one value or one per IPU")
    for v in values:
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not 0.0 < v <= 1.0:
            raise ValueError(f"available_memory_proportion must be in (0, 1], got {v!r}")
    return tuple(float(v) for v in values)


def _ipu_programs(ipu: int, est: Estimate, program: Program, flow: "_Flow", chip: Chip,
                  offload: bool, amp: float, params, outline: bool = True) -> IPUPrograms:
    placement = flow.placement
    indices = placement.ops_on(ipu, (UPDATE,))
    state = {v.id: v for i in indices for v in program.ops[i].inputs if v.id in flow.state_ids}
    streamed_out = {o for o, i in flow.paired.items() if i in state and flow.producer_ipu(o) == ipu}
    update = None
    if indices:
        stage = program.stage(indices)
        if offload:
            stage = stream_inputs(stage, state, streamed_out)
        update = estimate_program(stage, chip, amp, params, fuse=False, donate=True,
                                  outline=outline)
    state_bytes = sum(v.nbytes for v in state.values())
    out_bytes = sum(flow.values[o].nbytes for o in streamed_out)
    mb_indices = placement.ops_on(ipu, PASSES)
    data = {v.id: v.nbytes for i in mb_indices for v in program.ops[i].inputs if v.id in flow.data_ids}
    return IPUPrograms(ipu, est, update, flow.gradient_bytes(ipu), state_bytes,
                       state_bytes + out_bytes if offload else 0, sum(data.values()),
                       flow.update_sends(ipu), flow.scopes(ipu))


class _Flow:
    """Producers, readers and storage of every value of a placed program."""

    def __init__(self, program: Program, placement: Placement, data_ids: Iterable[int] | None):
        self.program, self.placement = program, placement
        self.producer = {v.id: op.index for op in program.ops for v in op.outputs}
        self.values: dict[int, Value] = {v.id: v for v in program.inputs + program.constants}
        self.values.update({v.id: v for op in program.ops for v in op.outputs})
        self.readers: dict[int, set[int]] = defaultdict(set)
        for op in program.ops:
            for v in op.inputs:
                self.readers[v.id].add(op.index)
        self.roots = program.roots()
        phase = placement.phase
        inputs = [v.id for v in program.inputs]
        read_by = {vid: {phase[i] for i in self.readers.get(vid, ())} for vid in inputs}
        self.paired = _pair_outputs(program)
        rewritten = set(self.paired.values())
        self.state_ids = {vid for vid in inputs if read_by[vid] and read_by[vid] <= {UPDATE}}
        if data_ids is None:
            data_ids = {vid for vid in inputs if read_by[vid] & set(PASSES)
                        and UPDATE not in read_by[vid] and vid not in rewritten}
        self.data_ids = set(data_ids)
        self._gradients = [(op.index, v) for op in program.ops if phase[op.index] == BACKWARD
                           for v in op.outputs
                           if any(phase[j] == UPDATE for j in self.readers.get(v.id, ()))]

    def micro_batch_program(self, indices: list[int]) -> Program:
        """The ops at ``indices`` as a program whose only outputs are the step's own (e.g. the
        loss): a value sent to another IPU is freed once sent (or kept in the stash, which the
        system model counts), a gradient once added into its accumulator."""
        stage = self.program.stage(indices)
        keep = {v.id for v in self.program.outputs} - {v.id for v in self.gradients()}
        return Program(stage.ops, stage.inputs, tuple(v for v in stage.outputs if v.id in keep),
                       stage.constants)

    def producer_ipu(self, vid: int) -> int:
        i = self.producer.get(vid)
        return self.placement.ipu[i] if i is not None else -1

    def stored_bytes(self, vid: int) -> int:
        """Bytes of a value's storage; 0 for broadcast literals (any IPU makes its own)."""
        i = self.producer.get(vid)
        if i is not None and self.program.ops[i].kind == VIEW and not self.program.ops[i].inputs:
            return 0
        return min(self.values[vid].nbytes, self.values[self.roots.get(vid, vid)].nbytes)

    def stash_bytes(self, k_stages: int) -> tuple[int, ...]:
        """Per stage: storage of forward-made values (or batch data) its backward ops read."""
        roots: list[set[int]] = [set() for _ in range(k_stages)]
        pl = self.placement
        for op in self.program.ops:
            if pl.phase[op.index] not in (BACKWARD, "recompute"):
                continue
            for v in op.inputs:
                r = self.roots.get(v.id, v.id)
                made = self.producer.get(r)
                if (made is not None and pl.phase[made] == FORWARD) or r in self.data_ids:
                    roots[pl.stage[op.index]].add(r)
        return tuple(sum(self.stored_bytes(r) for r in rs) for rs in roots)

    def gradients(self, ipu: int | None = None, stage: int | None = None) -> list[Value]:
        """Values made by backward ops (on ``ipu`` / in ``stage``) that update ops read."""
        pl = self.placement
        return [v for i, v in self._gradients
                if (ipu is None or pl.ipu[i] == ipu) and (stage is None or pl.stage[i] == stage)]

    def gradient_bytes(self, ipu: int) -> int:
        return sum(v.nbytes for v in self.gradients(ipu=ipu))

    def stage_sends(self, k_stages: int):
        """Per stage, (IPU, bytes) sent after its forward and after its backward of a micro-batch."""
        pl = self.placement
        sends = [[defaultdict(int) for _ in range(k_stages)] for _ in range(2)]
        seen = set()
        for op in self.program.ops:
            i = op.index
            if pl.phase[i] not in PASSES:
                continue
            for v in op.outputs:
                for j in self.readers.get(v.id, ()):
                    dest = pl.ipu[j]
                    key = (self.roots.get(v.id, v.id), dest)
                    if pl.phase[j] in PASSES and dest != pl.ipu[i] and key not in seen:
                        seen.add(key)
                        sends[pl.phase[i] != FORWARD][pl.stage[i]][dest] += self.stored_bytes(v.id)
        pack = lambda per_stage: tuple(tuple(sorted(d.items())) for d in per_stage)  # noqa: E731
        return pack(sends[0]), pack(sends[1])

    def update_sends(self, ipu: int) -> tuple[tuple[int, int], ...]:
        """(IPU, bytes) that ``ipu`` sends to update ops elsewhere (e.g. a tied weight's gradient)."""
        pl = self.placement
        out: dict[int, int] = defaultdict(int)
        for op in self.program.ops:
            if pl.ipu[op.index] != ipu or pl.phase[op.index] not in (BACKWARD, UPDATE):
                continue
            for v in op.outputs:
                dests = {pl.ipu[j] for j in self.readers.get(v.id, ()) if pl.phase[j] == UPDATE}
                for dest in dests - {ipu}:
                    out[dest] += self.stored_bytes(v.id)
        return tuple(sorted(out.items()))

    def scopes(self, ipu: int) -> tuple[str, ...]:
        """Top-level named scopes of the forward ops on ``ipu``, in program order."""
        pl, names = self.placement, {}
        for op in self.program.ops:
            if pl.ipu[op.index] == ipu and pl.phase[op.index] == FORWARD:
                names.setdefault(scope(op.path).split("/")[0] or "<top>", None)
        return tuple(names)


def _pair_outputs(program: Program) -> dict[int, int]:
    """Output id -> the input it replaces: first unused input of the same shape and dtype, in order
    (how a training step returns its new weights and optimizer state)."""
    made = {v.id for op in program.ops for v in op.outputs}
    free = list(program.inputs)
    pairs = {}
    for v in program.outputs:
        if v.id not in made:
            continue
        for k, x in enumerate(free):
            if x.shape == v.shape and x.dtype == v.dtype:
                pairs[v.id] = x.id
                del free[k]
                break
    return pairs


def _accumulate_parts(flow: _Flow, k_stages: int, chip: Chip, amp: float,
                      params) -> tuple[dict[str, float], ...]:
    """Per stage, seconds by calibration component to add one micro-batch's gradients into
    accumulators of their dtype: one element-wise add per dtype over all its gradient elements,
    estimated like any program."""
    out = []
    for k in range(k_stages):
        sizes: dict[str, int] = defaultdict(int)
        for v in flow.gradients(stage=k):
            sizes[v.dtype] += v.size
        if not sizes:
            out.append({})
            continue
        specs = [jax.ShapeDtypeStruct((n,), dtype) for dtype, n in sorted(sizes.items())]
        adds = trace(lambda acc, grads: [a + g for a, g in zip(acc, grads)], specs, specs)
        est = estimate_program(adds, chip, amp, params)
        out.append(component_seconds(est.ops, chip))
    return tuple(out)
