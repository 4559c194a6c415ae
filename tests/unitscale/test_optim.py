"""unitscale.optim: u-muP multipliers by hand, the transforms' exact updates (Adam, SGD, independent
decay), composition in optax chains and nnx.Optimizer, training a tiny GPT, and the residual rule as
the model realises it."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscale.nn as N
from unitscale.models.gpt import GPT, GPTConfig, lm_loss
from unitscale.nn.residual import residual_contributions
from unitscale.optim import (
    add_independent_decay,
    lr_multiplier,
    scale_by_umup,
    stack_depths,
    umup_adam,
    umup_adamw,
    umup_multipliers,
    umup_sgd,
)

D, FFN, VOCAB, DEPTH = 8, 32, 11, 4


def _gpt(**overrides):
    """A small GPT, abstract (shapes and metadata only: quick to build)."""
    config = GPTConfig(**{**dict(vocab_size=VOCAB, d_model=D, depth=DEPTH, heads=2, ffn_ratio=FFN / D, max_len=6),
                          **overrides})
    return nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def gpt():
    """A one-layer unit-scaled GPT with weights (16 tokens, width 32), built in one compilation
    rather than one per weight; shared, so clone it to mutate it."""
    config = GPTConfig.preset("tiny", vocab_size=16, max_len=16, depth=1)
    return nnx.jit(lambda: GPT(config, rngs=nnx.Rngs(0)))()


def _flat(tree) -> dict[str, float]:
    return {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def _expected(hidden, embedding, readout, bias, norm, depth_factor):
    """Per-path multipliers of _gpt() from per-kind rules (each a function of fan_in/fan_out)."""
    d, f, r = D, FFN, depth_factor
    out = {"['embeddings']['positions']['embedding']": embedding(6, d),
           "['embeddings']['tokens']['embedding']": embedding(VOCAB, d),
           "['final_norm']['bias']": norm(d), "['final_norm']['scale']": norm(d),
           "['readout']['kernel']": readout(d, VOCAB)}
    for i in range(DEPTH):
        layer = f"['stack']['layers'][{i}]"
        for name, fan_in, fan_out in (("['mixer']['qkv']", d, 3 * d), ("['mixer']['out']", d, d),
                                      ("['mlp']['up']", d, f), ("['mlp']['down']", f, d)):
            out[f"{layer}{name}['kernel']"] = hidden(fan_in, fan_out) * r
            out[f"{layer}{name}['bias']"] = bias(fan_out) * r
        for norm_name in ("mixer_norm", "mlp_norm"):
            out[f"{layer}['{norm_name}']['scale']"] = out[f"{layer}['{norm_name}']['bias']"] = norm(d) * r
    return out


# --- the multipliers --------------------------------------------------------------------------


def test_adam_multipliers_of_a_small_gpt_match_the_rule_by_hand():
    got = _flat(umup_multipliers(_gpt()))
    # hidden 1/sqrt(fan_in); embedding 1/sqrt(fan_out) = 1/sqrt(8); readout, bias, norm 1; residual
    # parameters also 1/sqrt(depth) = 1/2.
    want = _expected(hidden=lambda i, o: i**-0.5, embedding=lambda i, o: 8**-0.5, readout=lambda i, o: 1.0,
                     bias=lambda o: 1.0, norm=lambda o: 1.0, depth_factor=0.5)
    assert got.keys() == want.keys()
    for path, value in want.items():
        assert got[path] == pytest.approx(value, rel=1e-12), path
    assert got["['stack']['layers'][2]['mlp']['down']['kernel']"] == pytest.approx(1 / (2 * math.sqrt(32)))
    assert got["['embeddings']['tokens']['embedding']"] == pytest.approx(0.35355339059327373)


def test_sgd_multipliers_by_hand_for_both_readout_constraints():
    model = _gpt()
    assert _flat(umup_multipliers(model, optimizer="sgd")) == _flat(umup_multipliers(model))
    got = _flat(umup_multipliers(model, optimizer="sgd", readout_constraint="to_output_scale"))
    want = _expected(hidden=lambda i, o: i**0.5, embedding=lambda i, o: 8**0.5, readout=lambda i, o: 1.0,
                     bias=lambda o: float(o), norm=lambda o: float(o), depth_factor=0.5)
    assert got == pytest.approx(want, rel=1e-12)
    assert got["['stack']['layers'][0]['mixer']['qkv']['bias']"] == pytest.approx(12.0)  # 24 / sqrt(4)


def test_conv_and_rnn_mixer_weights_use_their_own_fan_in():
    conv = _flat(umup_multipliers(_gpt(mixer="conv", conv_kernel=3, conv_groups=2, depth=1)))
    assert conv["['stack']['layers'][0]['mixer']['kernel']"] == pytest.approx((3 * D // 2) ** -0.5)
    rnn = _flat(umup_multipliers(_gpt(mixer="rnn", depth=9)))
    assert rnn["['stack']['layers'][5]['mixer']['recurrent']"] == pytest.approx(D**-0.5 / 3)
    assert rnn["['stack']['layers'][5]['mixer']['input']['kernel']"] == pytest.approx(D**-0.5 / 3)


def test_depth_comes_from_the_stack_or_the_argument():
    model = _gpt()
    assert stack_depths(model) == {("stack",): DEPTH}
    state = nnx.state(model, nnx.Param)
    assert _flat(umup_multipliers(state, depth=DEPTH)) == _flat(umup_multipliers(model))
    deeper = _flat(umup_multipliers(model, depth=16))
    assert deeper["['stack']['layers'][0]['mixer']['out']['bias']"] == pytest.approx(0.25)
    assert deeper["['readout']['kernel']"] == 1.0
    with pytest.raises(ValueError, match="depth"):
        umup_multipliers(state)


def test_lr_multiplier_rejects_bad_input():
    info = N.ParamInfo(kind="hidden", fan_in=4, fan_out=4, in_residual=False)
    assert lr_multiplier(info) == 0.5
    with pytest.raises(TypeError, match="info"):
        lr_multiplier({"kind": "hidden"})
    with pytest.raises(ValueError, match="optimizer"):
        lr_multiplier(info, optimizer="lamb")
    with pytest.raises(ValueError, match="readout_constraint"):
        lr_multiplier(info, optimizer="sgd", readout_constraint="gmean")
    with pytest.raises(ValueError, match="depth"):
        lr_multiplier(N.ParamInfo(kind="bias", fan_in=1, fan_out=4, in_residual=True), depth=0)
    with pytest.raises(ValueError, match="no .* metadata"):
        umup_multipliers(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


# --- exact updates ----------------------------------------------------------------------------


class _Tiny(nnx.Module):
    """One hidden weight (fan_in 4) inside a depth-4 residual stack, and a norm outside it."""

    def __init__(self):
        self.w = N.make_param(jnp.arange(12.0).reshape(4, 3) / 7 - 0.5, kind="hidden", fan_in=4, fan_out=3,
                              in_residual=True)
        self.g = N.make_param(jnp.array([1.0, -2.0, 0.5]), kind="norm", fan_in=1, fan_out=3, in_residual=False)


def _grads(params, seed=0):
    rng = np.random.default_rng(seed)  # host-side: no compilation per parameter shape
    return jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape, np.float32)), params)


def _step(tx, params, grads):
    """The first update of ``tx``, jitted (one compilation instead of one per op and shape)."""
    return jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)


def test_umup_adamw_first_step_by_hand():
    model = _Tiny()
    params = nnx.state(model, nnx.Param)
    grads = _grads(params)
    eta, lam, eps = 0.3, 0.01, 1e-8
    # Betas exact in float32, so that Adam's bias corrections are exact too.
    tx = umup_adamw(eta, umup_multipliers(model, depth=4), b1=0.5, b2=0.75, eps=eps, weight_decay=lam)
    updates = _step(tx, params, grads)
    # Adam's first step is g / (|g| + eps); u-muP multiplies it by m_p; the decay removes lam * w.
    for name, m in (("w", 4**-0.5 * 4**-0.5), ("g", 1.0)):
        g, w = np.asarray(grads[name][...]), np.asarray(params[name][...])
        want = -eta * m * g / (np.abs(g) + eps) - lam * w
        np.testing.assert_allclose(np.asarray(updates[name][...]), want, rtol=1e-6, atol=1e-7)


@settings(max_examples=12)
@given(eta=st.floats(1e-4, 10.0), lam=st.floats(0.0, 0.5), t=st.integers(0, 9))
def test_independent_decay_does_not_depend_on_lr_or_multiplier(eta, lam, t):
    model = _Tiny()
    params = nnx.state(model, nnx.Param)
    zero = jax.tree.map(jnp.zeros_like, params)  # no gradient: only the decay moves the weights
    schedule = optax.linear_schedule(eta, 0.5 * eta, 9)
    multipliers = umup_multipliers(model, depth=4)
    tx = umup_adamw(schedule, multipliers, weight_decay=lam, peak_lr=eta)
    state = tx.init(params)
    for _ in range(t):
        _, state = tx.update(zero, state, params)
    updates, _ = tx.update(zero, state, params)
    factor = float(schedule(t)) / eta  # lr_t / peak: the decay follows the schedule's shape only
    for name in ("w", "g"):
        np.testing.assert_allclose(np.asarray(updates[name][...]), -factor * lam * np.asarray(params[name][...]),
                                   rtol=2e-6, atol=1e-9)
    assert _flat(multipliers)["['w']"] == pytest.approx(0.25)  # not 1: the decay ignores it


def test_umup_sgd_with_and_without_momentum_by_hand():
    model = _Tiny()
    params = nnx.state(model, nnx.Param)
    g1, g2 = _grads(params, 1), _grads(params, 2)
    m = {"w": 0.25, "g": 1.0}
    mults = umup_multipliers(model, depth=4, optimizer="sgd")
    plain = _step(umup_sgd(0.5, mults, weight_decay=0.1), params, g1)
    tx = umup_sgd(0.5, mults, momentum=0.9)
    state = tx.init(params)
    _, state = tx.update(g1, state, params)
    second, _ = tx.update(g2, state, params)
    for name in m:
        w, a, b = (np.asarray(t[name][...]) for t in (params, g1, g2))
        np.testing.assert_allclose(np.asarray(plain[name][...]), -0.5 * m[name] * a - 0.1 * w, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(np.asarray(second[name][...]), -0.5 * m[name] * (b + 0.9 * a), rtol=1e-6)


def test_umup_adam_is_umup_adamw_without_decay_and_a_model_gives_its_multipliers(gpt):
    model = gpt
    params = nnx.state(model, nnx.Param)
    grads = _grads(params)
    a = _step(umup_adam(0.1, model), params, grads)
    b = _step(umup_adamw(0.1, umup_multipliers(model)), params, grads)
    assert jax.tree.all(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))


def test_scale_by_umup_takes_param_nodes_and_pure_arrays(gpt):
    model = gpt
    mults = umup_multipliers(model)
    for params in (nnx.split(model, nnx.Param, ...)[1], nnx.as_pure(nnx.state(model, nnx.Param))):
        ones = jax.tree.map(jnp.ones_like, params)
        scaled = _step(scale_by_umup(mults), params, ones)
        assert jax.tree.structure(scaled) == jax.tree.structure(params)
        got = {k: float(v.ravel()[0]) for k, v in _flat(scaled).items()}
        assert got == pytest.approx(_rekey(got, mults))


def _rekey(got, mults):
    """The multipliers under the keys of ``got`` (Param nodes add a ``.value`` key suffix)."""
    by_prefix = _flat(mults)
    return {k: by_prefix[next(p for p in by_prefix if k == p or k.startswith(p + "."))] for k in got}


def test_nnx_optimizer_step_equals_the_functional_step(gpt):
    model, twin = nnx.clone(gpt), gpt
    grads = _grads(nnx.state(model, nnx.Param))
    optimizer = nnx.Optimizer(model, umup_adamw(0.05, model, weight_decay=0.01), wrt=nnx.Param)
    nnx.jit(lambda opt, m, g: opt.update(m, g))(optimizer, model, grads)
    params = nnx.state(twin, nnx.Param)
    updates = _step(umup_adamw(0.05, twin, weight_decay=0.01), params, grads)
    want = optax.apply_updates(params, updates)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param)), jax.tree.leaves(want)):
        # Order-one weights: agree to float32 rounding (the jitted paths fuse differently).
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6, err_msg=jax.tree_util.keystr(path))


def test_transforms_reject_bad_arguments():
    model = _Tiny()
    with pytest.raises(ValueError, match="weight_decay"):
        add_independent_decay(-1.0, 1.0)
    with pytest.raises(ValueError, match="peak_lr"):
        add_independent_decay(0.1, 0.0)
    with pytest.raises(ValueError, match="peak_lr"):
        umup_adamw(optax.constant_schedule(0.1), umup_multipliers(model, depth=4), weight_decay=0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        umup_adamw(0.0, umup_multipliers(model, depth=4))
    with pytest.raises(ValueError, match="multipliers must be positive"):
        scale_by_umup(jax.tree.map(lambda m: -m, umup_multipliers(model, depth=4)))
    with pytest.raises(ValueError, match="momentum"):
        umup_sgd(0.1, umup_multipliers(model, depth=4, optimizer="sgd"), momentum=1.5)
    tx = scale_by_umup(umup_multipliers(_gpt(depth=2)))
    params = nnx.state(model, nnx.Param)
    with pytest.raises(ValueError, match="multipliers do not match"):
        tx.update(params, tx.init(params), params)


# --- training ---------------------------------------------------------------------------------


def test_an_optax_chain_with_the_umup_transform_trains_a_tiny_gpt(gpt):
    model = gpt
    eta = 0.25
    # umup_adamw's pieces assembled by hand, after another transform: they compose like any optax chain.
    tx = optax.chain(optax.clip_by_global_norm(1e3), optax.scale_by_adam(), scale_by_umup(umup_multipliers(model)),
                     add_independent_decay(2**-13, eta), optax.scale_by_learning_rate(eta))
    ids = (jnp.arange(8)[:, None] * 3 + jnp.arange(17)[None, :]) % 16  # counting sequences: learnable
    batch = {"inputs": ids[:, :-1], "targets": ids[:, 1:]}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def step(params, opt_state):
        def loss(p):
            return lm_loss(nnx.merge(graphdef, p, rest), batch)[0]

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    opt_state, losses = tx.init(params), []
    for _ in range(20):
        params, opt_state, value = step(params, opt_state)
        losses.append(float(value))
    assert losses[0] == pytest.approx(math.log(16), abs=0.5)
    assert losses[-1] < 0.2 * losses[0], losses


# --- the residual rule as the model realises it -----------------------------------------------


class _Emit(nnx.Module):
    """A branch that ignores its input and emits the unit vector e_k (an orthogonal direction)."""

    def __init__(self, k: int, size: int):
        self.k, self.size = k, size

    def __call__(self, x, mask=None):
        return jnp.broadcast_to(jax.nn.one_hot(self.k, self.size), x.shape)


class _Identity(nnx.Module):
    def __call__(self, x):
        return x


@settings(max_examples=10)
@given(depth=st.integers(1, 6), mult=st.floats(0.25, 4.0), ratio=st.floats(0.25, 4.0))
def test_the_stack_realises_the_residual_rule_with_squared_contributions_summing_to_one(depth, mult, ratio):
    config = GPTConfig.preset("tiny", depth=depth, residual_mult=mult, residual_attn_ratio=ratio)
    size = 2 * depth + 1
    layers = [N.TransformerLayer(_Emit(2 * i + 1, size), _Emit(2 * i + 2, size), _Identity(), _Identity(),
                                 taus=config.taus[2 * i:2 * i + 2]) for i in range(depth)]
    out = np.asarray(N.TransformerStack(layers)(jax.nn.one_hot(0, size)[None, None]), np.float64)[0, 0]
    # out = c_0 e_0 + sum_l c_l e_l: each coordinate is one contribution.
    np.testing.assert_allclose(out, residual_contributions(config.taus), rtol=2e-6, atol=1e-7)
    assert np.sum(out**2) == pytest.approx(1.0, abs=1e-5)
    attn, mlp, embedding = np.sum(out[1::2] ** 2), np.sum(out[2::2] ** 2), out[0] ** 2
    assert attn / mlp == pytest.approx(ratio**2, rel=1e-4)  # residual_attn_ratio: attention vs MLP
    assert (attn + mlp) / 2 == pytest.approx(mult**2 * embedding, rel=1e-4)  # residual_mult: vs embedding
