"""The committed results that cheap code alone makes -- the IPU table (results/ipu) and the scale summary
(results/scales/summary.json) -- are what today's code computes for the configuration they record, so
neither can go stale silently. When one of these fails after a change to ipu_sim, unitscale or the
scripts, regenerate the files with the command in their README and say there what changed."""

import csv
import json
import math
from pathlib import Path

import pytest

from experiments import data, ipu, scales

RESULTS = Path(__file__).resolve().parents[2] / "results"
# Same arithmetic on another machine or library build may move the last bits, never the numbers.
REL = 1e-6


def _assert_close(actual, expected, where="") -> None:
    """``actual`` equals ``expected`` (as read from JSON), floats to :data:`REL`."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), f"{where}: keys differ"
        for k in expected:
            _assert_close(actual[k], expected[k], f"{where}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {actual} != {expected}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_close(a, e, f"{where}[{i}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert (math.isnan(actual) and math.isnan(expected)) or actual == pytest.approx(expected, rel=REL), \
            f"{where}: computed {actual}, committed {expected}"
    else:
        assert actual == expected, f"{where}: computed {actual!r}, committed {expected!r}"


@pytest.fixture(scope="module")
def ipu_table():
    return json.loads((RESULTS / "ipu" / "ipu_table.json").read_text(encoding="utf-8"))


def test_the_committed_ipu_table_is_what_ipu_sim_computes_today(ipu_table):
    """Every row, re-estimated at the configuration it records (published layers and memory
    proportions, or the balancer's IPU count), and every verdict."""
    assert not ipu_table["quick"], "results/ipu holds a --quick table"
    traced = ipu.Traced()
    rows = ipu_table["rows"]
    for committed in rows:
        recomputed = json.loads(json.dumps(ipu.rerun_row(committed, traced)))
        _assert_close(recomputed, committed, f"{committed['model']} on {committed['system']} {committed['precision']}")
    by_key = {(r["model"], r["system"], r["precision"]): r for r in rows}
    for c in ipu_table["comparisons"]:
        _assert_close(ipu.compare(by_key[c["model"], c["system"], "fp16"], by_key[c["model"], c["system"], "fp8"]), c)


def test_the_committed_ipu_files_agree_with_each_other(ipu_table):
    rows, comparisons = ipu_table["rows"], ipu_table["comparisons"]
    with (RESULTS / "ipu" / "ipu_table.csv").open(encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["samples_per_s"] for r in table] == [repr(r["samples_per_s"]) for r in rows]
    assert [r["layers_per_ipu"] for r in table] == [" ".join(map(str, r["layers_per_ipu"])) for r in rows]
    readme = (RESULTS / "ipu" / "README.md").read_text(encoding="utf-8")
    assert ipu.markdown_table(rows, comparisons) in readme and f"    {ipu_table['command']}\n" in readme
    assert ipu_table["command"] == "python -m experiments.ipu --out results/ipu"


def test_the_committed_scale_summary_is_what_the_models_give_today():
    summary = json.loads((RESULTS / "scales" / "summary.json").read_text(encoding="utf-8"))
    o = summary["options"]
    assert not o["quick"], "results/scales holds a --quick summary"
    argv = ["--model", o["model"], "--size", o["preset"], "--batch-size", str(o["batch_size"]), "--seq-len",
            str(o["seq_len"]), "--data", o["data"], "--precision", o["precision"], "--seed", str(o["seed"]),
            "--formats", ",".join(o["formats"]), "--stat", o["stat"], "--tensor", o["tensor"], "--phase", o["phase"]]
    try:
        _, computed = scales.measure(scales.parse(argv))
    except data.DataUnavailableError as err:  # no network and no cached copy: nothing to compare with
        pytest.skip(f"the corpus of the committed summary is unavailable here: {err}")
    assert computed["data"] == summary["data"]
    _assert_close(json.loads(json.dumps(computed["models"])), summary["models"], "models")
