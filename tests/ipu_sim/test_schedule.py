"""BSP schedule: supersteps, syncs, element-wise fusion and MIMD packing of independent ops."""

import jax
import jax.numpy as jnp
from hypothesis import given, settings
from hypothesis import strategies as st

import ipu_sim
from ipu_sim.hardware import BOW

F32 = jnp.float32


def sds(*shape):
    return jax.ShapeDtypeStruct(shape, F32)


def test_every_superstep_pays_one_sync():
    e = ipu_sim.estimate(lambda x: jnp.sum(jnp.sin(x) @ x), sds(256, 256), chip="bow")
    assert e.sync_cycles == e.supersteps * BOW.sync_cycles
    assert e.cycles == e.compute_cycles + e.exchange_cycles + e.sync_cycles


def test_elementwise_chains_fuse_into_one_superstep():
    fn = lambda x: jnp.tanh(jnp.exp(x) * 2 + 1)  # noqa: E731
    fused = ipu_sim.estimate(fn, sds(1024, 1024))
    unfused = ipu_sim.estimate(fn, sds(1024, 1024), fuse=False)
    assert fused.supersteps == 1 < unfused.supersteps
    assert fused.cycles < unfused.cycles
    assert fused.memory.max_bytes < unfused.memory.max_bytes


def test_independent_small_ops_share_supersteps_on_disjoint_tiles():
    fn = lambda a, b, c: (jnp.sin(a), jnp.cos(b), jnp.exp(c))  # noqa: E731
    args = (sds(64), sds(64), sds(64))
    mimd = ipu_sim.estimate(fn, *args)
    bsp = ipu_sim.estimate(fn, *args, mimd=False)
    assert (mimd.supersteps, bsp.supersteps) == (1, 3)
    assert mimd.cycles < bsp.cycles


def test_dependent_ops_do_not_share_supersteps():
    fn = lambda a: jnp.sum(jnp.sin(a))  # noqa: E731
    e = ipu_sim.estimate(fn, sds(64), fuse=False)
    assert e.cycles == ipu_sim.estimate(fn, sds(64), fuse=False, mimd=False).cycles
    assert e.supersteps == sum(o.supersteps for o in e.ops) >= 2


def test_full_chip_ops_do_not_overlap():
    fn = lambda a, b: (a @ a, b @ b)  # noqa: E731
    mimd = ipu_sim.estimate(fn, sds(1024, 1024), sds(1024, 1024))
    bsp = ipu_sim.estimate(fn, sds(1024, 1024), sds(1024, 1024), mimd=False)
    assert mimd.cycles == bsp.cycles


def test_scan_body_time_is_multiplied_by_its_length():
    body = lambda c, x: (jnp.tanh(c @ x), None)  # noqa: E731
    run = lambda n: ipu_sim.estimate(  # noqa: E731
        lambda c, xs: jax.lax.scan(body, c, xs)[0], sds(128, 128), sds(n, 128, 128))
    one, four = run(1), run(4)
    assert four.supersteps == 4 * one.supersteps
    assert 3.5 < four.cycles / one.cycles <= 4.0


@settings(max_examples=10)
@given(st.integers(1, 64), st.integers(1, 512), st.integers(1, 512),
       st.sampled_from(["gc2", "gc200", "bow", "c600"]))
def test_mlp_training_step_never_beats_the_peak_rate(batch, width, hidden, chip):
    loss = lambda w1, w2, x: jnp.sum(jnp.tanh(x @ w1) @ w2)  # noqa: E731
    e = ipu_sim.estimate(jax.grad(loss, argnums=(0, 1)), sds(width, hidden), sds(hidden, width),
                         sds(batch, width), chip=chip)
    peak = max(e.chip.peak_flops(i, p) for i in ("fp32", "fp16") for p in ("fp32", "fp16"))
    assert e.cycles > 0
    assert e.flops / e.seconds <= peak
    assert e.flops / e.seconds <= e.peak_flops
