"""Masked-LM pre-training of BERT on Shakespeare at character level: FP32, FP16 and FP8, standard and unit-scaled.

    python -m experiments.bert --quick --out /tmp/bert-quick           # the whole pipeline in ~2 minutes
    python -m experiments.bert --out results/bert --runs /tmp/bert-runs --workers 2
    python -m experiments.bert summarise --out results/bert --runs /tmp/bert-runs
    python -m experiments.bert train --variant fp8-unit-attn32 --size base --out /tmp/bert-base

The unit scaling paper (Blake, Orr & Luschi, ICML 2023, Sec. 6.2) pre-trains BERT-Base and -Large with
LAMB and finds that unit-scaled FP16 and FP8 match the FP32 and loss-scaled baselines with no loss
scaling. Here a small BERT (post-norm, as BERT) learns to fill in masked characters: the vocabulary is
the characters of the training split plus ``[UNK] [PAD] [CLS] [SEP] [MASK]``; each row is
``[CLS] x [SEP]`` with 15% of the characters chosen for prediction by BERT's 80/10/10 rule
(:func:`experiments.data.mlm_batch`). Two stages, both through :mod:`experiments.sweep` (resumable):

1. ``grid``: the variants x seeds of the profile (``experiments/sweeps/bert.toml``) on the small model;
2. ``base``: one BERT-Base-shaped run (the ``bert-base`` preset's d_model 768, depth 12, 12 heads,
   FFN 3072) for a few hundred steps at a small batch and sequence, to show that it trains.

LAMB scales each layer's update by its weight norm, so one learning rate serves both parametrisations.
Metrics: masked-character cross-entropy (``loss``, nats; ``bits``) and accuracy on the validation and
test splits, each with a 95% CI over the evaluation rows (see :mod:`experiments.charlm`). A run whose
loss goes NaN/inf is recorded as ``diverged`` at its step. ``summarise`` writes ``runs.csv``,
``table.csv``, ``table.md``, ``results.json``, ``curves.json`` and plots to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import charlm, data
from experiments.gpt import parameter_count
from experiments.cli import ExperimentCLI, run_train, sweep_script_main
from experiments.results import write_json, write_text
from experiments.train import TrainConfig, TrainResult, train
from unitscale.models.bert import BERT, BERTConfig
from unitscale.models.losses import batch_field, token_cross_entropy
from unitscale.precision import value_and_grad_with_recipe

SPEC_PATH = Path(__file__).parent / "sweeps" / "bert.toml"
_BASE = BERTConfig.PRESETS["bert-base"]
# Model sizes; "base" takes BERT-Base's shape (Devlin et al., 2019) from the bert-base preset.
SIZES: Mapping[str, Mapping[str, Any]] = {
    "tiny": dict(d_model=32, depth=2, heads=2, ffn_ratio=4.0),
    "small": dict(d_model=64, depth=4, heads=2, ffn_ratio=4.0),
    "base": {k: _BASE[k] for k in ("d_model", "depth", "heads", "norm_placement", "norm_eps")}
    | {"ffn_ratio": 4.0},
}
DEFAULTS = {"out": "results/bert/train", "optimizer": "lamb", "lr": 5e-3, "steps": 800, "batch_size": 16,
            "seq_len": 128, "warmup": 80, "weight_decay": 0.01, "grad_clip": 0.0, "eval_every": 100,
            "eval_batches": 10, "checkpoint_every": 200, "log_every": 10}
QUICK = {"steps": 60, "batch_size": 8, "seq_len": 64, "warmup": 10, "eval_every": 20, "eval_batches": 4,
         "final_eval_batches": 16, "checkpoint_every": 30, "log_every": 5}


def make_cli() -> ExperimentCLI:
    """The options of one run (``python -m experiments.bert train``)."""
    cli = ExperimentCLI("python -m experiments.bert train", "Pre-train one character-level BERT (masked LM).",
                        defaults=DEFAULTS, quick=QUICK)
    model = cli.parser.add_argument_group("model")
    cli.add("--size", default="small", quick="tiny", choices=sorted(SIZES), group=model,
            help="model size: " + "; ".join(f"{k}: d_model {v['d_model']}, depth {v['depth']}"
                                            for k, v in SIZES.items()))
    cli.add("--dropout", type=float, default=0.0, group=model, help="dropout rate")
    cli.add("--mask-prob", type=float, default=0.15, group=model, help="fraction of characters predicted")
    cli.add_model_options(precision="fp32", precisions=charlm.PRECISIONS, loss_scale="none",
                          loss_scales=charlm.LOSS_SCALES)
    cli.add("--variant", default=None, choices=list(charlm.VARIANTS), group=model,
            help="sets --precision, --scaling and --standard/--unit-scaled together (and --attn-softmax-mult "
                 "for the *-attn32 variants)")
    return cli


def resolve(cli: ExperimentCLI, args: argparse.Namespace) -> tuple[argparse.Namespace, TrainConfig]:
    """Apply ``--variant``; the run's TrainConfig."""
    return charlm.apply_variant(args), cli.train_config(args)


def model_config(args: argparse.Namespace, vocab_size: int) -> BERTConfig:
    """The BERT of the parsed options: no token types or classifier (single-segment MLM)."""
    return BERTConfig(vocab_size=vocab_size, max_len=args.seq_len, dropout=args.dropout, type_vocab_size=0,
                      num_labels=0, unit_scaled=args.unit_scaled, precision=charlm.numerics(args)[0],
                      attn_softmax_mult=args.attn_softmax_mult, **SIZES[args.size])


def bert_loss(model: BERT, batch: data.MLMBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over the masked positions, totals ``nll, correct, count`` and the row sums of
    :func:`experiments.charlm.window_totals` (a row is one window)."""
    labels = jnp.asarray(batch_field(batch, "labels"))
    valid = labels != model.config.ignore_index
    logits = model(batch_field(batch, "inputs"), None, batch_field(batch, "attention_mask"))
    with jax.named_scope("loss"):
        loss, totals = token_cross_entropy(logits, labels, valid, unit_scaled=model.config.unit_scaled,
                                           mult=model.config.loss_softmax_mult)
    return loss, {**totals, **charlm.window_totals(logits, labels, valid)}


def train_bert(args: argparse.Namespace, config: TrainConfig) -> TrainResult:
    """Load the corpus with an MLM vocabulary, build the model and train it."""
    splits = data.load_corpus(args.data, cache_dir=args.cache_dir)
    vocab = data.build_char_vocab(splits.train, specials=data.MLM_SPECIALS)
    train_ids, val_ids, test_ids = (vocab.encode(t) for t in (splits.train, splits.validation, splits.test))
    bert_config = model_config(args, vocab.size)
    model = BERT(bert_config, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    n_params = parameter_count(model)
    data.save_vocab(vocab, Path(config.out_dir) / "vocab.json")
    shape = dict(vocab=vocab, batch_size=config.batch_size, seq_len=config.seq_len, mask_prob=args.mask_prob)
    _, loss_scale = charlm.numerics(args)
    print(f"BERT {args.size} ({args.variant or ''} {'unit-scaled' if args.unit_scaled else 'standard'}, "
          f"{bert_config.precision}, scaling {args.loss_scale}, {config.optimizer.name} lr {config.optimizer.lr:g}, "
          f"seed {config.seed}) on {splits.source}: vocabulary {vocab.size}, {n_params:,} parameters", flush=True)
    return train(
        model, bert_loss, config, value_and_grad=value_and_grad_with_recipe, recipe_state=loss_scale,
        skips_nonfinite=loss_scale.skips_nonfinite, storage=bert_config.precision.storage,
        batches=lambda start: data.mlm_batches(train_ids, seed=config.seed, start_step=start, **shape),
        eval_data={"val": lambda: data.mlm_eval_batches(val_ids, **shape),
                   "test": lambda: data.mlm_eval_batches(test_ids, **shape)},
        describe={"model": bert_config.to_dict(), "size": args.size, "variant": args.variant,
                  "precision": args.precision, "scaling": args.loss_scale, "data": splits.source,
                  "vocab_size": vocab.size, "parameters": n_params, "mask_prob": args.mask_prob})


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point: options by name (``variant`` included), outputs in ``run_dir/train``."""
    cli = make_cli()
    args, train_config = resolve(cli, cli.parse_dict({**config, "out": str(Path(run_dir) / "train"),
                                                      "no_progress": True}))
    return charlm.run_outcome(lambda: train_bert(args, train_config), Path(train_config.out_dir))


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
    table = charlm.load_spec_table(path, name)
    missing = [k for k in ("train", "grid", "base") if k not in table]
    if missing:
        raise ValueError(f"spec: profile {name!r} lacks the tables {missing}")
    for i, axes in enumerate(table["grid"]):
        if sorted(axes) != ["seed", "variant"]:
            raise ValueError(f"spec: [[{name}.grid]] table {i} must have exactly the keys seed, variant; "
                             f"got {sorted(axes)}")
        unknown = sorted(set(charlm._as_list(axes["variant"])) - set(charlm.VARIANTS))
        if unknown:
            raise ValueError(f"spec: [[{name}.grid]] table {i} names unknown variants {unknown}")
    if table["base"].get("variant") not in charlm.VARIANTS:
        raise ValueError(f"spec: [{name}.base] needs a known variant, got {table['base'].get('variant')!r}")
    return Profile(name, dict(table["train"]), tuple(table["grid"]), dict(table["base"]))


def grid_configs(profile: Profile) -> list[dict]:
    """Every (variant, seed) of the grid tables, in order, with the shared options."""
    return [{**profile.train, **point} for axes in profile.grid for point in charlm._product(axes)]


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


def _rows(stage: str, records: Sequence[charlm.RunRecord]) -> list[dict]:
    rows = []
    for r, flat in zip(records, charlm.run_rows(records)):
        result = r.result or {}
        extra = {f"{split}_{k}": (result.get(split) or {}).get(k, math.nan)
                 for split in ("val", "test") for k in ("loss_ci95", "accuracy_ci95")}
        rows.append({"stage": stage, **{k: v for k, v in flat.items() if k not in ("mixer", "norm")},
                     "size": r.config.get("size"), **extra})
    return rows


def markdown_table(table: Sequence[Mapping[str, Any]]) -> str:
    """Test MLM loss and accuracy (95% CI) per stage and variant."""
    test = {(r["stage"], r["variant"], r["metric"]): r for r in table if r["split"] == "test"}
    lines = ["| stage | variant | test MLM loss (nats) | test MLM accuracy |", "|---|---|---|---|"]
    for stage, variant in dict.fromkeys((s, v) for s, v, _ in test):
        lines.append(f"| {stage} | {charlm.VARIANTS[variant].label} | "
                     f"{charlm.format_cell(test[stage, variant, 'loss'])} | "
                     f"{charlm.format_cell(test[stage, variant, 'accuracy'], digits=4)} |")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, profile: Profile, stages: Mapping[str, Sequence[charlm.RunRecord]]) -> dict:
    """Write the files of :data:`SCHEMA` and the plots to ``out``; return the ``results.json`` dict."""
    rows = [row for stage, records in stages.items() for row in _rows(stage, records)]
    table = [{"stage": stage, **row} for stage, records in stages.items() for split in ("val", "test")
             for metric in ("loss", "accuracy")
             for row in charlm.aggregate(records, split, metric, keys=("size", "variant"))]
    problems = [{"run": f"{stage}/{r.name}", "status": r.status, "problem": r.problem}
                for stage, records in stages.items() for r in records if r.problem]
    charlm.write_csv(out / "runs.csv", rows)
    charlm.write_csv(out / "table.csv", table)
    write_text(out / "table.md", markdown_table(table))
    write_json(out / "curves.json", {f"{stage}/{r.name}": {"config": r.config, "status": r.status,
                                                           "diverged_at_step": r.result.get("diverged_at_step"),
                                                           **r.result.get("curves", {})}
                                     for stage, records in stages.items() for r in records if r.result})
    variants = list(dict.fromkeys(r.config["variant"] for records in stages.values() for r in records))
    results = {"experiment": "bert", "profile": profile.name, "settings": profile.train, "base_settings": profile.base,
               "variants": {v: {"label": charlm.VARIANTS[v].label, "options": dict(charlm.VARIANTS[v].options)}
                            for v in variants},
               "runs": rows, "table": table, "problems": problems, "ci": charlm.CI_NOTE.replace("per-character test",
                                                                                             "per-masked-character"),
               "schema": SCHEMA}
    write_json(out / "results.json", results)
    plot_curves(stages, out / "mlm_curves.png")
    return results


def plot_curves(stages: Mapping[str, Sequence[charlm.RunRecord]], path: Path) -> Path:
    """Per stage: training MLM loss and validation MLM accuracy against step, one line per run."""
    fig = charlm._figure(9, 3.2 * len(stages))
    axes = fig.subplots(len(stages), 2, squeeze=False)
    for (stage, records), (loss_ax, acc_ax) in zip(stages.items(), axes):
        for r in records:
            if not r.result:
                continue
            colour, label = charlm._COLOURS[r.config["variant"]], charlm.VARIANTS[r.config["variant"]].label
            curves = r.result["curves"]
            first = r.config.get("seed", 0) == min(x.config.get("seed", 0) for x in records
                                                    if x.config["variant"] == r.config["variant"])
            loss_ax.plot(curves["train"]["step"], curves["train"]["loss"], color=colour, lw=1,
                         label=label if first else None, alpha=0.9 if first else 0.5)
            acc_ax.plot(curves["val"]["step"], curves["val"]["accuracy"], "o-", color=colour, ms=3, lw=1,
                        alpha=0.9 if first else 0.5)
            if r.status == "diverged":
                loss_ax.axvline(r.result["diverged_at_step"], color=colour, ls=":", lw=1)
        loss_ax.set(title=f"{stage}: training MLM loss", xlabel="step", ylabel="loss (nats)")
        acc_ax.set(title=f"{stage}: validation MLM accuracy", xlabel="step", ylabel="accuracy")
        for ax in (loss_ax, acc_ax):
            ax.grid(alpha=0.3)
        loss_ax.legend(fontsize=7)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

QUICK_OUT = Path(tempfile.gettempdir()) / "bert-quick"


def sweep_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick profile (about 2 minutes on 2 CPU cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results directory (default: results/bert; --quick: {QUICK_OUT})")
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default: OUT/runs)")
    parser.add_argument("--spec", type=Path, default=SPEC_PATH, help=f"spec file (default: {SPEC_PATH})")
    parser.add_argument("--profile", default=None, help="profile of the spec (default: full; --quick: quick)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process (default 1)")
    parser.add_argument("--stage", choices=("grid", "base", "all"), default="all", help="stages to run (default all)")
    parser.add_argument("--variants", default=None, help="comma-separated variants of the grid to run (default: all)")
    return parser


def sweep_main(args: argparse.Namespace, *, run_stages: bool) -> int:
    """Run the stages asked for (unless ``run_stages`` is False), then summarise into ``--out``."""
    paths = charlm.sweep_paths(args, Path("results/bert"), QUICK_OUT, load=load_profile)
    profile, fn, ok = paths.profile, f"{__name__}:run", True
    log = lambda s: print(s, flush=True)  # noqa: E731
    stages = {"grid": grid_configs(profile), "base": base_configs(profile)}
    for stage, configs in stages.items():
        if run_stages and args.stage in (stage, "all"):
            ok &= charlm.run_stage(paths.runs / stage, configs, fn, workers=args.workers,
                                   variants=paths.variants if stage == "grid" else None, log=log)
    records = {stage: charlm.collect(paths.runs / stage, configs) for stage, configs in stages.items()}
    results = write_outputs(paths.out, profile, records)
    print(f"\n{(paths.out / 'table.md').read_text(encoding='utf-8')}")
    for p in results["problems"]:
        print(f"  {p['status']}: {p['run']}: {p['problem']}")
    done = sum(r["status"] in ("completed", "diverged") for r in results["runs"])
    print(f"{done}/{len(results['runs'])} runs finished; results in {paths.out}")
    return 0 if ok and (run_stages or not results["problems"]) else 1


def summary(result: TrainResult) -> str:
    """One line: final test MLM loss and accuracy with their 95% intervals."""
    test = charlm.split_summary(result.final["test"])
    return (f"final: test MLM loss {test['loss']:.3f} ± {test['loss_ci95']:.3f}, accuracy {test['accuracy']:.4f} ± "
            f"{test['accuracy_ci95']:.4f} (95% CI over evaluation rows)")


def train_main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m experiments.bert train ...``: one run."""
    return run_train(make_cli(), argv, resolve=resolve, fit=train_bert, summary=summary)


def main(argv: Sequence[str] | None = None) -> int:
    """``train ...`` (one run), ``summarise ...`` (collect only) or the sweep (anything else)."""
    return sweep_script_main(argv, prog="python -m experiments.bert", train_main=train_main,
                             sweep_parser=sweep_parser, sweep_main=sweep_main)


if __name__ == "__main__":
    sys.exit(main())
