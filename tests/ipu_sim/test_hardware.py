"""Chip specs reproduce the rows of docs/reference/ipu_hardware.md they cite."""

import pytest

from ipu_sim.hardware import BOW, C600, CHIPS, GC2, GC200, get_chip


@pytest.mark.parametrize("chip, inputs, partials, tflops", [
    (GC2, "fp32", "fp32", 31.1), (GC2, "fp16", "fp32", 124.5),
    (GC200, "fp32", "fp32", 62.4), (GC200, "fp16", "fp32", 125), (GC200, "fp16", "fp16", 249.7),
    (BOW, "fp32", "fp32", 87.2), (BOW, "fp16", "fp32", 174), (BOW, "fp16", "fp16", 348.5),
    (C600, "fp16", "fp16", 280), (C600, "fp8", "fp16", 560),
])
def test_peak_flops_match_reference_rows(chip, inputs, partials, tflops):
    assert chip.peak_flops(inputs, partials) / 1e12 == pytest.approx(tflops, rel=0.005)


def test_c600_clock_is_derived_from_its_card_rates():
    assert C600.clock_hz == pytest.approx(280e12 / (1472 * 128))
    assert 1.48e9 < C600.clock_hz < 1.49e9


def test_sram_totals_match_reference():
    assert GC2.total_sram_bytes == 304 * 2**20
    for chip in (GC200, BOW, C600):
        assert 0.9e9 < chip.total_sram_bytes < 0.95e9  # "~900 MB"


def test_vector_rates_reproduce_j19_non_amp_flops():
    # J19: FP32 7.8, mixed 15.6 TFLOP/s of vector code on GC2 (FMA = 2 FLOPs).
    for itemsize, tflops in ((4, 7.8), (2, 15.6)):
        rate = GC2.tiles * GC2.clock_hz * GC2.vector_lanes(itemsize) * 2
        assert rate / 1e12 == pytest.approx(tflops, rel=0.01)


def test_local_memory_rates_match_mk2_aggregates():
    for chip, tbs in ((GC200, 45), (BOW, 65)):
        rate = chip.tiles * chip.clock_hz * (chip.load_bytes_per_cycle + chip.store_bytes_per_cycle)
        assert rate / 1e12 == pytest.approx(tbs, rel=0.05)


def test_missing_precisions_fall_back_to_what_the_chip_has():
    assert BOW.amp_flops_per_cycle("fp8", "fp16") == BOW.amp_flops_per_cycle("fp16", "fp16")
    assert GC2.amp_flops_per_cycle("fp16", "fp16") == GC2.amp_flops_per_cycle("fp16", "fp32")
    assert C600.amp_flops_per_cycle("fp8", "fp32") == 256


def test_get_chip_accepts_names_and_chips():
    assert get_chip("Bow") is BOW
    assert get_chip("GC-200") is GC200
    assert get_chip(C600) is C600
    assert set(CHIPS) == {"gc2", "gc200", "bow", "c600"}


def test_unknown_chip_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown chip 'mk3'.*gc2, gc200, bow, c600"):
        get_chip("mk3")
    with pytest.raises(TypeError, match="chip must be"):
        get_chip(3)


def test_bad_precision_names_the_argument():
    with pytest.raises(ValueError, match="inputs must be one of"):
        BOW.amp_flops_per_cycle("int8", "fp32")
    with pytest.raises(ValueError, match="partials must be one of"):
        BOW.amp_flops_per_cycle("fp16", "fp8")
