"""Cycle models and the matmul planner: 6-thread rule, budgets, time vs work, the peak rate."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipu_sim
from ipu_sim.costs import amp_cycles, exchange_cycles, vector_cycles
from ipu_sim.hardware import BOW, C600, GC2
from ipu_sim.params import ModelParams
from ipu_sim.planner import plan_matmul
from ipu_sim.trace import MatmulDims

PARAMS = ModelParams()
BUDGET = int(0.6 * BOW.sram_bytes)


def dims(b, m, k, n, inputs="fp16", partials="fp16"):
    size = {"fp32": 4, "fp16": 2, "fp8": 1}[inputs]
    return MatmulDims(b, m, k, n, inputs, partials, size, size, 4 if partials == "fp32" else 2)


def test_fewer_than_six_workers_are_proportionally_slower():
    # One to six vectors take the same time: each worker issues once every 6 cycles.
    times = {int(vector_cycles(4 * v, 2, 3, BOW, PARAMS)) for v in range(1, 7)}
    assert len(times) == 1
    assert vector_cycles(4 * 12, 2, 3, BOW, PARAMS) > vector_cycles(4 * 6, 2, 3, BOW, PARAMS)
    assert amp_cycles(1, 16, 16, 2, 128, BOW, PARAMS) == amp_cycles(6, 16, 16, 2, 128, BOW, PARAMS)


def test_amp_reaches_its_peak_rate_only_asymptotically():
    rows, depth, cols = 6000, 64, 64
    cycles = amp_cycles(rows, depth, cols, 2, 128, BOW, PARAMS)
    ideal = 2 * rows * depth * cols / 128
    assert ideal < cycles < 1.1 * ideal


def test_exchange_costs_latency_plus_bytes_at_four_per_cycle():
    assert exchange_cycles(0, 0, GC2) == 0
    assert exchange_cycles(4000, 100, GC2) == GC2.exchange_latency_cycles[1] + 1000
    assert np.all(np.diff(exchange_cycles(np.arange(0, 4096, 4), 0, GC2)) >= 0)


@settings(max_examples=25)
@given(st.integers(1, 4), st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 3000))
def test_plans_respect_the_memory_budget(b, m, k, n):
    plan = plan_matmul(dims(b, m, k, n), BOW, PARAMS, BUDGET)
    assert plan.fits_budget
    assert plan.temp_bytes <= BUDGET
    assert plan.tiles <= BOW.tiles
    bb, mb, kb, nb = plan.block
    assert bb * plan.batch_split >= b and kb * plan.k_split >= k
    rows, cols = (n, m) if plan.transposed else (m, n)
    assert mb * plan.m_split >= rows and nb * plan.n_split * plan.serial >= cols


def test_smaller_budget_means_more_serial_passes_and_no_faster():
    d = dims(1, 4096, 4096, 4096)
    plans = [plan_matmul(d, BOW, PARAMS, int(p * BOW.sram_bytes)) for p in (0.1, 0.3, 0.6)]
    cycles = [p.cycles_without_sync for p in plans]
    assert cycles == sorted(cycles, reverse=True)
    assert plans[0].serial > plans[-1].serial


@settings(max_examples=20)
@given(st.sampled_from(["gc2", "gc200", "bow", "c600"]),
       st.sampled_from(["float32", "float16", "float8_e4m3fn"]),
       st.integers(1, 2048), st.integers(1, 2048), st.integers(1, 2048), st.integers(0, 3))
def test_time_grows_with_work_and_never_beats_the_peak(chip, dtype, m, k, n, axis):
    small = ipu_sim.estimate_matmul(m, k, n, dtype=dtype, chip=chip)
    bigger = [m, k, n]
    bigger[axis % 3] *= 2
    large = ipu_sim.estimate_matmul(*bigger, dtype=dtype, chip=chip)
    assert large.cycles >= small.cycles
    for e in (small, large):
        assert 0 < e.tflops * 1e12 <= e.peak_flops


def test_twice_the_matmul_takes_twice_as_long_once_the_chip_is_full():
    base = ipu_sim.estimate_matmul(4096, 4096, 4096, dtype="float16", chip="bow")
    for shape in ((8192, 4096, 4096), (4096, 8192, 4096), (4096, 4096, 8192)):
        big = ipu_sim.estimate_matmul(*shape, dtype="float16", chip="bow")
        assert big.cycles / base.cycles == pytest.approx(2.0, rel=0.1)


def test_fp8_on_c600_is_faster_than_fp16():
    fp16 = ipu_sim.estimate_matmul(4096, 4096, 4096, dtype="float16", chip="c600")
    fp8 = ipu_sim.estimate_matmul(4096, 4096, 4096, dtype="float8_e4m3fn", chip="c600")
    assert fp8.peak_flops == C600.peak_flops("fp8", "fp16")
    assert 1.3 < fp16.seconds / fp8.seconds < 2.0


def test_gc2_square_matmuls_land_near_the_j19_measurements():
    # Calibration targets (J19): FP32 18.9, FP16.32 58.9 TFLOP/s at the largest sizes that fit.
    fp32 = ipu_sim.estimate_matmul(2944, 2944, 2944, dtype="float32", chip="gc2")
    fp16 = ipu_sim.estimate_matmul(2688, 2688, 2688, dtype="float16", partials="float32", chip="gc2")
    assert fp32.tflops == pytest.approx(18.9, rel=0.15)
    assert fp16.tflops == pytest.approx(58.9, rel=0.15)


def saturation_size(dtype, partials, largest, level=0.9):
    """Smallest n of a 256-step sweep from which TFLOP/s stays within ``level`` of n = largest."""
    ns = list(range(256, largest, 256)) + [largest]
    tflops = [ipu_sim.estimate_matmul(n, n, n, dtype=dtype, partials=partials, chip="gc2").tflops
              for n in ns]
    return next(n for i, n in enumerate(ns) if min(tflops[i:]) >= level * tflops[-1])


@pytest.mark.parametrize("dtype, partials, largest", [
    ("float32", None, 2944),
    pytest.param("float16", "float32", 2688, marks=pytest.mark.xfail(
        strict=True, reason="predicted 1792 (1.19x J19's ~1500; measured again 2026-11: "
        "unchanged): the model's FP16.32 curve is still climbing at n = 1536 (54 of 62 TFLOP/s): "
        "its plans there spend 23% of their cycles in exchange (13% at 2688), as the AMP runs 4x "
        "the FP32 rate on the same exchange; and its top point is 1.05x J19's. poplin's own "
        "liveness (ConvModel.cpp: temporaries = max of the AMP and reduction phases, not their "
        "sum) would bring this row to 1536 (1.02) but moves the in-band FP32 row from 1280 to "
        "1024 (0.68), so it is not adopted; see the largest-square xfail")),
])
def test_square_matmul_throughput_saturates_near_j19s_size(dtype, partials, largest):
    # J19: square poplin matmuls on GC2 saturate from n ~ 1500 (FP32 and FP16.32).
    assert saturation_size(dtype, partials, largest) == pytest.approx(1500, rel=0.15)


@pytest.mark.parametrize("arg, value, error", [
    ("m", -1, ValueError), ("k", 0, ValueError), ("n", -5, ValueError), ("batch", 0, ValueError),
    ("m", 2.5, TypeError),
])
def test_bad_sizes_name_the_argument(arg, value, error):
    sizes = dict(m=8, k=8, n=8, batch=1)
    sizes[arg] = value
    with pytest.raises(error, match=f"{arg} must be"):
        ipu_sim.estimate_matmul(sizes["m"], sizes["k"], sizes["n"], batch=sizes["batch"])


def test_bad_memory_proportion_is_named():
    with pytest.raises(ValueError, match="available_memory_proportion must be in"):
        ipu_sim.estimate_matmul(8, 8, 8, available_memory_proportion=1.5)
