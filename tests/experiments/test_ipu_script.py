"""experiments.ipu: --quick runs end to end (BERT-Base on a Bow POD16, FP16 and FP8) and writes a
table whose files agree; the verdict on what FP8 buys is worded from the ratios; bad options exit 2."""

import contextlib
import csv
import io
import json

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


@pytest.mark.parametrize("argv, message", [(["--models", "bert-huge"], "--models: unknown ['bert-huge']"),
                                           (["--systems", ","], "--systems: unknown empty list")])
def test_bad_options_exit_2_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        ipu.parse(argv)
    assert stop.value.code == 2 and message in capsys.readouterr().err
