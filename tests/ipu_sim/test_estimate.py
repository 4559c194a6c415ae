"""End to end: a plain-JAX GPT training step (grad + optax adam) traces and estimates on every chip."""

import json

import jax
import jax.numpy as jnp
import matplotlib
import optax
import pytest

import ipu_sim

matplotlib.use("Agg")

VOCAB, D, HEADS, LAYERS, SEQ, BATCH = 128, 64, 4, 2, 32, 4


def init(key):
    keys = iter(jax.random.split(key, 4 + 4 * LAYERS))
    normal = lambda *shape: 0.02 * jax.random.normal(next(keys), shape)  # noqa: E731
    layer = lambda: dict(qkv=normal(D, 3 * D), out=normal(D, D), up=normal(D, 4 * D),  # noqa: E731
                         down=normal(4 * D, D), g1=jnp.ones(D), b1=jnp.zeros(D), g2=jnp.ones(D),
                         b2=jnp.zeros(D))
    return dict(tok=normal(VOCAB, D), pos=normal(SEQ, D), layers=[layer() for _ in range(LAYERS)],
                g=jnp.ones(D), b=jnp.zeros(D))


def layer_norm(x, g, b):
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + 1e-5) * g + b


def attention(p, x):
    b, s, _ = x.shape
    q, k, v = (t.reshape(b, s, HEADS, D // HEADS) for t in jnp.split(x @ p["qkv"], 3, axis=-1))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(D / HEADS)
    scores = jnp.where(jnp.tril(jnp.ones((s, s), bool)), scores, -1e9)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
    return ctx.reshape(b, s, D) @ p["out"]


def loss_fn(params, tokens):
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    x = params["tok"][inputs] + params["pos"][: inputs.shape[1]]
    for i, p in enumerate(params["layers"]):
        with jax.named_scope(f"layer{i}"):
            x = x + attention(p, layer_norm(x, p["g1"], p["b1"]))
            x = x + jax.nn.gelu(layer_norm(x, p["g2"], p["b2"]) @ p["up"]) @ p["down"]
    logits = layer_norm(x, params["g"], params["b"]) @ params["tok"].T
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


OPTIMIZER = optax.adam(1e-3)


@jax.jit
def train_step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
    updates, opt_state = OPTIMIZER.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@pytest.fixture(scope="module")
def step_args():
    params = init(jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (BATCH, SEQ + 1), 0, VOCAB)
    return params, OPTIMIZER.init(params), tokens


@pytest.fixture(scope="module")
def program(step_args):
    return ipu_sim.trace(train_step, *step_args)


@pytest.fixture(scope="module")
def estimates(program):
    return {chip: ipu_sim.estimate_program(program, chip=chip) for chip in ipu_sim.CHIPS}


def forward_matmul_flops():
    tokens = BATCH * SEQ
    per_layer = 2 * tokens * 12 * D * D + 2 * 2 * BATCH * SEQ * SEQ * D
    return LAYERS * per_layer + 2 * tokens * D * VOCAB


def test_gpt_train_step_traces_with_every_matmul_forward_and_backward(program):
    matmul = sum(program.matmul_flops().values())
    assert matmul == 3 * forward_matmul_flops()  # forward, input gradient, weight gradient
    kinds = {op.kind for op in program.ops}
    assert {"matmul", "elementwise", "reduce", "gather", "scatter"} <= kinds


def test_gpt_train_step_estimates_and_fits(estimates, program):
    for chip, e in estimates.items():
        assert e.fits, e.out_of_memory
        assert e.cycles > 0 and e.supersteps > 0
        assert e.flops >= sum(program.matmul_flops().values())
        assert e.seconds >= e.flops / (ipu_sim.get_chip(chip).tiles * e.chip.clock_hz * 256)
        assert 0 < e.utilisation <= 1


def test_same_cycles_on_bow_and_gc200_but_bow_is_faster(estimates):
    bow, gc200 = estimates["bow"], estimates["gc200"]
    assert bow.cycles == gc200.cycles
    assert bow.seconds / gc200.seconds == pytest.approx(1.325 / 1.85)


def test_breakdowns_cover_layers_phases_and_kinds(estimates):
    e = estimates["bow"]
    scopes = e.by_scope(depth=1)
    assert {"layer0", "layer1"} <= set(scopes)
    assert sum(scopes.values()) == e.cycles == sum(v["cycles"] for v in e.by_kind().values())
    phases = e.by_phase()
    assert phases["forward"] > 0 and phases["backward"] > phases["forward"] and phases["other"] > 0
    assert sum(phases.values()) == e.cycles


def test_summary_json_and_plots(estimates, tmp_path):
    e = estimates["gc2"]
    text = e.summary()
    assert "gc2" in text and "fits" in text and "matmul" in text
    data = json.loads(e.to_json(tiles=True))
    assert data["cycles"] == e.cycles and len(data["memory"]["peak"]) == 1216
    assert set(data["memory"]["categories"]) == set(ipu_sim.CATEGORIES)
    assert data["ops"] and all(op["cycles"] >= 0 for op in data["ops"])
    ax = e.plot_memory()
    ax.figure.savefig(tmp_path / "memory.png")
    ax = e.plot_time(top=5)
    ax.figure.savefig(tmp_path / "time.png")
    assert (tmp_path / "memory.png").stat().st_size > 0 and (tmp_path / "time.png").stat().st_size > 0


def test_bad_arguments_are_named(step_args):
    with pytest.raises(ValueError, match="unknown chip 'ipu9'"):
        ipu_sim.estimate(train_step, *step_args, chip="ipu9")
    with pytest.raises(ValueError, match="available_memory_proportion"):
        ipu_sim.estimate(train_step, *step_args, available_memory_proportion=0)
    with pytest.raises(TypeError, match="params must be a ModelParams"):
        ipu_sim.estimate(train_step, *step_args, params={"vertex_overhead_cycles": 1})
    with pytest.raises(ValueError, match="unknown model parameter 'sync'"):
        ipu_sim.ModelParams().replace(sync=3)
