"""The gradient-shift experiment: char LMs trained with the backward pass multiplied by 2^-k.

    python -m experiments.shift --quick                                   # a smoke test of the pipeline
    python -m experiments.shift --out results/shift --runs /tmp/shift-runs --workers 2
    python -m experiments.shift summarise --out results/shift --runs /tmp/shift-runs
    python -m experiments.shift train --variant fp16-standard --backward-shift 12 --out /tmp/one

At small budgets the gradients of an FP16 backward pass are still large enough that FP16 without
loss scaling loses little; the unit scaling paper's failure shows in larger and longer runs, whose
gradients are smaller. Multiplying the backward pass by ``2^-k`` (and the parameter gradients by
``2^k`` again in float32, :func:`experiments.train_step.backward_shift`) stands in for them: each
variant (FP32; FP16 standard without loss scaling, with static and with dynamic loss scaling;
FP16 unit-scaled; FP8 standard and unit-scaled, as :data:`experiments.variants.VARIANTS` defines them)
trains the char-LM grid's model at each shift ``k`` and seed of the profile
(``experiments/sweeps/shift.toml``). A float32 backward pass is unchanged by a power-of-two shift but
for values below float32's normal range, which XLA:CPU flushes (a difference in the 7th digit of the
bpc): FP32 runs at two shifts only (the summary reports their difference) and its shift-0 runs are
the reference at every k, FP32 standard for the standard variants and FP32 unit-scaled for the
unit-scaled ones.

Per run: the test bits per character with their 95% interval, and the fraction of the backward pass's
activation-gradient values that the format flushed to zero: exact zeros of the activation gradients
(:func:`unitscale.analysis.track_model_scales` on one validation batch, at the run's shift and loss
scale) in excess of those of the same trained weights in float32, over the tensors the two programs
share (size-weighted). Per variant and shift: the mean over seeds with a t-interval, and the paired
difference from its FP32 reference (variant minus reference, seed by seed: the same seed means the
same initialisation and data order, so the seeds' own spread cancels) with a t-interval over seeds.
A variant is *degraded* at a shift when the interval of that difference lies wholly above 0, *better*
when wholly below, and *consistent* with FP32 when it contains 0.

Outputs in ``--out``: ``runs.csv`` (one row per run), ``summary.json`` (cells, verdicts, the FP32
check) and ``shift.png`` (test bpc and flushed fraction against k). One run (``train``) is a char-LM run
(:mod:`experiments.charlm_run`) with ``--backward-shift``. ``--quick`` is a smoke test: it writes to a
temporary directory unless ``--out`` is given, never to ``results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from experiments import charlm_run, data
from experiments.char_gpt import load_char_corpus
from experiments.figures import figure
from experiments.intervals import seed_mean_ci
from experiments.outcome import run_outcome
from experiments.results import read_jsonl, write_csv, write_json
from experiments.stages import RunRecord, clear_stage, collect, load_spec_table, run_stage
from experiments.sweep_cli import SweepPaths, SweepScript, sweep_script_main
from experiments.train import METRICS_FILE, TrainResult
from experiments.variants import VARIANTS, check_variants
from unitscale.analysis import track_model_scales
from unitscale.models.gpt import GPT
from unitscale.scale import scale_bwd

SPEC_PATH = Path(__file__).parent / "sweeps" / "shift.toml"
REFERENCES = {"standard": "fp32-standard", "unit": "fp32-unit"}


@dataclasses.dataclass(frozen=True)
class Profile:
    """Train options shared by every run, the variants, shifts (FP32's apart) and seeds."""

    name: str
    train: Mapping[str, Any]
    variants: tuple[str, ...]
    shifts: tuple[int, ...]
    fp32_shifts: tuple[int, ...]
    seeds: tuple[int, ...]


def load_profile(path: str | Path = SPEC_PATH, name: str = "full") -> Profile:
    """Profile ``name`` of the spec at ``path``; ValueError naming what is wrong."""
    table = load_spec_table(path, name)
    missing = [k for k in ("train", "variants", "shifts", "fp32_shifts", "seeds") if k not in table]
    if missing:
        raise ValueError(f"spec: profile {name!r} lacks {missing}")
    check_variants(table["variants"], f"spec: profile {name!r}")
    needed = {REFERENCES[VARIANTS[v].parametrisation] for v in table["variants"]} - set(table["variants"])
    if needed:
        raise ValueError(f"spec: profile {name!r} needs the FP32 reference variants {sorted(needed)}")
    for key in ("shifts", "fp32_shifts", "seeds"):
        if not table[key] or any(not isinstance(v, int) or v < 0 for v in table[key]):
            raise ValueError(f"spec: profile {name!r}: {key} must be a non-empty list of non-negative ints")
    return Profile(name, dict(table["train"]), tuple(table["variants"]), tuple(table["shifts"]),
                   tuple(table["fp32_shifts"]), tuple(table["seeds"]))


def configs(profile: Profile) -> list[dict]:
    """Every run of the profile, with the learning rate of the variant's parametrisation."""
    out = []
    for variant in profile.variants:
        shifts = profile.fp32_shifts if variant.startswith("fp32") else profile.shifts
        lr = charlm_run.LEARNING_RATES[VARIANTS[variant].unit_scaled]
        out += [{**profile.train, "variant": variant, "backward_shift": k, "seed": seed, "lr": lr}
                for k in shifts for seed in profile.seeds]
    return out


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

def _gradient_zeros(model: GPT, batch: Any, factor: float) -> dict[tuple, tuple[int, float]]:
    """Per activation gradient of one backward pass run at ``factor`` (the loss's gradient), keyed by
    ``(path, op, shape, occurrence)``: its size and fraction of exact zeros."""
    loss = lambda m, b: scale_bwd(charlm_run.charlm_loss(m, b)[0], factor)  # noqa: E731
    seen: dict[tuple, int] = {}
    out = {}
    for r in track_model_scales(model, batch, loss, formats=()):
        if r.phase == "backward" and r.kind == "activation":
            key = (r.path, r.op, r.shape)
            seen[key] = seen.get(key, 0) + 1
            out[(*key, seen[key])] = (math.prod(r.shape), r.stats.zero_fraction)
    return out


def _final_loss_scale(out_dir: Path) -> float:
    """The loss scale of the run's last train record (1 when its recipe has none)."""
    train = [r for r in read_jsonl(out_dir / METRICS_FILE) if r.get("kind") == "train"]
    return float(train[-1].get("loss_scale", 1.0)) if train else 1.0


def flushed_fraction(result: TrainResult, args: argparse.Namespace, config) -> dict[str, float]:
    """Zeros of the trained model's backward pass in its own numerics and in float32, and their difference."""
    corpus = load_char_corpus(args.data, args.cache_dir)
    batch = next(data.lm_eval_batches(corpus.validation, batch_size=config.batch_size, seq_len=config.seq_len))
    factor = 2.0**-args.backward_shift * _final_loss_scale(Path(config.out_dir))
    twin = GPT(charlm_run.model_config(argparse.Namespace(**{**vars(args), "precision": "fp32", "scaling": "none"}),
                                   corpus.vocab.size), rngs=nnx.Rngs(0))
    nnx.update(twin, nnx.state(result.model, nnx.Param))
    mine, wide = _gradient_zeros(result.model, batch, factor), _gradient_zeros(twin, batch, factor)
    shared = sorted(set(mine) & set(wide))
    sizes = np.array([mine[k][0] for k in shared], float)
    zeros = float(np.sum(sizes * [mine[k][1] for k in shared]) / np.sum(sizes))
    zeros32 = float(np.sum(sizes * [wide[k][1] for k in shared]) / np.sum(sizes))
    return {"zero_fraction": zeros, "zero_fraction_fp32": zeros32, "flushed": zeros - zeros32,
            "tensors": len(shared)}


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point: one char-LM run (:func:`experiments.outcome.run_outcome`) plus its flushed
    fraction (None for a diverged run)."""
    args, train_config = charlm_run.parse_run(config, run_dir)
    trained: list[TrainResult] = []

    def fit() -> TrainResult:
        trained.append(charlm_run.train_charlm(args, train_config))
        return trained[0]

    outcome = run_outcome(fit, Path(train_config.out_dir))
    outcome["flush"] = flushed_fraction(trained[0], args, train_config) if trained else None
    return outcome


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------

def run_rows(records: Sequence[RunRecord]) -> list[dict]:
    """One row per run: variant, shift, seed, status, test and validation bpc, flushed fraction."""
    rows = []
    for r in records:
        result = r.result or {}
        flush = result.get("flush") or {}
        rows.append({"variant": r.config["variant"], "shift": r.config["backward_shift"], "seed": r.config["seed"],
                     "status": r.status, "test_bits": (result.get("test") or {}).get("bits", math.nan),
                     "test_bits_ci95": (result.get("test") or {}).get("bits_ci95", math.nan),
                     "val_bits": (result.get("val") or {}).get("bits", math.nan),
                     "diverged_at_step": result.get("diverged_at_step"),
                     "flushed": flush.get("flushed", math.nan), "zero_fraction": flush.get("zero_fraction", math.nan),
                     "problem": r.problem})
    return rows


def _interval(rows: Sequence[Mapping[str, Any]]) -> tuple[float, float, int]:
    """Mean test bpc of completed runs and its 95% half-width (over seeds, or one run's window CI)."""
    done = [r for r in rows if r["status"] == "completed"]
    if not done:
        return math.nan, math.nan, 0
    if len(done) == 1:
        return done[0]["test_bits"], done[0]["test_bits_ci95"], 1
    mean, ci = seed_mean_ci([r["test_bits"] for r in done])
    return mean, ci, len(done)


def paired_difference(mine: Sequence[Mapping[str, Any]], reference: Sequence[Mapping[str, Any]]
                      ) -> tuple[float, float, int]:
    """Test bpc of a variant minus its reference's, seed by seed (the same seed: the same initialisation
    and data order), and the 95% half-width: a t-interval over seeds when two or more pairs completed,
    else the two runs' window intervals combined (test-set noise only); ``(nan, nan, 0)`` if none."""
    ref = {r["seed"]: r for r in reference if r["status"] == "completed"}
    pairs = [(r, ref[r["seed"]]) for r in mine if r["status"] == "completed" and r["seed"] in ref]
    if not pairs:
        return math.nan, math.nan, 0
    diffs = [a["test_bits"] - b["test_bits"] for a, b in pairs]
    if len(pairs) == 1:
        a, b = pairs[0]
        return diffs[0], math.hypot(a["test_bits_ci95"], b["test_bits_ci95"]), 1
    mean, ci = seed_mean_ci(diffs)
    return mean, ci, len(pairs)


def verdict(difference: float, ci: float, diverged: int, pairs: int) -> str:
    """``degraded`` / ``better`` when the interval of the difference lies wholly above / below 0,
    ``consistent`` when it contains 0; ``diverged`` or ``missing`` when no pair completed."""
    if pairs == 0:
        return "diverged" if diverged else "missing"
    return "degraded" if difference - ci > 0 else "better" if difference + ci < 0 else "consistent"


def cells(rows: Sequence[Mapping[str, Any]], profile: Profile) -> list[dict]:
    """Per variant and shift: mean test bpc with its interval over seeds, runs, diverged runs, mean flushed
    fraction, the paired difference from its FP32 reference at shift 0 (same seeds) with its interval, and
    the :func:`verdict` of that difference; ``seeds`` maps each completed seed to its test bpc."""
    out = []
    for variant in profile.variants:
        reference = REFERENCES[VARIANTS[variant].parametrisation]
        ref_rows = [r for r in rows if r["variant"] == reference and r["shift"] == 0]
        for k in profile.fp32_shifts if variant.startswith("fp32") else profile.shifts:
            mine = [r for r in rows if r["variant"] == variant and r["shift"] == k]
            mean, ci, n = _interval(mine)
            diff, diff_ci, pairs = paired_difference(mine, ref_rows)
            diverged = sum(r["status"] == "diverged" for r in mine)
            done = [r for r in mine if r["status"] == "completed"]
            out.append({"variant": variant, "label": VARIANTS[variant].label, "reference": reference, "shift": k,
                        "test_bits": mean, "test_bits_ci95": ci, "runs": n, "diverged": diverged,
                        "seeds": {str(r["seed"]): r["test_bits"] for r in done},
                        "seeds_ci95": {str(r["seed"]): r["test_bits_ci95"] for r in done},
                        "difference": diff, "difference_ci95": diff_ci, "pairs": pairs,
                        "flushed": float(np.mean([r["flushed"] for r in done])) if done else math.nan,
                        "verdict": verdict(diff, diff_ci, diverged, pairs)})
    return out


def fp32_check(rows: Sequence[Mapping[str, Any]]) -> dict:
    """The largest difference in test bpc between shifts of the same FP32 variant and seed (float32
    flushes values below its normal range, so shifts change the last digits only)."""
    by_run: dict[tuple, list[float]] = {}
    for r in rows:
        if r["variant"].startswith("fp32") and r["status"] == "completed":
            by_run.setdefault((r["variant"], r["seed"]), []).append(r["test_bits"])
    spreads = [max(v) - min(v) for v in by_run.values() if len(v) > 1]
    return {"max_difference_bits": max(spreads) if spreads else math.nan, "pairs_checked": len(spreads)}


def plot(cell_rows: Sequence[Mapping[str, Any]], profile: Profile, path: Path) -> Path:
    """Against the shift, one line per variant: test bpc with its interval over seeds (top), the paired
    difference from the FP32 reference with its interval (middle; symmetric log scale, so that 0.03 bpc
    and 3 bpc both show) and the flushed fraction (bottom)."""
    fig = figure(7.5, 9.5, layout=None)
    top, middle, bottom = fig.subplots(3, 1, sharex=True)
    for variant in profile.variants:
        colour, label = VARIANTS[variant].colour, VARIANTS[variant].label
        if variant.startswith("fp32"):
            ref = next((c for c in cell_rows if c["variant"] == variant and c["shift"] == 0 and c["runs"]), None)
            if ref is not None:
                top.axhspan(ref["test_bits"] - ref["test_bits_ci95"], ref["test_bits"] + ref["test_bits_ci95"],
                            color=colour, alpha=0.15, label=f"{ref['label']} (any shift)")
            continue
        mine = sorted((c for c in cell_rows if c["variant"] == variant and c["runs"]), key=lambda c: c["shift"])
        k = [c["shift"] for c in mine]
        top.errorbar(k, [c["test_bits"] for c in mine], yerr=[c["test_bits_ci95"] for c in mine], color=colour,
                     marker="o", ms=4, capsize=3, label=label)
        middle.errorbar(k, [c["difference"] for c in mine], yerr=[c["difference_ci95"] for c in mine],
                        color=colour, marker="o", ms=4, capsize=3)
        bottom.plot(k, [100 * c["flushed"] for c in mine], color=colour, marker="o", ms=4)
    top.set_ylabel("test bits per character")
    top.legend(fontsize=7, loc="upper left")
    middle.axhline(0.0, color="black", lw=0.8)
    middle.set_yscale("symlog", linthresh=0.01)
    middle.set_ylabel("minus FP32, seed by seed\n(bpc, symmetric log)")
    bottom.set_ylabel("activation-gradient values\nflushed to zero (%)")
    bottom.set_xlabel("backward shift k (backward pass x 2^-k)")
    for ax in (top, middle, bottom):
        ax.grid(alpha=0.3)
    fig.suptitle(f"Gradient shift, profile {profile.name}: seeds {list(profile.seeds)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def summarise(profile: Profile, runs_dir: Path, out: Path) -> dict:
    """Collect the runs, write ``runs.csv``, ``summary.json`` and ``shift.png`` to ``out``; the summary."""
    records = collect(runs_dir, configs(profile))
    rows = run_rows(records)
    cell_rows = cells(rows, profile)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "runs.csv", rows)
    summary = {"experiment": "shift", "profile": dataclasses.asdict(profile), "cells": cell_rows,
               "fp32_check": fp32_check(rows),
               "problems": [{"run": r.name, "status": r.status, "problem": r.problem}
                            for r in records if r.problem]}
    write_json(out / "summary.json", summary)
    if any(c["runs"] for c in cell_rows):
        plot(cell_rows, profile, out / "shift.png")
    return summary


def print_summary(summary: Mapping[str, Any], out: Path) -> None:
    """One line per cell (test bpc, flushed fraction, verdict), the FP32 check and every problem."""
    for c in summary["cells"]:
        print(f"  {c['label']:42s} k={c['shift']:2d}: {c['test_bits']:.3f} ± {c['test_bits_ci95']:.3f} bpc, "
              f"flushed {100 * c['flushed']:.2f}%  [{c['verdict']}]")
    print(f"FP32 across shifts: largest difference {summary['fp32_check']['max_difference_bits']:.2g} bpc")
    for p in summary["problems"]:
        print(f"  {p['status']}: {p['run']}: {p['problem']}")
    print(f"results in {out}")


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

SCRIPT = SweepScript("shift", __doc__, SPEC_PATH, (), Path("results/shift"), load_profile, "a few")


def sweep_main(args: argparse.Namespace, paths: SweepPaths, run_stages: bool) -> int:
    """Run the profile's runs (unless ``run_stages`` is False), then summarise into ``paths.out``."""
    ok = True
    if run_stages:
        log = lambda s: print(s, flush=True)  # noqa: E731
        if args.fresh:
            clear_stage(paths.runs, configs(paths.profile), paths.variants, log=log)
        ok = run_stage(paths.runs, configs(paths.profile), SCRIPT.run_fn, workers=args.workers,
                       variants=paths.variants, log=log)
    print_summary(summarise(paths.profile, paths.runs, paths.out), paths.out)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``run`` (the sweep, the default), ``summarise`` (collect only) or ``train`` (one char-LM run)."""
    return sweep_script_main(argv, script=SCRIPT, train_main=charlm_run.train_main, sweep_main=sweep_main)


if __name__ == "__main__":
    sys.exit(main())
