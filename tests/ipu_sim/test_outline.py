"""Outlining (PopART's default): identical layers keep one copy of their code and pay copies in and
out of the shared subgraph; different layers, and recomputations, keep their own code."""

import jax
import jax.numpy as jnp
import pytest

import ipu_sim
from ipu_sim.outline import outline, signature
from ipu_sim.placement import anchor_ops, place_ops
from ipu_sim.transforms import recompute_layers
from ipu_sim.workloads import ModelConfig, build


def gpt(depth, d_model=64):
    work = build(ModelConfig("gpt", 128, d_model, depth, 4, 4.0, 32, "tiny"), micro_batch=2)
    return work, ipu_sim.fuse(ipu_sim.trace(work.step, *work.args))


def code_per_tile(program, outline_layers):
    e = ipu_sim.estimate_program(program, "bow", fuse=False, outline=outline_layers)
    return max(e.memory.category("code"))


@pytest.fixture(scope="module")
def programs():
    return {depth: gpt(depth)[1] for depth in (2, 6)}


def test_identical_layers_keep_one_copy_of_their_code(programs):
    # Four more identical layers: without outlining every one brings its vertex state, exchange
    # programs and control program; with it, only the calls and the copies' vertices remain.
    grown = code_per_tile(programs[6], True) - code_per_tile(programs[2], True)
    grown_without = code_per_tile(programs[6], False) - code_per_tile(programs[2], False)
    assert grown_without > 5 * grown > 0


def test_outlining_never_adds_code(programs):
    for program in programs.values():
        assert code_per_tile(program, True) <= code_per_tile(program, False)


def test_ops_of_different_layers_share_only_identical_code():
    def two_widths(w1, w2, x):
        with jax.named_scope("layer_0"):
            x = jnp.tanh(x @ w1)
        with jax.named_scope("layer_1"):
            x = jnp.tanh(x @ w2)
        with jax.named_scope("layer_2"):
            return jnp.tanh(x @ w2)

    f16 = jnp.float16
    program = ipu_sim.trace(two_widths, jax.ShapeDtypeStruct((64, 128), f16),
                            jax.ShapeDtypeStruct((128, 128), f16), jax.ShapeDtypeStruct((8, 64), f16))
    out = outline(program)
    layer = {op.index: op.path for op in program.ops}
    assert out.shared and all("layer_2" in layer[i] for i in out.shared)  # layer 1 differs from 0
    for i in out.shared:
        assert any(signature(op) == signature(program.ops[i]) and "layer_1" in op.path
                   for op in program.ops[:i])


def test_a_recomputation_never_shares_code_with_the_forward_pass():
    work, program = gpt(4)
    placement = place_ops(anchor_ops(program, work.place), [2, 2])
    rec, _ = recompute_layers(program, placement)
    out = outline(rec)
    first = {}
    for op in rec.ops:
        first.setdefault(signature(op), op)
    recomputed = [i for i in out.shared if rec.ops[i].recomputed]
    assert recomputed, "the recomputed layers of the first stage are identical to each other"
    for i in out.shared:
        assert first[signature(rec.ops[i])].recomputed == rec.ops[i].recomputed


def test_outlined_ops_copy_values_from_outside_their_layer():
    _, program = gpt(3)
    with_copies = ipu_sim.estimate_program(program, "bow", fuse=False)
    without = ipu_sim.estimate_program(program, "bow", fuse=False, outline=False)
    out = outline(program)
    weights = {v.id for v in program.inputs}
    copied_weights = {r for values in out.copies.values() for r in values if r in weights}
    assert copied_weights  # every layer's weights enter the shared subgraph by copy
    assert with_copies.cycles > without.cycles  # the copies take time ...
    assert sum(o.temp_bytes for o in with_copies.ops) > sum(o.temp_bytes for o in without.ops)
    assert not outline(ipu_sim.trace(lambda x: jnp.tanh(x) @ x,  # ... and nothing without layers
                                     jax.ShapeDtypeStruct((8, 8), jnp.float32))).copies
