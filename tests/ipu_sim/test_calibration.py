"""The model's own error: recorded calibration rows are current, and every estimate carries a range
on its time (and throughput) that contains the point estimate and widens with the calibration
error of the components it used."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import pytest

import ipu_sim
from ipu_sim.__main__ import main
from ipu_sim.calibration import CALIBRATION, COMPONENTS, ROWS, Calibration, predict
from ipu_sim.placement import anchor_ops, place_ops
from ipu_sim.replica import cost_replica
from ipu_sim.report import component_seconds
from ipu_sim.system import compose
from ipu_sim.workloads import ModelConfig, build

SMALL = ModelConfig("gpt", 256, 128, 4, 4, 4.0, 64, "small")


@pytest.fixture(scope="module")
def costs():
    work = build(SMALL, micro_batch=4)
    program = ipu_sim.fuse(ipu_sim.trace(work.step, *work.args))
    placement = place_ops(anchor_ops(program, work.place), [2, 2])
    return cost_replica(program, placement, ipu_sim.BOW, recompute=True, offload_optimizer=True)


@pytest.fixture(scope="module")
def single():
    f = jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w) ** 2))
    return ipu_sim.estimate(f, jax.ShapeDtypeStruct((512, 512), jnp.float16),
                            jax.ShapeDtypeStruct((256, 512), jnp.float16))


def test_recorded_predictions_are_the_models_current_ones():
    now = predict()
    for row in ROWS:
        assert now[row.quantity] == pytest.approx(row.predicted, rel=5e-3), row.quantity


def test_every_component_has_rows_and_its_factors_bracket_one():
    for c in COMPONENTS:
        lo, hi = CALIBRATION.factors(c)
        assert lo <= 1.0 <= hi and hi > lo
    assert CALIBRATION.factors("allreduce") == (1.0, 1.0)  # no J19 row: uncalibrated


def test_component_seconds_add_up_to_the_estimate(single):
    parts = component_seconds(single.ops, single.chip)
    assert set(parts) <= set(COMPONENTS) and "matmul" in parts
    assert sum(parts.values()) == pytest.approx(single.seconds, rel=1e-9)


def test_single_ipu_range_contains_the_estimate_and_widens_with_the_error(single):
    narrow = single.seconds_range()
    wide = single.seconds_range(CALIBRATION.widened(3.0))
    assert narrow.low <= single.seconds <= narrow.high
    assert wide.low < narrow.low <= narrow.high < wide.high
    exact = Calibration(tuple(dataclasses.replace(r, predicted=r.measured) for r in ROWS))
    assert exact.factors("matmul") == (1.0, 1.0)  # a perfect model has no range
    assert single.seconds_range(exact).low == pytest.approx(single.seconds)
    d = single.to_dict(ops=False)
    assert d["seconds_range"] == [narrow.low, narrow.high]
    assert d["uncertainty"]["components"]["matmul"]["factors"] == list(CALIBRATION.factors("matmul"))


@pytest.mark.parametrize("grad_accum", [1, 16])
def test_system_range_contains_the_step_and_widens_with_the_error(costs, grad_accum):
    kw = dict(replicas=2, grad_accum=grad_accum, micro_batch=4, seq=64)
    est = compose(costs, "bow-pod16", **kw)
    wide = compose(costs, "bow-pod16", calibration=CALIBRATION.widened(3.0), **kw)
    low, high = est.step_seconds_range
    assert low <= est.step_seconds <= high and low < high
    assert wide.step_seconds == est.step_seconds
    assert wide.step_seconds_range[0] < low and wide.step_seconds_range[1] > high
    s_low, s_high = est.samples_per_second_range
    assert s_low <= est.samples_per_second <= s_high
    assert s_low == pytest.approx(est.samples_per_step / high)
    assert 0 < est.step_range.uncalibrated_seconds < est.step_seconds  # all-reduce, streaming, ...


def test_json_and_text_carry_the_range(tmp_path, capsys):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(dict(kind="gpt", vocab=128, d_model=64, depth=4, heads=4, seq=32)))
    argv = [str(path), "--system", "bow-pod16", "--pipeline", "2,2", "--grad-accum", "8",
            "--seq", "48"]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    low, high = d["step_seconds_range"]
    assert low <= d["step_seconds"] <= high
    s_low, s_high = d["samples_per_second_range"]
    assert s_low <= d["samples_per_second"] <= s_high
    t_low, t_high = d["tokens_per_second_range"]
    assert t_low == pytest.approx(48 * s_low)
    assert d["uncertainty"]["step_seconds"]["range"] == [low, high]
    assert set(d["uncertainty"]["calibration"]) == set(COMPONENTS)
    assert d["model"]["seq"] == 48  # the sequence length the run used, not the config's 32
    assert main(argv) == 0
    assert "within the model's calibration error: step" in capsys.readouterr().out
