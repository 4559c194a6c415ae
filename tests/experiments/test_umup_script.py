"""experiments.umup: the analysis on synthetic sweeps with known answers, divergence as a result,
and a two-run sweep (one per parametrisation: the smallest variant of --quick) end to end on the
shipped tiny text (outputs, resume, analyse-only)."""

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest

from experiments import umup
from experiments.cli import run_main
from experiments.runner import expand_grid, load_spec, name_runs
from experiments.train import NonFiniteLossError, TrainingInterrupted
from unitscale.formats import BF16, E4M3, E5M2

TINY = Path(__file__).parent / "data" / "tiny.txt"


def _points(parametrisation, optimum_of_width, widths=(32, 64, 128), grid=range(-8, 1), precision="fp32"):
    """Quadratic loss curves ``(x - optimum(width))^2 / 4 + 2 - log2(width) / 10`` on a log2-lr grid."""
    return [umup.Point(parametrisation, precision, w, float(x), (x - optimum_of_width(w)) ** 2 / 4 + 2 - math.log2(w) / 10,
                       math.nan, 1.0) for w in widths for x in grid]


def test_refine_minimum_finds_a_parabola_vertex_and_flags_the_grid_edge():
    x = np.arange(-6.0, 1.0)
    assert umup.refine_minimum(x, (x + 2.3) ** 2) == pytest.approx((-2.3, 4, True))
    assert umup.refine_minimum(x, (x + 9.0) ** 2) == (-6.0, 0, False)
    y = (x + 1.2) ** 2
    y[-1] = np.nan  # diverged: counts as worst, and no neighbour to fit through
    assert umup.refine_minimum(x, y) == (-1.0, 5, False)
    assert math.isnan(umup.refine_minimum(x, np.full(7, np.nan))[0])


def test_transfer_measures_spread_slope_and_regret():
    moving = _points("sp", lambda w: -2.0 - math.log2(w / 32))  # one binade lower per doubling
    fixed = _points("umup", lambda w: -3.4)
    t = umup.transfer(moving + fixed, ("sp", "fp32"))
    assert t["widths"] == [32, 64, 128]
    assert t["spread_binades"] == pytest.approx(2.0) and t["slope_per_doubling"] == pytest.approx(-1.0)
    # The narrowest optimum (-2) used at width 128 (optimum -4): (2^2)/4 = 1 nat worse.
    assert t["transfer_regret"] == pytest.approx(1.0)
    t = umup.transfer(moving + fixed, ("umup", "fp32"))
    assert t["spread_binades"] == pytest.approx(0.0, abs=1e-9) and t["slope_per_doubling"] == pytest.approx(0.0, abs=1e-9)
    # Best grid point -3 at every width: 0.4^2/4 = 0.04 above the (off-grid) minimum, the same at all widths.
    assert t["transfer_regret"] == pytest.approx(0.0, abs=1e-12)
    rows = umup.optima(moving, ("sp", "fp32"))
    assert [r["best_log2_lr"] for r in rows] == [-2.0, -3.0, -4.0] and all(r["bracketed"] for r in rows)


def test_outputs_from_synthetic_points(tmp_path):
    points = (_points("sp", lambda w: -2.0 - math.log2(w / 32)) + _points("umup", lambda w: -3.0)
              + _points("umup", lambda w: -3.0, widths=(64,), precision="fp8"))
    diverged = umup.Point("sp", "fp32", 32, 1.0, math.nan, math.nan, 1.0)
    summary = umup.write_outputs(points + [diverged], tmp_path, "python -m experiments.umup --test")
    assert {p.name for p in tmp_path.iterdir()} == {"README.md", "summary.json", "runs.csv", "lr_sweep.png",
                                                  "precision.png"}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["command"] == "python -m experiments.umup --test" and saved["groups"] == json.loads(json.dumps(summary))
    assert list(summary) == ["sp/fp32", "umup/fp32", "umup/fp8"]
    assert summary["sp/fp32"]["optima"][0]["diverged"] == 1
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert len(rows) == len(points) + 1 and rows[-1]["val_loss"] == "nan"
    readme = (tmp_path / "README.md").read_text()
    assert "python -m experiments.umup --test" in readme and "| sp/fp32 | 2.00 | -1.00 | 1.000 |" in readme


def test_settings_reject_bad_configs():
    with pytest.raises(ValueError, match="parametrisation"):
        umup.RunSettings(parametrisation="mup", width=64, log2_lr=0)
    with pytest.raises(ValueError, match="head_dim"):
        umup.RunSettings(parametrisation="sp", width=48, log2_lr=0, head_dim=32)
    with pytest.raises(ValueError, match="unknown settings.*'lr'"):
        umup.RunSettings.from_config({"parametrisation": "sp", "width": 64, "log2_lr": 0, "lr": 1e-3})


def test_precisions_map_to_the_umup_fp8_recipe_and_bf16():
    config = lambda precision: umup.model_config(  # noqa: E731
        umup.RunSettings(parametrisation="umup", width=64, log2_lr=-3, precision=precision), vocab_size=70)
    fp8, bf16 = config("fp8"), config("bf16")
    assert (fp8.precision.matmul_fwd, fp8.precision.matmul_bwd, fp8.precision.keep_format) == (E4M3, E5M2, BF16)
    assert set(fp8.precision.keep_roles) == {"ffn_down", "attn_out"}
    assert fp8.precision.scaling == "none" and fp8.compute_dtype == bf16.compute_dtype == "bfloat16"
    assert not bf16.precision.quantized and not config("fp32").precision.quantized
    assert config("fp32").compute_dtype == "float32"


def test_the_shipped_spec_is_valid_and_brackets_widths_for_both_parametrisations():
    runs = name_runs(expand_grid(load_spec(umup.SPEC)))
    settings = [umup.RunSettings.from_config(r.config) for r in runs]
    for parametrisation in umup.PARAMETRISATIONS:
        widths = {s.width for s in settings if s.parametrisation == parametrisation and s.precision == "fp32"}
        assert len(widths) >= 3 and max(widths) >= 4 * min(widths)  # 32..128: 256 left out for time (see the spec)


TINY_SPEC = """
[[runs]]
parametrisation = "sp"
weight_decay = 0.1
log2_lr = -6
[[runs]]
parametrisation = "umup"
weight_decay = 0.0001220703125
log2_lr = -1
"""
FIXED = ('width = 16\nhead_dim = 8\ndepth = 1\nsteps = 6\nbatch_size = 4\nseq_len = 16\nwarmup = 2\n'
         'log_every = 3\neval_every = 3\neval_batches = 2\nfinal_eval_batches = 4\n')


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("umup")
    spec = root / "spec.toml"
    spec.write_text(TINY_SPEC.replace("[[runs]]\n", "[[runs]]\n" + FIXED))
    argv = ["--spec", str(spec), "--runs", str(root / "runs"), "--out", str(root / "out"), "--data", str(TINY)]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        summary = umup.main(argv)
    return root, argv, summary, printed.getvalue()


def test_sweep_trains_every_run_and_writes_the_outputs(sweep):
    root, argv, summary, printed = sweep
    assert "2 runs, 0 already done, 2 to run" in printed
    rows = list(csv.DictReader((root / "out" / "runs.csv").open()))
    assert sorted((r["parametrisation"], int(r["width"])) for r in rows) == [("sp", 16), ("umup", 16)]
    assert all(math.isfinite(float(r["val_loss"])) and float(r["val_loss"]) < math.log(256) for r in rows)
    assert [(r["width"], r["best_log2_lr"]) for r in summary["umup/fp32"]["optima"]] == [(16, -1.0)]
    readme = (root / "out" / "README.md").read_text()
    assert f"python -m experiments.umup --spec {root / 'spec.toml'}" in readme
    assert (root / "out" / "lr_sweep.png").stat().st_size > 10_000
    assert not list((root / "runs").rglob("checkpoints/*")), "finished runs keep no checkpoints"
    saved = json.loads(next((root / "runs").glob("*parametrisation=umup*/train/result.json")).read_text())
    assert saved["describe"]["model"]["unit_scaled"] and saved["config"]["optimizer"]["grad_clip"] == 0.0


def test_sweep_resumes_without_rerunning_and_analyses_only(sweep):
    root, argv, summary, _ = sweep
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        again = umup.main(argv)
        analysed = umup.main(["summarise", *argv])
        umup.main([*argv, "--analyse-only"])  # the older spelling of summarise
    assert "2 runs, 2 already done, 0 to run" in printed.getvalue()
    assert printed.getvalue().count("already done") == 1  # summarise runs nothing
    assert again == summary and analysed == summary


# The shapes of a run of the sweep above, so that building the model reuses its compiled ops.
_RUN = dict(parametrisation="sp", width=16, head_dim=8, depth=1, log2_lr=4.0, data=str(TINY), seq_len=16)


def _stopping_train(tmp_path, error):
    """A stand-in for ``train`` that saves a checkpoint of step 2 and then raises ``error``."""
    def stop(model, loss_fn, config, **kwargs):
        (Path(config.out_dir) / "checkpoints" / "2").mkdir(parents=True)
        raise error
    return stop


def test_a_diverged_run_is_a_result_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "train" / "checkpoints" / "2"
    monkeypatch.setattr(umup, "train", _stopping_train(tmp_path, NonFiniteLossError("loss went NaN", 3, checkpoint)))
    result = umup.run(_RUN, tmp_path / "run")
    assert result["diverged"] and result["diverged_at"] == 3 and math.isnan(result["val_loss"])
    assert checkpoint.is_dir(), "the error message says the last good checkpoint is kept"


def test_an_interrupted_run_keeps_its_checkpoint_to_resume(tmp_path, monkeypatch):
    checkpoint = tmp_path / "run" / "train" / "checkpoints" / "2"
    monkeypatch.setattr(umup, "train", _stopping_train(tmp_path, TrainingInterrupted(2, checkpoint, "SIGINT")))
    with pytest.raises(TrainingInterrupted):
        umup.run(_RUN, tmp_path / "run")
    assert checkpoint.is_dir()


@pytest.mark.parametrize("spec_text, message", [("[[runs]\nwidth = 16\n", "is not valid TOML"),
                                                ("[[runs]]\nparametrisation = 'mup'\nwidth = 16\nlog2_lr = 0\n",
                                                 "parametrisation must be one of")])
def test_a_malformed_spec_ends_in_one_line_before_any_run(tmp_path, capsys, spec_text, message):
    (tmp_path / "spec.toml").write_text(spec_text)
    code = run_main(umup.main, ["--spec", str(tmp_path / "spec.toml"), "--runs", str(tmp_path / "runs"),
                                "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.strip().count("\n") == 0 and not (tmp_path / "runs").exists()


def test_quick_writes_outside_the_repository_by_default():
    repo = Path(umup.__file__).resolve().parents[1]
    assert not umup.QUICK_OUT.resolve().is_relative_to(repo)
    text = umup.make_parser().format_help()
    assert "usage: python -m experiments.umup [run | summarise]" in text and "--fresh" in text
