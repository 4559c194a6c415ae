"""The IPU table: what out-of-the-box FP8 training buys over FP16 on Graphcore IPUs, per ipu_sim.

    python -m experiments.ipu --out results/ipu              # the full table (about 6 minutes on 2 busy cores)
    python -m experiments.ipu --quick                        # a smoke test: BERT-Base on a Bow POD16 (seconds)
    python -m experiments.ipu --model bert-base,gpt2-small --system c600-x8 --out /tmp/ipu

For BERT-Base/Large (seq 128, pre-training phase 1) and GPT-2 small/medium/large (seq 1024), on a
Bow POD16 and on eight C600 cards, one weight update of training is estimated with
``ipu_sim.system.estimate_system`` twice under one configuration: FP16 matmuls (fp16 inputs and
partials) and FP8 matmuls (FP8 inputs, fp16 partials, fp16 weights). Unit scaling is what makes the
FP8 run "out of the box": its scales are compile-time constants, so the FP8 step has exactly the
FP16 step's ops with narrower matmul operands -- no loss scaling, no amax histories or per-tensor
scale updates. The model prices it that way (casts fused, no bookkeeping ops); a delayed-scaling
recipe would cost more than the FP8 rows show.

Configurations: the published recipes of docs/reference/ipu_hardware.md ("Published training
configurations", :data:`ipu_sim.published.PUBLISHED`: the PyTorch recipe at the table's sequence
length) where they exist, exactly as published -- layers per IPU, micro-batch, replicas, gradient
accumulation and each IPU's availableMemoryProportion; elsewhere the automatic balancer
(``pipeline=N``) over the fewest IPUs per replica (1, 2, 4, 8) at which FP16 fits (the output head
on IPU 0 as published, else on the last IPU: without streaming memory the embeddings, the tied head
and their optimizer state do not fit on one IPU), then the largest micro-batch that fits, replicas
filling the system and the global batch of the published recipe of the same family. Everything a
row assumes is in its ``assumed`` field. For each balanced row the largest availableMemoryProportion
candidate at which every IPU fits is used (as one tunes it); a row that fits nowhere says by how much.

Writes to --out: ``ipu_table.json`` (rows, FP8-vs-FP16 comparisons with a verdict computed from the
numbers, assumptions, run metadata), ``ipu_table.csv``, ``ipu_table.png`` (throughput and per-IPU
peak tile memory) and ``README.md`` (the command and the table). ``--quick`` is a smoke test: one row,
written to a temporary directory unless ``--out`` is given. The committed table (results/ipu) is
checked against this code by tests/experiments/test_committed_results.py.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from experiments.cli import SMOKE_TEST, fill_quick_defaults, quick_help, quick_out
from experiments.inputs import ScriptParser, check_out_dir
from experiments.results import run_metadata, write_csv, write_json, write_text
from ipu_sim.hardware import C600, MK2_LINKS, SYSTEMS, System
from ipu_sim.published import PublishedConfig, get_published
from ipu_sim.system import SystemEstimate, estimate_system
from ipu_sim.trace import trace
from ipu_sim.workloads import PRESETS, build

PRECISIONS = ("fp16", "fp8")
MODELS = ("bert-base", "bert-large", "gpt2-small", "gpt2-medium", "gpt2-large")
KIB = 1024

# Assumption (not in the reference, whose C600 column gives 4 IPU-Links per card and no system):
# eight C600 cards in one server, joined in a ring by IPU-Link cables. Each card is its own
# "machine", so every hop is priced at J19's measured cross-board rate (27.7 GB/s one-way, 0.524 us,
# +0.16 us per hop; ipu_sim.hardware.MK2_LINKS). No streaming memory (C600 "streaming memory: none").
C600_X8 = System("c600-x8", C600, ipus=8, ipus_per_machine=1, link_domain_ipus=8, links=MK2_LINKS,
                 description="8 C600 cards in one server, IPU-Link cable ring (assumed)")
SYSTEM_CHOICES: Mapping[str, System] = {"bow-pod16": SYSTEMS["bow-pod16"], "c600-x8": C600_X8}

BALANCER_DEPTHS = (1, 2, 4, 8)  # IPUs per replica tried, fewest first
BALANCER_AMP = (0.6, 0.3, 0.15)  # availableMemoryProportion candidates, Poplar's 0.6 first
# A throughput or memory ratio within 1% of 1 is "no change": the model's own noise-free arithmetic
# moves by less than this when only a rounding of the plan changes.
SAME = 0.01


@dataclass(frozen=True)
class Setup:
    """How one model is trained on one system (before the precision is chosen).

    ``pipeline`` is layers per IPU (published) or an IPU count for the automatic balancer; ``amp`` the
    availableMemoryProportion candidates, each one value for every IPU or one value per IPU.
    """

    model: str
    system: str
    seq: int
    micro_batch: int
    pipeline: tuple[int, ...] | int
    replicas: int
    grad_accum: int
    recompute: bool
    offload_optimizer: bool
    amp: tuple[float | tuple[float, ...], ...]
    source: str  # "published" or "balancer"
    assumed: str
    head_ipu: int = 0  # IPU of the (tied) output head; embeddings stay on IPU 0

    @property
    def ipus_per_replica(self) -> int:
        return self.pipeline if isinstance(self.pipeline, int) else len(self.pipeline)


# The published recipe of each model at the table's sequence length (ipu_sim.published: PyTorch, POD16).
# They are GC200 POD16 recipes; a Bow POD16 has the same machines, links and tile memory, so they carry
# over unchanged (a Bow-2000 runs IPU-M2000 programs as they are).
PUBLISHED_RECIPES = {"bert-base": "pytorch-bert-base-128-pod16", "bert-large": "pytorch-bert-large-128-pod16",
                     "gpt2-medium": "pytorch-gpt2-medium-pod16", "gpt2-large": "pytorch-gpt2-large-1024-pod16"}
PUBLISHED_SYSTEM = "bow-pod16"


def published_setup(config: PublishedConfig, system: str = PUBLISHED_SYSTEM) -> Setup:
    """``config`` on ``system`` exactly as published: its one availableMemoryProportion candidate is the
    recipe's per-IPU list."""
    amp = config.available_memory_proportion
    return Setup(config.model, system, config.seq, config.micro_batch, tuple(config.layers_per_ipu),
                 config.replicas, config.grad_accum, config.recompute, config.offload_optimizer, (tuple(amp),),
                 "published", f"{config.source} as published (availableMemoryProportion {list(amp)} per IPU"
                 f"{', recompute' if config.recompute else ''}"
                 f"{', optimizer off-chip' if config.offload_optimizer else ''})")


PUBLISHED: Mapping[str, Setup] = {model: published_setup(get_published(key))
                                  for model, key in PUBLISHED_RECIPES.items()}
# Family recipe for models without a published one: (micro-batch, samples per weight update).
FAMILY_BATCH = {"bert": (32, 32 * 512 * 4), "gpt": (1, 4096 * 2)}


def setup_for(model: str, system: System) -> Setup | None:
    """The published setup of ``model`` on ``system``, or None when the balancer must choose."""
    published = PUBLISHED.get(model)
    return published if published and published.system == system.name else None


def balancer_setup(model: str, system: System, depth: int, micro_batch: int | None = None,
                   head_ipu: int = 0) -> Setup:
    """The automatic balancer over ``depth`` IPUs per replica at ``micro_batch`` (default: the
    family's), keeping the family's global batch (``grad_accum`` rounded up so that a weight update
    has at least that many samples), with the output head on ``head_ipu``."""
    family = PRESETS[model].kind
    published = PUBLISHED.get(model)
    family_mb, samples = ((published.micro_batch, published.micro_batch * published.grad_accum
                           * published.replicas) if published else FAMILY_BATCH[family])
    micro_batch = family_mb if micro_batch is None else micro_batch
    replicas = system.ipus // depth
    grad_accum = max(1, math.ceil(samples / (micro_batch * replicas)))
    offload = system.has_streaming_memory
    assumed = (f"no published recipe for {system.name}: automatic balancer over the fewest IPUs per "
               f"replica (of {list(BALANCER_DEPTHS)}) that fit in FP16, then the largest micro-batch "
               f"(halving from {family_mb}), output head on IPU 0 as published or else on the last IPU, "
               f"replicas filling the system; {samples:,} samples per "
               f"update as the {'published ' + model if published else family.upper() + ' family'} "
               f"recipe; recompute{', optimizer off-chip' if offload else ', optimizer on chip (no streaming memory)'}")
    return Setup(model, system.name, PRESETS[model].seq, micro_batch, depth, replicas, grad_accum,
                 True, offload, BALANCER_AMP, "balancer", assumed, head_ipu)


# ---------------------------------------------------------------------------------------------------
# Estimating.

@dataclass(frozen=True)
class Run:
    """One estimate: a setup at one precision and availableMemoryProportion."""

    setup: Setup
    precision: str
    amp: float
    estimate: SystemEstimate


class Traced:
    """Traces each (model, micro-batch, seq) once; precision is applied per estimate."""

    def __init__(self):
        self._cache: dict[tuple, tuple] = {}

    def __call__(self, setup: Setup):
        key = (setup.model, setup.micro_batch, setup.seq)
        if key not in self._cache:
            work = build(setup.model, micro_batch=setup.micro_batch, seq=setup.seq, dtype="float16")
            self._cache[key] = (trace(work.step, *work.args), dict(work.place))
        return self._cache[key]


def estimate(setup: Setup, precision: str, traced: Traced) -> Run:
    """``setup`` at ``precision`` with the largest AMP candidate at which every IPU fits (else the
    smallest candidate, which is closest to fitting)."""
    program, place = traced(setup)
    system = SYSTEM_CHOICES[setup.system]
    for amp in setup.amp:
        est = estimate_system(
            program, system=system, pipeline=setup.pipeline, place={**place, "head": setup.head_ipu},
            micro_batch=setup.micro_batch, seq=setup.seq, replicas=setup.replicas,
            grad_accum=setup.grad_accum, recompute=setup.recompute,
            offload_optimizer=setup.offload_optimizer, precision=precision,
            available_memory_proportion=amp)
        if est.fits:
            break
    return Run(setup, precision, amp, est)


def fewest_ipus(model: str, system: System, precision: str, traced: Traced, log) -> tuple[int, int] | None:
    """``(IPUs per replica, head IPU)``: the fewest IPUs at which ``precision`` fits with
    micro-batch 1 and the smallest availableMemoryProportion candidate, the head on IPU 0 (as
    published) tried before the last IPU (a larger micro-batch needs more memory, so a depth that
    fails this probe is skipped without trying any); None if nothing fits."""
    for depth in (d for d in BALANCER_DEPTHS if d <= system.ipus):
        for head in dict.fromkeys((0, depth - 1)):
            probe = replace(balancer_setup(model, system, depth, 1, head), amp=BALANCER_AMP[-1:])
            fits = estimate(probe, precision, traced).estimate.fits
            log(f"  {model} on {system.name}: {depth} IPU(s) per replica, head on IPU {head}, "
                f"micro-batch 1: {precision} {'fits' if fits else 'does not fit'}")
            if fits:
                return depth, head
    return None


def first_fit(model: str, system: System, precision: str, traced: Traced, log) -> Run | None:
    """``precision`` at the placement :func:`fewest_ipus` finds, at the largest micro-batch (halving
    from the family's) that fits there; None if nothing fits."""
    found = fewest_ipus(model, system, precision, traced, log)
    if found is None:
        return None
    depth, head = found
    mb = balancer_setup(model, system, depth).micro_batch
    while mb >= 1:
        run = estimate(balancer_setup(model, system, depth, mb, head), precision, traced)
        log(f"  {model} on {system.name}: {depth} IPU(s) per replica, head on IPU {head}, micro-batch "
            f"{mb}: {precision} {'fits' if run.estimate.fits else 'does not fit'}")
        if run.estimate.fits:
            return run
        mb //= 2
    return None


def balanced_runs(model: str, system: System, traced: Traced, log) -> list[Run]:
    """FP16 and FP8 at the setup :func:`first_fit` finds for FP16; else for FP8; else at the deepest
    pipeline with micro-batch 1 (closest to fitting), both marked as not fitting."""
    for precision in PRECISIONS:
        run = first_fit(model, system, precision, traced, log)
        if run is not None:
            other = estimate(run.setup, PRECISIONS[1 - PRECISIONS.index(precision)], traced)
            return sorted([run, other], key=lambda r: PRECISIONS.index(r.precision))
    deepest = max(d for d in BALANCER_DEPTHS if d <= system.ipus)
    return [estimate(balancer_setup(model, system, deepest, 1), p, traced) for p in PRECISIONS]


def runs_for(model: str, system: System, traced: Traced, log) -> list[Run]:
    setup = setup_for(model, system)
    if setup is None:
        return balanced_runs(model, system, traced, log)
    runs = [estimate(setup, p, traced) for p in PRECISIONS]
    log(f"  {model} on {system.name}: published recipe: "
        + ", ".join(f"{r.precision} {'fits' if r.estimate.fits else 'does not fit'}" for r in runs))
    return runs


# ---------------------------------------------------------------------------------------------------
# Rows, comparisons, verdicts.

def row(run: Run) -> dict[str, Any]:
    """One table row: configuration, throughput and per-IPU memory of an estimate."""
    e, s = run.estimate, run.setup
    peaks = [r.memory.peak_bytes / KIB for r in e.ipus]
    totals = [r.memory.total_bytes / 1e6 for r in e.ipus]
    return {
        "model": s.model, "system": s.system, "chip": e.system.chip.name,
        "fp8_unit": e.system.chip.supports("fp8"), "precision": run.precision,
        "matmuls": e.precision, "seq": s.seq, "micro_batch": s.micro_batch,
        "layers_per_ipu": list(e.layers_per_ipu), "ipus_per_replica": e.ipus_per_replica,
        "replicas": e.replicas, "grad_accum": e.grad_accum, "samples_per_step": e.samples_per_step,
        "recompute": s.recompute, "offload_optimizer": s.offload_optimizer,
        "available_memory_proportion": run.amp, "head_ipu": s.head_ipu, "config_source": s.source,
        "assumed": s.assumed,
        "samples_per_s": e.samples_per_second, "tokens_per_s": e.tokens_per_second,
        "step_s": e.step_seconds, "utilisation": e.utilisation, "fits": e.fits,
        "sram_kib": e.system.chip.sram_bytes / KIB, "peak_tile_kib": max(peaks),
        "ipu_peak_tile_kib": peaks, "max_ipu_total_mb": max(totals), "ipu_total_mb": totals,
        "out_of_memory": e.out_of_memory, "notes": list(e.notes),
    }


def verdict(fp16: Mapping[str, Any], fp8: Mapping[str, Any]) -> str:
    """What FP8 buys over FP16 on this row, worded from the ratios (never from the chip name alone)."""
    speed = fp8["samples_per_s"] / fp16["samples_per_s"]
    memory = fp8["peak_tile_kib"] / fp16["peak_tile_kib"]
    fit = ("; FP8 makes it fit" if fp8["fits"] and not fp16["fits"] else
           "; neither fits" if not (fp8["fits"] or fp16["fits"]) else
           "; FP16 fits but FP8 does not" if fp16["fits"] and not fp8["fits"] else "")
    change = f"{speed:.2f}x samples/s, peak tile memory {memory - 1:+.1%}"
    if fp8["fp8_unit"]:
        return f"FP8 AMP (twice the FP16 rate): {change}{fit}"
    if abs(speed - 1) < SAME and abs(memory - 1) < SAME and not fit:
        return f"nothing: no FP8 unit, throughput and memory within {SAME:.0%} of FP16"
    return (f"bandwidth/memory only (no FP8 unit: FP8 operands move and are stored as bytes, "
            f"multiply at the FP16 rate): {change}{fit}")


def compare(fp16: Mapping[str, Any], fp8: Mapping[str, Any]) -> dict[str, Any]:
    return {"model": fp16["model"], "system": fp16["system"], "fp8_unit": fp8["fp8_unit"],
            "throughput_ratio": fp8["samples_per_s"] / fp16["samples_per_s"],
            "peak_tile_ratio": fp8["peak_tile_kib"] / fp16["peak_tile_kib"],
            "total_mb_ratio": fp8["max_ipu_total_mb"] / fp16["max_ipu_total_mb"],
            "fp16_fits": fp16["fits"], "fp8_fits": fp8["fits"], "verdict": verdict(fp16, fp8)}


# ---------------------------------------------------------------------------------------------------
# Output.

CSV_COLUMNS = ("model", "system", "chip", "precision", "config_source", "layers_per_ipu", "head_ipu", "replicas",
               "micro_batch", "grad_accum", "samples_per_step", "available_memory_proportion",
               "samples_per_s", "tokens_per_s", "step_s", "utilisation", "fits", "peak_tile_kib",
               "sram_kib", "max_ipu_total_mb")


def csv_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The :data:`CSV_COLUMNS` of each row, lists (layers or availableMemoryProportion per IPU) space-separated."""
    cell = lambda v: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return [{k: cell(r[k]) for k in CSV_COLUMNS} for r in rows]


def markdown_table(rows: Sequence[Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]]) -> str:
    """The table as Markdown: one line per model and system, FP16 and FP8 side by side."""
    head = ("| model | system | layers per IPU x replicas | FP16 samples/s | FP8 samples/s | FP8/FP16 "
            "| FP16 peak tile KiB | FP8 peak tile KiB | what FP8 buys |\n"
            "|---|---|---|--:|--:|--:|--:|--:|---|")
    by_key = {(r["model"], r["system"], r["precision"]): r for r in rows}
    lines = [head]
    for c in comparisons:
        a, b = (by_key[(c["model"], c["system"], p)] for p in PRECISIONS)
        config = f"{a['layers_per_ipu']} x {a['replicas']}" + (
            f" / FP8 {b['layers_per_ipu']}" if b["layers_per_ipu"] != a["layers_per_ipu"] else "") + (
            f", head on IPU {a['head_ipu']}" if a.get("head_ipu") else "")
        lines.append(f"| {c['model']} | {c['system']} | {config} | {_throughput(a)} | {_throughput(b)} "
                     f"| {c['throughput_ratio']:.2f} | {_memory(a)} | {_memory(b)} | {c['verdict']} |")
    return "\n".join(lines)


def _throughput(r: Mapping[str, Any]) -> str:
    return f"{r['samples_per_s']:,.1f}" + ("" if r["fits"] else " (does not fit)")


def _memory(r: Mapping[str, Any]) -> str:
    return f"{r['peak_tile_kib']:.0f} / {r['sram_kib']:.0f}"


def plot(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Bar chart: tokens/s (log axis from the decade below the smallest bar) and peak tile memory of
    the fullest IPU, FP16 vs FP8, one column per system; hatched bars do not fit in tile memory."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig = Figure(figsize=(max(7.0, 5.5 * len(systems)), 7.5), layout="constrained")
    axes = fig.subplots(2, len(systems), squeeze=False)
    colours = {"fp16": "tab:blue", "fp8": "tab:orange"}
    floor = 10 ** math.floor(math.log10(min(r["tokens_per_s"] for r in rows)))
    for j, name in enumerate(systems):
        chosen = [r for r in rows if r["system"] == name]
        models = list(dict.fromkeys(r["model"] for r in chosen))
        for k, precision in enumerate(PRECISIONS):
            mine = {r["model"]: r for r in chosen if r["precision"] == precision}
            xs = [i + (k - 0.5) * 0.38 for i in range(len(models))]
            for ax, key in ((axes[0, j], "tokens_per_s"), (axes[1, j], "peak_tile_kib")):
                bars = ax.bar(xs, [mine[m][key] for m in models], 0.38, color=colours[precision])
                for bar, m in zip(bars, models):
                    if not mine[m]["fits"]:
                        bar.set_hatch("//")
                        bar.set_edgecolor("black")
        axes[1, j].axhline(chosen[0]["sram_kib"], color="black", lw=1, ls="--")
        axes[0, j].set_yscale("log")
        axes[0, j].set_ylim(bottom=floor)
        unit = "FP8 AMP" if chosen[0]["fp8_unit"] else "no FP8 unit"
        axes[0, j].set_title(f"{name} ({chosen[0]['chip']} chip, {unit})")
        axes[0, j].set_ylabel("training tokens/s")
        axes[1, j].set_ylabel("peak tile memory of the fullest IPU (KiB)")
        for ax in axes[:, j]:
            ax.set_xticks(range(len(models)), models, rotation=15)
    handles = [Patch(color=colours[p], label=p.upper() + " matmuls") for p in PRECISIONS]
    handles += [Patch(facecolor="white", edgecolor="black", hatch="//", label="does not fit"),
                axes[1, 0].plot([], [], color="black", ls="--", lw=1, label="tile SRAM")[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=9)
    fig.suptitle("IPU training estimates (ipu_sim): FP16 vs FP8")
    fig.savefig(path, dpi=110)


NOTES_HEADING = "## Changes"  # a README section written by hand, which regenerating the table keeps


def readme(command: str, table: str, quick: bool, notes: str = "") -> str:
    """The README of a table made by ``command``, with the hand-written ``notes`` section (if any) last."""
    smoke = f"{SMOKE_TEST}\n\n" if quick else ""
    return (f"# IPU table{' (quick)' if quick else ''}\n\n{smoke}"
            "FP16 vs FP8 training throughput and per-IPU memory on IPU systems, estimated with "
            "`ipu_sim` (a performance model, not measurements). See `python -m experiments.ipu --help` "
            "for what is assumed; each row's assumptions are in `ipu_table.json`.\n\n"
            f"Made by:\n\n    {command}\n\n{table}\n" + (f"\n{notes.strip()}\n" if notes.strip() else ""))


def readme_notes(path: Path) -> str:
    """The hand-written section of the README at ``path`` (from :data:`NOTES_HEADING` on), or ``""``."""
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    at = text.find(f"\n{NOTES_HEADING}")
    return text[at:] if at >= 0 else ""


def setup_of_row(r: Mapping[str, Any]) -> Setup:
    """The configuration a table row records: a published row's layers per IPU, a balanced row's IPU count
    (the balancer splits the layers again), and the availableMemoryProportion the row used."""
    amp = tuple(r["available_memory_proportion"]) if isinstance(r["available_memory_proportion"], list) \
        else r["available_memory_proportion"]
    pipeline = tuple(r["layers_per_ipu"]) if r["config_source"] == "published" else r["ipus_per_replica"]
    return Setup(r["model"], r["system"], r["seq"], r["micro_batch"], pipeline, r["replicas"], r["grad_accum"],
                 r["recompute"], r["offload_optimizer"], (amp,), r["config_source"], r["assumed"], r["head_ipu"])


def rerun_row(r: Mapping[str, Any], traced: Traced) -> dict[str, Any]:
    """The row today's ``ipu_sim`` gives for the configuration of row ``r`` (see :func:`setup_of_row`)."""
    return row(estimate(setup_of_row(r), r["precision"], traced))


# ---------------------------------------------------------------------------------------------------
# Command line.

DEFAULTS: Mapping[str, tuple[Any, Any]] = {
    "model": (",".join(MODELS), "bert-base"), "system": ("bow-pod16,c600-x8", "bow-pod16"),
    "out": ("results/ipu", str(quick_out("ipu"))),
}


def _help(text: str, dest: str) -> str:
    return quick_help(DEFAULTS, text, dest)


def make_parser() -> argparse.ArgumentParser:
    """The options of ``python -m experiments.ipu``."""
    doc = __doc__.split("\n\n", 1)
    p = ScriptParser(prog="python -m experiments.ipu", description=doc[0], epilog=doc[1],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke test: one small model on one system (seconds)")
    p.add_argument("--model", "--models", dest="model",
                   help=_help(f"comma-separated models of {', '.join(MODELS)}", "model"))
    p.add_argument("--system", "--systems", dest="system",
                   help=_help(f"comma-separated systems of {', '.join(SYSTEM_CHOICES)}", "system"))
    p.add_argument("--out", help=_help("output directory", "out"))
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``: the lists of models and systems, checked; unset options from the defaults or
    ``--quick`` values; usage error (exit 2) for an unknown name or an ``--out`` that is a file."""
    parser = make_parser()
    args = parser.parse_args(argv)
    fill_quick_defaults(args, DEFAULTS)
    args.model = _names(parser, "--model", args.model, MODELS)
    args.system = _names(parser, "--system", args.system, tuple(SYSTEM_CHOICES))
    try:
        check_out_dir(args.out, "--out")
    except ValueError as err:
        parser.error(str(err))
    return args


def _names(parser: argparse.ArgumentParser, flag: str, text: str, valid: Sequence[str]) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in valid]
    if bad or not names:
        parser.error(f"{flag}: unknown {bad or 'empty list'}; choose from {', '.join(valid)}")
    return names


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Estimate every model on every system, write the files of the module docstring, print the table."""
    args = parse(argv)
    if args.quick:
        print(SMOKE_TEST, flush=True)
    command = "python -m experiments.ipu " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    start, traced, runs = time.perf_counter(), Traced(), []
    for name in args.system:
        for model in args.model:
            runs.append(runs_for(model, SYSTEM_CHOICES[name], traced, print))
    rows = [row(r) for pair in runs for r in pair]
    comparisons = [compare(row(a), row(b)) for a, b in runs]
    table = markdown_table(rows, comparisons)
    result = {"quick": args.quick, "command": command, "models": args.model, "systems": args.system,
              "precisions": list(PRECISIONS), "rows": rows, "comparisons": comparisons,
              "c600_x8_assumption": C600_X8.description, "seconds": time.perf_counter() - start,
              "run": run_metadata()}
    out = Path(args.out)
    write_json(out / "ipu_table.json", result)
    write_csv(out / "ipu_table.csv", csv_rows(rows), CSV_COLUMNS)
    plot(rows, out / "ipu_table.png")
    write_text(out / "README.md", readme(command, table, args.quick, readme_notes(out / "README.md")))
    print(table)
    print(f"wrote {out / 'ipu_table.json'}, {out / 'ipu_table.csv'}, {out / 'ipu_table.png'}, "
          f"{out / 'README.md'}")
    if args.quick:
        print(SMOKE_TEST)
    return result


if __name__ == "__main__":
    main()
