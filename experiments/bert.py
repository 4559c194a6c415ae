"""Masked-LM pre-training of BERT on Shakespeare at character level: FP32, FP16 and FP8, standard and unit-scaled.

    python -m experiments.bert --quick                                 # a smoke test of the pipeline, ~2 minutes
    python -m experiments.bert --out results/bert --runs /tmp/bert-runs --workers 2
    python -m experiments.bert summarise --out results/bert --runs /tmp/bert-runs
    python -m experiments.bert train --variant fp8-unit-attn32 --size base --out /tmp/bert-base

The unit scaling paper (Blake, Orr & Luschi, ICML 2023, Sec. 6.2) pre-trains BERT-Base and -Large with
LAMB and finds that unit-scaled FP16 and FP8 match the FP32 and loss-scaled baselines with no loss
scaling. Here a small BERT (post-norm, as BERT) learns to fill in masked characters: the vocabulary is
the characters of the training split plus ``[UNK] [PAD] [CLS] [SEP] [MASK]``; each row is
``[CLS] x [SEP]`` with 15% of the characters chosen for prediction by BERT's 80/10/10 rule
(:func:`experiments.data.mlm_batch`). Two stages, both through :mod:`experiments.runner` (resumable;
``--fresh`` runs the selected runs again):

1. ``grid``: the variants x seeds of the profile (``experiments/sweeps/bert.toml``) on the small model;
2. ``base``: one BERT-Base-shaped run (the ``bert-base`` preset's d_model 768, depth 12, 12 heads,
   FFN 3072) for a few hundred steps at a small batch and sequence, to show that it trains.

LAMB scales each layer's update by its weight norm, so one learning rate serves both parametrisations.
Metrics: masked-character cross-entropy (``loss``, nats; ``bits``) and accuracy on the validation and
test splits, each with a 95% CI over the evaluation rows (see :mod:`experiments.intervals`). A run whose
loss goes NaN/inf is recorded as ``diverged`` at its step. ``summarise`` writes ``runs.csv``,
``table.csv``, ``table.md``, ``results.json``, ``curves.json`` and plots to ``--out``. ``--quick`` is a
smoke test: its results go to a temporary directory unless ``--out`` is given. One run (``train``) is
:mod:`experiments.bert_run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments import bert_run
from experiments.bert_run import run  # noqa: F401  (the sweep's run function, experiments.bert:run)
from experiments.figures import plot_mlm_curves
from experiments.intervals import ci_note
from experiments.results import write_csv, write_json, write_text
from experiments.runner import expand_grid
from experiments.stages import RunRecord, clear_stage, collect, load_spec_table, run_stage
from experiments.sweep_cli import SweepPaths, SweepScript, report, sweep_script_main
from experiments.tables import aggregate, format_cell, run_rows
from experiments.variants import VARIANTS, check_variants, in_table_order

SPEC_PATH = Path(__file__).parent / "sweeps" / "bert.toml"


# ----------------------------------------------------------------------------------------------
# Profiles, stages and outputs
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Profile:
    """``train`` options shared by the grid runs, the ``grid`` (tables with list axes over ``variant``
    and ``seed``) and the options of the ``base`` run (on top of ``train``)."""

    name: str
    train: Mapping[str, Any]
    grid: tuple[Mapping[str, Any], ...]
    base: Mapping[str, Any]


def load_profile(path: str | Path = SPEC_PATH, name: str = "full") -> Profile:
    """Profile ``name`` of the spec file at ``path``, checked."""
    table = load_spec_table(path, name)
    missing = [k for k in ("train", "grid", "base") if k not in table]
    if missing:
        raise ValueError(f"spec: profile {name!r} lacks the tables {missing}")
    for i, axes in enumerate(table["grid"]):
        if sorted(axes) != ["seed", "variant"]:
            raise ValueError(f"spec: [[{name}.grid]] table {i} must have exactly the keys seed, variant; "
                             f"got {sorted(axes)}")
        check_variants(axes["variant"], f"spec: [[{name}.grid]] table {i}")
    if table["base"].get("variant") not in VARIANTS:
        raise ValueError(f"spec: [{name}.base] needs a known variant, got {table['base'].get('variant')!r}")
    return Profile(name, dict(table["train"]), tuple(table["grid"]), dict(table["base"]))


def grid_configs(profile: Profile) -> list[dict]:
    """Every (variant, seed) of the grid tables, in order, with the shared options."""
    return [{**profile.train, **point} for axes in profile.grid for point in expand_grid(axes)]


def base_configs(profile: Profile) -> list[dict]:
    """The one BERT-Base-shaped run."""
    return [{**profile.train, "seed": 0, **profile.base}]


SCHEMA = {
    "runs.csv": "one row per expected run (stage grid or base): stage, run, variant, size, seed, lr, status "
                "(completed | diverged | failed | missing | malformed), diverged_at_step, steps_done, "
                "{val,test}_{loss,loss_ci95,bits,accuracy,accuracy_ci95} (masked characters; loss in nats; "
                "95% half-widths over evaluation rows), skipped_steps, train_loss, tokens_per_s, wall_time_s, "
                "ipu_step_time_s (ipu_sim, one Bow IPU), problem",
    "table.csv": "one row per (stage, size, variant) and split/metric (loss, accuracy): mean, ci95, ci_kind (seeds | "
                 "tokens), runs, completed, diverged, diverged_at_steps, unavailable, seeds, values",
    "table.md": "the test split: MLM loss and accuracy per variant",
    "results.json": "{experiment, profile, settings, base_settings, variants, runs, table, problems, ci, schema}",
    "curves.json": "{stage/run: {config, status, diverged_at_step, train: {step, loss, accuracy, grad_norm, skipped}, "
                   "val: {step, loss, bits, accuracy}}} (downsampled to <= 200 points)",
}


def _rows(stage: str, records: Sequence[RunRecord]) -> list[dict]:
    rows = []
    for r, flat in zip(records, run_rows(records, keys=("variant", "seed", "lr"))):
        result = r.result or {}
        extra = {f"{split}_{k}": (result.get(split) or {}).get(k, math.nan)
                 for split in ("val", "test") for k in ("loss_ci95", "accuracy_ci95")}
        rows.append({"stage": stage, **flat, "size": r.config.get("size"), **extra})
    return rows


def markdown_table(table: Sequence[Mapping[str, Any]]) -> str:
    """Test MLM loss and accuracy (95% CI) per stage and variant, in the variant table's order."""
    test = {(r["stage"], r["variant"], r["metric"]): r for r in table if r["split"] == "test"}
    lines = ["| stage | variant | test MLM loss (nats) | test MLM accuracy |", "|---|---|---|---|"]
    for stage in dict.fromkeys(s for s, _, _ in test):
        for variant in in_table_order(v for s, v, _ in test if s == stage):
            lines.append(f"| {stage} | {VARIANTS[variant].label} | {format_cell(test[stage, variant, 'loss'])} | "
                         f"{format_cell(test[stage, variant, 'accuracy'], digits=4)} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, profile: Profile, stages: Mapping[str, Sequence[RunRecord]]) -> dict:
    """Write the files of :data:`SCHEMA` and the plots to ``out``; return the ``results.json`` dict."""
    rows = [row for stage, records in stages.items() for row in _rows(stage, records)]
    table = [{"stage": stage, **row} for stage, records in stages.items() for split in ("val", "test")
             for metric in ("loss", "accuracy")
             for row in aggregate(records, split, metric, keys=("size", "variant"))]
    problems = [{"run": f"{stage}/{r.name}", "status": r.status, "problem": r.problem}
                for stage, records in stages.items() for r in records if r.problem]
    write_csv(out / "runs.csv", rows)
    write_csv(out / "table.csv", table)
    write_text(out / "table.md", markdown_table(table))
    write_json(out / "curves.json", {f"{stage}/{r.name}": {"config": r.config, "status": r.status,
                                                           "diverged_at_step": r.result.get("diverged_at_step"),
                                                           **r.result.get("curves", {})}
                                     for stage, records in stages.items() for r in records if r.result})
    variants = in_table_order(r.config["variant"] for records in stages.values() for r in records)
    results = {"experiment": "bert", "profile": profile.name, "settings": profile.train, "base_settings": profile.base,
               "variants": {v: VARIANTS[v].record() for v in variants},
               "runs": rows, "table": table, "problems": problems, "ci": ci_note("per-masked-character"),
               "schema": SCHEMA}
    write_json(out / "results.json", results)
    plot_mlm_curves(stages, out / "mlm_curves.png")
    return results


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

SCRIPT = SweepScript("bert", __doc__, SPEC_PATH, ("grid", "base"), Path("results/bert"), load_profile, "2")


def sweep_main(args: argparse.Namespace, paths: SweepPaths, run_stages: bool) -> int:
    """Run the stages asked for (unless ``run_stages`` is False), then summarise into ``paths.out``."""
    profile, ok = paths.profile, True
    log = lambda s: print(s, flush=True)  # noqa: E731
    stages = {"grid": grid_configs(profile), "base": base_configs(profile)}
    for stage, configs in stages.items():
        if run_stages and args.stage in (stage, "all"):
            variants = paths.variants if stage == "grid" else None
            if args.fresh:
                clear_stage(paths.runs / stage, configs, variants, log=log)
            ok &= run_stage(paths.runs / stage, configs, SCRIPT.run_fn, workers=args.workers, variants=variants,
                            log=log)
    records = {stage: collect(paths.runs / stage, configs) for stage, configs in stages.items()}
    results = write_outputs(paths.out, profile, records)
    return report(results, paths.out, heading="", finished="runs", ok=ok, ran=run_stages)


def main(argv: Sequence[str] | None = None) -> int:
    """``run`` (the sweep, the default), ``summarise`` (collect only) or ``train`` (one run)."""
    return sweep_script_main(argv, script=SCRIPT, train_main=bert_run.train_main, sweep_main=sweep_main)


if __name__ == "__main__":
    sys.exit(main())
