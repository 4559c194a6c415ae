"""The sequence-mixer ops of unitscale.functional: tanh, grouped conv1d and the Elman rnn.

Each is checked three ways: (1) the unit-scaling contract (unit-variance inputs and output gradient
give outputs and gradients of std near 1); (2) the exact rule (values and gradients equal a plain
jnp reference multiplied by the documented scales); (3) structure (causality, errors, dtypes).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unitscale.functional as U


def _normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


def _vjp(fn, args, seed):
    out, vjp = jax.vjp(fn, *args)
    return out, vjp(_normal(seed, out.shape).astype(out.dtype))


def _rms(t):
    return float(np.sqrt(np.mean(np.square(np.asarray(t, np.float64)))))


def _gaussian_mean_reference(fn):
    z, w = np.polynomial.hermite_e.hermegauss(120)
    return float(np.sum(w * fn(z)) / np.sum(w))


V_TANH = _gaussian_mean_reference(lambda z: np.tanh(z) ** 2)
U_TANH = _gaussian_mean_reference(lambda z: (1 - np.tanh(z) ** 2) ** 2)


# --- tanh -----------------------------------------------------------------------------------


def test_tanh_moments_match_gauss_hermite():
    assert U._TANH_FWD_VAR == pytest.approx(V_TANH, rel=1e-9)
    assert U._TANH_BWD_VAR == pytest.approx(U_TANH, rel=1e-9)


def test_tanh_is_unit_scaled():
    x = _normal(0, (256, 1024))
    out, (dx,) = _vjp(lambda x: U.tanh(x, constraint=None), (x,), 1)
    assert abs(_rms(out) - 1) < 0.02 and abs(_rms(dx) - 1) < 0.02


@pytest.mark.parametrize("constraint", [None, "to_output_scale", "to_grad_input_scale", "gmean"])
def test_tanh_rule(constraint):
    x, ct = _normal(2, (8, 16)), _normal(3, (8, 16))
    fwd, bwd = V_TANH**-0.5, U_TANH**-0.5
    if constraint == "to_output_scale":
        bwd = fwd
    elif constraint == "to_grad_input_scale":
        fwd = bwd
    elif constraint == "gmean":
        fwd = bwd = math.sqrt(fwd * bwd)
    out, vjp = jax.vjp(lambda x: U.tanh(x, constraint=constraint), x)
    np.testing.assert_allclose(out, fwd * jnp.tanh(x), rtol=1e-6)
    np.testing.assert_allclose(vjp(ct)[0], bwd * ct * (1 - jnp.tanh(x) ** 2), rtol=1e-5, atol=1e-7)


# --- conv1d ---------------------------------------------------------------------------------


def _conv_reference(x, w, pad, groups, stride=1, dilation=1):
    """Plain loop over taps: out[t, o] = sum_k sum_i x[t*stride + k*dilation - pad_lo, g(o)*I + i] w[k, i, o]."""
    lo, hi = pad
    kernel, in_per_group, out_ch = w.shape
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(lo, hi), (0, 0)])
    out_seq = (xp.shape[-2] - dilation * (kernel - 1) - 1) // stride + 1
    out_per_group = out_ch // groups
    out = 0.0
    for k in range(kernel):
        taps = xp[..., k * dilation : k * dilation + stride * (out_seq - 1) + 1 : stride, :]
        taps = taps.reshape(*taps.shape[:-1], groups, in_per_group)
        wk = w[k].reshape(in_per_group, groups, out_per_group)
        out = out + jnp.einsum("...gi,igo->...go", taps, wk).reshape(*taps.shape[:-2], out_ch)
    return out


@settings(max_examples=4)
@given(
    kernel=st.sampled_from([1, 3, 7]),
    groups_kind=st.sampled_from(["full", "grouped", "depthwise"]),
    padding=st.sampled_from(["causal", "same", "valid", 2]),
    stride=st.sampled_from([1, 2]),
    dilation=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_conv1d_matches_reference_times_scale(kernel, groups_kind, padding, stride, dilation, seed):
    channels = 8
    groups = {"full": 1, "grouped": 2, "depthwise": channels}[groups_kind]
    x = _normal(seed, (2, 3, 20, channels))
    w = _normal(seed + 1, (kernel, channels // groups, channels))
    b = _normal(seed + 2, (channels,))
    span = dilation * (kernel - 1)
    pad = {"causal": (span, 0), "same": (span // 2, span - span // 2), "valid": (0, 0), 2: (2, 2)}[padding]
    fn = lambda x, w, b: U.conv1d(x, w, b, stride, padding, dilation, groups, constraint=None)  # noqa: E731
    out, (dx, dw, db) = _vjp(fn, (x, w, b), seed + 3)
    ref = lambda x, w, b: _conv_reference(x, w, pad, groups, stride, dilation) + b  # noqa: E731
    ref_out, (rdx, rdw, rdb) = _vjp(ref, (x, w, b), seed + 3)
    fan_in, fan_out = kernel * channels // groups, kernel * channels / (groups * stride)
    positions = 6 * out.shape[-2]
    np.testing.assert_allclose(out, ref_out * fan_in**-0.5, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx, rdx * fan_out**-0.5, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dw, rdw * positions**-0.5, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, rdb * positions**-0.5, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "in_ch,out_ch,groups", [(128, 128, 128), (128, 128, 8), (128, 64, 1)], ids=["depthwise", "grouped", "full"]
)
def test_conv1d_is_unit_scaled(in_ch, out_ch, groups):
    x = _normal(10, (8, 256, in_ch))
    w = _normal(11, (7, in_ch // groups, out_ch))
    b = _normal(12, (out_ch,))
    out, grads = _vjp(lambda x, w, b: U.conv1d(x, w, b, groups=groups, constraint=None), (x, w, b), 13)
    # Bias gradients are only out_ch numbers; the rest are large samples.
    assert [round(_rms(t), 2) for t in (out, *grads[:2])] == pytest.approx([1, 1, 1], abs=0.1)
    assert abs(_rms(grads[2]) - 1) < 0.25


def test_conv1d_causal_output_ignores_the_future():
    x, w = _normal(20, (1, 16, 4)), _normal(21, (7, 1, 4))
    jac = jax.jacobian(lambda x: U.conv1d(x, w, groups=4)[0, 5].sum())(x)
    assert jnp.all(jac[0, 6:] == 0) and jnp.all(jnp.abs(jac[0, :6]).sum(-1) > 0)


def test_conv1d_constraint_ties_scales():
    x, w = _normal(30, (2, 10, 4)), _normal(31, (3, 4, 6))
    out_u, (dx_u, _) = _vjp(lambda x, w: U.conv1d(x, w, constraint=None), (x, w), 32)
    out_g, (dx_g, _) = _vjp(lambda x, w: U.conv1d(x, w, constraint="to_grad_input_scale"), (x, w), 32)
    fan_in, fan_out = 12, 18
    np.testing.assert_allclose(out_g, out_u * (fan_in / fan_out) ** 0.5, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx_g, dx_u, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(weight=(7, 4, 8), groups=3), "groups=3"),
        (dict(weight=(7, 8)), "weight must be 3-D"),
        (dict(weight=(7, 4, 8), padding="left"), "padding"),
        (dict(weight=(7, 4, 8), stride=0), "stride"),
        (dict(weight=(7, 4, 8), bias=(4,)), "bias"),
        (dict(weight=(30, 4, 8), padding="valid"), "too short"),
        (dict(weight=(7, 2, 8)), "weight.shape\\[1\\]"),
    ],
)
def test_conv1d_bad_input(kwargs, match):
    x = jnp.zeros((2, 10, 4))
    w = jnp.zeros(kwargs.pop("weight"))
    bias = kwargs.pop("bias", None)
    with pytest.raises(ValueError, match=match):
        U.conv1d(x, w, None if bias is None else jnp.zeros(bias), **kwargs)


def test_conv1d_rejects_integer_input():
    with pytest.raises(TypeError, match="input"):
        U.conv1d(jnp.zeros((2, 10, 4), jnp.int32), jnp.zeros((3, 4, 4)))


# --- rnn ------------------------------------------------------------------------------------


def _rnn_reference(x, w, b, h0=None):
    """The documented recurrence, step by step in numpy-style jnp, without the op's own scales."""
    hidden = w.shape[0]
    gain_in, gain_rec = 0.5**0.5, (2 * hidden * V_TANH) ** -0.5
    h = jnp.zeros(x.shape[:-2] + (hidden,)) if h0 is None else h0
    states = []
    for t in range(x.shape[-2]):
        h = jnp.tanh(gain_in * x[..., t, :] + gain_rec * h @ w + b)
        states.append(h)
    return jnp.stack(states, axis=-2)


def _rnn_scales(batch, seq, hidden):
    grad_var = U_TANH / (1 - U_TANH / (2 * V_TANH))
    return dict(
        out=V_TANH**-0.5,
        input=(grad_var / 2) ** -0.5,
        weight=(batch * (seq - 1) * grad_var / (2 * hidden)) ** -0.5,
        bias=(batch * seq * grad_var) ** -0.5,
    )


def test_rnn_matches_reference_times_scales():
    x, w, b, h0 = _normal(40, (2, 3, 9, 6)), _normal(41, (6, 6)), _normal(42, (6,)), _normal(43, (2, 3, 6))
    out, (dx, dw, db, dh0) = _vjp(lambda *a: U.rnn(*a, constraint=None), (x, w, b, h0), 44)
    ref, (rdx, rdw, rdb, rdh0) = _vjp(_rnn_reference, (x, w, b, h0), 44)
    s = _rnn_scales(6, 9, 6)
    np.testing.assert_allclose(out, ref * s["out"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, rdx * s["input"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dw, rdw * s["weight"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(db, rdb * s["bias"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(dh0, rdh0, rtol=1e-4, atol=1e-6)


def test_rnn_default_constraint_ties_to_output_scale():
    x, w = _normal(50, (2, 5, 4)), _normal(51, (4, 4))
    _, (dx_free, _) = _vjp(lambda x, w: U.rnn(x, w, constraint=None), (x, w), 52)
    _, (dx_tied, _) = _vjp(U.rnn, (x, w), 52)
    s = _rnn_scales(2, 5, 4)
    np.testing.assert_allclose(dx_tied, dx_free * s["out"] / s["input"], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("hidden,seq,batch", [(128, 128, 16), (256, 64, 8)])
def test_rnn_is_unit_scaled(hidden, seq, batch):
    fn = jax.jit(lambda x, w, b, ct: _vjp_ct(x, w, b, ct))
    rms = []
    for seed in range(3):
        args = (_normal(seed, (batch, seq, hidden)), _normal(seed + 7, (hidden, hidden)), jnp.zeros(hidden))
        out, grads = fn(*args, _normal(seed + 9, (batch, seq, hidden)))
        rms.append([_rms(out), *map(_rms, grads)])
    out, dx, dw, db = np.mean(rms, axis=0)
    assert abs(out - 1) < 0.05 and abs(dx - 1) < 0.05 and abs(dw - 1) < 0.1, rms
    # The bias gradient is a sum over every step of one hidden unit: few numbers, heavy-tailed.
    assert abs(db - 1) < 0.25, rms


def _vjp_ct(x, w, b, ct):
    out, vjp = jax.vjp(lambda x, w, b: U.rnn(x, w, b, constraint=None), x, w, b)
    return out, vjp(ct)


def test_rnn_is_causal():
    x, w = _normal(60, (1, 12, 4)), _normal(61, (4, 4))
    jac = jax.jacobian(lambda x: U.rnn(x, w)[0, 4].sum())(x)
    assert jnp.all(jac[0, 5:] == 0) and jnp.all(jnp.abs(jac[0, :5]).sum(-1) > 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_sequence_ops_keep_low_precision_dtype(dtype):
    x = _normal(70, (2, 16, 8)).astype(dtype)
    w_conv, w_rnn = _normal(71, (7, 1, 8)).astype(dtype), _normal(72, (8, 8)).astype(dtype)
    for fn, w in ((lambda x, w: U.conv1d(x, w, groups=8), w_conv), (U.rnn, w_rnn), (lambda x, w: U.tanh(x), w_rnn)):
        out, grads = jax.jit(lambda x, w: _vjp(fn, (x, w), 73))(x, w)
        assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
        assert all(bool(jnp.all(jnp.isfinite(t))) for t in (out, *grads))


def test_rnn_under_vmap_and_remat():
    x, w = _normal(80, (3, 6, 4)), _normal(81, (4, 4))
    mapped = jax.vmap(lambda xi: U.rnn(xi, w))(x)
    np.testing.assert_allclose(mapped, U.rnn(x, w), rtol=1e-6)
    loss = lambda w: jnp.sum(U.rnn(x, w) ** 2)  # noqa: E731
    np.testing.assert_allclose(jax.grad(jax.checkpoint(loss))(w), jax.grad(loss)(w), rtol=1e-5)


@pytest.mark.parametrize(
    "args,match",
    [
        (((2, 5, 4), (4, 3)), "weight must have shape"),
        (((4,), (4, 4)), "input must be"),
        (((2, 5, 4), (4, 4), (3,)), "bias"),
        (((2, 5, 4), (4, 4), None, (3, 4)), "initial_state"),
    ],
)
def test_rnn_bad_input(args, match):
    arrays = [None if s is None else jnp.zeros(s) for s in args]
    with pytest.raises(ValueError, match=match):
        U.rnn(*arrays)
