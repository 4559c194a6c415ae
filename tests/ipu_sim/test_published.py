"""Configurations that ran on real IPU systems (graphcore/examples BERT and GPT-2 pre-training
recipes, on GC200 and Bow PODs) must fit; the margin of every IPU is reported, in the text and the
JSON."""

import functools
import json

import pytest

from ipu_sim.__main__ import main
from ipu_sim.published import PUBLISHED, estimate, get_published, trace_published

CASES = [(config.key, system) for config in PUBLISHED for system in config.systems]


@functools.lru_cache(maxsize=None)
def traced(key):
    return trace_published(get_published(key))


@functools.lru_cache(maxsize=None)
def published(key, system):
    return estimate(get_published(key), system, traced(key))


def margins(est):
    return {r.ipu: r.memory.margin_bytes for r in est.ipus}


@pytest.mark.slow
@pytest.mark.parametrize("key, system", CASES)
def test_published_configuration_fits_with_a_margin_on_every_ipu(key, system):
    est = published(key, system)
    config = get_published(key)
    assert est.layers_per_ipu == config.layers_per_ipu and est.replicas == config.replicas
    assert [r.available_memory_proportion for r in est.ipus] == list(
        config.available_memory_proportion)
    assert est.fits, f"{key} on {system}: margins per IPU {margins(est)}\n{est.out_of_memory}"
    for r in est.ipus:
        assert r.memory.margin_bytes == r.memory.sram_bytes - r.memory.peak_bytes >= 0
    d = est.to_dict()
    assert [i["memory"]["margin_bytes"] for i in d["ipus"]] == list(margins(est).values())


@pytest.mark.slow
@pytest.mark.parametrize("key", [c.key for c in PUBLISHED if len(c.systems) == 2])
def test_bow_holds_what_gc200_holds(key):
    # Same tiles and tile memory; plans are chosen in cycles, so the clock changes no byte.
    gc200, bow = (published(key, system) for system in get_published(key).systems)
    assert margins(gc200) == margins(bow)
    assert bow.step_seconds < gc200.step_seconds


@pytest.mark.slow
def test_phase_two_recipe_fits_as_a_user_runs_it(capsys):
    # The command with the recipe's own availableMemoryProportion per IPU.
    argv = ["bert-large", "--seq", "512", "--precision", "fp16", "--recompute",
            "--offload-optimizer", "--system", "gc200-pod16", "--pipeline", "3,7,7,7",
            "--replicas", "4", "--micro-batch", "2", "--grad-accum", "2048",
            "--available-memory-proportion", "0.10,0.15,0.15,0.15"]
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["fits"] and d["model"]["seq"] == 512 and d["seq"] == 512
    assert all(i["memory"]["margin_bytes"] > 0 for i in d["ipus"])
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "margin" in text and "availableMemoryProportion 0.1/0.15/0.15/0.15" in text


def test_unknown_published_configuration_is_named():
    with pytest.raises(ValueError, match="unknown published configuration 'bert-huge'"):
        get_published("bert-huge")
