"""experiments.shift: the gradient-shift sweep end to end on a tiny profile, its outputs and verdicts."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import shift
from experiments.sweep_cli import sweep_parser, sweep_paths
from experiments.train_step import backward_shift, plain_value_and_grad

SCRIPT = shift  # run by the fixtures of tests/experiments/conftest.py
TINY = Path(__file__).parent / "data" / "tiny.txt"

# FP32 standard at two shifts (the reference), FP16 standard at the largest: 2^-20 takes most of its
# backward pass below FP16's smallest subnormal, so it learns nothing; 1-layer model, 8 steps.
SPEC = f"""
[t]
variants = ["fp32-standard", "fp16-standard"]
shifts = [20]
fp32_shifts = [0, 20]
seeds = [0]

[t.train]
data = "{TINY}"
d_model = 16
depth = 1
heads = 1
seq_len = 16
batch_size = 4
steps = 8
warmup = 1
log_every = 2
eval_every = 4
eval_batches = 2
final_eval_batches = 4
checkpoint_every = 4
mixer = "attention"
norm = "pre"
no_ipu_estimate = true
"""


def test_the_sweep_writes_runs_summary_and_figure(sweep):
    root, _, code, printed = sweep
    assert code == 0, printed
    out = root / "out"
    assert {p.name for p in out.iterdir()} >= {"runs.csv", "summary.json", "shift.png"}
    summary = json.loads((out / "summary.json").read_text())
    cells = {(c["variant"], c["shift"]): c for c in summary["cells"]}
    assert set(cells) == {("fp32-standard", 0), ("fp32-standard", 20), ("fp16-standard", 20)}
    assert all(c["runs"] == 1 and c["reference"] == "fp32-standard" for c in cells.values())
    assert summary["fp32_check"]["pairs_checked"] == 1
    assert summary["fp32_check"]["max_difference_bits"] < 1e-4
    assert cells[("fp32-standard", 0)]["flushed"] == 0.0
    assert cells[("fp16-standard", 20)]["flushed"] > 0.5  # most of its backward pass flushed to zero
    assert cells[("fp16-standard", 20)]["verdict"] == "degraded"  # one seed: the window intervals
    assert "FP16 standard, no loss scaling" in printed and "[degraded]" in printed


def test_summarise_collects_without_running(sweep, run_script):
    root, argv, _, _ = sweep
    before = (root / "out" / "summary.json").read_text()
    code, _ = run_script(["summarise", *argv])
    assert code == 0 and (root / "out" / "summary.json").read_text() == before


def test_quick_never_writes_into_results():
    repo = Path(shift.__file__).resolve().parents[1]
    paths = sweep_paths(shift.SCRIPT, sweep_parser(shift.SCRIPT).parse_args(["--quick"]))
    assert not paths.out.resolve().is_relative_to(repo) and paths.profile.name == "quick"


def test_the_usage_line_names_every_command(capsys):
    with pytest.raises(SystemExit):
        shift.main(["--help"])
    text = capsys.readouterr().out
    assert "usage: python -m experiments.shift [run | summarise | train]" in text and "--fresh" in text


def test_a_profile_without_its_fp32_reference_is_refused(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace('variants = ["fp32-standard", "fp16-standard"]', 'variants = ["fp16-unit"]'))
    with pytest.raises(ValueError, match="needs the FP32 reference variants \\['fp32-unit'\\]"):
        shift.load_profile(spec, "t")


def _rows(variant, shift_k, bits, ci=0.0):
    return [{"variant": variant, "shift": shift_k, "seed": s, "status": "completed", "test_bits": b,
             "test_bits_ci95": ci, "flushed": 0.0} for s, b in enumerate(bits)]


def test_the_verdict_is_the_paired_difference_from_the_reference_seed_by_seed():
    profile = shift.Profile("t", {}, ("fp32-standard", "fp16-standard"), (3,), (0,), (0, 1, 2))
    reference = [2.00, 2.05, 1.96]  # seeds differ by more than the effects below
    for offsets, verdict in (((0.051, 0.048, 0.050), "degraded"), ((0.010, -0.012, 0.003), "consistent"),
                             ((-0.049, -0.052, -0.050), "better")):
        fp16 = _rows("fp16-standard", 3, [r + o for r, o in zip(reference, offsets)])
        cells = {c["variant"]: c for c in shift.cells(_rows("fp32-standard", 0, reference) + fp16, profile)}
        cell = cells["fp16-standard"]
        assert cell["verdict"] == verdict, offsets
        assert cell["pairs"] == 3 and cell["difference"] == pytest.approx(sum(offsets) / 3)
        # unpaired, the seeds' spread would hide a 0.05 bpc effect: the mean's interval is wider than it
        assert cell["test_bits_ci95"] > 0.05


def test_a_single_pair_combines_the_two_runs_window_intervals():
    profile = shift.Profile("t", {}, ("fp32-standard", "fp16-standard"), (3,), (0,), (0,))
    rows = _rows("fp32-standard", 0, [2.00], ci=0.03) + _rows("fp16-standard", 3, [2.05], ci=0.04)
    cell = {c["variant"]: c for c in shift.cells(rows, profile)}["fp16-standard"]
    assert cell["difference_ci95"] == pytest.approx(0.05) and cell["verdict"] == "consistent"


def test_backward_shift_scales_the_backward_pass_and_restores_the_gradients():
    class Linear(nnx.Module):
        def __init__(self):
            self.w = nnx.Param(jnp.asarray([1.5, -2.0]))

    inside = []

    def recording(loss_fn, model, batch, recipe_state):  # the gradients of the shifted backward pass
        inside.append(plain_value_and_grad(loss_fn, model, batch, recipe_state))
        return inside[-1]

    x = jnp.asarray([3.0, 4.0])
    loss_fn = lambda m, b: (jnp.sum(m.w[...] * b), {"count": jnp.asarray(1.0)})  # noqa: E731
    loss, _, grads, _, finite = backward_shift(recording, 5)(loss_fn, Linear(), x, None)
    assert float(loss) == 3.0 * 1.5 - 4.0 * 2.0 and bool(finite)  # the loss value is unshifted
    np.testing.assert_array_equal(inside[0][2]["w"][...], x * 2.0**-5)
    np.testing.assert_array_equal(grads["w"][...], x)  # restored exactly
    assert backward_shift(recording, 0) is recording
    with pytest.raises(ValueError, match="shift must be a non-negative int"):
        backward_shift(plain_value_and_grad, -1)
