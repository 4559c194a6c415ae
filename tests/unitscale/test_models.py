"""unitscale.models: configs and presets, input checks, unit scale at init, the standard models
against plain jnp references, overfitting a fixed batch, transforms, dtypes, conversion, losses."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import unitscale.nn.linear as linear_module
from unitscale.models import (
    BERT,
    GPT,
    BERTConfig,
    ClassificationBatch,
    GPTConfig,
    classification_loss,
    convert_model,
    convert_params,
    lm_loss,
    mlm_loss,
    token_cross_entropy,
)
from unitscale.models.losses import batch_field

V = 32  # vocabulary of the tiny models


def _ids(seed, shape, high=V):
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


def _lm_batch(seed, batch=4, seq=32, vocab=V):
    ids = _ids(seed, (batch, seq + 1), vocab)
    return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


def _mlm_batch(seed, batch=4, seq=32, vocab=V, rate=0.25):
    ids = _ids(seed, (batch, seq), vocab - 1)
    chosen = jnp.asarray(np.random.default_rng(seed + 1).random((batch, seq)) < rate)
    return {"inputs": jnp.where(chosen, vocab - 1, ids), "labels": jnp.where(chosen, ids, -100),
            "token_types": (jnp.arange(seq) >= seq // 2).astype(jnp.int32)[None].repeat(batch, 0),
            "attention_mask": jnp.ones((batch, seq), jnp.int32).at[0, -3:].set(0)}


# Compilation dominates the run time, so most tests use one layer of the tiny presets.
def _gpt(seed=0, **overrides):
    return GPT(GPTConfig.preset("tiny", **{"vocab_size": V, "depth": 1, **overrides}), rngs=nnx.Rngs(seed))


def _bert(seed=0, **overrides):
    return BERT(BERTConfig.preset("tiny", **{"vocab_size": V, "depth": 1, **overrides}), rngs=nnx.Rngs(seed))


def _value_and_grad(model, loss_fn, batch):
    """Jitted ``((loss, totals), grads)`` in the split/merge form of the training loop."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def run(params, rest, batch):
        return nnx.value_and_grad(loss_fn, has_aux=True)(nnx.merge(graphdef, params, rest), batch)

    return run(params, rest, batch)


def _apply(model, *args, method="__call__"):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, *a: getattr(nnx.merge(graphdef, s), method)(*a))(state, *args)


def _named_stds(grads):
    return {jax.tree_util.keystr(p): float(jnp.std(g)) for p, g in jax.tree_util.tree_leaves_with_path(grads)}


# --- Configs and presets ------------------------------------------------------------------------


def test_config_names_inconsistent_sizes():
    with pytest.raises(ValueError, match=r"d_model \(100\) must be divisible by heads \(3\)"):
        GPTConfig(d_model=100, heads=3)
    with pytest.raises(ValueError, match=r"d_model \(100\) must be divisible by heads \(3\)"):
        BERTConfig(d_model=100, heads=3)


@pytest.mark.parametrize(
    "cls,field,value",
    [
        (GPTConfig, "depth", 0), (GPTConfig, "vocab_size", 2.5), (GPTConfig, "dropout", 1.0),
        (GPTConfig, "norm_placement", "middle"), (GPTConfig, "norm", "batch"), (GPTConfig, "activation", "relu"),
        (GPTConfig, "dtype", "int8"), (GPTConfig, "mixer", "lstm"), (GPTConfig, "conv_groups", 3),
        (GPTConfig, "conv_kernel", 0), (GPTConfig, "ffn_ratio", 0.0), (GPTConfig, "residual_mult", -1.0),
        (GPTConfig, "attn_softmax_mult", float("inf")), (GPTConfig, "init_std", 0.0),
        (BERTConfig, "type_vocab_size", -1), (BERTConfig, "num_labels", 1.5), (BERTConfig, "ignore_index", 3),
    ],
)
def test_config_errors_name_the_field(cls, field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        cls(**{field: value})


def test_config_type_errors_name_the_field():
    with pytest.raises(TypeError, match="unit_scaled"):
        GPTConfig(unit_scaled="yes")


def test_presets_and_overrides():
    small = GPTConfig.preset("gpt2-small")
    assert (small.d_model, small.depth, small.heads, small.vocab_size, small.max_len) == (768, 12, 12, 50257, 1024)
    assert (GPTConfig.preset("gpt2-medium").d_model, GPTConfig.preset("gpt2-large").depth) == (1024, 36)
    base, large = BERTConfig.preset("bert-base"), BERTConfig.preset("bert-large")
    assert (base.d_model, base.depth, base.norm_placement, large.d_model, large.heads) == (768, 12, "post", 1024, 16)
    char = GPTConfig.preset("char", vocab_size=97, mixer="rnn")
    assert (char.d_model, char.depth, char.max_len, char.vocab_size, char.mixer) == (128, 8, 256, 97, "rnn")
    assert GPTConfig.preset("tiny", dtype=jnp.bfloat16).dtype == "bfloat16"
    with pytest.raises(ValueError, match="preset 'gpt3' is unknown"):
        GPTConfig.preset("gpt3")
    assert small.to_dict()["d_model"] == 768


def _param_count(tree):
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def test_presets_have_the_published_parameter_counts():
    # Published counts (tied embeddings): GPT-2 small 124,439,808 (HF GPT2Model); BERT-base encoder
    # with pooler 109,482,240 (HF BertModel). Our readouts are untied, so they are counted apart.
    gpt = nnx.eval_shape(lambda: GPT(GPTConfig.preset("gpt2-small"), rngs=nnx.Rngs(0)))
    state = nnx.state(gpt, nnx.Param)
    assert _param_count(state) - _param_count(state["readout"]) == 124_439_808
    bert = nnx.eval_shape(lambda: BERT(BERTConfig.preset("bert-base"), rngs=nnx.Rngs(0)))
    state = nnx.state(bert, nnx.Param)
    encoder = sum(_param_count(state[k]) for k in ("embeddings", "stack", "pooler"))
    assert encoder == 109_482_240


# --- Input checks ---------------------------------------------------------------------------


def test_inputs_inconsistent_with_the_config_fail_naming_the_field():
    gpt, bert = _gpt(), _bert()
    with pytest.raises(ValueError, match="exceeds max_len=64"):
        gpt(_ids(0, (1, 65)))
    with pytest.raises(ValueError, match=r"vocab_size=32\)"):
        gpt(jnp.asarray([[1, 32]]))
    with pytest.raises(ValueError, match=r"vocab_size=32\)"):
        lm_loss(gpt, {"inputs": jnp.asarray([[1, 2]]), "targets": jnp.asarray([[1, 40]])})
    with pytest.raises(ValueError, match=r"type_vocab_size=2\)"):
        bert(jnp.asarray([[1, 2]]), jnp.asarray([[0, 2]]))
    with pytest.raises(ValueError, match="batch has no field 'labels'"):
        mlm_loss(bert, {"inputs": jnp.asarray([[1, 2]])})
    with pytest.raises(ValueError, match="attention_mask"):
        _gpt(mixer="conv")(jnp.asarray([[1, 2]]), jnp.ones((1, 2)))
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(BERTConfig(), rngs=nnx.Rngs(0))


# --- Unit scale at initialisation -------------------------------------------------------------

# The u-muP-style architecture (RMS norm, no biases) at a small-but-real size.
REF = dict(vocab_size=256, d_model=128, depth=4, heads=4, max_len=128, norm="rms", use_bias=False)


@functools.lru_cache(maxsize=None)
def _init_report(kind, **overrides):
    """At init: loss, named gradient stds, stream stds (embedding and after each layer) and the std of
    each layer's mixer branch, from one compiled function per configuration."""
    if kind == "bert":
        model, loss_fn = BERT(BERTConfig(**{**REF, **overrides}), rngs=nnx.Rngs(0)), mlm_loss
        batch = _mlm_batch(2, batch=8, seq=128, vocab=256, rate=0.15)
    else:
        model, loss_fn = GPT(GPTConfig(**{**REF, **overrides}), rngs=nnx.Rngs(0)), lm_loss
        batch = _lm_batch(1, batch=8, seq=128, vocab=256)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def report(params, batch):
        m = nnx.merge(graphdef, params, rest)
        (loss, totals), grads = jax.value_and_grad(lambda p: loss_fn(nnx.merge(graphdef, p, rest), batch),
                                                   has_aux=True)(params)
        x = m.embeddings(batch["inputs"], batch.get("token_types"))
        streams, branches = [jnp.std(x)], []
        for layer in m.stack.layers:
            pre = layer.norm_placement == "pre"
            branches.append(jnp.std(layer.mixer(layer.mixer_norm(x) if pre else x)))
            x = layer(x)
            streams.append(jnp.std(x))
        return loss, totals["count"], jax.tree.map(jnp.std, grads), jnp.stack(streams), jnp.stack(branches)

    loss, count, grad_stds, streams, branches = jax.jit(report)(params, batch)
    named = {jax.tree_util.keystr(p): float(g) for p, g in jax.tree_util.tree_leaves_with_path(grad_stds)}
    return float(loss), float(count), named, np.asarray(streams).tolist(), np.asarray(branches).tolist()


# Depth 4 for attention, whose scales drift with depth; depth 2 for conv and rnn keeps compile time
# down (at depth 4 their streams measure 1.03-1.07 and their gradient stds 0.54-2.3).
@pytest.mark.parametrize("mixer,depth", [("attention", 4), ("conv", 2), ("rnn", 2)])
def test_unit_scaled_gpt_starts_at_unit_scale(mixer, depth):
    loss, _, grad_stds, streams, _ = _init_report("gpt", mixer=mixer, depth=depth)
    assert math.log(256) / 2 <= loss <= 2 * math.log(256)
    bad = {k: round(v, 3) for k, v in grad_stds.items() if not 1 / 5 <= v <= 5}
    assert not bad, bad
    # Activations: the residual stream within 1.5 binades of 1 after the embedding and every layer.
    assert all(abs(math.log2(s)) <= 1.5 for s in streams), streams


@pytest.mark.xfail(strict=True, reason=(
    "Biases of the attention path get gradients ~6-8x unit: a bias gradient is a coherent sum over "
    "positions, and near-uniform causal attention sends each value the same averaged gradient times "
    "the attention scale sqrt(S/log S) (unit-scaling's fitted rule), so sum/sqrt(batch) is not 1"))
def test_unit_scaled_gpt_with_layer_norm_and_biases_has_unit_gradients():
    grad_stds = _init_report("gpt", norm="layer", use_bias=True, depth=2)[2]
    assert all(1 / 5 <= v <= 5 for v in grad_stds.values()), grad_stds


@pytest.mark.xfail(strict=True, reason=(
    "Attention after the first layer is far from unit (std 2-4 at depth 4): its inputs share a "
    "component across positions (earlier attention outputs are prefix means), which the fitted "
    "output scale sqrt(S/log S), derived for independent values, amplifies. In post-norm models "
    "this makes training collapse to the unigram loss (results/charlm); see the test below"))
def test_unit_scaled_attention_branches_stay_within_the_reference_tolerance():
    branches = _init_report("gpt", mixer="attention", depth=4)[4]
    assert all(abs(b - 1) <= 0.5 for b in branches), branches


# A sharp softmax (mult 32 at d_head 32: logits q.k, std ~sqrt(d_head)) attends to few positions, so
# the output scale stays near 1 and a shared component is not amplified (at mult 1 the branch stds
# are 1.0, 2.3, 3.6, 4.2 for the GPT and 5.0, 10.1 for BERT; at mult 8, 1.1-1.9 and 2.7-3.9).
@pytest.mark.parametrize("kind,depth", [("gpt", 4), ("bert", 2)])
def test_sharp_softmax_keeps_unit_scaled_attention_branches_within_the_reference_tolerance(kind, depth):
    branches = _init_report(kind, depth=depth, attn_softmax_mult=32.0)[4]
    assert all(abs(b - 1) <= 0.5 for b in branches), branches


def test_unit_scaled_bert_initial_loss():
    loss, count, *_ = _init_report("bert", depth=2)
    assert math.log(256) / 2 <= loss <= 2 * math.log(256)
    assert count > 100


@pytest.mark.xfail(strict=True, reason=(
    "Bidirectional near-uniform attention gives every position the same output (the mean of the "
    "values) times sqrt(S); any component shared across positions (the token-type row, earlier "
    "attention outputs) is amplified by up to sqrt(S), so branch outputs reach std 5-10, and with "
    "MLM targets at 15% of positions and tau < 1 the gradients of later layers fall to ~0.05-0.1"))
def test_unit_scaled_bert_has_unit_gradients():
    grad_stds = _init_report("bert", depth=2)[2]
    stds = {k: v for k, v in grad_stds.items() if "pooler" not in k and "classifier" not in k}
    assert all(1 / 5 <= v <= 5 for v in stds.values()), stds


# --- Standard models against plain jnp references ---------------------------------------------


def _ln(x, p, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _lin(x, p):
    return x @ p["kernel"] + (p["bias"] if "bias" in p else 0.0)


def _attention_ref(x, p, heads, causal, mask=None):
    b, s, d = x.shape
    q, k, v = (t.reshape(b, s, heads, d // heads) for t in jnp.split(_lin(x, p["qkv"]), 3, -1))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
    keep = jnp.tril(jnp.ones((s, s), bool)) if causal else jnp.ones((s, s), bool)
    if mask is not None:
        keep = keep & (mask[:, None, None, :] != 0)
    o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), -1), v)
    return _lin(o.reshape(b, s, d), p["out"])


def _conv_ref(x, p):
    w = p["kernel"]  # (kernel, 1, d): depthwise
    taps = w.shape[0]
    xp = jnp.pad(x, ((0, 0), (taps - 1, 0), (0, 0)))
    y = sum(xp[:, j:j + x.shape[1]] * w[j, 0] for j in range(taps)) + p["bias"]
    return _lin(y, p["out"])


def _rnn_ref(x, p):
    u = _lin(x, p["input"])
    h, out = jnp.zeros(x.shape[::2]), []
    for t in range(x.shape[1]):
        h = jnp.tanh(u[:, t] + h @ p["recurrent"] + p["bias"])
        out.append(h)
    return jnp.stack(out, 1)


def _mixer_ref(kind, x, p, heads, causal, mask=None):
    if kind == "conv":
        return _conv_ref(x, p)
    if kind == "rnn":
        return _rnn_ref(x, p)
    return _attention_ref(x, p, heads, causal, mask)


def _layer_ref(x, p, cfg, kind, causal, mask=None):
    mlp = lambda h: _lin(jax.nn.gelu(_lin(h, p["mlp"]["up"]), approximate=False), p["mlp"]["down"])  # noqa: E731
    mix = lambda h: _mixer_ref(kind, h, p["mixer"], cfg.heads, causal, mask)  # noqa: E731
    if cfg.norm_placement == "pre":
        x = x + mix(_ln(x, p["mixer_norm"], cfg.norm_eps))
        return x + mlp(_ln(x, p["mlp_norm"], cfg.norm_eps))
    x = _ln(x + mix(x), p["mixer_norm"], cfg.norm_eps)
    return _ln(x + mlp(x), p["mlp_norm"], cfg.norm_eps)


def _perturbed(model, seed):
    """Give every parameter (biases, norms included) random values, so no term hides at zero."""
    state = nnx.state(model, nnx.Param)
    leaves, treedef = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    new = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    nnx.update(model, jax.tree.unflatten(treedef, new))
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("mixer", ["attention", "conv", "rnn"])
def test_standard_gpt_matches_plain_reference(mixer):
    model = _gpt(3, unit_scaled=False, mixer=mixer, depth=2 if mixer == "attention" else 1)
    p, cfg = _perturbed(model, 4), model.config
    ids = _ids(5, (2, 12))
    emb = p["embeddings"]
    x = emb["tokens"]["embedding"][ids] + emb["positions"]["embedding"][:12]
    for i in range(cfg.depth):
        x = _layer_ref(x, p["stack"]["layers"][i], cfg, mixer, causal=True)
    logits = _ln(x, p["final_norm"], cfg.norm_eps) @ p["readout"]["kernel"]
    np.testing.assert_allclose(_apply(model, ids), logits, rtol=2e-4, atol=2e-4)


def test_standard_bert_matches_plain_reference():
    model = _bert(6, unit_scaled=False, depth=2)
    p, cfg = _perturbed(model, 7), model.config
    batch = _mlm_batch(8, batch=2, seq=12)
    ids, types, mask = batch["inputs"], batch["token_types"], batch["attention_mask"]
    emb = p["embeddings"]
    x = emb["tokens"]["embedding"][ids] + emb["positions"]["embedding"][:12] + emb["token_types"]["embedding"][types]
    x = _ln(x, emb["norm"], cfg.norm_eps)
    for i in range(cfg.depth):
        x = _layer_ref(x, p["stack"]["layers"][i], cfg, "attention", causal=False, mask=mask)
    h = _ln(jax.nn.gelu(_lin(x, p["mlm_transform"]), approximate=False), p["mlm_norm"], cfg.norm_eps)
    pooled = jnp.tanh(_lin(x[:, 0], p["pooler"]))
    both = nnx.jit(lambda m, *a: (m(*a), m.classify(*a)))(model, ids, types, mask)
    np.testing.assert_allclose(both[0], _lin(h, p["readout"]), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(both[1], _lin(pooled, p["classifier"]), rtol=2e-4, atol=2e-4)


# --- Overfitting a fixed batch ----------------------------------------------------------------


def _train(model, loss_fn, batch, lr, steps):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    opt = optax.adam(lr)

    def loss_of(p):
        return loss_fn(nnx.merge(graphdef, p, rest), batch)[0]

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_of)(p)
        updates, s = opt.update(g, s, p)
        return (optax.apply_updates(p, updates), s), loss

    @jax.jit
    def run(params):
        (p, _), losses = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
        return losses[0], loss_of(p)

    return run(params)


@pytest.mark.parametrize("unit_scaled", [True, False], ids=["unit", "standard"])
@pytest.mark.parametrize("kind", ["attention", "conv", "rnn", "bert"])
def test_tiny_models_overfit_a_fixed_batch(kind, unit_scaled):
    if kind == "bert":
        model, loss_fn, batch = _bert(9, unit_scaled=unit_scaled), mlm_loss, _mlm_batch(10)
    else:
        model, loss_fn, batch = _gpt(9, unit_scaled=unit_scaled, mixer=kind), lm_loss, _lm_batch(10)
    # Adam's step is ~lr per weight, so N(0, 1) weights take a larger lr than N(0, 0.02^2) ones.
    first, last = _train(model, loss_fn, batch, 1e-2 if unit_scaled else 3e-3, steps=150)
    assert float(last) < 0.1 * float(first), (float(first), float(last))


# --- Transforms -------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _tiny_gpt_grads(**overrides):
    """``(model, batch, loss, grads)`` of a tiny GPT, compiled once per configuration."""
    model = nnx.view(_gpt(11, dropout=0.1, **overrides), deterministic=True)
    batch = _lm_batch(12, batch=2, seq=16)
    (loss, _), grads = _value_and_grad(model, lm_loss, batch)
    return model, batch, loss, grads


def test_jit_grad_and_split_merge_agree():
    model, batch, loss, grads = _tiny_gpt_grads()
    (loss_nnx, _), grads_nnx = nnx.jit(nnx.value_and_grad(lm_loss, has_aux=True))(model, batch)
    assert float(loss) == pytest.approx(float(loss_nnx), rel=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads,
                 nnx.state(grads_nnx, nnx.Param))
    graphdef, state = nnx.split(model)
    merged = nnx.merge(graphdef, state)
    assert nnx.graphdef(merged) == graphdef
    jax.tree.map(np.testing.assert_array_equal, nnx.state(merged, nnx.Param), nnx.state(model, nnx.Param))


def test_remat_gives_the_same_gradients():
    grads, grads_remat = _tiny_gpt_grads()[3], _tiny_gpt_grads(remat=True)[3]
    # Recomputation changes XLA's fusion, hence float32 rounding, not the result.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, grads_remat)


def test_dropout_trains_stochastic_and_evaluates_deterministic():
    model = _gpt(15, dropout=0.2)
    ids = _lm_batch(16, 2, 16)["inputs"]

    def outputs(m, ids):
        evaluation = nnx.view(m, deterministic=True)
        return m(ids), m(ids), evaluation(ids), evaluation(ids)

    train_1, train_2, eval_1, eval_2 = nnx.jit(outputs)(model, ids)
    assert not np.array_equal(train_1, train_2)  # the RNG stream advances between calls
    np.testing.assert_array_equal(eval_1, eval_2)
    assert not np.array_equal(train_1, eval_1)


# --- Compute dtypes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,dtype,unit_scaled",
    [("gpt", "bfloat16", True), ("gpt", "float16", False), ("bert", "float16", True), ("bert", "bfloat16", False)],
)
def test_low_precision_compute_dtype_runs(kind, dtype, unit_scaled):
    if kind == "gpt":
        model, loss_fn, batch = _gpt(17, dtype=dtype, unit_scaled=unit_scaled), lm_loss, _lm_batch(18, 2, 16)
    else:
        model, loss_fn, batch = _bert(17, dtype=dtype, unit_scaled=unit_scaled), mlm_loss, _mlm_batch(18, 2, 16)
    assert nnx.eval_shape(lambda m: m(batch["inputs"]), model).dtype == jnp.dtype(dtype)
    (loss, _), grads = _value_and_grad(model, loss_fn, batch)
    assert np.isfinite(float(loss)) and abs(float(loss) - math.log(V)) < 1.0
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --- u-muP hyperparameters --------------------------------------------------------------------


def test_layers_use_the_config_residual_rule():
    model = _gpt(19, depth=3, residual_mult=0.5, residual_attn_ratio=2.0)
    taus = [t for layer in model.stack.layers for t in layer.taus]
    assert taus == pytest.approx(list(model.config.taus))
    assert model.config.taus != GPTConfig.preset("tiny", depth=3).taus


MULTS = dict(attn_softmax_mult=2.0, ffn_act_mult=3.0, loss_softmax_mult=0.5, residual_mult=1.5)


def test_umup_multipliers_reach_the_unit_scaled_ops(monkeypatch):
    import unitscale.functional as U

    where = {  # op -> how its multiplier is passed by the modules
        "scaled_dot_product_attention": lambda args, kwargs: args[6],
        "gelu": lambda args, kwargs: args[1],
        "cross_entropy": lambda args, kwargs: kwargs["mult"],
        "residual_add": lambda args, kwargs: args[2],
    }
    seen = {name: [] for name in where}
    for name, read in where.items():
        def recording(*args, _op=getattr(U, name), _name=name, _read=read, **kwargs):
            seen[_name].append(_read(args, kwargs))
            return _op(*args, **kwargs)

        monkeypatch.setattr(U, name, recording)
    model = _gpt(19, **MULTS)
    nnx.eval_shape(lambda m: lm_loss(m, _lm_batch(20, 2, 16)), model)
    depth = model.config.depth
    assert seen["scaled_dot_product_attention"] == [2.0] * depth and seen["gelu"] == [3.0] * depth
    assert seen["cross_entropy"] == [0.5]
    assert seen["residual_add"] == pytest.approx(list(model.config.taus))
    assert model.config.taus != GPTConfig.preset("tiny").taus


def test_standard_model_calls_no_unit_scaled_op(monkeypatch):
    import unitscale.functional as U

    called = []
    for name in U.__all__:
        monkeypatch.setattr(U, name, lambda *a, _name=name, **k: called.append(_name))
    for model, loss_fn, batch in ((_gpt(21, unit_scaled=False, **MULTS), lm_loss, _lm_batch(20, 2, 16)),
                                  (_bert(21, unit_scaled=False, **MULTS), mlm_loss, _mlm_batch(20, 2, 16))):
        nnx.eval_shape(lambda m: nnx.value_and_grad(loss_fn, has_aux=True)(m, batch), model)
        nnx.eval_shape(lambda m: m.classify(batch["inputs"]), model) if isinstance(model, BERT) else None
    assert called == []


# --- Losses -----------------------------------------------------------------------------------


def test_token_cross_entropy_value_and_gradient_in_both_parametrisations():
    logits = jax.random.normal(jax.random.key(22), (3, 5, 7))
    targets = _ids(23, (3, 5), 7)
    valid = jnp.asarray(np.random.default_rng(24).random((3, 5)) < 0.6)
    count = int(valid.sum())
    log_p = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    expect = float(jnp.sum(jnp.where(valid, nll, 0)) / count)
    onehot_grad = jnp.where(valid[..., None], jax.nn.softmax(logits) - jax.nn.one_hot(targets, 7), 0)
    for unit_scaled, grad_scale in ((True, 7 / 6**0.5), (False, 1 / count)):
        (loss, totals), grad = jax.jit(jax.value_and_grad(
            lambda x: token_cross_entropy(x, targets, valid, unit_scaled=unit_scaled), has_aux=True))(logits)
        assert float(loss) == pytest.approx(expect, rel=1e-5)
        assert float(totals["nll"]) == pytest.approx(expect * count, rel=1e-5)
        assert float(totals["count"]) == count
        hits = jnp.sum(valid & (jnp.argmax(logits, -1) == targets))
        assert float(totals["correct"]) == float(hits)
        np.testing.assert_allclose(grad, grad_scale * onehot_grad, rtol=1e-5, atol=1e-6)


def test_lm_loss_counts_only_masked_in_targets():
    model = _gpt(25)
    batch = _lm_batch(26, 2, 16)
    mask = jnp.ones((2, 16), jnp.int32).at[1, 5:].set(0)
    (loss, totals), logits = nnx.jit(lambda m, b: (lm_loss(m, b), m(b["inputs"])))(model, {**batch, "mask": mask})
    expect, _ = token_cross_entropy(logits, batch["targets"], mask, unit_scaled=True)
    assert float(totals["count"]) == 16 + 5 and float(loss) == pytest.approx(float(expect), rel=1e-6)


@dataclasses.dataclass
class _AttrBatch:
    inputs: jax.Array
    labels: jax.Array


def test_batch_fields_read_from_mappings_and_attributes():
    ids, labels = jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32)
    for batch in ({"inputs": ids, "labels": labels}, _AttrBatch(ids, labels)):
        assert batch_field(batch, "labels") is labels
        assert batch_field(batch, "token_types", required=False) is None
        with pytest.raises(ValueError, match="batch has no field 'mask'"):
            batch_field(batch, "mask")


def test_classification_loss_trains_the_pooled_head():
    model = _bert(27, num_labels=3)
    batch = _mlm_batch(28, 2, 16)
    cls_batch = ClassificationBatch(batch["inputs"], jnp.asarray([0, 2]), batch["token_types"], batch["attention_mask"])
    (loss, totals), grads = _value_and_grad(model, classification_loss, cls_batch)
    assert abs(float(loss) - math.log(3)) < 0.5 and float(totals["count"]) == 2
    assert float(jnp.abs(grads["classifier"]["kernel"]).sum()) > 0
    assert float(jnp.abs(grads["readout"]["kernel"]).sum()) == 0  # the MLM head is not used
    with pytest.raises(ValueError, match=r"num_labels=3\)"):
        classification_loss(model, ClassificationBatch(batch["inputs"], jnp.asarray([0, 3])))
    with pytest.raises(ValueError, match="no classification head"):
        _bert(27, num_labels=0).classify(batch["inputs"])


# --- One matmul place, conversion -------------------------------------------------------------


def test_every_weight_matmul_goes_through_dense(monkeypatch):
    roles = []
    original = linear_module.dense

    def recording(*args, role, **kwargs):
        roles.append(role)
        return original(*args, role=role, **kwargs)

    monkeypatch.setattr(linear_module, "dense", recording)
    model = _gpt(29, activation="swiglu")
    jaxpr = jax.make_jaxpr(lambda ids: model(ids))(_ids(30, (1, 8)))
    per_layer = ["attn_qkv", "attn_out", "ffn_up", "ffn_gate", "ffn_down"]
    assert roles == per_layer * model.config.depth + ["readout"]
    # Besides those, the only matmuls are attention's q k^T and p v (two per layer).
    assert str(jaxpr).count("dot_general[") == len(roles) + 2 * model.config.depth


@pytest.mark.parametrize("make", [lambda **k: _gpt(31, mixer="conv", **k), lambda **k: _bert(31, **k)],
                         ids=["gpt-conv", "bert"])
def test_conversion_preserves_layer_maps_and_round_trips(make):
    standard = make(unit_scaled=False)
    _perturbed(standard, 32)
    unit = convert_model(standard, unit_scaled=True)
    assert unit.config.unit_scaled and not standard.config.unit_scaled
    x = jax.random.normal(jax.random.key(33), (3, standard.config.d_model))
    for path in (("stack", "layers", 0, "mlp", "up"), ("stack", "layers", 0, "mixer", "out"), ("readout",)):
        s, u = standard, unit
        for key in path:
            s, u = (s[key], u[key]) if isinstance(key, int) else (getattr(s, key), getattr(u, key))
        np.testing.assert_allclose(u(x), s(x), rtol=1e-4, atol=1e-5)
    back = convert_model(unit, unit_scaled=False)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                 nnx.state(back, nnx.Param), nnx.state(standard, nnx.Param))
    plain = convert_params(nnx.state(standard, nnx.Param), to_unit_scaled=True, preserve_maps=False)
    jax.tree.map(np.testing.assert_array_equal, plain, nnx.state(standard, nnx.Param))
    with pytest.raises(TypeError, match="config"):
        convert_model(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), unit_scaled=True)
