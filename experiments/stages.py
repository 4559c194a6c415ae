"""The stages of an experiment's sweep and the records of their runs.

A sweep script reads a profile from a TOML spec (:func:`load_spec_table`), runs each stage's configs
with :func:`run_stage` (one :mod:`experiments.runner` sweep per stage directory: resumable, finished
runs skipped) and collects every expected run, whatever state its directory is in, as a
:class:`RunRecord` (:func:`collect`): ``completed`` or ``diverged`` with its result, or ``failed``,
``missing`` or ``malformed`` with the problem in words.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.inputs import InputError
from experiments.outcome import RESULT_KEYS
from experiments.results import dumps, read_json, write_json, write_text
from experiments.runner import CONFIG_FILE, ERROR_FILE, RESULT_FILE, name_runs, remove_runs, run_sweep

DEFERRED = "deferred: not among the variants selected for this invocation (--variants)"


def load_spec_table(path: str | Path, profile: str) -> Mapping[str, Any]:
    """The ``[profile]`` table of a TOML spec file; InputError naming the file and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"spec: {path} is not a file")
    try:
        spec = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"spec: {path} is not valid TOML: {err}") from None
    if profile not in spec:
        raise InputError(f"profile: {path} has no profile {profile!r}; it has {sorted(spec)}")
    return spec[profile]


def as_list(value: Any) -> list:
    """``value`` if it is a list or tuple (as a list), else ``[value]``: a spec axis of one or more values."""
    return list(value) if isinstance(value, (list, tuple)) else [value]


def clear_stage(stage_dir: Path, configs: Sequence[dict], variants: Sequence[str] | None = None,
                log: Callable[[str], None] = print) -> list[str]:
    """Delete the directories of the runs of ``configs`` (of ``variants`` only, if given) in ``stage_dir``,
    so that :func:`run_stage` runs them again from the start (``--fresh``); the names deleted."""
    removed = remove_runs(stage_dir, configs, lambda config: variants is None or config["variant"] in variants)
    log(f"--fresh: deleted {len(removed)} run directories under {stage_dir}")
    return removed


def run_stage(stage_dir: Path, configs: Sequence[dict], run_fn: str | Callable[[dict, Path], dict], *, workers: int,
              variants: Sequence[str] | None = None, log: Callable[[str], None] = print) -> bool:
    """Run (or resume) one sweep over ``configs`` in ``stage_dir``; True if no run failed.

    Run names come from the whole stage, so a subset (``variants``) runs in the directories the full
    stage uses: the other unfinished runs get a temporary ``error.txt`` marker the sweep skips
    (``retry_failed=False``), and the selected runs that failed before are retried.
    """
    runs = name_runs(list(configs))
    selected = lambda r: variants is None or r.config["variant"] in variants  # noqa: E731
    markers = []
    for r in runs:
        error = stage_dir / r.name / ERROR_FILE
        if selected(r):
            error.unlink(missing_ok=True)
        elif not (stage_dir / r.name / RESULT_FILE).exists() and not error.exists():
            write_text(error, DEFERRED + "\n")
            markers.append(error)
    try:
        return run_sweep(list(configs), run_fn, stage_dir, workers=workers, retry_failed=False, log=log).ok
    finally:
        for error in markers:
            error.unlink(missing_ok=True)
            if not any(error.parent.iterdir()):  # the marker made the directory; leave no trace
                error.parent.rmdir()


def json_round_trip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ...), for comparisons with saved configs."""
    return json.loads(dumps(value))


def reuse_runs(source_dir: Path, source_configs: Sequence[dict], stage_dir: Path, configs: Sequence[dict]) -> list[str]:
    """Copy each finished run of ``source_configs`` (in ``source_dir``) whose config equals one of
    ``configs`` to that run's directory in ``stage_dir``, unless it has a result there; return the
    names copied. (Training is deterministic, so running the same config again would repeat it exactly.)"""
    finished = {json.dumps(json_round_trip(r.config), sort_keys=True): source_dir / r.name
                for r in name_runs(list(source_configs)) if (source_dir / r.name / RESULT_FILE).is_file()}
    copied = []
    for run in name_runs(list(configs)):
        source = finished.get(json.dumps(json_round_trip(run.config), sort_keys=True))
        target = stage_dir / run.name
        if source is None or (target / RESULT_FILE).exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        saved = read_json(target / RESULT_FILE)
        write_json(target / RESULT_FILE, {**saved, "run": run.name, "reused_from": str(source)})
        copied.append(run.name)
    return copied


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One expected run of a stage: where it is, its config, its status and result, or the problem."""

    name: str
    config: Mapping[str, Any]
    status: str  # completed, diverged, failed, missing or malformed
    result: Mapping[str, Any] | None = None
    problem: str | None = None


def _read_result(run_dir: Path, config: Mapping[str, Any]) -> tuple[str, dict | None, str | None]:
    try:
        saved = read_json(run_dir / RESULT_FILE)
    except ValueError as err:
        return "malformed", None, f"{run_dir / RESULT_FILE} is not valid JSON ({err})"
    result = saved.get("result") if isinstance(saved, dict) else None
    if not isinstance(result, dict):
        return "malformed", None, f"{run_dir / RESULT_FILE} holds no 'result' object"
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        return "malformed", None, f"{run_dir / RESULT_FILE} lacks the result fields {missing}"
    if saved.get("config") != json_round_trip(config):
        return "malformed", None, (f"{run_dir / RESULT_FILE} was made with another config than the spec's "
                                   f"(stale run? delete the directory to rerun it)")
    if result["status"] not in ("completed", "diverged"):
        return "malformed", None, f"{run_dir / RESULT_FILE} has an unknown status {result['status']!r}"
    return result["status"], result, None


def collect(stage_dir: Path, configs: Sequence[dict]) -> list[RunRecord]:
    """A :class:`RunRecord` for every run of ``configs``, whatever state its directory is in."""
    records = []
    for spec_run in name_runs(list(configs)):
        run_dir = stage_dir / spec_run.name
        if (run_dir / RESULT_FILE).is_file():
            status, result, problem = _read_result(run_dir, spec_run.config)
        elif (run_dir / ERROR_FILE).is_file():
            lines = [ln for ln in (run_dir / ERROR_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
            status, result, problem = "failed", None, f"{run_dir / ERROR_FILE}: {lines[-1] if lines else '?'}"
        else:
            started = (run_dir / CONFIG_FILE).is_file()
            status, result = "missing", None
            problem = f"{run_dir}: {'unfinished (no result.json yet)' if started else 'not run yet'}"
        records.append(RunRecord(spec_run.name, spec_run.config, status, result, problem))
    return records
