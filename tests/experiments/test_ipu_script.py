"""experiments.ipu: --quick runs end to end (BERT-Base on a Bow POD16, FP16 and FP8) and writes a
table whose files agree; the verdict on what FP8 buys is worded from the ratios; bad options exit 2."""

import contextlib
import csv
import io
import json

from pathlib import Path

import pytest

from experiments import ipu

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("ipu")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = ipu.main(["--quick", "--out", str(out)])
    return out, result, printed.getvalue()


def test_quick_estimates_one_model_on_one_system_in_both_precisions(quick):
    out, result, _ = quick
    rows = result["rows"]
    assert [(r["model"], r["system"], r["precision"]) for r in rows] == [
        ("bert-base", "bow-pod16", "fp16"), ("bert-base", "bow-pod16", "fp8")]
    fp16, fp8 = rows
    # The published recipe (docs/reference/ipu_hardware.md): [0,4,4,4] x 4 replicas, micro-batch 32.
    assert fp16["layers_per_ipu"] == [0, 4, 4, 4] and fp16["replicas"] == 4 and fp16["micro_batch"] == 32
    assert fp16["config_source"] == "published" and fp16["fits"] and fp8["fits"]
    assert not fp16["fp8_unit"] and fp16["samples_per_step"] == 32 * 512 * 4
    assert fp16["matmuls"].startswith("matmuls fp16 inputs") and fp8["matmuls"].startswith("matmuls fp8 inputs")
    assert any("no FP8 AMP" in n for n in fp8["notes"])


def test_files_agree_with_the_returned_table(quick):
    out, result, printed = quick
    saved = json.loads((out / "ipu_table.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"])) and saved["quick"] is True
    with (out / "ipu_table.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [float(r["samples_per_s"]) for r in table] == [r["samples_per_s"] for r in result["rows"]]
    assert (out / "ipu_table.png").read_bytes().startswith(PNG_MAGIC)
    readme = (out / "README.md").read_text()
    assert "python -m experiments.ipu --quick --out" in readme and result["comparisons"][0]["verdict"] in readme
    assert result["comparisons"][0]["verdict"] in printed


def test_comparison_is_the_ratio_of_the_rows(quick):
    _, result, _ = quick
    (c,), (fp16, fp8) = result["comparisons"], result["rows"]
    assert c["throughput_ratio"] == fp8["samples_per_s"] / fp16["samples_per_s"]
    assert c["peak_tile_ratio"] == fp8["peak_tile_kib"] / fp16["peak_tile_kib"]
    assert c["verdict"] == ipu.verdict(fp16, fp8)


def _row(samples, peak, fits=True, unit=False):
    return {"samples_per_s": samples, "peak_tile_kib": peak, "fits": fits, "fp8_unit": unit}


@pytest.mark.parametrize("fp16, fp8, start, contains", [
    (_row(100, 500), _row(100.4, 499, unit=False), "nothing: no FP8 unit", "within 1%"),
    (_row(100, 500), _row(114, 499), "bandwidth/memory only", "1.14x samples/s, peak tile memory -0.2%"),
    (_row(100, 500, unit=True), _row(180, 450, unit=True), "FP8 AMP", "1.80x samples/s, peak tile memory -10.0%"),
    (_row(100, 700, fits=False), _row(101, 600), "bandwidth/memory only", "FP8 makes it fit"),
    (_row(100, 700, fits=False), _row(100, 700, fits=False), "bandwidth/memory only", "neither fits"),
])
def test_verdict_is_worded_from_the_ratios(fp16, fp8, start, contains):
    text = ipu.verdict(fp16, fp8)
    assert text.startswith(start) and contains in text


def test_balancer_setup_keeps_the_family_global_batch():
    s = ipu.balancer_setup("gpt2-small", ipu.C600_X8, 4, 1)
    assert (s.replicas, s.micro_batch, s.pipeline, s.offload_optimizer) == (2, 1, 4, False)
    assert s.micro_batch * s.grad_accum * s.replicas >= ipu.FAMILY_BATCH["gpt"][1]
    assert "no streaming memory" in s.assumed


@pytest.mark.parametrize("argv, message", [(["--models", "bert-huge"], "--model: unknown ['bert-huge']"),
                                           (["--system", ","], "--system: unknown empty list"),
                                           (["--out", "FILE"], "--out FILE: is a file")])
def test_bad_options_exit_2_naming_the_option(tmp_path, argv, message, capsys):
    (tmp_path / "FILE").write_text("kept")
    with pytest.raises(SystemExit) as stop:
        ipu.parse([a.replace("FILE", str(tmp_path / "FILE")) for a in argv])
    assert stop.value.code == 2 and message.replace("FILE", str(tmp_path / "FILE")) in capsys.readouterr().err


def test_quick_writes_outside_the_repository_by_default():
    repo = Path(ipu.__file__).resolve().parents[1]
    assert not Path(ipu.parse(["--quick"]).out).resolve().is_relative_to(repo)
    args = ipu.parse(["--models", "gpt2-small", "--systems", "c600-x8"])  # the older spellings
    assert (args.model, args.system, args.out) == (["gpt2-small"], ["c600-x8"], "results/ipu")


def test_published_rows_take_the_recipes_per_ipu_memory_proportions():
    setup = ipu.PUBLISHED["bert-large"]
    assert setup.pipeline == (3, 7, 7, 7) and setup.amp == ((0.15, 0.25, 0.25, 0.25),)
    assert ipu.PUBLISHED["gpt2-large"].pipeline == (0, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 2)


def test_a_hand_written_changes_section_survives_regeneration(tmp_path):
    (tmp_path / "README.md").write_text("# IPU table\n\nold table\n\n## Changes\n\nwhy the numbers moved\n")
    notes = ipu.readme_notes(tmp_path / "README.md")
    text = ipu.readme("python -m experiments.ipu", "| new table |", False, notes)
    assert text.endswith("| new table |\n\n## Changes\n\nwhy the numbers moved\n") and "old table" not in text
