"""Durable result files: atomic JSON and CSV, append-only JSONL metrics, and the environment of a run.

A result file is either the old version or the new one, never a mix: :func:`write_json` writes a
temporary file in the same directory, fsyncs it and renames it over the target (``os.replace`` is
atomic on POSIX and Windows within one file system).

Metrics are JSON Lines, one record per line, appended and flushed record by record. A process killed
mid-append can leave a torn last line. :func:`read_jsonl` drops such a last line with a
:class:`TruncatedRecordWarning` rather than raising, because that is exactly what a crash leaves
behind and every earlier record is intact: the metrics of a crashed run stay readable. A corrupt
line *followed by* other lines cannot come from a torn append, so it raises ``ValueError`` naming
the file and line. :func:`append_jsonl` first cuts off a torn tail, so a resumed run keeps appending
to a well-formed file.

JSON is written with ``allow_nan=True``: a diverged low-precision run has a NaN loss that must be
recorded, and Python's ``json`` reads ``NaN``/``Infinity`` back (strict JSON parsers do not).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib.metadata
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "ml_dtypes", "orbax-checkpoint", "unitscale")
_REPO = Path(__file__).resolve().parents[1]


class TruncatedRecordWarning(RuntimeWarning):
    """A JSONL file ended in a torn record, which was dropped."""


def to_jsonable(obj: Any) -> Any:
    """``json`` default hook: numpy/JAX scalars and arrays, paths and dataclasses as plain JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def dumps(obj: Any, indent: int | None = None) -> str:
    """``json.dumps`` with :func:`to_jsonable`; ``indent=None`` gives one line."""
    return json.dumps(obj, default=to_jsonable, indent=indent, allow_nan=True)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, where the data is still safe.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: temp file in the same dir, fsync, ``os.replace``.

    A crash at any point leaves the previous file (or no file) in place, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (see :func:`write_text`).

    The object is encoded before anything touches the disk, so an unserialisable object leaves the
    previous file in place too.
    """
    return write_text(path, dumps(obj, indent=indent) + "\n")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
              columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` as CSV to ``path`` atomically: ``columns`` (default: every key, in first-seen order),
    lists and dicts as one-line JSON, a missing value as an empty field."""
    columns = list(dict.fromkeys(k for row in rows for k in row)) if columns is None else list(columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return write_text(path, buffer.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _repair_tail(f) -> None:
    """Make a file opened ``a+b`` end in a newline: complete a whole last record, cut a torn one."""
    end = f.seek(0, os.SEEK_END)
    if end == 0:
        return
    f.seek(end - 1)
    if f.read(1) == b"\n":
        return
    start = end
    while start > 0:  # scan back in blocks for the start of the last line
        block = min(start, 1 << 16)
        f.seek(start - block)
        i = f.read(block).rfind(b"\n")
        if i >= 0:
            start = start - block + i + 1
            break
        start -= block
    f.seek(start)
    tail = f.read()
    try:
        json.loads(tail)
        f.write(b"\n")
    except ValueError:
        f.truncate(start)
        warnings.warn(f"{f.name}: dropped a torn last record of {len(tail)} bytes before appending",
                      TruncatedRecordWarning, stacklevel=3)


def append_jsonl(path: str | os.PathLike, record: dict, *, fsync: bool = False) -> None:
    """Append ``record`` to ``path`` as one JSON line and flush it (``fsync=True`` also syncs to disk)."""
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    line = (dumps(record) + "\n").encode("utf-8")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        _repair_tail(f)
        f.write(line)
        f.flush()
        if fsync:
            os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """All records of a JSONL file; a torn last line is dropped with a warning, any other bad line raises."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            records.append(json.loads(line))
        except ValueError as err:
            if k == len(numbered) - 1:
                warnings.warn(f"{path}:{lineno}: dropped a torn last record ({err})", TruncatedRecordWarning,
                              stacklevel=2)
            else:
                raise ValueError(f"{path}:{lineno}: corrupt record in the middle of the file: {err}") from err
    return records


def _git(repo: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state(repo: str | os.PathLike = _REPO) -> dict | None:
    """``{"revision": sha, "dirty": bool}`` of the git checkout at ``repo`` (tracked files only), or None."""
    revision = _git(Path(repo), "rev-parse", "HEAD")
    if revision is None:
        return None
    status = _git(Path(repo), "status", "--porcelain", "--untracked-files=no")
    return {"revision": revision.strip(), "dirty": None if status is None else bool(status.strip())}


def _package_versions() -> dict[str, str | None]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _devices() -> dict:
    try:
        import jax
        return {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()]}
    except Exception as err:  # a broken accelerator set-up must not stop a run from recording itself
        return {"error": f"{type(err).__name__}: {err}"}


def run_metadata(repo: str | os.PathLike | None = None) -> dict:
    """The environment of a run: time, command, Python, platform, package versions, JAX devices, git state."""
    now = time.time()
    return {
        "time_utc": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(timespec="seconds"),
        "unix_time": now,
        "argv": list(sys.argv),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "packages": _package_versions(),
        "jax": _devices(),
        "git": git_state(_REPO if repo is None else repo),
    }
