"""experiments.tables: cells over seeds with t-intervals, divergence counted, and the text of a cell."""

import math

import pytest

from experiments.stages import RunRecord
from experiments.tables import aggregate, format_cell, run_rows


def _record(seed, bits, status="completed"):
    result = {"test": {"bits": bits, "bits_ci95": 0.01}, "diverged_at_step": 9 if status == "diverged" else None}
    return RunRecord(f"s{seed}", {"mixer": "attention", "norm": "pre", "variant": "fp16-unit", "seed": seed},
                     status, result)


def test_cells_with_several_seeds_get_a_t_interval_and_count_divergence():
    row, = aggregate([_record(0, 1.5), _record(1, 1.7), _record(2, 1.6), _record(3, math.nan, "diverged")])
    assert row["ci_kind"] == "seeds" and row["mean"] == pytest.approx(1.6) and row["seeds"] == [0, 1, 2]
    assert row["ci95"] == pytest.approx(4.303 * 0.1 / math.sqrt(3))
    assert (row["runs"], row["completed"], row["diverged"], row["diverged_at_steps"]) == (4, 3, 1, [9])
    assert format_cell(row) == "1.600 ± 0.248 † (1/4 diverged)"
    row, = aggregate([_record(0, 1.5)])
    assert (row["ci_kind"], row["ci95"]) == ("tokens", 0.01)


def test_a_diverged_cell_reads_as_its_step_and_a_missing_one_as_n_a():
    row, = aggregate([_record(0, math.nan, "diverged")])
    assert format_cell(row) == "diverged @ step 9"
    row, = aggregate([RunRecord("r", _record(0, 1.0).config, "missing", None, "not run yet")])
    assert format_cell(row) == "n/a" and row["unavailable"] == 1


def test_run_rows_are_flat_with_the_chosen_config_columns():
    row, = run_rows([_record(0, 1.5)], keys=("variant", "seed", "lr"))
    assert list(row)[:5] == ["run", "variant", "seed", "lr", "status"] and row["test_bits"] == 1.5
    assert math.isnan(row["val_bits"]) and row["problem"] is None
