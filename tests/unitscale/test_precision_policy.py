"""Precision policies: presets, validation, serialisation, and what each preset does to a matmul.

The grid tests drive one :class:`MatmulQuantizer` (the object every ``unitscale.nn`` Linear hands its
matmul to) with an ``op`` that records the operands it receives and the output-gradient its backward
pass receives, so they check exactly what a matmul of the preset computes with.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unitscale import formats as F
from unitscale.models.gpt import GPT, GPTConfig, lm_loss
from unitscale.precision.matmul import MatmulQuantizer, MatmulSpec
from unitscale.precision.policy import COMPUTE_DTYPES, PRESETS, PrecisionPolicy, precision_policy

# --- a matmul that records what it is given ----------------------------------------------------


def _tap(store: dict, name: str):
    """Identity whose backward records its cotangent under ``store[name]``."""

    @jax.custom_vjp
    def tap(y):
        return y

    def fwd(y):
        return y, None

    def bwd(_, g):
        jax.debug.callback(lambda v: store.__setitem__(name, np.asarray(v)), g)
        return (g,)

    tap.defvjp(fwd, bwd)
    return tap


def recording_op(store: dict):
    """``x @ w`` that stores its operands (forward) and the output-gradient (backward)."""
    tap = _tap(store, "g")

    def op(x, w, b):
        jax.debug.callback(lambda a, c: store.update(x=np.asarray(a), w=np.asarray(c)), x, w)
        return tap(jnp.matmul(x, w, preferred_element_type=jnp.float32))

    return op


def run_matmul(spec: MatmulSpec, x, w, g):
    """The operands and output-gradient a matmul of ``spec`` computes with, for output-gradient ``g``."""
    store: dict = {}
    quantizer = MatmulQuantizer(spec)
    op = recording_op(store)
    jax.grad(lambda x_, w_: jnp.sum(quantizer(op, x_, w_, None) * g), argnums=(0, 1))(x, w)
    return store


def bits(a) -> np.ndarray:
    return np.asarray(a, np.float32).view(np.uint32)


def on_grid(a, fmt) -> bool:
    """Whether every value of ``a`` is a fixed point of ``quantize(., fmt)``, bit for bit."""
    return bool(np.array_equal(bits(F.quantize(jnp.asarray(a, jnp.float32), fmt)), bits(a)))


# Operands spanning E4M3's range, and output-gradients spanning E5M2's, with values far off every grid.
_KEY = jax.random.key(0)
X = jax.random.normal(jax.random.fold_in(_KEY, 0), (8, 16)) * 3.0
W = jax.random.normal(jax.random.fold_in(_KEY, 1), (16, 24))
G = jax.random.normal(jax.random.fold_in(_KEY, 2), (8, 24)) * jnp.logspace(-3, 3, 24)


@pytest.mark.parametrize("preset, fwd, bwd", [
    ("fp8", F.E4M3, F.E5M2),
    ("fp8_fnuz", F.E4M3_FNUZ, F.E5M2_FNUZ),
    ("umup_fp8", F.E4M3, F.E5M2),
])
def test_fp8_presets_round_matmul_inputs_and_output_gradients_to_their_formats(preset, fwd, bwd):
    spec = MatmulSpec.of(PRESETS[preset], "ffn_up")
    seen = run_matmul(spec, X, W, G)
    for name, value, fmt in (("x", X, fwd), ("w", W, fwd), ("g", G, bwd)):
        assert on_grid(seen[name], fmt), name
        # exactly the RNE rounding of the float32 value, and a real rounding (not the value itself)
        np.testing.assert_array_equal(bits(seen[name]), bits(F.quantize(value, fmt)), err_msg=name)
        assert not np.array_equal(bits(seen[name]), bits(value)), name
    # the backward format is the coarser one: output-gradients are not on the forward grid
    assert not on_grid(seen["g"], fwd)


@pytest.mark.parametrize("role", ["ffn_down", "attn_out"])
def test_umup_fp8_keeps_its_roles_on_the_bf16_grid_not_e4m3(role):
    policy = PRESETS["umup_fp8"]
    spec = MatmulSpec.of(policy, role)
    assert (spec.fwd, spec.bwd) == (F.BF16, F.BF16)
    seen = run_matmul(spec, X, W, G)
    for name, value in (("x", X), ("w", W), ("g", G)):
        np.testing.assert_array_equal(bits(seen[name]), bits(F.quantize(value, F.BF16)), err_msg=name)
        assert not on_grid(seen[name], F.E4M3), name
    assert not on_grid(seen["g"], F.E5M2)


def test_umup_fp8_model_quantises_every_linear_role_as_the_policy_says():
    config = GPTConfig(vocab_size=24, max_len=8, d_model=16, depth=1, heads=2, ffn_ratio=2.0, precision="umup_fp8")
    model = GPT(config, rngs=nnx.Rngs(0))
    specs = {m.role: m.quantizer.spec for _, m in nnx.iter_modules(model)
             if hasattr(m, "quantizer") and m.quantizer is not None}
    assert set(specs) == {"attn_qkv", "attn_out", "ffn_up", "ffn_down", "readout"}
    for role, spec in specs.items():
        expected = (F.BF16, F.BF16) if role in ("ffn_down", "attn_out") else (F.E4M3, F.E5M2)
        assert (spec.fwd, spec.bwd) == expected, role


def _dot_dtypes(jaxpr) -> list[tuple[str, str]]:
    """The operand dtypes of every dot_general in ``jaxpr`` and its sub-jaxprs."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(v.aval.dtype) for v in eqn.invars))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            found += _dot_dtypes(sub)
    return found


@pytest.mark.parametrize("preset, dtype", [("fp16", "float16"), ("bf16", "bfloat16"), ("fp32", "float32")])
def test_presets_compute_in_their_real_dtype_with_float32_master_weights(preset, dtype):
    config = GPTConfig(vocab_size=24, max_len=8, d_model=16, depth=1, heads=2, ffn_ratio=2.0, precision=preset)
    model = GPT(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    ids = jnp.zeros((2, 8), jnp.int32)
    loss = lambda p: lm_loss(nnx.merge(graphdef, p, rest), {"inputs": ids, "targets": ids})[0]  # noqa: E731
    dots = _dot_dtypes(jax.make_jaxpr(jax.grad(loss))(params).jaxpr)
    assert len(dots) >= 15  # every matmul of both passes is seen
    # every matmul (forward and backward) has an operand in the compute dtype: none is float32 x float32
    assert all(dtype in d for d in dots), dots
    assert model(ids).dtype == jnp.dtype(dtype)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))  # float32 master weights


# --- presets and validation --------------------------------------------------------------------


def test_presets_have_the_documented_formats():
    assert set(PRESETS) == {"fp32", "bf16", "fp16", "fp16_paper", "fp8", "fp8_fnuz", "umup_fp8", "mxfp8", "mxfp6",
                            "mxfp4"}
    assert {n: PRESETS[n].compute_dtype for n in ("fp32", "bf16", "fp16", "fp16_paper")} == {
        "fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "fp16_paper": "float16"}
    assert not any(PRESETS[n].quantized for n in ("fp32", "bf16", "fp16", "fp16_paper"))
    assert [n for n, p in PRESETS.items() if p.storage.active] == ["fp16_paper"]
    fmts = {n: (p.matmul_fwd, p.matmul_bwd, p.scaling) for n, p in PRESETS.items() if p.quantized}
    assert fmts == {
        "fp8": (F.E4M3, F.E5M2, "none"), "fp8_fnuz": (F.E4M3_FNUZ, F.E5M2_FNUZ, "none"),
        "umup_fp8": (F.E4M3, F.E5M2, "none"), "mxfp8": (F.E4M3, F.E5M2, "mx"),
        "mxfp6": (F.E2M3, F.E3M2, "mx"), "mxfp4": (F.E2M1, F.E2M1, "mx"),
    }
    assert PRESETS["umup_fp8"].keep_roles == ("ffn_down", "attn_out")
    assert all(p.name == n for n, p in PRESETS.items())


def test_matmul_spec_of_unquantised_and_kept_roles():
    assert MatmulSpec.of(PRESETS["fp16"], "ffn_up") is None
    assert MatmulSpec.of(PRESETS["fp8"].replace(keep_roles=("readout",)), "readout") is None  # no keep_format
    spec = MatmulSpec.of(precision_policy("fp8", scaling="delayed", amax_history=7, margin=2), "ffn_up")
    assert (spec.scaling, spec.history, spec.margin, spec.stats) == ("delayed", 7, 2, True)
    with pytest.raises(TypeError, match="policy"):
        MatmulSpec.of("fp8", "ffn_up")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_policy_round_trips_through_json(name):
    policy = PRESETS[name].replace(margin=1)
    back = precision_policy(json.loads(json.dumps(policy.to_dict())))
    assert back == policy and hash(back) == hash(policy)


def test_name_is_a_label_not_part_of_equality_and_policies_are_static_jit_arguments():
    a = PrecisionPolicy(matmul_fwd="e4m3", matmul_bwd=F.E5M2, name="a")
    assert a == PRESETS["fp8"] and hash(a) == hash(PRESETS["fp8"])
    f = jax.jit(lambda x, p: x * (2.0 if p.quantized else 1.0), static_argnums=1)
    assert float(f(1.0, a)) == 2.0
    assert "E4M3" in str(PRESETS["fp8"]) and "float16 arithmetic" in str(PRESETS["fp16"])


def test_overrides_and_dtype_spellings():
    assert precision_policy("fp8", scaling="current").scaling == "current"
    assert PrecisionPolicy(compute_dtype=jnp.bfloat16).compute_dtype == "bfloat16"
    assert PrecisionPolicy(compute_dtype=np.dtype("float16")).compute_dtype == "float16"
    assert set(COMPUTE_DTYPES) == {"float32", "bfloat16", "float16"}


@pytest.mark.parametrize("kwargs, error, field", [
    (dict(compute_dtype="float64"), ValueError, "compute_dtype"),
    (dict(matmul_fwd=3), TypeError, "matmul_fwd"),
    (dict(matmul_fwd=F.E4M3, scaling="blocky"), ValueError, "scaling"),
    (dict(scaling="delayed"), ValueError, "scaling"),
    (dict(matmul_fwd=F.E4M3, amax_history=0), ValueError, "amax_history"),
    (dict(matmul_fwd=F.E4M3, margin=-1), ValueError, "margin"),
    (dict(matmul_fwd=F.E4M3, mx_block=True), ValueError, "mx_block"),
    (dict(operands="real"), ValueError, "operands"),
    (dict(stats=1), TypeError, "stats"),
    (dict(keep_roles=("ffn_down", 3)), TypeError, "keep_roles"),
    (dict(matmul_fwd=F.E2M3, operands="float8"), ValueError, "matmul_fwd"),
])
def test_bad_fields_raise_naming_the_field(kwargs, error, field):
    with pytest.raises(error, match=field):
        PrecisionPolicy(**kwargs)


def test_bad_preset_and_policy_arguments():
    with pytest.raises(ValueError, match="fp7"):
        precision_policy("fp7")
    with pytest.raises(TypeError, match="policy"):
        precision_policy(8)


def test_policies_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["fp8"].margin = 3
