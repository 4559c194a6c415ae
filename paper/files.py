"""Strict reading of result files: every problem raises :class:`ResultError` naming the file and what
is wrong with it, so a build never renders a paper from a half-understood result.

    data = read_json(path)                                # missing or unparsable -> ResultError
    bpc = get(data, "final.test.bits_per_token", path, float)  # missing key / wrong type -> ResultError
"""

from __future__ import annotations

import json
import math
import numbers as numbers_
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

_MISSING = object()
Kind = type | tuple[type, ...]


class ResultError(ValueError):
    """A result file is missing or malformed; ``path`` is the file, ``problem`` what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{path}: {problem}")


def read_json(path: str | Path) -> Any:
    """The JSON value of ``path`` (NaN/Infinity allowed: diverged runs record them)."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(path, "missing (no such file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ResultError(path, f"malformed JSON: {err}") from None


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON Lines file. A torn *last* line (a crash mid-append) is dropped, as
    :func:`experiments.results.read_jsonl` does; any other bad line raises."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(path, "missing (no such file)")
    lines = [(i + 1, ln) for i, ln in enumerate(path.read_text(encoding="utf-8").splitlines()) if ln.strip()]
    records = []
    for k, (number, line) in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if k == len(lines) - 1:
                break
            raise ResultError(path, f"line {number}: malformed JSON record: {err}") from None
        if not isinstance(record, dict):
            raise ResultError(path, f"line {number}: a record must be a JSON object")
        records.append(record)
    return records


def get(data: Any, key: str, path: str | Path, kind: type | tuple[type, ...] | None = None,
        default: Any = _MISSING) -> Any:
    """``data[k1][k2]...`` for ``key = "k1.k2..."``, checked to be of ``kind``.

    ``float`` accepts any real number (ints too, NaN and inf included) and returns a float; ``int``
    rejects bools. A missing key returns ``default`` if given, else raises.
    """
    value = data
    for i, part in enumerate(key.split(".")):
        if not isinstance(value, Mapping):
            where = ".".join(key.split(".")[:i]) or "the top level"
            raise ResultError(path, f"{where} must be a JSON object, got {_name(value)}")
        if part not in value:
            if default is not _MISSING:
                return default
            raise ResultError(path, f"missing key {key!r}")
        value = value[part]
    return _checked(value, key, path, kind)


def _checked(value: Any, key: str, path, kind) -> Any:
    if kind is None:
        return value
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(value, numbers_.Real) and not isinstance(value, bool):
        return float(value)
    if int in kinds and isinstance(value, bool):
        raise ResultError(path, f"{key!r} must be {_names(kinds)}, got a bool")
    if not isinstance(value, kinds):
        raise ResultError(path, f"{key!r} must be {_names(kinds)}, got {_name(value)}")
    return value


def numbers(values: list, key: str, path: str | Path) -> list[float]:
    """``values`` as floats; anything but a real number (or null, read as NaN) raises."""
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(math.nan)
        elif isinstance(v, numbers_.Real) and not isinstance(v, bool):
            out.append(float(v))
        else:
            raise ResultError(path, f"{key}[{i}] must be a number, got {_name(v)}")
    return out


def variant_table(data: Any, path: str | Path, *, select: Callable[[list, str | Path], list[dict]], split: str,
                  option_keys: Mapping[str, Kind], row_keys: Mapping[str, Kind]) -> tuple[dict, list[dict]]:
    """The checked ``variants`` and ``table`` rows of an experiment's ``results.json`` (``data``, read from
    ``path``): every variant has a string ``label`` and ``options`` with ``option_keys`` of their kinds;
    ``select(table, path)`` picks the rows of ``split`` a section reads (raising if it lacks any it
    needs); each has ``row_keys`` of their kinds, ``values`` read by :func:`numbers` (in place) and a
    ``variant`` that ``variants`` describes."""
    variants = get(data, "variants", path, dict)
    for name in variants:
        get(variants, f"{name}.label", path, str)
        for key, kind in option_keys.items():
            get(variants, f"{name}.options.{key}", path, kind)
    rows = select(get(data, "table", path, list), path)
    for i, row in enumerate(rows):
        where = f"{path} ({split} table row {i})"
        for key, kind in row_keys.items():
            get(row, key, where, kind)
        row["values"] = numbers(row["values"], "values", where)
        if row["variant"] not in variants:
            raise ResultError(path, f"{split} table row {i} names variant {row['variant']!r}, "
                                    "which 'variants' does not describe")
    return variants, rows


def _name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool", type(None): "null"}.get(
        type(value), type(value).__name__)


def _names(kinds: tuple[type, ...]) -> str:
    words = {float: "a number", int: "an integer", str: "a string", list: "a list", dict: "an object",
             bool: "a bool"}
    return " or ".join(words.get(k, k.__name__) for k in kinds)
