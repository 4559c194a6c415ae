"""estimate_system end to end on small models: replicas, micro-batches, recomputation, streaming
memory, memory refusal with the IPU named, the single-IPU entry point, precision and bad input."""

import jax
import jax.numpy as jnp
import pytest

import ipu_sim
from ipu_sim.placement import anchor_ops, place_ops
from ipu_sim.replica import cost_replica
from ipu_sim.system import compose, estimate_system
from ipu_sim.workloads import ModelConfig, build

TINY = ModelConfig("gpt", 128, 64, 4, 4, 4.0, 32, "tiny")
# Large enough that activations and optimizer state outweigh the code recomputation and streaming
# add (in a tiny model, code dominates every tile and neither saves memory).
MID = ModelConfig("gpt", 256, 256, 4, 4, 4.0, 128, "mid")
# ~50 MB of fp32 weights per layer: with on-chip Adam state (16 B / parameter in all) five layers
# exceed one IPU's ~940 MB, three fit.
WIDE = ModelConfig("gpt", 256, 1024, 6, 8, 4.0, 32, "wide")


@pytest.fixture(scope="module")
def tiny():
    work = build(TINY, micro_batch=2)
    program = ipu_sim.fuse(ipu_sim.trace(work.step, *work.args))
    return work, program, anchor_ops(program, work.place)


@pytest.fixture(scope="module")
def costs():
    """Replica costs of a GPT on 2 Bow IPUs: plain, with recomputation, with offloaded state."""
    work = build(MID, micro_batch=4)
    program = ipu_sim.fuse(ipu_sim.trace(work.step, *work.args))
    placement = place_ops(anchor_ops(program, work.place), [2, 2])
    options = {"plain": {}, "recompute": {"recompute": True}, "offload": {"offload_optimizer": True}}
    return {k: cost_replica(program, placement, ipu_sim.BOW, **kw) for k, kw in options.items()}


def run(costs, **kw):
    kw = {"system": "bow-pod64", "micro_batch": 4, "seq": 128, **kw}
    return compose(costs, kw.pop("system"), **kw)


def test_throughput_rises_with_replicas_but_less_than_linearly(costs):
    base = run(costs["plain"], replicas=1, grad_accum=8)
    rates, efficiency = [base.samples_per_second], []
    for r in (2, 4, 8, 16, 32):
        est = run(costs["plain"], replicas=r, grad_accum=8)
        rates.append(est.samples_per_second)
        efficiency.append(est.samples_per_second / (r * base.samples_per_second))
        assert est.allreduce_seconds > 0 and est.ipus_used == 2 * r
    assert rates == sorted(rates) and len(set(rates)) == len(rates)
    assert all(e < 1 for e in efficiency)
    assert efficiency == sorted(efficiency, reverse=True)


def test_more_micro_batches_shrink_the_bubble(costs):
    runs = [run(costs["plain"], grad_accum=m) for m in (1, 2, 4, 16, 64, 256)]
    bubbles = [e.pipeline.bubble_fraction for e in runs]
    assert bubbles == sorted(bubbles, reverse=True) and len(set(bubbles)) == len(bubbles)
    assert bubbles[0] > 0.3 and bubbles[-1] < 0.02
    rates = [e.samples_per_second for e in runs]
    assert rates == sorted(rates)


def test_recomputation_lowers_memory_and_raises_time(costs):
    plain, recomputed = (run(costs[k], grad_accum=16) for k in ("plain", "recompute"))
    assert recomputed.costs.stash_bytes[0] < plain.costs.stash_bytes[0]
    assert recomputed.ipus[0].memory.peak_bytes < plain.ipus[0].memory.peak_bytes
    assert recomputed.ipus[0].memory.total_bytes < plain.ipus[0].memory.total_bytes
    assert recomputed.step_seconds > plain.step_seconds
    assert recomputed.ipus[0].flops > plain.ipus[0].flops


def test_offloaded_optimizer_state_frees_memory_and_costs_streaming(costs, tiny):
    on, off = run(costs["plain"], grad_accum=4), run(costs["offload"], grad_accum=4)
    for a, b in zip(on.ipus, off.ipus):
        assert b.memory.total_bytes < a.memory.total_bytes
        assert b.memory.peak_bytes < a.memory.peak_bytes
    assert off.streaming_seconds > 0 == on.streaming_seconds
    assert off.step_seconds > on.step_seconds
    p = costs["offload"].ipus[1]
    assert p.streamed_bytes == 2 * p.state_bytes > 0
    with pytest.raises(ValueError, match="offload_optimizer: c600 has no streaming memory"):
        estimate_system(tiny[1], system="c600", offload_optimizer=True)


def test_over_full_stage_is_refused_with_the_ipu_named_and_the_balancer_avoids_it():
    work = build(WIDE, micro_batch=1, dtype="float32")
    program = ipu_sim.trace(work.step, *work.args)
    kw = dict(system="bow-m2000", place=work.place, micro_batch=1)
    over = estimate_system(program, pipeline=[5, 1], **kw)
    assert not over.fits and not over.ipus[0].memory.fits and over.ipus[1].memory.fits
    message = over.out_of_memory
    assert message.startswith("IPU 0 (embeddings, layers 0-4, head) does not fit: tile ")
    assert f"({over.ipus[0].memory.over_bytes:,} B over)" in message
    assert "optimizer_state" in message and "IPU 1" not in message
    balanced = estimate_system(program, pipeline=2, **kw)
    assert balanced.fits and balanced.layers_per_ipu != (5, 1)
    assert any("balanced automatically" in n for n in balanced.notes)


def test_single_ipu_entry_point_takes_any_jittable_step():
    def loss(w, x, y):
        return jnp.mean(jnp.square(jnp.tanh(x @ w["a"]) @ w["b"] - y))

    @jax.jit
    def train_step(w, x, y):
        g = jax.grad(loss)(w, x, y)
        return jax.tree.map(lambda p, d: p - 0.1 * d, w, g)

    w = {"a": jnp.zeros((256, 512)), "b": jnp.zeros((512, 64))}
    x, y = jnp.zeros((128, 256)), jnp.zeros((128, 64))
    est = estimate_system(train_step, w, x, y)
    assert est.system.name == "bow-ipu" and est.fits and est.layers_per_ipu == (0,)
    single = ipu_sim.estimate(train_step, w, x, y)
    # The same ops, costed as a micro-batch program and an update program; plus host I/O of x, y
    # (the arguments the step reads but does not update) and one host call.
    assert est.host_seconds == pytest.approx((x.nbytes + y.nbytes) / 6e9 + 8.81e-6)
    assert est.step_seconds - est.host_seconds == pytest.approx(single.seconds, rel=0.25)
    assert est.samples_per_second == pytest.approx(1 / est.step_seconds)
    with pytest.raises(ValueError, match="no layer scopes"):
        estimate_system(train_step, w, x, y, system="bow-m2000", pipeline=2)


def test_fp8_uses_the_fp8_rate_only_on_chips_that_have_one(tiny):
    _, program, _ = tiny
    c600 = {p: estimate_system(program, system="c600", precision=p) for p in ("fp16", "fp8")}
    assert c600["fp8"].pipeline.seconds < c600["fp16"].pipeline.seconds
    assert any("c600 FP8 AMP rate" in n for n in c600["fp8"].notes)
    assert "fp8 inputs" in c600["fp8"].precision
    bow = estimate_system(program, system="bow-ipu", precision="fp8")
    assert any("bow has no FP8 AMP" in n and "FP16 rate" in n for n in bow.notes)


def test_bad_arguments_name_the_argument(tiny):
    _, program, _ = tiny
    with pytest.raises(ValueError, match="pipeline 1,1 sums to 2 layers, but the model has 4"):
        estimate_system(program, system="bow-m2000", pipeline=[1, 1])
    with pytest.raises(ValueError, match=r"pipeline x replicas = 2 x 3 = 6 IPUs, but bow-m2000 has 4"):
        estimate_system(program, system="bow-m2000", pipeline=[2, 2], replicas=3)
    with pytest.raises(ValueError, match="replicas must be >= 1"):
        estimate_system(program, replicas=0)
    with pytest.raises(TypeError, match="grad_accum must be an int"):
        estimate_system(program, grad_accum=2.5)
    with pytest.raises(ValueError, match="unknown system 'pod16'"):
        estimate_system(program, system="pod16")
    with pytest.raises(ValueError, match="pipeline entries must be layer counts"):
        estimate_system(program, system="bow-m2000", pipeline=[2, -1, 3])
    with pytest.raises(ValueError, match="takes no args"):
        estimate_system(program, 3)


def test_report_text_and_json(costs):
    est = run(costs["recompute"], replicas=4, grad_accum=32, device_iterations=10)
    text = est.summary()
    for piece in ("bow-pod64", "samples/s", "tokens/s", "bubble", "embeddings, layers 0-1, head"):
        assert piece in text
    d = est.to_dict()
    assert d["samples_per_step"] == 4 * 32 * 4 and d["ipus_used"] == 8
    assert d["step_seconds"] == pytest.approx(sum(d["breakdown"].values()))
    assert [i["ipu"] for i in d["ipus"]] == [0, 1] and d["ipus"][0]["memory"]["fits"]
    assert est.to_json()


def test_each_ipu_plans_its_matmuls_with_its_own_memory_proportion():
    # Graphcore's pipelined recipes set availableMemoryProportion per IPU (PopTorch:
    # setAvailableMemoryProportion({"IPU0": ..., ...})); a lower one caps that IPU's temporaries.
    work = build(MID, micro_batch=4)
    program = ipu_sim.fuse(ipu_sim.trace(work.step, *work.args))
    placement = place_ops(anchor_ops(program, work.place), [2, 2])
    even = cost_replica(program, placement, ipu_sim.BOW, available_memory_proportion=0.6)
    uneven = cost_replica(program, placement, ipu_sim.BOW, available_memory_proportion=[0.6, 0.02])
    assert uneven.available_memory_proportion == (0.6, 0.02)
    temps = [[max(p.micro_batch.memory.category("temporaries")) for p in c.ipus]
             for c in (even, uneven)]
    assert temps[1][0] == temps[0][0] and temps[1][1] < temps[0][1]
    est = compose(uneven, "bow-m2000", micro_batch=4)
    assert [r.available_memory_proportion for r in est.ipus] == [0.6, 0.02]
    assert [i["available_memory_proportion"] for i in est.to_dict()["ipus"]] == [0.6, 0.02]


@pytest.mark.parametrize("value, message", [
    ([0.2, 0.2, 0.2], "3 values for 2 IPUs per replica"),
    ([0.2, 1.5], r"must be in \(0, 1\], got 1.5"),
    (0.0, r"must be in \(0, 1\], got 0.0"),
])
def test_bad_memory_proportions_are_named(tiny, value, message):
    _, program, _ = tiny
    with pytest.raises(ValueError, match=message):
        estimate_system(program, system="bow-m2000", pipeline=[2, 2],
                        available_memory_proportion=value)
