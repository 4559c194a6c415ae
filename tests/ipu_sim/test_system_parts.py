"""The pieces of the system model on their own: systems, links and all-reduce, the pipeline cycle
model, the layer-split search, program transforms, and the reference workloads."""

import itertools
import json

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipu_sim
from ipu_sim.balance import split_layers
from ipu_sim.collectives import SystemParams, allreduce_seconds, link, ring_allreduce_seconds
from ipu_sim.hardware import MK2_LINKS, SYSTEMS, get_system
from ipu_sim.pipeline import in_flight, pipeline_time
from ipu_sim.placement import FORWARD, PASSES, RECOMPUTE, anchor_ops, place_ops
from ipu_sim.transforms import recompute_layers, stream_inputs, with_matmul_precision
from ipu_sim.workloads import (PRESETS, ModelConfig, build, chunked_cross_entropy, chunked_embedding,
                               cross_entropy, gelu, load_config, softmax, vocab_chunks)

# -- systems -----------------------------------------------------------------------------------------


def test_systems_have_the_sizes_their_names_say():
    for chip in ("gc200", "bow"):
        for n in (16, 64, 128, 256):
            s = SYSTEMS[f"{chip}-pod{n}"]
            assert (s.ipus, s.machines, s.chip.name) == (n, n // 4, chip)
            assert s.link_domain_ipus == min(n, 64)
        assert SYSTEMS[f"{chip}-m2000"].ipus == 4
    for name in ("bow-ipu", "gc200-ipu", "gc2-ipu", "c600"):
        assert SYSTEMS[name].ipus == 1 and SYSTEMS[name].links is None
    assert not SYSTEMS["c600"].has_streaming_memory and SYSTEMS["bow-pod16"].has_streaming_memory


def test_get_system_accepts_aliases_and_chip_names_and_names_bad_input():
    assert get_system("BOW-2000") is SYSTEMS["bow-m2000"]
    assert get_system("bow") is SYSTEMS["bow-ipu"]
    assert get_system(SYSTEMS["c600"]) is SYSTEMS["c600"]
    with pytest.raises(ValueError, match="unknown system 'bow-pod32'.*bow-pod16"):
        get_system("bow-pod32")
    with pytest.raises(TypeError, match="system must be"):
        get_system(16)


# -- links and all-reduce ----------------------------------------------------------------------------

POD16, POD64, POD256 = SYSTEMS["bow-pod16"], SYSTEMS["bow-pod64"], SYSTEMS["bow-pod256"]


def test_links_use_the_j19_rates_and_latencies():
    assert link(POD16, 0, 3) == (55e9, 0.633e-6)  # same machine
    assert link(POD16, 0, 4) == (27.7e9, 0.524e-6)  # neighbouring machines
    rate, latency = link(POD64, 0, 8)  # two machines apart: one more hop
    assert rate == 27.7e9 and latency == pytest.approx(0.524e-6 + MK2_LINKS.hop_latency_s)
    assert link(POD16, 0, 12) == link(POD16, 0, 4)  # the machines form a ring


def test_ring_allreduce_matches_its_formula_and_grows_with_ring_size():
    n = 64e6
    two = ring_allreduce_seconds(POD16, [0, 1], n)
    assert two == pytest.approx(2 * (0.633e-6 + n / 4 / 55e9))
    times = [ring_allreduce_seconds(POD64, [4 * i for i in range(r)], n) for r in (2, 4, 8, 16)]
    assert times == sorted(times) and len(set(times)) == 4
    assert ring_allreduce_seconds(POD16, [0], n) == 0.0
    # Bandwidth-bound rings approach 2 n / (2 x rate) per IPU: never below it.
    assert times[-1] > n / 27.7e9 * (15 / 16)


def test_allreduce_across_pod64s_pays_the_gateway():
    n = 64e6
    inside = allreduce_seconds(POD256, [4 * i for i in range(16)], n)
    across = allreduce_seconds(POD256, [16 * i for i in range(16)], n)  # 4 per POD64, 4 PODs
    assert across > inside
    slower = SystemParams().replace(gateway_bytes_per_s=1e9)
    assert allreduce_seconds(POD256, [16 * i for i in range(16)], n, slower) > across
    with pytest.raises(ValueError, match="unknown system parameter 'gw'"):
        SystemParams().replace(gw=1.0)


# -- pipeline cycles ---------------------------------------------------------------------------------

times = st.floats(1e-6, 1e-2, allow_nan=False, allow_infinity=False)


@settings(max_examples=60)
@given(st.lists(st.tuples(times, times), min_size=1, max_size=6), st.integers(1, 40))
def test_pipeline_time_is_at_least_m_steady_cycles_and_the_bubble_shrinks_with_m(stages, m):
    chain = list(range(len(stages)))
    f, b = [s[0] for s in stages], [s[1] for s in stages]
    t = pipeline_time(chain, f, b, m)
    assert t.cycles == m + 2 * len(stages) - 2
    assert t.seconds >= m * t.steady_cycle_seconds * (1 - 1e-12)
    assert max(f[k] + b[k] for k in range(len(chain))) == pytest.approx(t.steady_cycle_seconds)
    more = pipeline_time(chain, f, b, m + 1)
    assert more.bubble_fraction <= t.bubble_fraction + 1e-12
    assert t.busy_seconds == pytest.approx([m * (f[k] + b[k]) for k in chain])


@pytest.mark.parametrize("k, m", [(1, 1), (2, 1), (4, 8), (8, 3), (4, 64)])
def test_balanced_pipeline_has_the_gpipe_bubble(k, m):
    # Equal stages on distinct IPUs: (M + K - 1) cycles of F + B, bubble (K - 1) / (M + K - 1)
    # (Huang et al. 2019, GPipe).
    t = pipeline_time(list(range(k)), [1.0] * k, [2.0] * k, m)
    assert t.seconds == pytest.approx((m + k - 1) * 3.0)
    assert t.bubble_fraction == pytest.approx((k - 1) / (m + k - 1))


def test_stages_sharing_an_ipu_add_up_and_transfers_count_per_cycle():
    alone = pipeline_time([0, 1], [1.0, 1.0], [1.0, 1.0], 16)
    shared = pipeline_time([0, 1, 0], [1.0, 1.0, 0.5], [1.0, 1.0, 0.5], 16)
    assert shared.steady_cycle_seconds == pytest.approx(3.0)  # IPU 0: 2 + 1
    assert shared.seconds > alone.seconds
    sent = pipeline_time([0, 1], [1.0, 1.0], [1.0, 1.0], 16, [0.25, 0.0], [0.0, 0.25])
    assert sent.seconds > alone.seconds and sent.transfer_seconds > 0
    assert sent.steady_cycle_seconds == pytest.approx(2.25)


def test_in_flight_counts_and_bad_input():
    assert in_flight(4, 100) == (7, 5, 3, 1)
    assert in_flight(4, 2) == (2, 2, 2, 1)
    with pytest.raises(ValueError, match="micro_batches"):
        pipeline_time([0], [1.0], [1.0], 0)
    with pytest.raises(ValueError, match="same non-zero length"):
        pipeline_time([0, 1], [1.0], [1.0], 2)


# -- layer split ---------------------------------------------------------------------------------------

@settings(max_examples=40)
@given(st.lists(st.floats(0.1, 10.0), min_size=1, max_size=7), st.integers(1, 4),
       st.floats(0.0, 5.0))
def test_split_layers_finds_the_brute_force_optimum(work, n_ipus, head):
    pinned = [head] + [0.0] * (n_ipus - 1)
    split = split_layers(work, pinned, [len(work)] * n_ipus)
    best = None
    for cut in itertools.product(range(len(work) + 1), repeat=n_ipus - 1):
        bounds = (0, *cut, len(work))
        if any(a > b for a, b in zip(bounds, bounds[1:])):
            continue
        counts = [b - a for a, b in zip(bounds, bounds[1:])]
        if any(c == 0 and p <= 0 for c, p in zip(counts, pinned)):
            continue
        load = max(p + sum(work[a:b]) for p, a, b in zip(pinned, bounds, bounds[1:]))
        best = load if best is None else min(best, load)
    if best is None:
        assert split is None
        return
    assert sum(split) == len(work)
    starts = [sum(split[:s]) for s in range(n_ipus)]
    load = max(p + sum(work[a:a + c]) for p, a, c in zip(pinned, starts, split))
    assert load == pytest.approx(best, rel=1e-9)


def test_split_layers_respects_caps():
    assert split_layers([1.0] * 6, [0.0, 0.0], [6, 6]) == (3, 3)
    assert split_layers([1.0] * 6, [0.0, 0.0], [2, 6]) == (2, 4)
    assert split_layers([1.0] * 6, [0.0, 0.0], [2, 2]) is None


# -- transforms and placement on a tiny GPT ----------------------------------------------------------------

TINY = ModelConfig("gpt", 128, 64, 4, 4, 4.0, 32, "tiny")


@pytest.fixture(scope="module")
def tiny():
    work = build(TINY, micro_batch=2)
    program = ipu_sim.fuse(ipu_sim.trace(work.step, *work.args))
    return work, program, anchor_ops(program, work.place)


def test_placement_follows_the_layer_scopes_and_pins(tiny):
    work, program, anchors = tiny
    pl = place_ops(anchors, [1, 3])
    assert pl.chain == (0, 1, 0)  # embeddings + layer 0, layers 1-3, tied head back on IPU 0
    for i, op in enumerate(program.ops):
        if pl.layer[i] >= 0:
            assert pl.ipu[i] == (0 if pl.layer[i] == 0 else 1), op.path
        if "head" in op.path or "embeddings" in op.path:
            assert pl.ipu[i] == 0, op.path
        if pl.phase[i] in PASSES:
            assert pl.chain[pl.stage[i]] == pl.ipu[i]
    assert pl.stage_layers(1) == [1, 2, 3]
    assert {pl.phase[i] for i in range(len(program.ops))} == {"forward", "backward", "update"}
    assert place_ops(anchor_ops(program, {}), [2, 2]).chain == (0, 1)


def test_a_pinned_scope_keeps_its_constants_in_its_own_stage():
    # Two vocabulary chunks: the checkpointed head makes constants read by no forward op; they
    # stay with the head instead of opening a stray stage before the layers.
    work = build(ModelConfig("gpt", 8200, 64, 2, 4, 4.0, 16, "two-chunks"), micro_batch=1)
    program = ipu_sim.fuse(ipu_sim.trace(work.step, *work.args))
    assert place_ops(anchor_ops(program, {"embeddings": 0, "head": 1}), [1, 1]).chain == (0, 1)
    assert place_ops(anchor_ops(program, work.place), [1, 1]).chain == (0, 1, 0)


def test_recompute_adds_one_forward_of_every_stage_but_the_last(tiny):
    _, program, anchors = tiny
    pl = place_ops(anchors, [2, 2])
    new, npl = recompute_layers(program, pl)
    clones = [i for i, p in enumerate(npl.phase) if p == RECOMPUTE]
    assert clones and all(npl.stage[i] != len(pl.chain) - 1 for i in clones)
    assert new.flops > program.flops
    fwd_flops = sum(op.flops * op.count for op, p, k in zip(program.ops, pl.phase, pl.stage)
                    if p == FORWARD and k != len(pl.chain) - 1)
    assert new.flops - program.flops <= fwd_flops + 1e-6
    # A clone's backward readers read the clone, never the original forward value.
    made_by_clone = {v.id for i in clones for v in new.ops[i].outputs}
    assert any(v.id in made_by_clone for op in new.ops for v in op.inputs)


def test_stream_inputs_loads_just_in_time_and_precision_rewrites_matmuls(tiny):
    _, program, _ = tiny
    streamed = {v.id for v in program.inputs[:3]}
    out = stream_inputs(program, streamed)
    assert not streamed & {v.id for v in out.inputs}
    loads = [op for op in out.ops if op.primitive == "stream_in"]
    assert {op.outputs[0].id for op in loads} <= streamed and loads
    fp8 = with_matmul_precision(program, "fp8")
    dims = [op.detail for op in fp8.ops if op.kind == "matmul"]
    assert dims and all((d.inputs, d.partials, d.lhs_itemsize) == ("fp8", "fp16", 1) for d in dims)
    with pytest.raises(ValueError, match="precision must be one of"):
        with_matmul_precision(program, "fp4")


def test_place_rejects_unknown_scopes_and_ipus(tiny):
    _, program, anchors = tiny
    with pytest.raises(ValueError, match=r"no op outside the layers is in named scope\(s\) \['hed'\]"):
        anchor_ops(program, {"hed": 0})
    with pytest.raises(ValueError, match="pins ops to IPU 3, but the pipeline has 2"):
        place_ops(anchor_ops(program, {"head": 3}), [2, 2])
    with pytest.raises(ValueError, match="assigns 3 layers, but the program has 4"):
        place_ops(anchors, [1, 2])


# -- workloads ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, millions", [
    ("bert-base", 110), ("bert-large", 340),  # Devlin et al. 2019, Table/section 3
    ("gpt2-small", 124), ("gpt2-medium", 355), ("gpt2-large", 774),  # GPT-2 with tied embeddings
])
def test_presets_have_their_published_parameter_counts(name, millions):
    work = build(name)
    count = sum(x.size for x in jax.tree.leaves(work.args[0]))
    assert count / 1e6 == pytest.approx(millions, rel=0.03)


def test_workload_step_is_a_real_train_step():
    work = build(TINY, micro_batch=2, dtype="float32")
    params, state, batch = (jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), a) for a in work.args)
    params = jax.tree.map(lambda p: p + 0.01, params)
    new_params, new_state, loss = work.step(params, state, batch)
    assert jnp.isfinite(loss) and int(new_state["count"]) == 1
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
    assert any(jax.tree.leaves(moved))


def test_softmax_and_gelu_gradients_equal_the_formulas_and_keep_what_popart_keeps():
    x = jax.random.normal(jax.random.key(1), (3, 7), jnp.float32) * 3
    g = jax.random.normal(jax.random.key(2), (3, 7), jnp.float32)
    for ours, formula in ((softmax, lambda x: jax.nn.softmax(x, axis=-1)),
                          (gelu, lambda x: jax.nn.gelu(x, approximate=True))):
        assert jnp.allclose(ours(x), formula(x))
        _, vjp = jax.vjp(ours, x)
        _, vjp_formula = jax.vjp(formula, x)
        assert jnp.allclose(vjp(g)[0], vjp_formula(g)[0], atol=1e-6)
    # PopART's SoftmaxGradOp reads the output, GeluGradOp the input: one saved tensor each.
    for fn in (softmax, gelu):
        saved = jax.linearize(lambda x: fn(x) * 1.0, x)[1]
        residuals = [v for v in jax.tree.leaves(saved) if getattr(v, "shape", None) == x.shape]
        assert len(residuals) == 1


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_attention_scores_stay_in_the_activation_dtype(dtype):
    # The published FP16 recipes run the softmax in FP16 (graphcore/examples: the PyTorch models
    # are .half()); scores are (batch, heads, seq, seq).
    work = build(TINY, micro_batch=2, dtype=dtype)
    program = ipu_sim.trace(work.step, *work.args)
    scores = (2, TINY.heads, TINY.seq, TINY.seq)
    dtypes = {v.dtype for op in program.ops for v in op.outputs
              if v.shape == scores and v.dtype != "bool"}  # bool: the causal mask
    assert dtypes == {dtype}


def test_chunked_head_and_embedding_equal_the_whole_table():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (2, 5, 8))
    table = jax.random.normal(keys[1], (30, 8))
    labels = jax.random.randint(keys[2], (2, 5), 0, 30)
    chunks = [table[:10], table[10:21], table[21:]]

    def whole(x, t):
        return cross_entropy(x @ t.T, labels) + jnp.sum(t[labels] ** 2)

    def split(x, parts):
        return chunked_cross_entropy(x, parts, labels) + jnp.sum(chunked_embedding(parts, labels) ** 2)

    (a, (gx, gt)), (b, (sx, st_)) = (jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(x, t)
                                     for f, t in ((whole, table), (split, chunks)))
    assert float(b) == pytest.approx(float(a), rel=1e-6)
    assert jnp.allclose(gx, sx, atol=1e-5) and jnp.allclose(gt, jnp.concatenate(st_), atol=1e-5)
    assert vocab_chunks(50257) == [(round(i * 50257 / 7), round((i + 1) * 50257 / 7)) for i in range(7)]


def test_model_config_files_and_their_errors(tmp_path):
    good = tmp_path / "small.json"
    good.write_text(json.dumps(dict(kind="bert", vocab=100, d_model=32, depth=2, heads=4)))
    c = load_config(good)
    assert (c.name, c.depth, c.seq, c.ffn_ratio) == ("small", 2, 128, 4.0)
    cases = {"kind": "rnn", "heads": 5, "depth": 0, "vocab": "many"}
    for key, value in cases.items():
        bad = tmp_path / f"bad_{key}.json"
        bad.write_text(json.dumps({**json.loads(good.read_text()), key: value}))
        with pytest.raises(ValueError, match=f"bad_{key}.json"):
            load_config(bad)
    (tmp_path / "extra.json").write_text(json.dumps({**json.loads(good.read_text()), "width": 3}))
    with pytest.raises(ValueError, match=r"unknown keys \['width'\]"):
        load_config(tmp_path / "extra.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path / "broken.json")
    assert set(PRESETS) == {"bert-base", "bert-large", "gpt2-small", "gpt2-medium", "gpt2-large"}
