"""Atomic JSON, JSONL metrics with torn tails, and run metadata of experiments.results."""

import json
import math
import os
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments import results

REPO = Path(__file__).resolve().parents[2]


def test_write_json_round_trip_with_numpy_and_nan(tmp_path):
    obj = {"loss": np.float32(1.5), "steps": np.int64(3), "curve": np.arange(3), "nan": float("nan"),
           "path": tmp_path, "nested": {"x": [1, 2]}}
    path = results.write_json(tmp_path / "sub" / "r.json", obj)
    back = results.read_json(path)
    assert back["loss"] == 1.5 and back["steps"] == 3 and back["curve"] == [0, 1, 2]
    assert math.isnan(back["nan"]) and back["path"] == str(tmp_path) and back["nested"] == {"x": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temp file left behind


@pytest.mark.parametrize("crash_in", ["fsync", "replace"])
def test_crash_mid_write_leaves_old_file(tmp_path, monkeypatch, crash_in):
    path = results.write_json(tmp_path / "r.json", {"version": 1})

    def crash(*args):
        raise OSError("simulated crash")

    monkeypatch.setattr(results.os, crash_in, crash)
    with pytest.raises(OSError, match="simulated crash"):
        results.write_json(path, {"version": 2, "payload": "x" * 100_000})
    monkeypatch.undo()
    assert results.read_json(path) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_unserialisable_object_leaves_old_file(tmp_path):
    path = results.write_json(tmp_path / "r.json", {"version": 1})
    with pytest.raises(TypeError, match="object"):
        results.write_json(path, {"version": 2, "bad": object()})
    assert results.read_json(path) == {"version": 1}


def test_killed_writer_never_leaves_partial_file(tmp_path):
    """SIGKILL a process rewriting a 2 MB JSON file in a loop: the file is always one whole version."""
    path = tmp_path / "r.json"
    script = textwrap.dedent(f"""
        import sys
        from experiments.results import write_json
        write_json({str(path)!r}, {{"version": 0, "payload": "a" * 2_000_000}})
        print("ready", flush=True)
        for i in range(1, 10**6):
            write_json({str(path)!r}, {{"version": i, "payload": "ab"[i % 2] * 2_000_000}})
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=REPO, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while results.read_json(path)["version"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # reading while it writes is safe too: each read sees a whole version
    finally:
        proc.kill()
        proc.wait()
    record = results.read_json(path)
    assert record["version"] >= 1  # the kill landed while it was rewriting
    assert record["payload"] == "ab"[record["version"] % 2] * 2_000_000


def test_jsonl_round_trip(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in range(3):
        results.append_jsonl(path, {"step": step, "loss": np.float32(1 / (step + 1))})
        assert len(results.read_jsonl(path)) == step + 1  # flushed: readable while the run goes on
    assert path.read_text().count("\n") == 3
    with pytest.raises(TypeError, match="record"):
        results.append_jsonl(path, [1, 2])


def test_torn_last_line_dropped_with_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in range(3):
        results.append_jsonl(path, {"step": step})
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "lo')  # a crash mid-append
    with pytest.warns(results.TruncatedRecordWarning, match=":4: dropped a torn last record"):
        records = results.read_jsonl(path)
    assert records == [{"step": 0}, {"step": 1}, {"step": 2}]


def test_append_after_torn_tail_repairs_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    results.append_jsonl(path, {"step": 0})
    with open(path, "ab") as f:
        f.write(b'{"step": 1, "lo')
    with pytest.warns(results.TruncatedRecordWarning, match="torn last record"):
        results.append_jsonl(path, {"step": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert results.read_jsonl(path) == [{"step": 0}, {"step": 1}]


def test_whole_record_without_newline_is_kept(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": 1}')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert results.read_jsonl(path) == [{"step": 0}, {"step": 1}]
        results.append_jsonl(path, {"step": 2})
    assert path.read_bytes() == b'{"step": 0}\n{"step": 1}\n{"step": 2}\n'


def test_corrupt_middle_line_raises(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"step": 0}\n{"step": \n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: corrupt record in the middle"):
        results.read_jsonl(path)


def test_run_metadata(tmp_path):
    meta = results.run_metadata()
    json.dumps(meta)  # plain JSON
    assert abs(meta["unix_time"] - time.time()) < 60
    assert meta["python"] == ".".join(map(str, sys.version_info[:3]))
    assert meta["packages"]["jax"] == jax.__version__ and meta["packages"]["numpy"] == np.__version__
    assert meta["jax"]["backend"] == jax.default_backend() and len(meta["jax"]["devices"]) >= 1
    git = meta["git"]
    if (REPO / ".git").exists():
        assert len(git["revision"]) == 40 and isinstance(git["dirty"], bool)
    assert results.git_state(tmp_path) is None  # not a repository
