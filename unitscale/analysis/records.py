"""Scale records: one frozen record per tracked tensor and pass, and the report that holds them.

A :class:`ScaleReport` is an immutable sequence of :class:`ScaleRecord` in execution order (the
forward records in program order, then the backward records in reverse program order), with
CSV / JSON export (``to_pandas`` when pandas is installed) and JSON import.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unitscale.analysis.coverage import Coverage
from unitscale.analysis.stats import STAT_NAMES, TensorStats
from unitscale.formats import FPFormat

__all__ = ["PHASES", "KINDS", "ScaleRecord", "ScaleReport"]

Phase = Literal["forward", "backward"]
Kind = Literal["weight", "activation"]
PHASES: tuple[str, ...] = ("forward", "backward")
KINDS: tuple[str, ...] = ("weight", "activation")
# Coverage columns of the flat CSV (zero and nonfinite repeat the stats' fractions).
_CSV_CLASSES = ("underflow", "subnormal", "normal", "overflow")


@dataclasses.dataclass(frozen=True)
class ScaleRecord:
    """The scale of one tensor in one pass.

    ``phase="forward"``: the tensor's values; ``"backward"``: its gradient dL/d(tensor). ``kind``
    is ``"weight"`` for leaves of the weight arguments and values computed from weights alone (a
    scaled or cast weight), ``"activation"`` for everything else (values that depend on the data,
    and other float inputs). ``index`` orders tensors in program order; a tensor's forward
    and backward records share it. ``path`` is the ``jax.named_scope`` path of the op (for
    arguments, their pytree path), ``op`` the primitive or library function (``"dot_general"``,
    ``"log_softmax"``, ``"scaled"``; ``"weight"``/``"input"`` for arguments).
    """

    index: int
    phase: Phase
    kind: Kind
    path: str
    op: str
    shape: tuple[int, ...]
    dtype: str
    stats: TensorStats
    coverage: tuple[Coverage, ...] = ()
    histogram: tuple[tuple[int, int], ...] = ()

    @property
    def label(self) -> str:
        """``path/op`` for op outputs, the pytree path for arguments."""
        if self.op in ("weight", "input"):
            return self.path
        return f"{self.path}/{self.op}" if self.path else self.op

    def coverage_in(self, fmt: FPFormat | str) -> Coverage:
        """The :class:`Coverage` of this tensor in ``fmt`` (a format tracked with it)."""
        name = fmt.name if isinstance(fmt, FPFormat) else fmt
        for cov in self.coverage:
            if cov.format == name:
                return cov
        known = [c.format for c in self.coverage]
        raise ValueError(f"fmt={name!r} was not tracked; coverage is available for {known}")

    def to_row(self) -> dict[str, Any]:
        """A flat dict: identity, statistics and the coverage fractions as ``<format>_<class>``."""
        row = {
            "index": self.index, "phase": self.phase, "kind": self.kind, "label": self.label,
            "path": self.path, "op": self.op, "shape": "x".join(map(str, self.shape)),
            "dtype": self.dtype, "numel": self.stats.numel,
        }  # fmt: skip
        row.update({name: self.stats.get(name) for name in STAT_NAMES})
        for cov in self.coverage:
            row.update({f"{cov.format}_{c}": cov.get(c) for c in _CSV_CLASSES})
        return row

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON-ready values (the histogram as ``[[binade, count], ...]``)."""
        out = dataclasses.asdict(self)
        out["shape"] = list(self.shape)
        out["histogram"] = [list(pair) for pair in self.histogram]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScaleRecord:
        """Inverse of :meth:`to_dict`."""
        return cls(
            index=int(d["index"]), phase=d["phase"], kind=d["kind"], path=d["path"], op=d["op"],
            shape=tuple(d["shape"]), dtype=d["dtype"], stats=TensorStats(**d["stats"]),
            coverage=tuple(Coverage(**c) for c in d["coverage"]),
            histogram=tuple((int(e), int(n)) for e, n in d["histogram"]),
        )  # fmt: skip


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ValueError(f"{name}={value!r} is unknown; expected one of {choices} or None")


@dataclasses.dataclass(frozen=True)
class ScaleReport(Sequence):
    """Records of a tracked forward and backward pass; ``output`` is the function's output value
    (e.g. the loss) and ``formats`` the names of the formats coverage was computed for."""

    records: tuple[ScaleRecord, ...]
    formats: tuple[str, ...] = ()
    output: float = math.nan

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __iter__(self) -> Iterator[ScaleRecord]:
        return iter(self.records)

    def select(
        self,
        *,
        phase: Phase | None = None,
        kind: Kind | None = None,
        path: str | None = None,
        op: str | None = None,
    ) -> ScaleReport:
        """The records matching every given criterion (``path``: substring of the path)."""
        _check_choice("phase", phase, PHASES)
        _check_choice("kind", kind, KINDS)
        keep = tuple(
            r for r in self.records
            if (phase is None or r.phase == phase) and (kind is None or r.kind == kind)
            and (path is None or path in r.path) and (op is None or r.op == op)
        )  # fmt: skip
        return dataclasses.replace(self, records=keep)

    def values(self, stat: str = "std") -> np.ndarray:
        """The statistic ``stat`` of every record, as a float64 array."""
        if stat not in STAT_NAMES:
            raise ValueError(f"stat={stat!r} is unknown; expected one of {STAT_NAMES}")
        return np.array([r.stats.get(stat) for r in self.records], np.float64)

    def median_abs_log2(self, stat: str = "std") -> float:
        """median over records of ``|log2 stat|``, ignoring records where it is 0 or not finite:
        how far the typical tensor sits from scale 1 (in binades)."""
        v = self.values(stat)
        v = v[np.isfinite(v) & (v > 0)]
        return float(np.median(np.abs(np.log2(v)))) if v.size else math.nan

    def to_rows(self) -> list[dict[str, Any]]:
        """One flat dict per record (see :meth:`ScaleRecord.to_row`)."""
        return [r.to_row() for r in self.records]

    def to_csv(self, path: str | os.PathLike | None = None) -> str:
        """The flat rows as CSV text; also written to ``path`` when given."""
        rows = self.to_rows()
        buffer = io.StringIO()
        if rows:
            writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        return _maybe_write(buffer.getvalue(), path)

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """Every record in full (histograms included) as JSON; also written to ``path`` when given."""
        body = {"formats": list(self.formats), "output": self.output,
                "records": [r.to_dict() for r in self.records]}
        return _maybe_write(json.dumps(body, allow_nan=True), path)

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> ScaleReport:
        """A report from :meth:`to_json` text or a path to such a file."""
        text = Path(source).read_text() if _is_path(source) else str(source)
        body = json.loads(text)
        records = tuple(ScaleRecord.from_dict(d) for d in body["records"])
        return cls(records, tuple(body["formats"]), float(body["output"]))

    def to_pandas(self):
        """The flat rows as a ``pandas.DataFrame`` (requires pandas, which unitscale does not)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas needs pandas: pip install pandas (or use to_csv / to_rows)") from None
        return pd.DataFrame(self.to_rows())


def _is_path(source: Any) -> bool:
    if isinstance(source, os.PathLike):
        return True
    return isinstance(source, str) and not source.lstrip().startswith("{")


def _maybe_write(text: str, path: str | os.PathLike | None) -> str:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    return text

