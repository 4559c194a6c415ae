"""The shared command line (experiments.cli) and the optimisers and schedules (experiments.optimizers)."""

import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.checkpoint import CheckpointError
from experiments.cli import EXIT_DIVERGED, EXIT_UNUSABLE, SMOKE_TEST, ExperimentCLI, run_main, run_train
from experiments.inputs import InputError
from experiments.optimizers import OptimizerConfig, decay_mask, learning_rate_schedule, make_optimizer
from experiments.train import NonFiniteLossError, TrainConfig, TrainingInterrupted, TrainResult


def make_cli():
    cli = ExperimentCLI("prog", "a test script", defaults={"steps": 5000, "out": "results/test"},
                        quick={"steps": 40, "eval_every": 10})
    cli.add("--width", type=int, default=256, quick=32, help="model width")
    cli.add("--heads", type=int, default=4, help="attention heads")
    cli.add_model_options()
    return cli


# ---------------------------------------------------------------------------------------------
# Defaults, --quick and explicit options
# ---------------------------------------------------------------------------------------------

def test_defaults_come_from_the_script_then_from_train_config():
    cli = make_cli()
    args = cli.parse([])
    config = cli.train_config(args)
    assert config.steps == 5000 and config.out_dir == "results/test"
    assert config.batch_size == TrainConfig().batch_size and config.optimizer == OptimizerConfig()
    assert (args.width, args.heads, args.precision, args.scaling, args.unit_scaled) == (256, 4, "fp32", "none", True)
    assert config.resume and config.progress and config.ipu_estimate and config.data_parallel is None


def test_quick_applies_quick_values_only_where_given():
    cli = make_cli()
    args = cli.parse(["--quick"])
    config = cli.train_config(args)
    assert (config.steps, config.eval_every, args.width) == (40, 10, 32)
    assert args.heads == 4 and config.batch_size == TrainConfig().batch_size


def test_an_explicit_option_beats_quick():
    cli = make_cli()
    args = cli.parse(["--quick", "--steps", "7", "--width", "8", "--lr", "0.5", "--optimizer", "sgd",
                      "--warmup", "0", "--standard", "--fresh", "--no-progress", "--devices", "1",
                      "--no-ipu-estimate", "--out", "elsewhere"])
    config = cli.train_config(args)
    assert (config.steps, args.width, args.unit_scaled) == (7, 8, False)
    assert config.optimizer == OptimizerConfig(name="sgd", lr=0.5, warmup_steps=0)
    assert not config.resume and not config.progress and not config.ipu_estimate
    assert config.data_parallel == 1 and config.out_dir == "elsewhere"


def test_a_dict_of_options_parses_like_the_command_line():
    cli = make_cli()
    args = cli.parse_dict({"quick": True, "lr": 0.25, "width": 12, "unit_scaled": False})
    config = cli.train_config(args)
    assert (config.steps, config.optimizer.lr, args.width, args.unit_scaled) == (40, 0.25, 12, False)
    with pytest.raises(ValueError, match=r"unknown options \['depth'\]"):
        cli.parse_dict({"depth": 3})


def test_help_lists_defaults_and_quick_values(capsys):
    with pytest.raises(SystemExit) as done:
        make_cli().parse(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--quick", "--out", "--steps", "(default: 5000; --quick: 40)", "model width (default: 256; "
                     "--quick: 32)", "--lr", "--optimizer {adamw,adam,sgd,lamb}", "--precision", "--loss-scale",
                     "--standard", "--devices", "--distributed", "--fresh", "--scaling", "--system", "--data"):
        assert expected in text, expected


def test_a_bad_value_raises_an_input_error_naming_it():
    cli = make_cli()
    with pytest.raises(InputError, match="lr must be > 0.0, got -1.0"):
        cli.train_config(cli.parse(["--lr", "-1"]))


def test_old_option_names_stay_aliases():
    cli = make_cli()
    args = cli.parse(["--loss-scale", "dynamic", "--ipu-system", "bow-pod16"])
    assert (args.scaling, args.system) == ("dynamic", "bow-pod16")
    args = cli.parse_dict({"loss_scale": "static", "ipu_system": "c600"})
    assert (args.scaling, cli.train_config(args).ipu_system) == ("static", "c600")


def test_script_defaults_must_name_shared_options():
    with pytest.raises(ValueError, match=r"unknown shared options \['widht'\]"):
        ExperimentCLI("prog", "x", defaults={"widht": 3})


# ---------------------------------------------------------------------------------------------
# One run: parse -> resolve -> fit -> summary
# ---------------------------------------------------------------------------------------------

def _resolve_width(cli, args):
    if args.width % args.heads:
        raise ValueError(f"--width {args.width} is not a multiple of --heads {args.heads}")
    args.lr = args.width / 1e5
    return args, cli.train_config(args)


def test_run_train_fits_the_resolved_options_and_prints_the_summary(capsys):
    fitted = []

    def fit(args, config):
        fitted.append((args.width, config.optimizer.lr, config.steps))
        return TrainResult(model=None, step=config.steps, final={"loss": 1.5}, record={}, out_dir=Path(config.out_dir))

    result = run_train(make_cli(), ["--width", "64", "--quick"], resolve=_resolve_width, fit=fit,
                       summary=lambda r: f"final loss {r.final['loss']} after {r.step} steps")
    assert fitted == [(64, 64 / 1e5, 40)] and result.step == 40
    first, summary, last = capsys.readouterr().out.splitlines()
    assert summary == "final loss 1.5 after 40 steps"
    assert first == SMOKE_TEST and last.startswith(SMOKE_TEST) and last.endswith("Output in results/test.")


def test_run_train_reports_a_resolve_error_as_a_usage_error(capsys):
    def fit(args, config):
        raise AssertionError("fit must not run after a usage error")

    with pytest.raises(SystemExit) as stop:
        run_train(make_cli(), ["--width", "30", "--heads", "4"], resolve=_resolve_width, fit=fit, summary=str)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err == "prog: error: --width 30 is not a multiple of --heads 4 (--help lists the options)\n"


@pytest.mark.parametrize("argv, message", [
    (["--out", "FILE"], "--out FILE: is a file; give a directory"),
    (["--out", "FILE/run"], "--out FILE/run: lies under FILE, which is a file"),
    (["--data", "no-such-corpus.txt"], "--data no-such-corpus.txt: no such file or directory"),
    (["--lr", "-1"], "lr must be > 0.0, got -1.0"),
])
def test_run_train_reports_a_bad_input_as_a_usage_error_and_touches_nothing(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("kept")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]

    def fit(args, config):
        raise AssertionError("fit must not run after a usage error")

    with pytest.raises(SystemExit) as stop:
        run_train(make_cli(), argv, resolve=lambda cli, args: (args, cli.train_config(args)), fit=fit, summary=str)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message.replace("FILE", str(tmp_path / "FILE")) in err
    assert err.count("\n") == 1 and (tmp_path / "FILE").read_text() == "kept"


# ---------------------------------------------------------------------------------------------
# Exit codes
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("error, code", [
    (TrainingInterrupted(5, Path("ckpt/5"), "SIGINT"), 130),
    (TrainingInterrupted(5, Path("ckpt/5"), "SIGTERM"), 143),
    (NonFiniteLossError("loss became NaN", 5, Path("ckpt/5")), EXIT_DIVERGED),
    (CheckpointError("checkpoint ckpt/5 is corrupt"), EXIT_UNUSABLE),
    (InputError("--seq-len 4096: the training split of x has 100 tokens"), EXIT_UNUSABLE),
])
def test_run_main_turns_expected_stops_into_exit_codes(error, code, capsys):
    def main(argv):
        raise error

    assert run_main(main, []) == code
    assert str(error).split(":")[0] in capsys.readouterr().err


def test_run_main_lets_bugs_raise():
    def main(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_main(main, [])


# ---------------------------------------------------------------------------------------------
# Optimisers and schedules
# ---------------------------------------------------------------------------------------------

@settings(max_examples=40)
@given(lr=st.floats(1e-5, 1.0), warmup=st.integers(0, 50), steps=st.integers(60, 500),
       fraction=st.floats(0.0, 1.0), kind=st.sampled_from(["cosine", "linear", "constant"]))
def test_schedule_warms_up_linearly_then_decays_monotonically_to_its_floor(lr, warmup, steps, fraction, kind):
    config = OptimizerConfig(lr=lr, warmup_steps=warmup, final_lr_fraction=fraction, schedule=kind)
    # One array length for every example, so the eager ops compile once.
    values = np.asarray(learning_rate_schedule(config, steps)(jnp.arange(520)), np.float64)[:steps + 10]
    rtol = 1e-5
    np.testing.assert_allclose(values[:warmup], lr * np.arange(1, warmup + 1) / warmup, rtol=rtol)
    after = values[warmup:]
    assert after[0] == pytest.approx(lr, rel=rtol)
    assert np.all(np.diff(after) <= lr * 1e-6)
    floor = lr if kind == "constant" else fraction * lr
    np.testing.assert_allclose(values[steps:], floor, rtol=rtol, atol=lr * 1e-6)
    assert values.min() >= min(floor, lr / max(warmup, 1)) * (1 - rtol) - lr * 1e-6


def test_cosine_passes_through_the_midpoint_halfway():
    config = OptimizerConfig(lr=1.0, warmup_steps=10, final_lr_fraction=0.0)
    assert float(learning_rate_schedule(config, 110)(60)) == pytest.approx(0.5, abs=1e-6)


def _params():
    return {"kernel": jnp.ones((3, 4)), "bias": jnp.ones((4,)), "scale": jnp.ones((4,))}


@pytest.mark.parametrize("name", ["adamw", "adam", "sgd", "lamb"])
def test_weight_decay_shrinks_matrices_only(name):
    config = OptimizerConfig(name=name, lr=0.1, weight_decay=0.5, warmup_steps=0, schedule="constant", grad_clip=0.0)
    opt = make_optimizer(config, 10)
    params = _params()
    zero = {k: jnp.zeros_like(v) for k, v in params.items()}
    updates, _ = opt.update(zero, opt.init(params), params)
    assert float(jnp.abs(updates["kernel"]).max()) > 0
    assert float(jnp.abs(updates["bias"]).max()) == 0 and float(jnp.abs(updates["scale"]).max()) == 0
    assert decay_mask(params) == {"kernel": True, "bias": False, "scale": False}


def test_gradients_are_clipped_to_the_global_norm():
    config = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, weight_decay=0.0, warmup_steps=0,
                             schedule="constant", grad_clip=0.5)
    opt = make_optimizer(config, 10)
    grads = {"kernel": jnp.full((3, 4), 10.0)}
    updates, _ = opt.update(grads, opt.init(grads), grads)
    assert float(optax.tree.norm(updates)) == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("changes, message", [
    ({"name": "rmsprop"}, "optimizer name must be one of"),
    ({"schedule": "step"}, "schedule must be one of"),
    ({"lr": 0.0}, "lr must be > 0.0"),
    ({"b2": 1.0}, "b2 must be < 1.0"),
    ({"lr": math.nan}, "lr must be a finite number"),
    ({"warmup_steps": -1}, "warmup_steps must be a non-negative integer"),
    ({"grad_clip": -1.0}, "grad_clip must be >= 0.0"),
])
def test_optimizer_config_rejects_bad_values_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        OptimizerConfig(**changes)
