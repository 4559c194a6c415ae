"""The sweep runner: a grid of configs, one directory per run, restartable, one line of progress per run.

A spec is a dict whose list values are grid axes (the cartesian product is taken, other values are
fixed; write a list-valued setting as ``[[0.9, 0.95]]``), or a list of such dicts (their union).
Files may be TOML (a table, or a ``[[runs]]`` array of tables) or JSON.

Each run gets ``out_dir/<name>/`` where ``<name>`` is ``key=value,...`` over the keys that vary
across the sweep, sorted, e.g. ``lr=0.001,width=128`` (a short hash is appended where sanitising
would make names collide; adding a new varying key to a grid renames its runs). The runner writes
``config.json``, calls ``run_fn(config, run_dir) -> dict`` and then writes ``result.json``
atomically; a run that raises gets ``error.txt`` (its traceback) instead and the sweep goes on.
Runs whose ``result.json`` exists are skipped, so a killed sweep restarted with the same spec loses
no finished run; failed runs are retried on restart unless ``retry_failed=False``.

``workers > 1`` runs that many runs at once, each in a fresh spawned process (JAX state never leaks
between runs); ``run_fn`` must then be a module-level function or a ``"module:function"`` string.
Its command line is :mod:`experiments.sweep` (``python -m experiments.sweep {run,list,summarise} --help``).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import importlib
import itertools
import json
import multiprocessing
import os
import pickle
import re
import shutil
import signal
import threading
import time
import tomllib
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from experiments.results import dumps, read_json, run_metadata, write_csv, write_json, write_text

RunFn = Union[Callable[[dict, Path], dict], str]
Spec = Union[Mapping[str, Any], Sequence[Mapping[str, Any]]]
RESULT_FILE, ERROR_FILE, CONFIG_FILE = "result.json", "error.txt", "config.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of a sweep: its directory name and its config."""

    name: str
    config: dict


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """Names of the runs finished now, skipped as already done, and failed, out of ``total``."""

    total: int
    completed: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failed


# ----------------------------------------------------------------------------------------------
# Specs and names
# ----------------------------------------------------------------------------------------------

def _expand_one(grid: Mapping[str, Any], where: str) -> list[dict]:
    if not isinstance(grid, Mapping):
        raise TypeError(f"{where} must be a dict of settings, got {type(grid).__name__}")
    axes = []
    for key, value in grid.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: keys must be strings, got {key!r}")
        values = list(value) if isinstance(value, (list, tuple)) else [value]
        if not values:
            raise ValueError(f"{where}[{key!r}] is an empty list, which gives no runs")
        axes.append([(key, v) for v in values])
    return [dict(choice) for choice in itertools.product(*axes)]


def expand_grid(spec: Spec) -> list[dict]:
    """All configs of ``spec``: the product of a dict's list values, or the union over a list of dicts."""
    if isinstance(spec, Mapping):
        configs = _expand_one(spec, "spec")
    elif isinstance(spec, (list, tuple)):
        configs = [c for i, grid in enumerate(spec) for c in _expand_one(grid, f"spec[{i}]")]
    else:
        raise TypeError(f"spec must be a dict of lists or a list of dicts, got {type(spec).__name__}")
    if not configs:
        raise ValueError("spec gives no runs")
    return configs


def _canonical(value: Any) -> str:
    """Key-order independent JSON, so equal configs give equal names and hashes."""
    try:
        return json.dumps(json.loads(dumps(value)), sort_keys=True)
    except TypeError as err:
        raise TypeError(f"spec: every setting must be JSON serialisable: {err}") from err


def _short_hash(value: Any) -> str:
    return hashlib.sha1(_canonical(value).encode()).hexdigest()[:8]


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (int, float, str)):
        text = repr(value) if isinstance(value, float) else str(value)
    else:
        return _short_hash(value)
    return re.sub(r"[^A-Za-z0-9._+\-]", "_", text)


def name_runs(configs: Sequence[dict]) -> list[Run]:
    """Stable, unique directory names ``key=value,...`` over the keys whose values differ."""
    canon = [_canonical(c) for c in configs]
    if len(set(canon)) != len(canon):
        dupe = next(c for c in canon if canon.count(c) > 1)
        raise ValueError(f"spec: the config {dupe} appears more than once; add a key (e.g. seed) to tell them apart")
    keys = sorted({k for c in configs for k in c})
    varying = [k for k in keys if len({_canonical(c[k]) if k in c else "<missing>" for c in configs}) > 1]
    names = [",".join(f"{re.sub(r'[^A-Za-z0-9._+-]', '_', k)}={_format_value(c[k])}" for k in varying if k in c)
             or "run" for c in configs]
    # Sanitising or truncation can merge names; a config hash keeps them apart and stable.
    counts = {n: names.count(n) for n in names}
    names = [f"{n[:100]}-{_short_hash(c)}" if counts[n] > 1 or len(n) > 120 else n for n, c in zip(names, configs)]
    return [Run(n, dict(c)) for n, c in zip(names, configs)]


def load_spec(path: str | Path) -> Spec:
    """A spec from a ``.toml`` file (a table, or ``[[runs]]`` tables for a list) or a ``.json`` file;
    ValueError naming the file when it is missing or not valid TOML / JSON."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ValueError(f"spec: spec files must end in .toml or .json, got {path.name!r}")
    if not path.is_file():
        raise ValueError(f"spec: {path} is not a file")
    text = path.read_text(encoding="utf-8")
    try:
        spec = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except ValueError as err:  # tomllib.TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise ValueError(f"spec: {path} is not valid {path.suffix[1:].upper()}: {err}") from None
    if path.suffix == ".toml" and list(spec) == ["runs"] and isinstance(spec["runs"], list):
        return spec["runs"]
    return spec


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------

def resolve_run_fn(run_fn: RunFn) -> Callable[[dict, Path], dict]:
    """The function of ``run_fn``: itself if callable, else the function a ``"module:function"`` string
    names (ImportError if the module is missing, ValueError if it names no function)."""
    if callable(run_fn):
        return run_fn
    if not isinstance(run_fn, str) or run_fn.count(":") != 1:
        raise TypeError(f"run_fn must be a callable or a 'module:function' string, got {run_fn!r}")
    module, name = run_fn.split(":")
    fn = getattr(importlib.import_module(module), name, None)
    if not callable(fn):
        raise ValueError(f"run_fn: {run_fn!r} names no function")
    return fn


def _describe(run_fn: RunFn) -> str:
    if isinstance(run_fn, str):
        return run_fn
    return f"{getattr(run_fn, '__module__', '?')}:{getattr(run_fn, '__qualname__', repr(run_fn))}"


def _execute(run_fn: RunFn, run: Run, run_dir: Path, metadata: dict) -> tuple[str, float, str]:
    """Run one config; ``result.json`` is written only after ``run_fn`` returns a dict."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_FILE).unlink(missing_ok=True)
    write_json(run_dir / CONFIG_FILE, run.config)
    start = time.perf_counter()
    try:
        result = resolve_run_fn(run_fn)(dict(run.config), run_dir)
        if not isinstance(result, dict):
            raise TypeError(f"run_fn must return a dict, got {type(result).__name__}")
        seconds = time.perf_counter() - start
        write_json(run_dir / RESULT_FILE, {"run": run.name, "config": run.config, "result": result,
                                           "seconds": seconds, "metadata": metadata})
        return "done", seconds, ""
    except Exception as err:  # recorded, and the sweep goes on; KeyboardInterrupt still stops it
        write_text(run_dir / ERROR_FILE, traceback.format_exc())
        return "failed", time.perf_counter() - start, f"{type(err).__name__}: {err}"


def remove_runs(out_dir: str | Path, configs: Sequence[dict],
                select: Callable[[dict], bool] = lambda config: True) -> list[str]:
    """Delete the directories under ``out_dir`` of the runs of ``configs`` (named as :func:`run_sweep`
    names the whole list) whose config ``select`` picks, so that a sweep starts them afresh; the names
    of those that existed."""
    removed = []
    for run in name_runs(list(configs)):
        if select(run.config) and (Path(out_dir) / run.name).is_dir():
            shutil.rmtree(Path(out_dir) / run.name)
            removed.append(run.name)
    return removed


def _format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class _Progress:
    """Prints ``[done/total]`` with an ETA from the mean duration of the runs finished so far."""

    def __init__(self, total: int, done: int, workers: int, log: Callable[[str], None]):
        self.total, self.done, self.workers, self.log = total, done, workers, log
        self.durations: list[float] = []
        self.failed = 0

    def update(self, name: str, status: str, seconds: float, error: str) -> None:
        self.done += 1
        self.failed += status == "failed"
        self.durations.append(seconds)
        left = self.total - self.done
        eta = sum(self.durations) / len(self.durations) * -(-left // self.workers) if left else 0.0
        note = f": {error}" if error else ""
        self.log(f"[{self.done}/{self.total}] {status} {name} in {seconds:.1f}s{note} | "
                 f"{self.failed} failed | ETA {_format_seconds(eta)}")


def run_sweep(spec: Spec, run_fn: RunFn, out_dir: str | Path, *, workers: int = 1, retry_failed: bool = True,
              log: Callable[[str], None] = print) -> SweepReport:
    """Run every config of ``spec`` that has no ``result.json`` under ``out_dir`` yet."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if workers > 1 and not isinstance(run_fn, str):
        try:
            pickle.dumps(run_fn)
        except Exception as err:
            raise TypeError(f"run_fn: with workers > 1 it must be a module-level function or a "
                            f"'module:function' string ({err})") from err
    out_dir = Path(out_dir)
    runs = name_runs(expand_grid(spec))
    metadata = run_metadata()
    write_json(out_dir / "sweep.json", {"spec": spec, "run_fn": _describe(run_fn),
                                        "runs": {r.name: r.config for r in runs}, "metadata": metadata})
    skipped = [r for r in runs if (out_dir / r.name / RESULT_FILE).exists()
               or (not retry_failed and (out_dir / r.name / ERROR_FILE).exists())]
    skipped_names = {r.name for r in skipped}
    todo = [r for r in runs if r.name not in skipped_names]
    log(f"sweep {out_dir}: {len(runs)} runs, {len(skipped)} already done, {len(todo)} to run, {workers} worker(s)")
    progress = _Progress(len(runs), len(skipped), min(workers, max(len(todo), 1)), log)
    outcomes: dict[str, str] = {}
    if workers == 1:
        for run in todo:
            status, seconds, error = _execute(run_fn, run, out_dir / run.name, metadata)
            outcomes[run.name] = status
            progress.update(run.name, status, seconds, error)
    else:
        _run_parallel(todo, run_fn, out_dir, metadata, workers, progress, outcomes)
    return SweepReport(len(runs), tuple(n for n, s in outcomes.items() if s == "done"),
                       tuple(r.name for r in skipped), tuple(n for n, s in outcomes.items() if s == "failed"))


def _run_parallel(todo: list[Run], run_fn: RunFn, out_dir: Path, metadata: dict, workers: int,
                  progress: _Progress, outcomes: dict[str, str]) -> None:
    """At most ``workers`` runs in flight, each in a fresh spawned process. If a worker dies (killed,
    out of memory), the runs then in flight without a result are recorded as failed and a new pool
    takes the rest."""
    queue = list(reversed(todo))
    context = multiprocessing.get_context("spawn")
    while queue:
        with cf.ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1,
                                    initializer=_stop_with_parent, initargs=(os.getpid(),)) as pool:
            in_flight: dict[cf.Future, Run] = {}
            broken = False
            while queue or in_flight:
                while queue and len(in_flight) < workers and not broken:
                    run = queue.pop()
                    try:
                        in_flight[pool.submit(_execute, run_fn, run, out_dir / run.name, metadata)] = run
                    except cf.process.BrokenProcessPool:
                        queue.append(run)
                        broken = True
                finished, _ = cf.wait(in_flight, return_when=cf.ALL_COMPLETED if broken else cf.FIRST_COMPLETED)
                for future in finished:
                    run = in_flight.pop(future)
                    status, seconds, error = _outcome(future, out_dir / run.name)
                    broken |= error == _DIED
                    outcomes[run.name] = status
                    progress.update(run.name, status, seconds, error)
                if broken and not in_flight:
                    break


_DIED = "worker process died"


def _stop_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """Pool initializer: when the sweep process is gone (killed, even by SIGKILL, so it could not stop
    its workers), the worker sends itself SIGTERM; a training run then checkpoints and stops at its
    next step. Without this the worker ran on unowned, and a restarted sweep started the same run
    again: two processes writing one run directory."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="stop-with-parent", daemon=True).start()


def _outcome(future: cf.Future, run_dir: Path) -> tuple[str, float, str]:
    try:
        return future.result()
    except cf.process.BrokenProcessPool:
        if (run_dir / RESULT_FILE).exists():  # it finished before another worker took the pool down
            return "done", read_json(run_dir / RESULT_FILE).get("seconds", 0.0), ""
        write_text(run_dir / ERROR_FILE, f"{_DIED} while this run was in flight (killed, out of memory or "
                                         f"crashed; possibly another run in the same pool)\n")
        return "failed", 0.0, _DIED


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------

def _flatten(prefix: str, value: Any, row: dict) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, row)
    else:
        row[prefix] = value


def _row(run_dir: Path) -> dict | None:
    if (run_dir / RESULT_FILE).is_file():
        record = read_json(run_dir / RESULT_FILE)
        row = {"run": run_dir.name, "status": "done", "seconds": record.get("seconds")}
        _flatten("config", record.get("config", {}), row)
        _flatten("result", record.get("result", {}), row)
        return row
    if (run_dir / ERROR_FILE).is_file():
        lines = [ln for ln in (run_dir / ERROR_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
        row = {"run": run_dir.name, "status": "failed"}
        if (run_dir / CONFIG_FILE).is_file():
            _flatten("config", read_json(run_dir / CONFIG_FILE), row)
        row["error"] = lines[-1] if lines else ""
        return row
    return None


def summarise(out_dir: str | Path, csv_path: str | Path | None = None) -> list[dict]:
    """One row per run directory of ``out_dir`` (done or failed), columns ``run, status, seconds,
    config.<key>..., result.<key>..., error``; also written as CSV (default ``out_dir/summary.csv``)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"out_dir: {out_dir} is not a directory")
    rows = [r for d in sorted(p for p in out_dir.iterdir() if p.is_dir()) if (r := _row(d)) is not None]
    seen = list(dict.fromkeys(k for r in rows for k in r))
    columns = ([c for c in ("run", "status", "seconds") if c in seen] + [c for c in seen if c.startswith("config.")]
               + [c for c in seen if c.startswith("result.")] + [c for c in ("error",) if c in seen])
    write_csv(out_dir / "summary.csv" if csv_path is None else Path(csv_path), rows, columns)
    return rows
