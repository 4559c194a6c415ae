"""track_scales on small functions: which tensors are tracked, and their values and gradients."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unitscale.analysis import ScaleReport, tensor_stats, track_scales
from unitscale.formats import E4M3, FP16
from unitscale.scale import scale, scale_bwd

W = jax.random.normal(jax.random.key(0), (8, 4))
X = jax.random.normal(jax.random.key(1), (16, 8))


def _model(w, x):
    with jax.named_scope("layer"):
        h = jnp.tanh(x @ w)
    with jax.named_scope("loss"):
        return jnp.sum(h**2) / 2


@pytest.fixture(scope="module")
def report():
    return track_scales(_model, W, X, weight_argnums=0, formats=(FP16, E4M3))


def _one(report, phase, op, path=None):
    found = [r for r in report if r.phase == phase and r.op == op and (path is None or r.path == path)]
    assert len(found) == 1, [r.label for r in report]
    return found[0]


def test_tracks_inputs_and_op_outputs_in_program_order(report):
    forward = [(r.label, r.kind) for r in report.select(phase="forward")]
    assert forward == [
        ("x", "activation"), ("w", "weight"), ("layer/dot_general", "activation"), ("layer/tanh", "activation"),
        ("loss/integer_pow", "activation"), ("loss/reduce_sum", "activation"), ("loss/div", "activation"),
    ]
    # Backward records run in reverse program order and share each tensor's index.
    backward = report.select(phase="backward")
    assert [r.label for r in backward] == [label for label, _ in forward][::-1]
    assert [r.index for r in backward] == sorted((r.index for r in backward), reverse=True)
    assert {r.index for r in backward} == {r.index for r in report.select(phase="forward")}


def test_forward_values_and_gradients_are_exact(report):
    h = X @ W
    t = jnp.tanh(h)
    dh = t * (1 - t**2)  # d(sum(tanh(h)^2) / 2) / dh
    gw, gx = jax.grad(_model, argnums=(0, 1))(W, X)
    expected = {
        ("forward", "w"): W, ("forward", "x"): X, ("forward", "layer/dot_general"): h,
        ("forward", "layer/tanh"): t, ("backward", "layer/tanh"): t, ("backward", "layer/dot_general"): dh,
        ("backward", "w"): gw, ("backward", "x"): gx, ("backward", "loss/div"): jnp.ones(()),
    }  # fmt: skip
    for (phase, label), value in expected.items():
        record = next(r for r in report if r.phase == phase and r.label == label)
        want = tensor_stats(value)
        assert record.stats.numel == want.numel and record.shape == value.shape
        for stat in ("mean", "std", "rms", "abs_max", "abs_min"):
            assert record.stats.get(stat) == pytest.approx(want.get(stat), rel=2e-6, abs=1e-12), (label, stat)
    assert report.output == pytest.approx(float(_model(W, X)), rel=1e-6)


def test_records_carry_coverage_and_histograms(report):
    record = _one(report, "forward", "dot_general")
    assert [c.format for c in record.coverage] == ["FP16", "E4M3FN"]
    assert record.coverage_in(FP16).normal == 1.0
    assert sum(n for _, n in record.histogram) == record.stats.numel
    with pytest.raises(ValueError, match="was not tracked"):
        record.coverage_in("E5M2")


def test_custom_backward_scales_survive_re_evaluation():
    def fn(x):
        return jnp.sum(scale(x, fwd=2.0, bwd=3.0))

    rep = track_scales(fn, jnp.ones((4,)))
    assert _one(rep, "forward", "scaled").stats.mean == 2.0
    assert _one(rep, "backward", "scaled").stats.mean == 1.0
    assert next(r for r in rep if r.phase == "backward" and r.op == "input").stats.mean == 3.0


def test_forward_identities_keep_only_their_gradient_and_views_are_skipped():
    def fn(x):
        y = scale_bwd(x, 0.5).reshape(2, 2).astype(jnp.bfloat16)  # identity, view, narrowing cast
        return jnp.sum(y.astype(jnp.float32) * 4.0)  # widening cast: a view

    rep = track_scales(fn, jnp.ones((4,)))
    assert [r.op for r in rep.select(phase="forward")] == ["input", "convert_element_type", "mul", "reduce_sum"]
    assert _one(rep, "backward", "scaled").stats.mean == 4.0
    assert _one(rep, "backward", "convert_element_type").dtype == "bfloat16"
    assert next(r for r in rep if r.phase == "backward" and r.op == "input").stats.mean == 2.0


def test_tensors_without_a_gradient_path_have_no_backward_record():
    def fn(x):
        return jnp.sum(x) + jax.lax.stop_gradient(jnp.sum(jnp.exp(x)))

    rep = track_scales(fn, jnp.arange(3.0))
    assert _one(rep, "forward", "exp")
    assert not [r for r in rep if r.phase == "backward" and r.op == "exp"]


def test_user_jit_is_inlined_and_library_functions_stay_whole():
    @jax.jit
    def inner(x):
        return jnp.where(x > 0, jnp.sin(x), 0.0)

    rep = track_scales(lambda x: jnp.sum(inner(x)), jnp.linspace(-1.0, 1.0, 6))
    assert [r.op for r in rep.select(phase="forward")] == ["input", "sin", "where", "reduce_sum"]


def test_a_non_scalar_output_needs_grad_output():
    with pytest.raises(ValueError, match="grad_output is required"):
        track_scales(jnp.tanh, X)
    g = jnp.full(X.shape, 0.5)
    rep = track_scales(jnp.tanh, X, grad_output=g)
    assert _one(rep, "backward", "tanh").stats.mean == 0.5
    with pytest.raises(ValueError, match="grad_output has shape"):
        track_scales(jnp.tanh, X, grad_output=jnp.ones(3))


def test_has_aux_tracks_the_loss_only():
    rep = track_scales(lambda x: (jnp.sum(x**2), jnp.max(x)), X, has_aux=True)
    assert "reduce_max" not in {r.op for r in rep}
    assert rep.output == pytest.approx(float(jnp.sum(X**2)), rel=1e-6)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="fn must be callable"):
        track_scales(3, X)
    with pytest.raises(ValueError, match="weight_argnums"):
        track_scales(_model, W, X, weight_argnums=2)
    with pytest.raises(TypeError, match="formats must hold FPFormat"):
        track_scales(jnp.sum, X, formats=("fp16",))
    with pytest.raises(ValueError, match="args: fn has no floating-point inputs"):
        track_scales(lambda i: jnp.sum(jnp.ones(3) * i), jnp.arange(3))
    with pytest.raises(TypeError, match="floating-point array"):
        track_scales(lambda x: jnp.sum(x > 0), X)


def test_csv_and_json_round_trip(report, tmp_path):
    again = ScaleReport.from_json(report.to_json(tmp_path / "r.json"))
    assert again == report
    assert ScaleReport.from_json(tmp_path / "r.json") == report
    lines = report.to_csv(tmp_path / "r.csv").splitlines()
    header = lines[0].split(",")
    assert len(lines) == len(report) + 1
    assert header[:9] == ["index", "phase", "kind", "label", "path", "op", "shape", "dtype", "numel"]
    assert {"std", "rms", "abs_max", "FP16_underflow", "E4M3FN_overflow"} <= set(header)
    assert json.loads((tmp_path / "r.json").read_text())["formats"] == ["FP16", "E4M3FN"]


def test_select_and_median_abs_log2(report):
    weights = report.select(kind="weight")
    assert {r.label for r in weights} == {"w"} and len(weights) == 2
    assert len(report.select(path="loss")) == 6
    spread = report.select(phase="forward", op="input").median_abs_log2("std")
    assert spread == pytest.approx(abs(math.log2(float(jnp.std(X)))), rel=1e-5)
    with pytest.raises(ValueError, match="phase='fwd'"):
        report.select(phase="fwd")


def test_to_pandas_needs_pandas(report):
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            report.to_pandas()
    else:
        assert len(report.to_pandas()) == len(report)


def test_bfloat16_tensors_are_recorded_in_their_dtype():
    rep = track_scales(lambda x: jnp.sum(jnp.tanh(x).astype(jnp.float32)), X.astype(jnp.bfloat16))
    record = _one(rep, "backward", "tanh")
    assert record.dtype == "bfloat16"
    assert np.isfinite(record.stats.rms)


def test_values_computed_from_weights_alone_are_weights():
    rep = track_scales(lambda w, x: jnp.sum(x @ (2.0 * w)), W, X, weight_argnums=(0,))
    kinds = {r.op: r.kind for r in rep.select(phase="forward")}
    assert kinds == {"weight": "weight", "mul": "weight", "input": "activation", "dot_general": "activation",
                     "reduce_sum": "activation"}
    assert [r.label for r in rep.select(phase="forward", kind="weight")] == ["w", "mul"]
