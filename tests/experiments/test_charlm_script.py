"""experiments.charlm: the two-stage sweep end to end on a reduced grid, the result files it documents,
the summariser's report of missing / failed / malformed runs, divergence records and the statistics."""

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import charlm
from experiments.results import append_jsonl, read_json
from experiments.sweep import RESULT_FILE, name_runs
from experiments.train import NonFiniteLossError, eval_metrics

SCRIPT = charlm  # run by the fixtures of tests/experiments/conftest.py
TINY = Path(__file__).parent / "data" / "tiny.txt"
PLOTS = ("bpc_table.png", "curves_fp16.png", "curves_fp8.png", "lr_sweep.png")

# A reduced grid for the test budget (every run compiles its own step): a 1-layer model, 6 steps, one
# rate per parametrisation, and a grid of two runs: FP32 standard attention pre-norm, which is the
# learning-rate sweep's run at the chosen rate (reused, not rerun), and FP8 unit-scaled RNN post-norm.
# (FP16 with dynamic loss scaling runs in the BERT script's test.)
SPEC = f"""
[t.train]
data = "{TINY}"
d_model = 16
depth = 1
heads = 1
seq_len = 16
batch_size = 4
steps = 6
warmup = 1
log_every = 2
eval_every = 3
eval_batches = 2
final_eval_batches = 4
checkpoint_every = 3
no_ipu_estimate = true

[t.lr_sweep]
mixer = "attention"
norm = "pre"
seed = 0
standard = [3e-3]
unit = [3e-2]

[[t.grid]]
variant = ["fp32-standard"]
mixer = ["attention"]
norm = ["pre"]
seed = [0]

[[t.grid]]
variant = ["fp8-unit"]
mixer = ["rnn"]
norm = ["post"]
seed = [0]
"""
# Two more cells with the same varying keys, so the runs above keep their names.
MORE = """
[[t.grid]]
variant = ["fp32-unit"]
mixer = ["conv"]
norm = ["pre", "post"]
seed = [0]
"""


def test_sweep_runs_both_stages_and_writes_the_documented_files(sweep):
    root, _, code, printed = sweep
    out = root / "out"
    assert code == 0, printed
    for name in (*charlm.SCHEMA, *PLOTS):
        assert (out / name).is_file(), name
    results = read_json(out / "results.json")
    assert set(results) == {"experiment", "profile", "settings", "variants", "learning_rates", "lr_sweep", "runs",
                            "table", "problems", "ci", "schema"}
    assert results["learning_rates"] == {"standard": 3e-3, "unit": 3e-2} and results["problems"] == []
    assert [r["status"] for r in results["lr_sweep"]] == ["completed"] * 2
    runs = results["runs"]
    assert [(r["variant"], r["mixer"], r["norm"], r["status"]) for r in runs] == [
        ("fp32-standard", "attention", "pre", "completed"), ("fp8-unit", "rnn", "post", "completed")]
    assert [r["lr"] for r in runs] == [3e-3, 3e-2]
    for r in runs:
        for split in ("val", "test"):
            assert 0 < r[f"{split}_bits"] < 10 and 0 < r[f"{split}_bits_ci95"] < 1
            assert r[f"{split}_bits"] == pytest.approx(r[f"{split}_loss"] / math.log(2))
    # The grid's FP32 run is the learning-rate sweep's, copied with its metrics.
    assert printed.count("reused the learning-rate sweep's run for") == 1
    reused = read_json(root / "runs" / "grid" / runs[0]["run"] / RESULT_FILE)
    assert reused["run"] == runs[0]["run"] and reused["reused_from"].endswith("lr=0.003,variant=fp32-standard")
    assert runs[0]["test_bits"] == results["lr_sweep"][0]["test_bits"]
    # Checkpoints are deleted once a run has finished; its metrics stay.
    run_dirs = [p.parent for p in (root / "runs").glob(f"*/*/{RESULT_FILE}")]
    assert len(run_dirs) == 4
    assert not any((d / "train" / "checkpoints").exists() for d in run_dirs)
    assert all((d / "train" / "metrics.jsonl").is_file() for d in run_dirs)


def test_curves_and_table_describe_every_run(sweep):
    root = sweep[0]
    curves = read_json(root / "out" / "curves.json")
    assert len(curves) == 2
    for c in curves.values():
        assert c["train"]["step"] == [2, 4, 6] and c["val"]["step"] == [3, 6]
        assert all(math.isfinite(x) for x in c["train"]["loss"] + c["val"]["bits"])
    fp32, fp8 = curves.values()
    assert "gradients_underflow" not in fp32["train"] and all(x >= 0 for x in fp8["train"]["gradients_underflow"])
    table = read_json(root / "out" / "results.json")["table"]
    assert len(table) == 4 and all(t["ci_kind"] == "tokens" and t["completed"] == 1 for t in table)
    text = (root / "out" / "table.md").read_text()
    assert "| attention / pre-norm |" in text and "| rnn / post-norm |" in text
    assert text.count("±") == 2 and "FP8 unit-scaled, no scaling" in text


def test_rerun_skips_finished_runs(sweep, run_script):
    _, argv, _, _ = sweep
    code, printed = run_script(argv)
    assert code == 0
    assert printed.count("2 runs, 2 already done, 0 to run") == 2


def test_summariser_reports_missing_failed_and_malformed_runs(sweep, tmp_path, run_script):
    root, argv, _, _ = sweep
    spec, runs, out = tmp_path / "spec.toml", tmp_path / "runs", tmp_path / "out"
    spec.write_text(SPEC + MORE)
    shutil.copytree(root / "runs", runs)
    profile = charlm.load_profile(spec, "t")
    names = [r.name for r in name_runs(charlm.grid_configs(profile, {"standard": 3e-3, "unit": 3e-2}))]
    assert {p.name for p in (runs / "grid").iterdir() if p.is_dir()} == set(names[:2])  # the old runs keep their names
    (runs / "grid" / names[0] / RESULT_FILE).write_text("{ not json")
    saved = read_json(runs / "grid" / names[1] / RESULT_FILE)
    del saved["result"]["test"]
    (runs / "grid" / names[1] / RESULT_FILE).write_text(json.dumps(saved))
    (runs / "grid" / names[3]).mkdir()
    (runs / "grid" / names[3] / "error.txt").write_text("Traceback ...\nRuntimeError: out of memory\n")
    code, printed = run_script(["summarise", "--spec", str(spec), "--profile", "t", "--out", str(out),
                                "--runs", str(runs)])
    assert code == 1
    problems = {p["run"]: p for p in read_json(out / "results.json")["problems"]}
    expected = [("malformed", "not valid JSON"), ("malformed", "lacks the result fields ['test']"),
                ("missing", "not run yet"), ("failed", "RuntimeError: out of memory")]
    for name, (status, text) in zip(names, expected):
        assert problems[name]["status"] == status and text in problems[name]["problem"], problems[name]
        assert f"{status}: {name}: {problems[name]['problem']}" in printed
    assert "0/4 grid runs finished" in printed
    assert (out / "table.md").read_text().count("n/a") == 4


def test_summariser_flags_a_run_made_with_another_config(sweep, tmp_path, run_script):
    root, argv, _, _ = sweep
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    path = next((runs / "grid").glob(f"*/{RESULT_FILE}"))
    saved = read_json(path)
    saved["config"]["steps"] = 7
    path.write_text(json.dumps(saved))
    code, printed = run_script(["summarise", *argv[:4], "--out", str(tmp_path / "out"), "--runs", str(runs)])
    assert code == 1 and "another config than the spec's" in printed


def test_summarise_before_the_lr_sweep_finished_names_the_problem(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    code = charlm.main(["summarise", "--spec", str(spec), "--profile", "t", "--out", str(tmp_path / "o")])
    assert code == 2
    assert "lr sweep: no completed standard run yet" in capsys.readouterr().err


def test_variant_subset_runs_in_the_full_stage_directories(tmp_path):
    configs = [{"variant": v, "mixer": "attention", "norm": "pre", "seed": s, "lr": 1.0}
               for v in ("fp32-standard", "fp8-unit") for s in (0, 1)]
    seen = []

    def fake_run(config, run_dir):
        seen.append(config["variant"])
        return {"status": "completed"}

    assert charlm.run_stage(tmp_path, configs, fake_run, workers=1, variants=["fp8-unit"], log=lambda s: None)
    assert seen == ["fp8-unit", "fp8-unit"]
    assert not list(tmp_path.rglob("error.txt"))  # the temporary markers are gone
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == sorted(f"seed={s},variant=fp8-unit" for s in (0, 1))
    charlm.run_stage(tmp_path, configs, fake_run, workers=1, log=lambda s: None)
    assert seen == ["fp8-unit"] * 2 + ["fp32-standard"] * 2


def test_a_diverged_run_is_recorded_with_its_step_and_keeps_its_last_good_checkpoint(tmp_path):
    out = tmp_path / "train"
    for step, loss in ((2, 3.0), (4, 2.5)):
        append_jsonl(out / "metrics.jsonl", {"kind": "train", "step": step, "loss": loss, "skipped": 0})
    (out / "checkpoints" / "4").mkdir(parents=True)

    def fit():
        raise NonFiniteLossError("nan at step 6", 5, out / "checkpoints" / "4")

    result = charlm.run_outcome(fit, out)
    assert result["status"] == "diverged" and result["diverged_at_step"] == 6 and result["steps_done"] == 4
    assert math.isnan(result["test"]["bits"]) and result["curves"]["train"]["loss"] == [3.0, 2.5]
    assert (out / "checkpoints" / "4").is_dir()
    record = charlm.RunRecord("r", {"mixer": "a", "norm": "pre", "variant": "fp16-standard", "seed": 0},
                              "diverged", result)
    row = charlm.aggregate([record])[0]
    assert (row["diverged"], row["completed"], row["diverged_at_steps"]) == (1, 0, [6])
    assert charlm.format_cell(row) == "diverged @ step 6"


def test_window_ci_is_the_ratio_estimator_over_windows():
    key = jax.random.key(3)
    logits = jax.random.normal(key, (6, 10, 7)) * 2
    targets = jax.random.randint(jax.random.key(4), (6, 10), 0, 7)
    valid = jnp.arange(10)[None, :] < jnp.array([10, 10, 10, 10, 10, 3])[:, None]  # a short last window
    totals = charlm.window_totals(logits, targets, valid)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
    totals = {**{k: float(v) for k, v in totals.items()}, "nll": float(jnp.sum(jnp.where(valid, nll, 0))),
              "correct": 0.0, "count": float(jnp.sum(valid))}
    metrics = eval_metrics(totals)
    sums = np.asarray(jnp.sum(jnp.where(valid, nll, 0), axis=1), float)
    n = np.asarray(jnp.sum(valid, axis=1), float)
    m = sums.sum() / n.sum()
    expected = 1.959964 * math.sqrt(len(n) / (len(n) - 1) * np.sum((sums - m * n) ** 2)) / n.sum()
    assert metrics["loss"] == pytest.approx(m, rel=1e-5)
    assert charlm.window_ci(metrics, "loss") == pytest.approx(expected, rel=1e-4)


def test_seed_interval_uses_student_t():
    mean, half = charlm.seed_mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    with pytest.raises(ValueError, match="values"):
        charlm.seed_mean_ci([1.0])


def test_cells_with_several_seeds_get_a_t_interval_and_count_divergence():
    def record(seed, bits, status="completed"):
        result = {"test": {"bits": bits, "bits_ci95": 0.01}, "diverged_at_step": 9 if status == "diverged" else None}
        return charlm.RunRecord(f"s{seed}", {"mixer": "attention", "norm": "pre", "variant": "fp16-unit",
                                             "seed": seed}, status, result)

    row, = charlm.aggregate([record(0, 1.5), record(1, 1.7), record(2, 1.6), record(3, math.nan, "diverged")])
    assert row["ci_kind"] == "seeds" and row["mean"] == pytest.approx(1.6) and row["seeds"] == [0, 1, 2]
    assert row["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert (row["runs"], row["completed"], row["diverged"], row["diverged_at_steps"]) == (4, 3, 1, [9])
    assert charlm.format_cell(row) == "1.600 ± 0.248 † (1/4 diverged)"
    row, = charlm.aggregate([record(0, 1.5)])
    assert (row["ci_kind"], row["ci95"]) == ("tokens", 0.01)


def test_full_spec_has_the_papers_grid():
    profile = charlm.load_profile(charlm.SPEC_PATH, "full")
    configs = charlm.grid_configs(profile, {"standard": 1e-3, "unit": 1e-2})
    seeded = {"fp32-standard", "fp32-unit", "fp16-standard", "fp16-unit", "fp8-unit"}  # the claims' variants
    sharp = {v for v in charlm.VARIANTS if v.endswith("-attn32")}  # attention models only
    assert len(configs) == 9 * 6 + len(seeded) * 2 + len(sharp) * 2
    cells = {}
    for c in configs:
        cells.setdefault((c["mixer"], c["norm"], c["variant"]), set()).add(c["seed"])
    assert len(cells) == 9 * 6 + len(sharp) * 2 and set(charlm.VARIANTS) == {v for _, _, v in cells}
    assert {m for m, _, v in cells if v in sharp} == {"attention"}
    assert all(seeds == ({0, 1, 2} if (m, n, v in seeded) == ("attention", "pre", True) else {0})
               for (m, n, v), seeds in cells.items())
    # The paper's batch and FFN ratio; sequence 128 (not 256), hidden 64 and depth 4 for time (see the spec).
    assert (profile.train["seq_len"], profile.train["batch_size"], profile.train["ffn_ratio"]) == (128, 8, 4.0)
    assert charlm.load_profile(charlm.SPEC_PATH, "quick").train["steps"] < profile.train["steps"]


@pytest.mark.parametrize("edit, message", [
    ("[[t.grid]]\nvariant = ['fp64']\nmixer = ['attention']\nnorm = ['pre']\nseed = [0]\n", "unknown variants"),
    ("[[t.grid]]\nvariant = ['fp32-unit']\nmixer = ['attention']\n", "exactly the keys"),
])
def test_bad_specs_raise_naming_the_problem(tmp_path, edit, message):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC + edit)
    with pytest.raises(ValueError, match=message):
        charlm.load_profile(spec, "t")
    with pytest.raises(ValueError, match="no profile 'nope'"):
        charlm.load_profile(spec, "nope")


def test_variants_map_to_the_precision_recipes():
    cli = charlm.make_cli()
    for name, variant in charlm.VARIANTS.items():
        args = charlm.apply_variant(cli.parse(["--variant", name]))
        policy, loss_scale = charlm.numerics(args)
        assert args.unit_scaled == variant.unit_scaled
        assert policy.compute_dtype == ("float16" if name.startswith("fp16") else "float32")
        assert (policy.matmul_fwd is not None) == name.startswith("fp8")
        assert policy.scaling == ("delayed" if name == "fp8-standard-delayed" else "none")
        assert loss_scale.loss_scale == {"fp16-standard-static": 2048.0, "fp16-standard-dynamic": 2.0**15}.get(name, 1.0)


def test_help_lists_the_options(capsys):
    for argv, options in ((["--help"], ("--quick", "--out", "--runs", "--workers", "--variants", "--stage")),
                          (["train", "--help"], ("--variant", "--mixer", "--norm", "--precision", "--scaling"))):
        with pytest.raises(SystemExit) as done:
            charlm.main(argv)
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert all(o in text for o in options), text
