"""paper.files.variant_table: the variants and table rows of a results.json, checked strictly."""

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `paper` is run from the repo root, not installed
    sys.path.insert(0, str(REPO))

from paper.files import ResultError, variant_table  # noqa: E402

PATH = Path("results/x/results.json")
OPTIONS = {"precision": str, "unit_scaled": bool}
ROW_KEYS = {"variant": str, "split": str, "values": list, "runs": int}


def _data(**changes):
    data = {"variants": {"a": {"label": "A", "options": {"precision": "fp8", "unit_scaled": True}}},
            "table": [{"variant": "a", "split": "test", "values": [1, None], "runs": 2},
                      {"variant": "a", "split": "val", "values": ["not read"], "runs": 1}]}
    return {**data, **changes}


def _test_rows(table, path):
    rows = [r for r in table if r["split"] == "test"]
    if not rows:
        raise ResultError(path, "no test rows")
    return rows


def _read(data):
    return variant_table(data, PATH, select=_test_rows, split="test", option_keys=OPTIONS, row_keys=ROW_KEYS)


def test_variant_table_returns_the_selected_rows_with_float_values():
    variants, rows = _read(_data())
    assert variants == _data()["variants"]
    assert len(rows) == 1 and rows[0]["values"][0] == 1.0 and rows[0]["values"][1] != rows[0]["values"][1]  # NaN


@pytest.mark.parametrize("data, problem", [
    (_data(variants={"a": {"label": "A", "options": {"precision": "fp8"}}}), "missing key 'a.options.unit_scaled'"),
    (_data(table=[]), "no test rows"),
    (_data(table=[{"variant": "a", "split": "test", "values": [1], "runs": True}]),
     r"\(test table row 0\): 'runs' must be an integer, got a bool"),
    (_data(table=[{"variant": "a", "split": "test", "values": ["x"], "runs": 1}]),
     r"\(test table row 0\): values\[0\] must be a number"),
    (_data(table=[{"variant": "b", "split": "test", "values": [], "runs": 0}]),
     "test table row 0 names variant 'b', which 'variants' does not describe"),
])
def test_variant_table_names_the_file_and_the_problem(data, problem):
    with pytest.raises(ResultError, match=problem) as err:
        _read(data)
    assert str(err.value).startswith(str(PATH))
