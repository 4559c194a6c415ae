"""Grid expansion, run names, restartable runs, failures and the summary of experiments.sweep."""

import csv
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments import runner, sweep
from experiments.results import read_json

REPO = Path(__file__).resolve().parents[2]
GRID = {"lr": [0.1, 0.01], "width": [8, 16, 32], "steps": 5}

# Run functions for worker processes live in a module the children can import by name.
WORKER_MODULE = textwrap.dedent("""
    import os, time
    from pathlib import Path

    def run(config, out_dir):
        Path(out_dir, "calls").write_text(str(os.getpid()))
        with open(Path(out_dir).parent / "calls.log", "a") as f:
            f.write(Path(out_dir).name + "\\n")
        time.sleep(config.get("sleep", 0.0))
        if config["lr"] == 0.01 and config["width"] == 16:
            raise RuntimeError("diverged")
        return {"loss": config["lr"] * config["width"], "pid": os.getpid()}

    def run_or_die(config, out_dir):
        if config["width"] == 8 and config["lr"] == 0.1:
            os._exit(3)  # the worker process dies without a word
        return {"ok": True}

    def ok(config, out_dir):
        return {"ok": True}
""")


@pytest.fixture
def worker_module(tmp_path, monkeypatch):
    (tmp_path / "sweep_workers.py").write_text(WORKER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    return "sweep_workers"


def recording_run_fn(calls):
    def run(config, out_dir):
        calls.append(out_dir.name)
        if config.get("lr") == 0.01 and config.get("width") == 16:
            raise RuntimeError("diverged")
        return {"loss": config["lr"] * config["width"]}
    return run


def quiet(msg):
    pass


# ---------------------------------------------------------------------------------------------
# Specs and names
# ---------------------------------------------------------------------------------------------

def test_expand_grid_product_and_union():
    configs = runner.expand_grid(GRID)
    assert len(configs) == 6 and configs[0] == {"lr": 0.1, "width": 8, "steps": 5}
    assert configs[-1] == {"lr": 0.01, "width": 32, "steps": 5}
    union = runner.expand_grid([{"a": [1, 2]}, {"a": 3, "b": ["x", "y"]}])
    assert union == [{"a": 1}, {"a": 2}, {"a": 3, "b": "x"}, {"a": 3, "b": "y"}]
    assert runner.expand_grid({"betas": [[0.9, 0.95]]}) == [{"betas": [0.9, 0.95]}]  # a list-valued setting


@pytest.mark.parametrize("spec, error, match", [({"a": []}, ValueError, "empty"), (3, TypeError, "spec"),
                                                ([{"a": 1}, 2], TypeError, r"spec\[1\]"),
                                                ({1: [2]}, TypeError, "keys"), ([], ValueError, "no runs")])
def test_expand_grid_rejects_bad_specs(spec, error, match):
    with pytest.raises(error, match=match):
        runner.expand_grid(spec)


def test_names_use_varying_keys_and_are_stable():
    runs = runner.name_runs(runner.expand_grid(GRID))
    assert [r.name for r in runs][:2] == ["lr=0.1,width=8", "lr=0.1,width=16"]
    reordered = runner.name_runs(runner.expand_grid({"steps": 5, "width": [8, 16, 32], "lr": [0.1, 0.01]}))
    assert {r.name: r.config for r in runs} == {r.name: r.config for r in reordered}
    assert [r.name for r in runner.name_runs([{"a": 1}])] == ["run"]


def test_names_unique_after_sanitising_and_duplicates_rejected():
    runs = runner.name_runs([{"opt": "adam/w"}, {"opt": "adam:w"}, {"opt": {"name": "sgd"}}])
    names = [r.name for r in runs]
    assert len(set(names)) == 3 and all("/" not in n and ":" not in n for n in names)
    assert names[0].startswith("opt=adam_w-") and names == [r.name for r in runner.name_runs([r.config for r in runs])]
    with pytest.raises(ValueError, match="more than once"):
        runner.name_runs([{"a": 1, "b": 2}, {"b": 2, "a": 1}])
    with pytest.raises(TypeError, match="JSON"):
        runner.name_runs([{"a": object()}])


def test_load_spec_toml_and_json(tmp_path):
    (tmp_path / "grid.toml").write_text('lr = [0.1, 0.01]\nwidth = [8, 16, 32]\nsteps = 5\n')
    assert runner.load_spec(tmp_path / "grid.toml") == GRID
    (tmp_path / "runs.toml").write_text('[[runs]]\na = 1\n\n[[runs]]\na = 2\nb = "x"\n')
    assert runner.load_spec(tmp_path / "runs.toml") == [{"a": 1}, {"a": 2, "b": "x"}]
    (tmp_path / "grid.json").write_text(json.dumps(GRID))
    assert runner.load_spec(tmp_path / "grid.json") == GRID
    with pytest.raises(ValueError, match="toml or .json"):
        runner.load_spec(tmp_path / "grid.yaml")


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

def test_failing_run_recorded_and_sweep_goes_on(tmp_path):
    calls, lines = [], []
    report = runner.run_sweep(GRID, recording_run_fn(calls), tmp_path, log=lines.append)
    assert report.total == 6 and len(calls) == 6
    assert report.failed == ("lr=0.01,width=16",) and len(report.completed) == 5 and not report.ok
    failed = tmp_path / "lr=0.01,width=16"
    assert "RuntimeError: diverged" in (failed / "error.txt").read_text() and not (failed / "result.json").exists()
    record = read_json(tmp_path / "lr=0.1,width=32" / "result.json")
    assert record["result"] == {"loss": pytest.approx(3.2)} and record["config"]["width"] == 32
    assert record["metadata"]["packages"]["jax"] and read_json(tmp_path / "sweep.json")["runs"]
    assert lines[-1].startswith("[6/6] done lr=0.01,width=32") and "1 failed" in lines[-1] and "ETA" in lines[-1]


def test_finished_runs_skipped_and_failed_retried(tmp_path):
    runner.run_sweep(GRID, recording_run_fn([]), tmp_path, log=quiet)
    calls = []
    report = runner.run_sweep(GRID, recording_run_fn(calls), tmp_path, log=quiet)
    assert calls == ["lr=0.01,width=16"] and len(report.skipped) == 5
    calls.clear()
    report = runner.run_sweep(GRID, recording_run_fn(calls), tmp_path, retry_failed=False, log=quiet)
    assert calls == [] and len(report.skipped) == 6


def test_interrupted_sweep_resumes_without_rerunning(tmp_path):
    calls = []

    def interrupted(config, out_dir):
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user hits Ctrl-C during the fourth run
        calls.append(out_dir.name)
        return {"ok": True}

    with pytest.raises(KeyboardInterrupt):
        runner.run_sweep(GRID, interrupted, tmp_path, log=quiet)
    fourth = tmp_path / "lr=0.01,width=8"
    assert not (fourth / "result.json").exists() and not (fourth / "error.txt").exists()
    finished = {d: (tmp_path / d / "result.json").read_bytes() for d in calls}
    rerun = []
    report = runner.run_sweep(GRID, recording_run_fn(rerun), tmp_path, log=quiet)
    assert set(rerun).isdisjoint(finished) and len(rerun) == 3 and report.skipped == tuple(calls)
    assert all((tmp_path / d / "result.json").read_bytes() == b for d, b in finished.items())
    assert all((tmp_path / r.name / "result.json").exists() or r.name in report.failed
               for r in runner.name_runs(runner.expand_grid(GRID)))


def sweep_command(tmp_path: Path, worker_module: str, spec_text: str, *options: str) -> tuple[list, dict, Path]:
    """The command line of ``experiments.sweep run`` over ``spec_text`` with ``worker_module:run``, its
    environment (the worker module importable) and its output directory."""
    spec = tmp_path / "spec.toml"
    spec.write_text(spec_text)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    cmd = [sys.executable, "-m", "experiments.sweep", "run", str(spec), "--fn", f"{worker_module}:run",
           "--out", str(out), *options]
    return cmd, env, out


def test_killed_sweep_process_restarts_losing_no_finished_run(tmp_path, worker_module):
    cmd, env, out = sweep_command(tmp_path, worker_module, 'lr = [0.1, 0.01]\nwidth = [8, 16, 32]\nsleep = 0.4\n')
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*/result.json"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no clean-up at all
        proc.wait()
    finished = {p.parent.name: p.read_bytes() for p in out.glob("*/result.json")}
    assert 2 <= len(finished) < 6
    first_calls = (out / "calls.log").read_text().split()

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # one run fails by design
    assert "failed lr=0.01,width=16" in proc.stdout and "ETA" in proc.stdout
    second_calls = (out / "calls.log").read_text().split()[len(first_calls):]
    assert set(second_calls).isdisjoint(finished) and len(second_calls) == 6 - len(finished)
    assert all((out / n / "result.json").read_bytes() == b for n, b in finished.items())
    assert len(list(out.glob("*/result.json"))) == 5 and (out / "lr=0.01,width=16" / "error.txt").exists()


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an orphan's zombie may wait for a reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_workers_of_a_killed_sweep_stop_instead_of_running_on(tmp_path, worker_module):
    cmd, env, out = sweep_command(tmp_path, worker_module, 'lr = [0.1]\nwidth = [8, 32]\nsleep = 600.0\n',
                                  "--workers", "2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("*/calls"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = [int(p.read_text()) for p in out.glob("*/calls")]
        assert len(workers) == 2 and all(_running(pid) for pid in workers)
    finally:
        proc.kill()  # SIGKILL: the sweep process cannot tell its workers
        proc.wait()
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(pid) for pid in workers)


def test_parallel_workers_each_run_in_a_fresh_process(tmp_path, worker_module):
    lines = []
    report = runner.run_sweep(GRID, f"{worker_module}:run", tmp_path, workers=2, log=lines.append)
    assert len(report.completed) == 5 and report.failed == ("lr=0.01,width=16",)
    pids = {(tmp_path / r / "calls").read_text() for r in report.completed + report.failed}
    assert len(pids) == 6 and str(os.getpid()) not in pids
    assert sorted(ln.split()[0] for ln in lines[1:]) == sorted(f"[{i}/6]" for i in range(1, 7))


def test_dead_worker_recorded_and_sweep_goes_on(tmp_path, worker_module):
    report = runner.run_sweep(GRID, f"{worker_module}:run_or_die", tmp_path, workers=2, log=quiet)
    assert "lr=0.1,width=8" in report.failed
    assert "worker process" in (tmp_path / "lr=0.1,width=8" / "error.txt").read_text()
    assert len(report.completed) + len(report.failed) == 6 and len(report.completed) >= 4
    rerun = runner.run_sweep(GRID, f"{worker_module}:ok", tmp_path, workers=2, log=quiet)
    assert rerun.ok and len(list(tmp_path.glob("*/result.json"))) == 6


def test_bad_run_fn_and_workers_rejected(tmp_path):
    with pytest.raises(TypeError, match="module-level"):
        runner.run_sweep(GRID, lambda c, d: {}, tmp_path, workers=2, log=quiet)
    with pytest.raises(ValueError, match="workers"):
        runner.run_sweep(GRID, "x:y", tmp_path, workers=0, log=quiet)
    report = runner.run_sweep({"a": 1}, lambda c, d: 3.0, tmp_path, log=quiet)
    assert report.failed == ("run",) and "must return a dict" in (tmp_path / "run" / "error.txt").read_text()


# ---------------------------------------------------------------------------------------------
# Summary and CLI
# ---------------------------------------------------------------------------------------------

def test_summarise_writes_csv_table(tmp_path):
    runner.run_sweep(GRID, recording_run_fn([]), tmp_path, log=quiet)
    rows = runner.summarise(tmp_path)
    assert len(rows) == 6
    with open(tmp_path / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0])[:3] == ["run", "status", "seconds"] and list(table[0])[-1] == "error"
    by_run = {r["run"]: r for r in table}
    assert by_run["lr=0.1,width=8"]["result.loss"] == "0.8" and by_run["lr=0.1,width=8"]["config.steps"] == "5"
    assert by_run["lr=0.01,width=16"]["status"] == "failed"
    assert by_run["lr=0.01,width=16"]["error"] == "RuntimeError: diverged"
    with pytest.raises(ValueError, match="out_dir"):
        runner.summarise(tmp_path / "missing")


def test_cli_help_and_list(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep.main(["--help"])
    assert exit_info.value.code == 0 and "summarise" in capsys.readouterr().out
    (tmp_path / "grid.json").write_text(json.dumps(GRID))
    assert sweep.main(["list", str(tmp_path / "grid.json")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == 'lr=0.1,width=8\t{"lr": 0.1, "width": 8, "steps": 5}'


@pytest.mark.parametrize("spec_text, name, message", [
    ("lr = [0.1, 0.01\nwidth = 8\n", "spec.toml", "is not valid TOML"),  # a bracket left open
    ('{"lr": [0.1,', "spec.json", "is not valid JSON"),
    ("lr = []\n", "spec.toml", "is an empty list, which gives no runs"),
    (None, "missing.toml", "missing.toml is not a file"),
])
def test_a_malformed_spec_ends_in_one_line_and_exit_2(tmp_path, capsys, spec_text, name, message):
    spec = tmp_path / name
    if spec_text is not None:
        spec.write_text(spec_text)
    for argv in (["run", str(spec), "--fn", "experiments.gpt:run", "--out", str(tmp_path / "out")],
                 ["list", str(spec)]):
        assert sweep.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: spec") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, message", [("--fn", "--fn no_such_module:run: No module named"),
                                             ("--out", "is a file")])
def test_a_bad_run_function_or_output_ends_in_one_line_before_any_run(tmp_path, capsys, option, message):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(GRID))
    (tmp_path / "file").write_text("")
    values = {"--fn": "experiments.gpt:run", "--out": str(tmp_path / "out")}
    values[option] = {"--fn": "no_such_module:run", "--out": str(tmp_path / "file")}[option]
    assert sweep.main(["run", str(spec), *[x for kv in values.items() for x in kv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists() and (tmp_path / "file").read_text() == ""


def test_fresh_runs_the_spec_again_from_the_start(tmp_path, worker_module, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"lr": 0.1, "width": [8, 32]}))
    argv = ["run", str(spec), "--fn", f"{worker_module}:ok", "--out", str(tmp_path / "out")]
    assert sweep.main(argv) == 0 and sweep.main(argv) == 0
    assert "2 runs, 2 already done, 0 to run" in capsys.readouterr().out
    assert sweep.main([*argv, "--fresh"]) == 0
    assert "2 runs, 0 already done, 2 to run" in capsys.readouterr().out
