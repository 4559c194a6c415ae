"""The published IPU training recipes of docs/reference/ipu_hardware.md, estimated end to end.

For each recipe ("Published training configurations" table): samples/s, step time, pipeline
bubble, utilisation and memory of every IPU of a replica, on the system the recipe names (GC200
POD16) and on a Bow POD16 side by side (Bow / GC200 ratio; the clock ratio 1.85 / 1.325 = 1.40 is
the bound when links do not matter). Then scaling from POD16 to POD64 to POD256 at a constant
global batch (gradient accumulation divided as replicas grow, as recipes keep the batch size of
their learning-rate schedule) and at a constant gradient accumulation (growing batch):
efficiency = (samples/s on N IPUs / samples/s on 16) / (N / 16).

Settings the reference does not give are marked "assumed" in the output. No published throughput
figure with a citable source is in the reference, so none is printed beside the predictions.

First, the fixture of published BERT configurations (``ipu_sim.published``: the graphcore/examples
config files, on the GC200 and Bow systems they ran on) with each IPU's memory margin and the
samples/s range the model's calibration error allows.

    python -m benchmarks.ipu_systems [--recipes bert-large-ph1,gpt2-medium] [--no-bow] [--no-published]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import ipu_sim
from ipu_sim import published, workloads
from ipu_sim.system import compose, estimate_system


@dataclass(frozen=True)
class Recipe:
    key: str
    model: str
    seq: int
    micro_batch: int
    pipeline: tuple[int, ...] | int
    replicas: int
    grad_accum: int
    recompute: bool
    offload: bool
    amp: tuple  # availableMemoryProportion candidates (a value or one per IPU), largest first
    assumed: str


DEFAULT_AMP = (0.6, 0.45, 0.3, 0.2, 0.15)  # Poplar's default 0.6 first
# Rows of the reference table; "assumed" lists what the row leaves open and what we used. The
# availableMemoryProportion is the largest candidate at which every IPU fits (as one tunes it).
RECIPES = (
    Recipe("bert-large-ph1", "bert-large", 128, 8, (3, 7, 7, 7), 4, 2048, True, True,
           ((0.15, 0.25, 0.25, 0.25),), "none: the PyTorch config pretrain_large_128"),
    Recipe("bert-large-ph2-384", "bert-large", 384, 2, (3, 7, 7, 7), 4, 2048, True, True,
           ((0.10, 0.15, 0.15, 0.15),), "AMP of the seq-512 config pretrain_large_512"),
    Recipe("bert-large-ph2-512", "bert-large", 512, 2, (3, 7, 7, 7), 4, 2048, True, True,
           ((0.10, 0.15, 0.15, 0.15),), "none: the PyTorch config pretrain_large_512"),
    Recipe("bert-base-ph1", "bert-base", 128, 32, (0, 4, 4, 4), 4, 512, True, True, (0.25,),
           "none: the PyTorch config pretrain_base_128"),
    Recipe("gpt2-medium", "gpt2-medium", 1024, 1, (0, 3, 3, 3, 3, 4, 4, 4), 2, 4096, True, True,
           DEFAULT_AMP, "GC200 POD16, micro-batch 1, recompute, optimizer off-chip, AMP searched"),
    Recipe("gpt2-large", "gpt2-large", 1024, 1, 16, 1, 8192, True, True, DEFAULT_AMP,
           "GC200 POD16, micro-batch 1, layers balanced automatically over 16 IPUs, recompute, "
           "optimizer off-chip, AMP searched"),
)


def run(recipe: Recipe, system: str, program, work, amp: float) -> ipu_sim.SystemEstimate:
    return estimate_system(
        program, system=system, pipeline=recipe.pipeline, place=work.place,
        micro_batch=recipe.micro_batch, seq=recipe.seq, replicas=recipe.replicas,
        grad_accum=recipe.grad_accum, recompute=recipe.recompute,
        offload_optimizer=recipe.offload, available_memory_proportion=amp)


def fitting(recipe: Recipe, system: str, program, work) -> tuple[ipu_sim.SystemEstimate, float]:
    """The estimate at the largest AMP candidate that fits (else at the smallest)."""
    for amp in recipe.amp:
        est = run(recipe, system, program, work, amp)
        if est.fits:
            break
    return est, amp


def per_ipu_table(est: ipu_sim.SystemEstimate) -> list[str]:
    rows = []
    for r in est.ipus:
        m = r.memory
        rows.append(f"    IPU {r.ipu}: {r.holds()[:34]:34s} busy {100 * r.busy_seconds / est.step_seconds:5.1f}%"
                    f"  FLOP util {100 * est.ipu_utilisation(r):5.1f}%  peak tile "
                    f"{m.peak_bytes / 1024:6.1f} / {m.sram_bytes / 1024:.0f} KiB "
                    f"({m.phase}){'' if m.fits else f'  OVER by {m.over_bytes:,} B'}")
    return rows


def scaling(recipe: Recipe, est: ipu_sim.SystemEstimate, chip: str) -> list[str]:
    ipus = est.ipus_per_replica
    base = None
    lines = []
    for pod in (16, 64, 256):
        replicas = pod // ipus
        const_batch = max(1, recipe.grad_accum * recipe.replicas // replicas)
        row = []
        for accum in (const_batch, recipe.grad_accum):
            e = compose(est.costs, f"{chip}-pod{pod}", replicas=replicas, grad_accum=accum,
                        micro_batch=recipe.micro_batch, seq=recipe.seq)
            row.append(e)
        if base is None:
            base = row
        eff = [e.samples_per_second / b.samples_per_second / (pod / 16) for e, b in zip(row, base)]
        lines.append(f"    {chip}-pod{pod:<4d} {replicas:3d} replicas | constant batch: grad-accum "
                     f"{row[0].grad_accum:5d} {row[0].samples_per_second:10,.0f} samples/s eff "
                     f"{100 * eff[0]:6.2f}% (all-reduce {100 * row[0].allreduce_seconds / row[0].step_seconds:4.1f}%, "
                     f"bubble {100 * row[0].pipeline.bubble_fraction:4.1f}%) | constant grad-accum: "
                     f"{row[1].samples_per_second:10,.0f} samples/s eff {100 * eff[1]:6.2f}%")
    return lines


def published_table() -> None:
    """Every published configuration on its systems: fits, margin per IPU, samples/s and range."""
    print("Published configurations (ipu_sim.published): margin per IPU = tile memory left on "
          "its fullest tile")
    for config in published.PUBLISHED:
        program = published.trace_published(config)
        for system in config.systems:
            est = published.estimate(config, system, program)
            low, high = est.samples_per_second_range
            margins = "  ".join(f"IPU{r.ipu} {r.memory.margin_bytes / 1024:6.1f}"
                                for r in est.ipus)
            print(f"  {config.key:30s} {system:12s} fits: {'yes' if est.fits else 'NO '}  margin KiB "
                  f"{margins}  {est.samples_per_second:9,.1f} samples/s ({low:,.1f}-{high:,.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", default=",".join(r.key for r in RECIPES))
    parser.add_argument("--no-bow", action="store_true", help="skip the Bow POD16 comparison")
    parser.add_argument("--no-published", action="store_true",
                        help="skip the published-configuration fixture")
    args = parser.parse_args()
    if not args.no_published:
        published_table()
    chosen = [r for r in RECIPES if r.key in args.recipes.split(",")]
    print("Predictions only: docs/reference/ipu_hardware.md holds no published throughput with a "
          "citable source for these recipes.")
    for recipe in chosen:
        start = time.perf_counter()
        work = workloads.build(recipe.model, micro_batch=recipe.micro_batch, seq=recipe.seq)
        program = ipu_sim.trace(work.step, *work.args)
        gc200, amp = fitting(recipe, "gc200-pod16", program, work)
        print(f"\n== {recipe.key}: {recipe.model}, seq {recipe.seq}, micro-batch {recipe.micro_batch}, "
              f"pipeline {list(gc200.layers_per_ipu)}, {recipe.replicas} replicas, grad-accum "
              f"{recipe.grad_accum}, fp16")
        print(f"   assumed: {recipe.assumed}; availableMemoryProportion {amp}")
        print(f"   gc200-pod16: {gc200.samples_per_second:,.1f} samples/s, step {gc200.step_seconds:.3f} s, "
              f"bubble {100 * gc200.pipeline.bubble_fraction:.2f}%, utilisation "
              f"{100 * gc200.utilisation:.1f}%, fits: {'yes' if gc200.fits else 'NO'}")
        low, high = gc200.samples_per_second_range
        print(f"   within the model's calibration error: {low:,.1f}-{high:,.1f} samples/s")
        for note in gc200.notes:
            print(f"   note: {note}")
        print("\n".join(per_ipu_table(gc200)))
        if not args.no_bow:
            bow = run(recipe, "bow-pod16", program, work, amp)
            print(f"   bow-pod16:   {bow.samples_per_second:,.1f} samples/s; Bow / GC200 = "
                  f"{bow.samples_per_second / gc200.samples_per_second:.3f} (clock ratio 1.396)")
        print("   scaling:")
        print("\n".join(scaling(recipe, gc200, "gc200")))
        print(f"   ({time.perf_counter() - start:.1f} s to estimate)")


if __name__ == "__main__":
    main()
