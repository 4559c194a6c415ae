"""Tile mapping of reductions: poplibs' stage structure, the partials walk, J19's reduction rows."""

import jax
import jax.numpy as jnp
import pytest

import ipu_sim
from ipu_sim.costs import partials_cycles
from ipu_sim.hardware import BOW, GC2
from ipu_sim.params import ModelParams

PARAMS = ModelParams()
ONE_PER_TILE = PARAMS.replace(min_bytes_per_tile=4)  # J19 maps one fp32 on each tile


def scalar_sum(elements, params=PARAMS, chip="gc2"):
    x = jax.ShapeDtypeStruct((elements,), jnp.float32)
    return ipu_sim.estimate(jnp.sum, x, chip=chip, params=params)


def test_reduce_of_one_fp32_per_tile_to_a_scalar_is_near_j19():
    # J19 "reduce 1 fp32 per tile (popops::reduce), 1 IPU: 1.97 us" on GC2.
    e = scalar_sum(GC2.tiles, ONE_PER_TILE)
    assert e.seconds * 1e6 == pytest.approx(1.97, rel=0.15)


def test_reduce_of_25k_fp32_per_tile_is_near_j19_throughput():
    # J19 "reduction throughput, 25k values per tile: 6.76 TB/s on 1 IPU".
    e = scalar_sum(GC2.tiles * 25_000)
    assert GC2.tiles * 25_000 * 4 / e.seconds / 1e12 == pytest.approx(6.76, rel=0.15)


@pytest.mark.parametrize("chip", ["gc2", "bow"])
def test_reduce_takes_at_most_two_exchange_stages_after_the_on_tile_one(chip):
    # poplibs: on-tile stage, optional intermediate-to-intermediate, intermediate-to-output.
    e = scalar_sum(BOW.tiles if chip == "bow" else GC2.tiles, ONE_PER_TILE, chip)
    assert e.supersteps == 3
    assert scalar_sum(8, ONE_PER_TILE, chip).supersteps == 2  # 8 partials: one stage is cheaper


def test_every_region_of_partials_costs_each_worker_a_walk():
    # One output vector: an extra region adds a load and an add plus the descriptor walk, all
    # issued by one worker at one instruction in 6 cycles.
    per_region = GC2.workers * (2 + PARAMS.partials_region_instructions)
    for regions in (1, 5, 40):
        more = partials_cycles(1, regions + 1, 4, 2 * (regions + 1) + 1, GC2, PARAMS)
        less = partials_cycles(1, regions, 4, 2 * regions + 1, GC2, PARAMS)
        assert more - less == per_region
    assert partials_cycles(0, 3, 4, 7, GC2, PARAMS) == 0


def test_a_costlier_region_walk_never_speeds_a_reduction_up():
    cheap = scalar_sum(GC2.tiles, ONE_PER_TILE.replace(partials_region_instructions=0))
    costly = scalar_sum(GC2.tiles, ONE_PER_TILE.replace(partials_region_instructions=8))
    assert cheap.cycles < scalar_sum(GC2.tiles, ONE_PER_TILE).cycles < costly.cycles
