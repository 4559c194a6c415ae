"""experiments.charlm: the two-stage sweep end to end on a reduced grid, the result files it documents,
the summariser's report of missing / failed / malformed runs, divergence records and the statistics."""

import json
import math
import shutil
from pathlib import Path

import pytest

from experiments import charlm, charlm_run
from experiments.results import read_json
from experiments.runner import RESULT_FILE, name_runs
from experiments.sweep_cli import sweep_parser, sweep_paths
from experiments.variants import VARIANTS

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
    assert set(results) == {"experiment", "profile", "settings", "row_settings", "variants", "learning_rates",
                            "lr_sweep", "runs", "table", "problems", "ci", "schema"}
    assert results["row_settings"] == {}  # every row at the profile's settings
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


def test_full_spec_has_the_papers_grid():
    profile = charlm.load_profile(charlm.SPEC_PATH, "full")
    configs = charlm.grid_configs(profile, {"standard": 1e-3, "unit": 1e-2})
    sharp = {v for v in VARIANTS if v.endswith("-attn32")} - {"fp16p-unit-attn32"}  # attention post-norm only
    plain = set(VARIANTS) - sharp - {"fp16p-unit-attn32"}
    cells = {}
    for c in configs:
        cells.setdefault((c["mixer"], c["norm"], c["variant"]), set()).add(c["seed"])
    # At the paper's model: FP32, the paper's FP16 regime and FP8, not the mixed-precision FP16 columns.
    paper_model = {"fp32-standard", "fp32-unit", "fp8-standard", "fp8-standard-delayed", "fp8-unit"} | {
        v for v in plain if v.startswith("fp16p-")}
    assert len(configs) == len(cells) == 5 * len(plain) + len(sharp) + len(paper_model)
    assert all(s == {0} for s in cells.values())
    assert {v for m, n, v in cells if (m, n) == ("attention", "pre")} == paper_model
    assert {v for _, _, v in cells} == plain | sharp and {(m, n) for m, n, v in cells if v in sharp} == {
        ("attention", "post")}
    # The paper's model (hidden 128, depth 8, sequence 256) where its claims rest, attention pre-norm; the
    # paper's batch and FFN ratio elsewhere with hidden 64, depth 4 and sequence 128 for time (see the spec).
    paper = [c for c in configs if (c["mixer"], c["norm"]) == ("attention", "pre")]
    assert {(c["d_model"], c["depth"], c["seq_len"]) for c in paper} == {(128, 8, 256)}
    assert (profile.train["seq_len"], profile.train["batch_size"], profile.train["ffn_ratio"]) == (128, 8, 4.0)
    assert charlm.load_profile(charlm.SPEC_PATH, "quick").train["steps"] < profile.train["steps"]


def test_row_settings_name_the_budget_a_row_has_of_its_own():
    profile = charlm.load_profile(charlm.SPEC_PATH, "full")
    rows = charlm.row_settings(charlm.grid_configs(profile, {"standard": 1e-3, "unit": 1e-2}), profile.train)
    assert list(rows) == ["attention/pre"]
    assert {k: rows["attention/pre"][k] for k in ("d_model", "depth", "seq_len", "steps")} == {
        "d_model": 128, "depth": 8, "seq_len": 256, "steps": 2000}
    # An option the row's runs disagree on is not the row's.
    mixed = [{"mixer": "conv", "norm": "pre", "steps": s, "depth": 2} for s in (10, 20)]
    assert charlm.row_settings(mixed, {"steps": 10, "depth": 4}) == {"conv/pre": {"depth": 2}}


@pytest.mark.parametrize("edit, message", [
    ("[[t.grid]]\nvariant = ['fp64']\nmixer = ['attention']\nnorm = ['pre']\nseed = [0]\n", "unknown variants"),
    ("[[t.grid]]\nvariant = ['fp32-unit']\nmixer = ['attention']\n", "exactly the keys"),
])
def test_bad_specs_raise_naming_the_problem(tmp_path, edit, message):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC + edit)
    with pytest.raises(ValueError, match=message):
        charlm.load_profile(spec, "t")
    with pytest.raises(ValueError, match="no profile 'nope'"):  # an InputError
        charlm.load_profile(spec, "nope")


def test_help_lists_the_options_and_every_command(capsys):
    for argv, options in ((["--help"], ("usage: python -m experiments.charlm [run | summarise | train]", "--quick",
                                        "--out", "--runs", "--workers", "--variants", "--stage", "--fresh", "--data")),
                          (["train", "--help"], ("--variant", "--mixer", "--norm", "--precision", "--scaling",
                                                 "--fresh", "--data", "--system"))):
        with pytest.raises(SystemExit) as done:
            charlm.main(argv)
        assert done.value.code == 0
        text = capsys.readouterr().out
        assert all(o in text for o in options), text


@pytest.mark.parametrize("argv, message", [
    (["--spec", "BAD"], "spec: BAD is not valid TOML"),
    (["--out", "FILE"], "--out FILE: is a file"),
    (["--runs", "FILE/runs"], "--runs FILE/runs: lies under FILE, which is a file"),
    (["--variants", "fp64"], "--variants names unknown variants ['fp64']"),
    (["--data", "no-such-corpus.txt"], "--data no-such-corpus.txt: no such file or directory"),
])
def test_bad_input_ends_in_one_line_before_any_run(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("kept")
    (tmp_path / "BAD").write_text("[t.train\nsteps = 1\n")
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    argv = [a.replace("FILE", str(tmp_path / "FILE")).replace("BAD", str(tmp_path / "BAD")) for a in argv]
    options = {"--spec": str(spec), "--profile": "t", "--out": str(tmp_path / "out"),
               **dict(zip(argv[::2], argv[1::2]))}
    for command in ([], ["summarise"]):
        assert charlm.main([*command, *[x for kv in options.items() for x in kv]]) == 2
        err = capsys.readouterr().err
        expected = message.replace("FILE", str(tmp_path / "FILE")).replace("BAD", str(tmp_path / "BAD"))
        assert err.startswith("error: ") and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and (tmp_path / "FILE").read_text() == "kept"


def test_quick_writes_outside_the_repository_by_default(tmp_path):
    repo = Path(charlm.__file__).resolve().parents[1]
    paths = sweep_paths(charlm.SCRIPT, sweep_parser(charlm.SCRIPT).parse_args(["--quick"]))
    assert not paths.out.resolve().is_relative_to(repo) and paths.profile.name == "quick"
    train_out = charlm_run.make_cli().parse(["--quick"]).out
    assert not Path(train_out).resolve().is_relative_to(repo)
