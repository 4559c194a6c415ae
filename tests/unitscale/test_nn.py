"""unitscale.nn: unit scale at init, the standard modules' plain arithmetic, parameter kinds,
residual rule, masks and causality, dropout modes, remat."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import unitscale.functional as U
import unitscale.nn as N
import unitscale.nn.linear as linear_module

STD = N.Numerics(unit_scaled=False)


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _rms(t):
    return float(np.sqrt(np.mean(np.square(np.asarray(t, np.float64)))))


def _module_vjp(module, x, seed=99, **kwargs):
    """Output, input gradient and parameter gradients for a unit-normal output gradient."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def run(params, x, ct):
        def fn(params, x):
            return nnx.merge(graphdef, params, rest)(x, **kwargs)

        out, vjp = jax.vjp(fn, params, x)
        d_params, dx = vjp(ct)
        return out, dx, d_params

    ct = _normal(seed, jax.eval_shape(lambda p, x: nnx.merge(graphdef, p, rest)(x, **kwargs), params, x).shape)
    return jax.jit(run)(params, x, ct)


# --- Numerics and parameter metadata ----------------------------------------------------------


def test_numerics_validates_and_normalises_dtype():
    assert N.Numerics(dtype=jnp.bfloat16).dtype == "bfloat16"
    assert N.Numerics(dtype="float16").compute_dtype == jnp.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        N.Numerics(dtype="int8")
    with pytest.raises(TypeError, match="unit_scaled"):
        N.Numerics(unit_scaled=1)


def test_make_param_rejects_unknown_kind_and_bad_fans():
    with pytest.raises(ValueError, match="kind must be one of"):
        N.make_param(jnp.zeros(2), kind="weight", fan_in=1, fan_out=2, in_residual=False)
    with pytest.raises(ValueError, match="fan_in"):
        N.make_param(jnp.zeros(2), kind="bias", fan_in=0, fan_out=2, in_residual=False)


def _layer(numerics=N.Numerics(), mixer="attention", activation="gelu", rngs=None):
    rngs = rngs or nnx.Rngs(0)
    common = dict(numerics=numerics, in_residual=True, rngs=rngs)
    mixers = {
        "attention": lambda: N.MultiHeadSelfAttention(16, 2, causal=True, **common),
        "conv": lambda: N.CausalConv(16, kernel=3, groups=4, **common),
        "rnn": lambda: N.ElmanRNN(16, **common),
    }
    norm = lambda: N.LayerNorm(16, numerics=numerics, in_residual=True)  # noqa: E731
    return N.TransformerLayer(
        mixers[mixer](), N.MLP(16, 32, activation=activation, **common), norm(), norm(), numerics=numerics
    )


def test_every_parameter_carries_its_kind_fans_residual_flag_and_role():
    layer = _layer(mixer="attention", activation="swiglu")
    info = N.param_info(layer)
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(
        info, is_leaf=lambda x: isinstance(x, N.ParamInfo))}
    assert flat["['mixer']['qkv']['kernel']"] == N.ParamInfo("hidden", 16, 48, True, "attn_qkv")
    assert flat["['mixer']['out']['bias']"] == N.ParamInfo("bias", 1, 16, True, "attn_out")
    assert flat["['mlp']['gate']['kernel']"] == N.ParamInfo("hidden", 16, 32, True, "ffn_gate")
    assert flat["['mlp']['down']['kernel']"] == N.ParamInfo("hidden", 32, 16, True, "ffn_down")
    assert flat["['mixer_norm']['scale']"] == N.ParamInfo("norm", 1, 16, True, None)
    assert len(flat) == len(jax.tree.leaves(nnx.state(layer, nnx.Param)))
    # The metadata is on the variables of nnx.state itself.
    assert nnx.state(layer, nnx.Param)["mlp"]["up"]["kernel"].kind == "hidden"


def test_mixer_parameters_carry_kinds():
    conv, rnn = N.param_info(_layer(mixer="conv")), N.param_info(_layer(mixer="rnn"))
    assert conv["mixer"]["kernel"] == N.ParamInfo("hidden", 3 * 4, 3 * 4, True, "conv")
    assert conv["mixer"]["out"]["kernel"].role == "conv_out"
    assert rnn["mixer"]["recurrent"] == N.ParamInfo("hidden", 16, 16, True, "rnn_recurrent")
    assert rnn["mixer"]["input"]["kernel"].role == "rnn_in"


def test_param_info_names_parameters_without_metadata():
    class Foreign(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.zeros(3))

    with pytest.raises(ValueError, match="'w' has no"):
        N.param_info(Foreign())


# --- Linear, readout, embedding ---------------------------------------------------------------


def test_unit_scaled_linear_is_unit_at_init():
    layer = N.Linear(1024, 512, role="ffn_up", rngs=nnx.Rngs(1))
    out, dx, grads = _module_vjp(layer, _normal(2, (256, 1024)))
    assert _rms(layer.kernel[...]) == pytest.approx(1, abs=0.01)
    assert abs(_rms(out) - 1) < 0.1 and abs(_rms(grads["kernel"]) - 1) < 0.1
    # to_output_scale ties the input gradient to fan_in^-1/2: std (fan_out / fan_in)^1/2.
    assert _rms(dx) == pytest.approx((512 / 1024) ** 0.5, rel=0.1)


def test_standard_linear_is_plain_affine_map_with_lecun_or_given_init():
    layer = N.Linear(256, 128, role="attn_out", numerics=STD, rngs=nnx.Rngs(3))
    assert _rms(layer.kernel[...]) == pytest.approx(256**-0.5, rel=0.05)
    layer.bias[...] = _normal(4, (128,))
    x = _normal(5, (3, 7, 256))
    np.testing.assert_allclose(layer(x), x @ layer.kernel[...] + layer.bias[...], rtol=1e-5, atol=1e-5)
    small = N.Linear(256, 128, role="r", numerics=STD, init_std=0.02, rngs=nnx.Rngs(3))
    assert _rms(small.kernel[...]) == pytest.approx(0.02, rel=0.05)


def test_readout_divides_by_fan_in_when_unit_scaled():
    layer = N.LinearReadout(64, 10, role="readout", use_bias=False, rngs=nnx.Rngs(6))
    x = _normal(7, (5, 64))
    np.testing.assert_allclose(layer(x), x @ layer.kernel[...] / 64, rtol=1e-5, atol=1e-6)
    assert layer.kernel.kind == "readout"


def test_linear_rejects_bad_sizes_and_role():
    with pytest.raises(ValueError, match="in_features"):
        N.Linear(0, 3, role="x", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="role"):
        N.Linear(2, 3, role="", rngs=nnx.Rngs(0))


def test_embedding_unit_and_standard():
    ids = jnp.asarray(np.random.default_rng(8).integers(0, 100, (16, 64)))
    unit = N.Embedding(100, 256, rngs=nnx.Rngs(9))
    out, _, grads = _module_vjp(unit, ids)
    assert abs(_rms(out) - 1) < 0.05 and abs(_rms(grads["embedding"]) - 1) < 0.1
    std = N.Embedding(100, 8, numerics=STD, init_std=0.02, rngs=nnx.Rngs(9))
    np.testing.assert_array_equal(std(ids), std.embedding[...][ids])
    with pytest.raises(ValueError, match=r"num_embeddings=100\), got values in \[0, 100\]"):
        std(jnp.asarray([0, 100]))
    with pytest.raises(TypeError, match="integer"):
        std(jnp.zeros(3))


# --- Norms ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [N.LayerNorm, N.RMSNorm])
def test_norm_forward_is_the_same_in_both_parametrisations(cls):
    unit, std = cls(32), cls(32, numerics=STD)
    for module in (unit, std):
        module.scale[...] = 1 + 0.1 * _normal(10, (32,))
    x = 3 + 2 * _normal(11, (4, 5, 32))
    np.testing.assert_allclose(unit(x), std(x), rtol=1e-5, atol=1e-5)
    x32 = np.asarray(x, np.float64)
    if cls is N.LayerNorm:
        x32 = x32 - x32.mean(-1, keepdims=True)
    expect = x32 / np.sqrt((x32**2).mean(-1, keepdims=True) + 1e-5) * np.asarray(unit.scale[...])
    np.testing.assert_allclose(std(x), expect, rtol=1e-4, atol=1e-5)


def test_unit_scaled_norm_scales_affine_gradients():
    x = _normal(12, (8, 16, 32))
    unit_grads = _module_vjp(N.LayerNorm(32), x)[2]
    std_grads = _module_vjp(N.LayerNorm(32, numerics=STD), x)[2]
    s = (32 / x.size) ** 0.5
    for name in ("scale", "bias"):
        np.testing.assert_allclose(unit_grads[name], s * std_grads[name], rtol=1e-5, atol=1e-6)


# --- MLP and attention ------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_unit_scaled_mlp_is_unit_at_init(activation):
    mlp = N.MLP(256, 1024, activation=activation, rngs=nnx.Rngs(13))
    out, dx, grads = _module_vjp(mlp, _normal(14, (512, 256)))
    # Reference tolerance for MLPs (unit-scaling 0.3.5 tests): +-0.2.
    assert abs(_rms(out) - 1) < 0.2, _rms(out)
    assert all(abs(_rms(g) - 1) < 0.2 for g in jax.tree.leaves(grads["down"]))


def test_standard_mlp_matches_plain_formula():
    mlp = N.MLP(8, 16, activation="swiglu", numerics=STD, rngs=nnx.Rngs(15))
    x = _normal(16, (3, 8))
    k = lambda lin: lin.kernel[...]  # noqa: E731
    expect = (x @ k(mlp.up) * jax.nn.silu(x @ k(mlp.gate))) @ k(mlp.down)
    np.testing.assert_allclose(mlp(x), expect, rtol=1e-5, atol=1e-6)


def test_unit_scaled_attention_is_near_unit_for_independent_inputs():
    attn = N.MultiHeadSelfAttention(256, 4, causal=True, rngs=nnx.Rngs(17))
    out, dx, _ = _module_vjp(attn, _normal(18, (8, 128, 256)))
    # Reference tolerance for attention (unit-scaling 0.3.5 tests): +-0.5.
    assert abs(_rms(out) - 1) < 0.5 and abs(_rms(dx) - 1) < 0.5, (_rms(out), _rms(dx))


def _plain_attention(attn, x, causal, mask=None):
    b, s, d = x.shape
    h = attn.heads
    qkv = x @ attn.qkv.kernel[...] + attn.qkv.bias[...]
    q, k, v = (t.reshape(b, s, h, d // h) for t in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // h)
    keep = jnp.ones((s, s), bool) if not causal else jnp.tril(jnp.ones((s, s), bool))
    if mask is not None:
        keep = keep & (mask[:, None, None, :] != 0)
    probs = jax.nn.softmax(jnp.where(keep, logits, -jnp.inf), axis=-1)
    o = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, d)
    return o @ attn.out.kernel[...] + attn.out.bias[...]


@pytest.mark.parametrize("causal", [True, False])
def test_standard_attention_matches_plain_formula(causal):
    attn = N.MultiHeadSelfAttention(16, 4, causal=causal, numerics=STD, init_std=0.3, rngs=nnx.Rngs(19))
    x = _normal(20, (2, 6, 16))
    mask = jnp.asarray([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_allclose(attn(x, mask), _plain_attention(attn, x, causal, mask), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("unit_scaled", [True, False])
def test_attention_masks_future_and_padding(unit_scaled):
    attn = N.MultiHeadSelfAttention(
        16, 2, causal=True, numerics=N.Numerics(unit_scaled=unit_scaled), rngs=nnx.Rngs(21)
    )
    x = _normal(22, (1, 8, 16))
    mask = jnp.asarray([[1, 1, 1, 1, 1, 1, 0, 1]])
    jac = jax.jacobian(lambda x: attn(x, mask)[0, 7].sum())(x)[0]
    touched = np.asarray(jnp.abs(jac).sum(-1) > 0)
    # Position 7 sees every earlier position except the padded key at 6.
    assert touched.tolist() == [True] * 6 + [False, True]
    jac3 = jax.jacobian(lambda x: attn(x)[0, 3].sum())(x)[0]
    assert np.all(np.asarray(jnp.abs(jac3[4:]).sum(-1)) == 0)


def test_attention_rejects_indivisible_heads_and_bad_mask():
    with pytest.raises(ValueError, match=r"features \(10\) must be divisible by heads \(3\)"):
        N.MultiHeadSelfAttention(10, 3, causal=False, rngs=nnx.Rngs(0))
    attn = N.MultiHeadSelfAttention(8, 2, causal=False, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention_mask must be"):
        attn(jnp.zeros((2, 4, 8)), jnp.ones((4,)))


# --- Sequence mixers --------------------------------------------------------------------------


@pytest.mark.parametrize("mixer", ["conv", "rnn"])
@pytest.mark.parametrize("unit_scaled", [True, False])
def test_mixers_are_causal_and_refuse_masks(mixer, unit_scaled):
    numerics = N.Numerics(unit_scaled=unit_scaled)
    module = _layer(numerics, mixer=mixer).mixer
    x = _normal(23, (1, 10, 16))
    jac = jax.jacobian(lambda x: module(x)[0, 4].sum())(x)[0]
    touched = np.asarray(jnp.abs(jac).sum(-1) > 0)
    window = 3 if mixer == "conv" else 5
    assert touched.tolist() == [i <= 4 and i > 4 - window for i in range(10)]
    with pytest.raises(ValueError, match="mask"):
        module(x, jnp.ones((1, 10)))


@pytest.mark.parametrize("mixer", ["conv", "rnn"])
def test_unit_scaled_mixers_are_near_unit_at_init(mixer):
    rngs = nnx.Rngs(24)
    module = N.CausalConv(256, rngs=rngs) if mixer == "conv" else N.ElmanRNN(256, rngs=rngs)
    out, dx, grads = _module_vjp(module, _normal(25, (4, 128, 256)))
    # The pointwise/input Linears tie their input gradient to the forward scale (to_output_scale)
    # and have fan_in = fan_out, so every tensor is expected near 1.
    values = [_rms(out), _rms(dx)] + [_rms(g) for g in jax.tree.leaves(grads) if g.ndim > 1]
    assert all(abs(v - 1) < 0.2 for v in values), np.round(values, 3)


def test_standard_conv_and_rnn_match_plain_loops():
    conv = N.CausalConv(4, kernel=3, groups=2, numerics=STD, init_std=0.5, rngs=nnx.Rngs(26))
    rnn = N.ElmanRNN(4, numerics=STD, init_std=0.5, rngs=nnx.Rngs(27))
    conv.bias[...] = _normal(28, (4,))
    rnn.bias[...] = _normal(29, (4,))
    x = _normal(30, (2, 6, 4))
    w, b = conv.kernel[...], conv.bias[...]
    xp = jnp.pad(x, ((0, 0), (2, 0), (0, 0)))
    y = b + sum(
        jnp.concatenate([xp[:, k:k + 6, g * 2:(g + 1) * 2] @ w[k][:, g * 2:(g + 1) * 2] for g in range(2)], -1)
        for k in range(3)
    )
    np.testing.assert_allclose(conv(x), conv.out(y), rtol=1e-5, atol=1e-5)
    h, states = jnp.zeros((2, 4)), []
    for t in range(6):
        h = jnp.tanh(x[:, t] @ rnn.input.kernel[...] + h @ rnn.recurrent[...] + rnn.bias[...])
        states.append(h)
    np.testing.assert_allclose(rnn(x), jnp.stack(states, 1), rtol=1e-5, atol=1e-6)


# --- Dropout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("unit_scaled", [True, False])
def test_dropout_train_and_eval_modes(unit_scaled):
    drop = N.Dropout(0.25, numerics=N.Numerics(unit_scaled=unit_scaled), rngs=nnx.Rngs(dropout=31))
    x = jnp.ones((1000,))
    y = drop(x)
    kept = np.asarray(y[y != 0])
    assert 0.65 < kept.size / 1000 < 0.85
    expected_kept = 0.75**-0.5 if unit_scaled else 1 / 0.75
    np.testing.assert_allclose(kept, expected_kept, rtol=1e-6)
    assert not np.array_equal(y, drop(x))  # a fresh key per call
    evaluation = nnx.view(drop, deterministic=True)
    np.testing.assert_allclose(evaluation(x), (0.75**0.5 if unit_scaled else 1.0) * x, rtol=1e-6)
    with pytest.raises(ValueError, match="rngs"):
        N.Dropout(0.1)
    with pytest.raises(ValueError, match="rate"):
        N.Dropout(1.0, rngs=nnx.Rngs(0))


# --- Residual rule and layers -----------------------------------------------------------------


def test_residual_taus_by_hand():
    # depth 1, ratio 1, mult 1: alpha = 1, L/2 = 1: tau_0 = 1/sqrt(1), tau_1 = 1/sqrt(1 + 1).
    assert N.residual_taus(1) == pytest.approx((1.0, 2**-0.5))
    # depth 2, ratio 2: alpha_mlp = sqrt(2/5), alpha_attn = 2 sqrt(2/5); L/2 = 2.
    am, aa = (2 / 5) ** 0.5, 2 * (2 / 5) ** 0.5
    expect = (aa / 2**0.5, am / (2 + aa**2) ** 0.5, aa / (2 + aa**2 + am**2) ** 0.5,
              am / (2 + 2 * aa**2 + am**2) ** 0.5)
    assert N.residual_taus(2, 1.0, 2.0) == pytest.approx(expect)


@pytest.mark.parametrize("depth,mult,ratio", [(1, 1.0, 1.0), (4, 1.0, 1.0), (12, 0.5, 3.0), (7, 2.0, 0.25)])
def test_residual_contributions_sum_to_one_in_the_rule_proportions(depth, mult, ratio):
    weights = N.residual_contributions(N.residual_taus(depth, mult, ratio))
    assert sum(w**2 for w in weights) == pytest.approx(1.0)
    alpha_mlp = mult * (2 / (1 + ratio**2)) ** 0.5
    alphas = [ratio * alpha_mlp if i % 2 == 0 else alpha_mlp for i in range(2 * depth)]
    # Branch l's squared weight relative to the input's is alpha_l^2 / (L/2).
    ratios = [w**2 / weights[0] ** 2 for w in weights[1:]]
    assert ratios == pytest.approx([a**2 / depth for a in alphas])


def test_residual_taus_reject_bad_arguments():
    with pytest.raises(ValueError, match="depth"):
        N.residual_taus(0)
    with pytest.raises(ValueError, match="residual_attn_ratio"):
        N.residual_taus(2, 1.0, -1.0)


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("unit_scaled", [True, False])
def test_transformer_layer_composes_as_documented(placement, unit_scaled):
    numerics = N.Numerics(unit_scaled=unit_scaled)
    layer = _layer(numerics)
    layer.norm_placement, layer.taus = placement, (0.7, 0.4)
    x = _normal(32, (2, 5, 16))

    def branch(x, fn, norm, tau):
        if placement == "pre":
            y = fn(norm(x))
            return (tau * y + x) / math.sqrt(1 + tau**2) if unit_scaled else x + y
        y = (tau * fn(x) + x) / math.sqrt(1 + tau**2) if unit_scaled else x + fn(x)
        return norm(y)

    h = branch(x, layer.mixer, layer.mixer_norm, 0.7)
    expect = branch(h, layer.mlp, layer.mlp_norm, 0.4)
    np.testing.assert_allclose(layer(x), expect, rtol=1e-5, atol=1e-5)


def test_unit_scaled_residual_split_weights_gradients():
    layer = _layer()
    layer.taus = (0.5, 0.5)
    x = _normal(33, (2, 5, 16))
    # With identity branches the forward is x and the skip/branch gradient weights sum to
    # (tau + 1)/sqrt(1 + tau^2) per branch on the way back.
    identity = lambda h, mask=None: h  # noqa: E731
    layer.mixer, layer.mlp = nnx.data(identity), nnx.data(lambda h: h)
    layer.mixer_norm = layer.mlp_norm = nnx.data(lambda h: h)
    y, vjp = jax.vjp(layer, x)
    w = (0.5 + 1) / math.sqrt(1.25)
    np.testing.assert_allclose(y, x * w**2, rtol=1e-6)
    np.testing.assert_allclose(vjp(jnp.ones_like(y))[0], jnp.full_like(x, (0.5 + 1) ** 2 / 1.25), rtol=1e-6)


def test_stack_with_remat_matches_without():
    layers = [_layer(rngs=nnx.Rngs(i)) for i in range(2)]
    plain, remat = N.TransformerStack(layers), N.TransformerStack(layers, remat=True)
    x = _normal(34, (2, 5, 16))

    def loss(stack, x):
        return jnp.sum(stack(x) ** 2)

    g_plain = nnx.jit(nnx.grad(loss))(plain, x)
    g_remat = nnx.jit(nnx.grad(loss))(remat, x)
    # Recomputation changes XLA's fusion, hence float32 rounding, not the result.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_plain, g_remat)
    graphdef, params, rest = nnx.split(remat, nnx.Param, ...)
    jaxpr = jax.make_jaxpr(jax.grad(lambda p: loss(nnx.merge(graphdef, p, rest), x)))(params)
    assert "checkpoint" in str(jaxpr) or "remat" in str(jaxpr)
    with pytest.raises(ValueError, match="layers"):
        N.TransformerStack([])


def test_dense_is_where_every_linear_multiplies(monkeypatch):
    roles = []
    original = linear_module.dense

    def recording(*args, role, **kwargs):
        roles.append(role)
        return original(*args, role=role, **kwargs)

    monkeypatch.setattr(linear_module, "dense", recording)
    for mixer, activation in (("attention", "swiglu"), ("conv", "gelu"), ("rnn", "gelu")):
        _layer(mixer=mixer, activation=activation)(_normal(35, (1, 4, 16)))
    assert roles == ["attn_qkv", "attn_out", "ffn_up", "ffn_gate", "ffn_down",
                     "conv_out", "ffn_up", "ffn_down", "rnn_in", "ffn_up", "ffn_down"]


def test_unit_scaled_attention_uses_the_functional_op(monkeypatch):
    calls = []
    original = U.scaled_dot_product_attention

    def recording(*args, **kwargs):
        calls.append(args[6] if len(args) > 6 else kwargs.get("mult"))
        return original(*args, **kwargs)

    monkeypatch.setattr(U, "scaled_dot_product_attention", recording)
    attn = N.MultiHeadSelfAttention(16, 2, causal=True, softmax_mult=3.0, rngs=nnx.Rngs(0))
    attn(_normal(36, (1, 4, 16)))
    assert calls == [3.0]
