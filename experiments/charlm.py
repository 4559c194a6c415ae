"""The unit scaling paper's character-level language models: FP32, FP16 and FP8, standard and unit-scaled.

    python -m experiments.charlm --quick                               # a smoke test of the pipeline, ~2-3 minutes
    python -m experiments.charlm --out results/charlm --runs /tmp/charlm-runs --workers 2
    python -m experiments.charlm summarise --out results/charlm --runs /tmp/charlm-runs
    python -m experiments.charlm train --variant fp16-unit --mixer conv --norm post --out /tmp/one

Blake, Orr & Luschi (ICML 2023, "Unit Scaling", Sec. 6.1 and Table 2) train causal character LMs (hidden
128, depth 8, sequence 256, batch 8, FFN x4, AdamW) with attention, convolution or RNN sequence layers,
pre- or post-norm, and find that FP16 without loss scaling degrades the standard model while the
unit-scaled model matches FP32 in FP16 with no loss scaling (see docs/reference/unit_scaling_rules.md).

One run (``train``) is :mod:`experiments.charlm_run`. The sweep runs in two stages, both through
:mod:`experiments.runner` (finished runs are skipped, a killed sweep resumes; each run resumes from its
own checkpoints, deleted once it has finished; ``--fresh`` runs the selected runs again):

1. ``lr``: FP32 attention pre-norm, a learning-rate grid per parametrisation (standard, unit-scaled);
   the lowest final validation bits per character picks each parametrisation's rate.
2. ``grid``: every variant (:data:`experiments.variants.VARIANTS`) x mixer x norm placement x seed of
   the profile, with the chosen rate of its parametrisation, the same for every precision (as the paper
   does).

A run whose loss goes NaN/inf is recorded as ``diverged`` at its step, never dropped. Profiles
(model size, steps, grid) live in ``experiments/sweeps/charlm.toml``. ``summarise`` writes
``runs.csv``, ``table.csv``, ``table.md``, ``lr_sweep.csv``, ``results.json``, ``curves.json`` and the
plots to ``--out`` (the schema is :data:`SCHEMA`); the run directories stay in ``--runs``. ``--quick``
is a smoke test: its results go to a temporary directory unless ``--out`` is given.

Confidence intervals (95%, :mod:`experiments.intervals`): over seeds, ``mean +- t(0.975, n-1) s / sqrt(n)``;
for a single run, the standard error of the mean per-character test loss estimated from the sums over
its 256-character evaluation windows (a ratio estimator over windows, so the correlation of
neighbouring characters within a window is accounted for), times 1.96.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments import charlm_run
from experiments.charlm_run import run  # noqa: F401  (the sweep's run function, experiments.charlm:run)
from experiments.figures import plot_cell_table, plot_loss_curves, plot_lr_sweep
from experiments.intervals import ci_note
from experiments.results import dumps, write_csv, write_json, write_text
from experiments.runner import expand_grid
from experiments.stages import (RunRecord, as_list, clear_stage, collect, load_spec_table, reuse_runs,
                                run_stage)
from experiments.sweep_cli import SweepPaths, SweepScript, report, sweep_script_main
from experiments.tables import aggregate, final_columns, format_cell, run_rows
from experiments.variants import VARIANTS, check_variants, in_table_order

SPEC_PATH = Path(__file__).parent / "sweeps" / "charlm.toml"

# ----------------------------------------------------------------------------------------------
# Profiles and stages
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Profile:
    """One profile of a spec file: ``train`` options shared by every run, the FP32 ``lr_sweep``
    (``mixer``, ``norm``, ``seed`` and a list of rates per parametrisation) and the ``grid`` (a list of
    tables whose list values are axes over ``variant``, ``mixer``, ``norm``, ``seed``; a table may add
    a ``train`` table of options that override the profile's for its runs, e.g. a larger budget)."""

    name: str
    train: Mapping[str, Any]
    lr_sweep: Mapping[str, Any]
    grid: tuple[Mapping[str, Any], ...]


GRID_KEYS = ("variant", "mixer", "norm", "seed")
LR_SWEEP_KEYS = ("mixer", "norm", "seed", "standard", "unit")


def load_profile(path: str | Path = SPEC_PATH, name: str = "full") -> Profile:
    """Profile ``name`` of the spec file at ``path`` (see :class:`Profile`), checked."""
    table = load_spec_table(path, name)
    missing = [k for k in ("train", "lr_sweep", "grid") if k not in table]
    if missing:
        raise ValueError(f"spec: profile {name!r} lacks the tables {missing}")
    lr_sweep, grid = table["lr_sweep"], tuple(table["grid"])
    if sorted(lr_sweep) != sorted(LR_SWEEP_KEYS):
        raise ValueError(f"spec: [{name}.lr_sweep] must have exactly the keys {LR_SWEEP_KEYS}, got {sorted(lr_sweep)}")
    for i, axes in enumerate(grid):
        if sorted(k for k in axes if k != "train") != sorted(GRID_KEYS):
            raise ValueError(f"spec: [[{name}.grid]] table {i} must have exactly the keys {GRID_KEYS} (and "
                             f"optionally train), got {sorted(axes)}")
        check_variants(as_list(axes["variant"]), f"spec: [[{name}.grid]] table {i}")
    return Profile(name, dict(table["train"]), dict(lr_sweep), grid)


def lr_configs(profile: Profile) -> list[dict]:
    """The learning-rate sweep: FP32, each parametrisation over its list of rates."""
    sweep = profile.lr_sweep
    fixed = {**profile.train, "mixer": sweep["mixer"], "norm": sweep["norm"], "seed": sweep["seed"]}
    return [{**fixed, "variant": f"fp32-{param}", "lr": float(lr)}
            for param in ("standard", "unit") for lr in as_list(sweep[param])]


def grid_configs(profile: Profile, rates: Mapping[str, float]) -> list[dict]:
    """The grid, each run with the chosen rate of its parametrisation (``rates["standard"|"unit"]``)."""
    configs = []
    for axes in profile.grid:
        overrides = dict(axes.get("train", {}))
        for point in expand_grid({k: v for k, v in axes.items() if k != "train"}):
            configs.append({**profile.train, **overrides, **point,
                            "lr": float(rates[VARIANTS[point["variant"]].parametrisation])})
    return configs


def choose_rates(records: Sequence[RunRecord]) -> tuple[dict[str, float], list[dict]]:
    """Per parametrisation, the rate of the lowest final validation bits per token among completed
    runs; and one row per run. ValueError if a parametrisation has no usable run yet."""
    rows, rates = [], {}
    for param in ("standard", "unit"):
        mine = [r for r in records if VARIANTS[r.config["variant"]].parametrisation == param]
        rows += [{"parametrisation": param, "lr": r.config["lr"], "status": r.status, **final_columns(r),
                  "problem": r.problem} for r in mine]
        usable = [r for r in mine if r.status == "completed" and math.isfinite(r.result["val"]["bits"])]
        if not usable:
            raise ValueError(f"lr sweep: no completed {param} run yet ({[r.problem for r in mine]})")
        rates[param] = min(usable, key=lambda r: r.result["val"]["bits"]).config["lr"]
    return rates, rows


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def markdown_table(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> str:
    """Rows mixer x norm, columns ``variants``, cells :func:`experiments.tables.format_cell`."""
    by_cell = {(r["mixer"], r["norm"], r["variant"]): r for r in rows}
    lines = ["| mixer / norm | " + " | ".join(VARIANTS[v].label for v in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for mixer, norm in dict.fromkeys((r["mixer"], r["norm"]) for r in rows):
        cells = [format_cell(by_cell[mixer, norm, v]) if (mixer, norm, v) in by_cell else "" for v in variants]
        lines.append(f"| {mixer} / {norm}-norm | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


SCHEMA = {
    "runs.csv": "one row per expected grid run: run (directory name), variant, mixer, norm, "
                "seed, lr, status (completed | diverged | failed | missing | malformed), diverged_at_step "
                "(1-based step whose loss or gradients went NaN/inf), steps_done, {val,test}_{bits,bits_ci95,loss,"
                "accuracy} (bits per character; bits_ci95 = 95% half-width from the run's evaluation windows), "
                "skipped_steps (dynamic loss scaling), train_loss, tokens_per_s (this machine), wall_time_s, "
                "ipu_step_time_s (ipu_sim estimate of the step on one Bow IPU), problem",
    "table.csv": "one row per (mixer, norm, variant) cell and split (val, test): mean bits per character, ci95 "
                 "(95% half-width), ci_kind (seeds: t-interval over completed seeds; tokens: the single run's "
                 "window interval), runs, completed, diverged, diverged_at_steps, unavailable, seeds, values",
    "table.md": "the test-split table: rows mixer / norm, columns variants",
    "lr_sweep.csv": "one row per learning-rate run: parametrisation, lr, status and final metrics",
    "results.json": "{experiment, profile, settings (options shared by all runs), row_settings (\"mixer/norm\" -> "
                    "the options whose value differs for that row's runs), variants (name -> label, "
                    "options), learning_rates (chosen per parametrisation), lr_sweep (rows), runs (rows of "
                    "runs.csv), table (rows of table.csv), problems ([{run, status, problem}]), ci (how intervals "
                    "are computed), schema}",
    "curves.json": "{run: {config, status, diverged_at_step, train: {step, loss, accuracy, grad_norm, "
                   "skipped}, val: {step, loss, bits, accuracy}}} (train: means over log intervals; val: periodic "
                   "evaluations on a prefix of the validation split; both downsampled to <= 200 points)",
}
# Figure name -> the variants it compares (those in the grid are drawn).
CURVE_FIGURES: Mapping[str, tuple[str, ...]] = {
    "fp16": ("fp32-standard", "fp16-standard", "fp16-standard-static", "fp16-standard-dynamic", "fp32-unit",
             "fp16-unit"),
    "fp8": ("fp32-standard", "fp8-standard", "fp8-standard-delayed", "fp32-unit", "fp8-unit"),
    "attn32": ("fp32-standard", "fp32-unit", "fp32-unit-attn32", "fp16-unit-attn32", "fp8-unit-attn32"),
    "fp16_paper": ("fp32-standard", "fp16p-standard", "fp16p-standard-static", "fp32-unit", "fp16p-unit"),
}


def row_settings(configs: Sequence[Mapping[str, Any]], shared: Mapping[str, Any]) -> dict[str, dict]:
    """Per model row (``"mixer/norm"``), the options its runs all set to other values than ``shared``
    (a grid table's ``train`` overrides, e.g. a larger model and budget for one row)."""
    rows: dict[str, list[Mapping[str, Any]]] = {}
    for c in configs:
        rows.setdefault(f"{c['mixer']}/{c['norm']}", []).append(c)
    out = {}
    for row, runs in rows.items():
        differ = {k: runs[0][k] for k in shared if runs[0].get(k, shared[k]) != shared[k]}
        common = {k: v for k, v in differ.items() if all(r.get(k) == v for r in runs)}
        if common:
            out[row] = common
    return out


def write_outputs(out: Path, *, experiment: str, profile: Profile, records: Sequence[RunRecord],
                  lr_rows: Sequence[dict], rates: Mapping[str, float], variants: Sequence[str]) -> dict:
    """Write the files of :data:`SCHEMA` (and the plots) to ``out``; return the ``results.json`` dict."""
    table = aggregate(records, "val") + aggregate(records, "test")
    problems = [{"run": r.name, "status": r.status, "problem": r.problem}
                for r in records if r.problem]
    rows = run_rows(records)
    write_csv(out / "runs.csv", rows)
    write_csv(out / "table.csv", table)
    write_csv(out / "lr_sweep.csv", lr_rows)
    write_text(out / "table.md", markdown_table([t for t in table if t["split"] == "test"], variants))
    write_json(out / "curves.json", {r.name: {"config": r.config, "status": r.status,
                                              "diverged_at_step": r.result.get("diverged_at_step"),
                                              **r.result.get("curves", {})} for r in records if r.result})
    results = {"experiment": experiment, "profile": profile.name, "settings": profile.train,
               "row_settings": row_settings([r.config for r in records], profile.train),
               "variants": {v: VARIANTS[v].record() for v in variants},
               "learning_rates": rates, "lr_sweep": lr_rows, "runs": rows, "table": table, "problems": problems,
               "ci": ci_note(), "schema": SCHEMA}
    write_json(out / "results.json", results)
    plot_cell_table([t for t in table if t["split"] == "test"], variants, out / "bpc_table.png",
                    title=f"{experiment}: test bits per character (95% CI; † over seeds)")
    for name, shown in CURVE_FIGURES.items():
        chosen = [v for v in shown if v in variants]
        if chosen:
            plot_loss_curves(records, chosen, out / f"curves_{name}.png", title=f"{experiment}: training loss, {name}")
    plot_lr_sweep(lr_rows, rates, out / "lr_sweep.png", title=f"{experiment}: FP32 learning-rate sweep")
    return results


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

SCRIPT = SweepScript("charlm", __doc__, SPEC_PATH, ("lr", "grid"), Path("results/charlm"), load_profile)


def sweep_main(args: argparse.Namespace, paths: SweepPaths, run_stages: bool) -> int:
    """Run the stages asked for (unless ``run_stages`` is False), then summarise into ``paths.out``."""
    profile, ok = paths.profile, True
    log = lambda s: print(s, flush=True)  # noqa: E731
    if run_stages and args.stage in ("lr", "all"):
        if args.fresh:
            clear_stage(paths.runs / "lr", lr_configs(profile), log=log)
        ok &= run_stage(paths.runs / "lr", lr_configs(profile), SCRIPT.run_fn, workers=args.workers, log=log)
    rates, lr_rows = choose_rates(collect(paths.runs / "lr", lr_configs(profile)))
    configs = grid_configs(profile, rates)
    if run_stages and args.stage in ("grid", "all"):
        if args.fresh:
            clear_stage(paths.runs / "grid", configs, paths.variants, log=log)
        for name in reuse_runs(paths.runs / "lr", lr_configs(profile), paths.runs / "grid", configs):
            log(f"reused the learning-rate sweep's run for {name}")
        ok &= run_stage(paths.runs / "grid", configs, SCRIPT.run_fn, workers=args.workers, variants=paths.variants,
                        log=log)
    records = collect(paths.runs / "grid", configs)
    variants = in_table_order(c["variant"] for c in configs)
    results = write_outputs(paths.out, experiment="charlm", profile=profile, records=records, lr_rows=lr_rows,
                            rates=rates, variants=variants)
    return report(results, paths.out, heading=f"\nlearning rates: {dumps(results['learning_rates'])}",
                  finished="grid runs", ok=ok, ran=run_stages)


def main(argv: Sequence[str] | None = None) -> int:
    """``run`` (the sweep, the default), ``summarise`` (collect only) or ``train`` (one run)."""
    return sweep_script_main(argv, script=SCRIPT, train_main=charlm_run.train_main, sweep_main=sweep_main)


if __name__ == "__main__":
    sys.exit(main())
