"""The unit scaling paper's character-level language models: FP32, FP16 and FP8, standard and unit-scaled.

    python -m experiments.charlm --quick --out /tmp/charlm-quick       # the whole pipeline in ~2-3 minutes
    python -m experiments.charlm --out results/charlm --runs /tmp/charlm-runs --workers 2
    python -m experiments.charlm summarise --out results/charlm --runs /tmp/charlm-runs
    python -m experiments.charlm train --variant fp16-unit --mixer conv --norm post --out /tmp/one

Blake, Orr & Luschi (ICML 2023, "Unit Scaling", Sec. 6.1 and Table 2) train causal character LMs (hidden
128, depth 8, sequence 256, batch 8, FFN x4, AdamW) with attention, convolution or RNN sequence layers,
pre- or post-norm, and find that FP16 without loss scaling degrades the standard model while the
unit-scaled model matches FP32 in FP16 with no loss scaling (see docs/reference/unit_scaling_rules.md).

The sweep runs in two stages, both through :mod:`experiments.sweep` (finished runs are skipped, a
killed sweep resumes; each run resumes from its own checkpoints, deleted once it has finished):

1. ``lr``: FP32 attention pre-norm, a learning-rate grid per parametrisation (standard, unit-scaled);
   the lowest final validation bits per character picks each parametrisation's rate.
2. ``grid``: every variant (:data:`VARIANTS`) x mixer x norm placement x seed of the profile, with the
   chosen rate of its parametrisation, the same for every precision (as the paper does).

A run whose loss goes NaN/inf is recorded as ``diverged`` at its step, never dropped. Profiles
(model size, steps, grid) live in ``experiments/sweeps/charlm.toml``. ``summarise`` writes
``runs.csv``, ``table.csv``, ``table.md``, ``lr_sweep.csv``, ``results.json``, ``curves.json`` and the
plots to ``--out`` (the schema is in :func:`write_outputs`); the run directories stay in ``--runs``.

Confidence intervals (95%): over seeds, ``mean +- t(0.975, n-1) s / sqrt(n)``; for a single run, the
standard error of the mean per-character test loss estimated from the sums over its 256-character
evaluation windows (a ratio estimator over windows, so the correlation of neighbouring characters
within a window is accounted for), times 1.96.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import shutil
import sys
import tempfile
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import data
from experiments.cli import ExperimentCLI, run_train, sweep_script_main
from experiments.gpt import build_char_gpt, corpus_feeds
from experiments.results import dumps, read_json, read_jsonl, write_json, write_text
from experiments.sweep import CONFIG_FILE, ERROR_FILE, RESULT_FILE, name_runs, run_sweep
from experiments.train import NonFiniteLossError, TrainConfig, TrainResult, train
from experiments.train_step import backward_shift
from unitscale.models.gpt import GPT, GPTConfig
from unitscale.models.losses import batch_field, token_cross_entropy
from unitscale.precision import (PRESETS, RECIPES, LossScale, PrecisionPolicy, scaling_recipe,
                                 value_and_grad_with_recipe)

SPEC_PATH = Path(__file__).parent / "sweeps" / "charlm.toml"

# ----------------------------------------------------------------------------------------------
# Variants: the columns of the paper's table
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Variant:
    """A number format and scaling recipe: the options of one run that set its numerics."""

    name: str
    label: str
    options: tuple[tuple[str, Any], ...]

    @property
    def unit_scaled(self) -> bool:
        return dict(self.options)["unit_scaled"]

    @property
    def parametrisation(self) -> str:
        return "unit" if self.unit_scaled else "standard"


def _variant(name: str, label: str, **options: Any) -> Variant:
    return Variant(name, label, tuple(options.items()))


# The static loss scale of unitscale.precision's "static" recipe is the paper's 2048 (Sec. 6.1).
VARIANTS: Mapping[str, Variant] = {v.name: v for v in (
    _variant("fp32-standard", "FP32 standard", precision="fp32", loss_scale="none", unit_scaled=False),
    _variant("fp32-unit", "FP32 unit-scaled", precision="fp32", loss_scale="none", unit_scaled=True),
    _variant("fp16-standard", "FP16 standard, no loss scaling", precision="fp16", loss_scale="none",
             unit_scaled=False),
    _variant("fp16-standard-static", "FP16 standard, static loss scale 2048", precision="fp16",
             loss_scale="static", unit_scaled=False),
    _variant("fp16-standard-dynamic", "FP16 standard, dynamic loss scaling", precision="fp16",
             loss_scale="dynamic", unit_scaled=False),
    _variant("fp16-unit", "FP16 unit-scaled, no loss scaling", precision="fp16", loss_scale="none",
             unit_scaled=True),
    _variant("fp8-standard-delayed", "FP8 standard, delayed scaling", precision="fp8", loss_scale="delayed",
             unit_scaled=False),
    _variant("fp8-standard", "FP8 standard, no scaling", precision="fp8", loss_scale="none", unit_scaled=False),
    _variant("fp8-unit", "FP8 unit-scaled, no scaling", precision="fp8", loss_scale="none", unit_scaled=True),
    # The paper's own FP16 regime (precision preset fp16_paper): weights and Adam's first moment stored in
    # FP16 with no float32 master copy, stochastic rounding; its loss scale on the backward pass only.
    _variant("fp16p-standard", "FP16 stored, standard, no loss scaling", precision="fp16_paper",
             loss_scale="none", unit_scaled=False),
    _variant("fp16p-standard-static", "FP16 stored, standard, loss scale 2048 (backward)", precision="fp16_paper",
             loss_scale="static-backward", unit_scaled=False),
    _variant("fp16p-unit", "FP16 stored, unit-scaled, no loss scaling", precision="fp16_paper", loss_scale="none",
             unit_scaled=True),
    # The unit-scaled variants with a sharp attention softmax, which post-norm models need (see
    # unitscale.models.config.TransformerConfig): u-muP's alpha_attn-softmax 32 instead of 1.
    *(_variant(f"{p}-unit-attn32", f"{p.upper()} unit-scaled, α_attn 32", precision=p, loss_scale="none",
               unit_scaled=True, attn_softmax_mult=32.0) for p in ("fp32", "fp16", "fp8")),
    _variant("fp16p-unit-attn32", "FP16 stored, unit-scaled, α_attn 32", precision="fp16_paper", loss_scale="none",
             unit_scaled=True, attn_softmax_mult=32.0),
)}

# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

# --precision: the presets of unitscale.precision; --scaling: its recipes (loss or FP8 tensor scaling).
PRECISIONS: tuple[str, ...] = tuple(PRESETS)
LOSS_SCALES: tuple[str, ...] = RECIPES
# Peak AdamW rates per parametrisation (unit-scaled weights are N(0, 1), so their steps are larger):
# the choice of the full profile's FP32 learning-rate sweep, results/charlm/lr_sweep.csv.
LEARNING_RATES: Mapping[bool, float] = {False: 3e-3, True: 3e-2}
DEFAULTS = {"out": "results/charlm/train", "steps": 1000, "batch_size": 8, "seq_len": 256, "lr": None,
            "warmup": 100, "weight_decay": 0.01, "grad_clip": 0.0, "eval_every": 100, "eval_batches": 10,
            "checkpoint_every": 200, "log_every": 10}
QUICK = {"steps": 60, "seq_len": 64, "warmup": 10, "eval_every": 20, "eval_batches": 4, "final_eval_batches": 16,
         "checkpoint_every": 30, "log_every": 5}


def make_cli() -> ExperimentCLI:
    """The options of one run (``python -m experiments.charlm train``)."""
    cli = ExperimentCLI("python -m experiments.charlm train", "Train one character-level LM of the unit scaling "
                        "paper's grid.", defaults=DEFAULTS, quick=QUICK)
    model = cli.parser.add_argument_group("model")
    cli.add("--mixer", default="attention", choices=("attention", "conv", "rnn"), group=model, help="sequence mixer")
    cli.add("--norm", default="pre", choices=("pre", "post"), group=model, help="norm placement")
    cli.add("--d-model", type=int, default=128, quick=32, group=model, help="hidden size")
    cli.add("--depth", type=int, default=8, quick=2, group=model, help="layers")
    cli.add("--heads", type=int, default=2, group=model, help="attention heads")
    cli.add("--ffn-ratio", type=float, default=4.0, group=model, help="FFN hidden size / d_model")
    cli.add("--dropout", type=float, default=0.0, group=model, help="dropout rate")
    cli.add_model_options(precision="fp32", precisions=PRECISIONS, loss_scale="none", loss_scales=LOSS_SCALES)
    cli.add("--backward-shift", type=int, default=0, group=model,
            help="multiply the backward pass by 2^-K, dividing the parameter gradients by it again in float32 "
                 "(experiments.train_step.backward_shift): gradients 2^K times smaller, as in larger runs")
    cli.add("--variant", default=None, choices=list(VARIANTS), group=model,
            help="sets --precision, --scaling and --standard/--unit-scaled together (and --attn-softmax-mult "
                 "for the *-attn32 variants)")
    return cli


def apply_variant(args: argparse.Namespace) -> argparse.Namespace:
    """Set the options of ``args.variant`` (if any) on ``args``; ValueError if its numerics are unavailable."""
    if args.variant is not None:
        for key, value in VARIANTS[args.variant].options:
            setattr(args, key, value)
    numerics(args)
    return args


def numerics(args: argparse.Namespace) -> tuple[PrecisionPolicy, LossScale]:
    """The precision policy and loss scale of ``--precision`` and ``--scaling``; ValueError for bad pairs."""
    try:
        return scaling_recipe(args.precision, args.loss_scale)
    except ValueError as err:
        raise ValueError(f"--precision {args.precision} with --scaling {args.loss_scale}: {err}") from None


def resolve(cli: ExperimentCLI, args: argparse.Namespace) -> tuple[argparse.Namespace, TrainConfig]:
    """Apply ``--variant`` and the default learning rate of the parametrisation; the run's TrainConfig."""
    apply_variant(args)
    if args.lr is None:
        args.lr = LEARNING_RATES[args.unit_scaled]
    return args, cli.train_config(args)


def model_config(args: argparse.Namespace, vocab_size: int) -> GPTConfig:
    """The GPT of the parsed options for ``vocab_size`` characters and context ``args.seq_len``."""
    return GPTConfig(vocab_size=vocab_size, max_len=args.seq_len, d_model=args.d_model, depth=args.depth,
                     heads=args.heads, ffn_ratio=args.ffn_ratio, dropout=args.dropout, mixer=args.mixer,
                     norm_placement=args.norm, unit_scaled=args.unit_scaled, precision=numerics(args)[0],
                     attn_softmax_mult=args.attn_softmax_mult)


def window_totals(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> dict[str, jax.Array]:
    """Sums over the rows ("windows") w of a batch for confidence intervals of per-token means:
    ``wsq_nll = sum_w L_w^2``, ``wx_nll = sum_w L_w n_w`` (``L_w`` the summed NLL of window w, ``n_w``
    its valid tokens), likewise for ``correct``, and ``wsq_n = sum_w n_w^2``, ``windows``."""
    logits32 = jax.lax.stop_gradient(logits).astype(jnp.float32)
    safe = jnp.where(valid, targets, 0)
    per_token = {"nll": optax.softmax_cross_entropy_with_integer_labels(logits32, safe),
                 "correct": (jnp.argmax(logits32, axis=-1) == safe).astype(jnp.float32)}
    axes = tuple(range(1, valid.ndim))
    n = jnp.sum(valid, axis=axes).astype(jnp.float32)
    out = {"wsq_n": jnp.sum(n * n), "windows": jnp.sum(n > 0).astype(jnp.float32)}
    for name, x in per_token.items():
        total = jnp.sum(jnp.where(valid, x, 0.0), axis=axes)
        out[f"wsq_{name}"], out[f"wx_{name}"] = jnp.sum(total * total), jnp.sum(total * n)
    return out


def charlm_loss(model: GPT, batch: data.LMBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-character cross-entropy (unit-scaled gradient in the unit-scaled model) and the totals
    ``nll, correct, count`` plus :func:`window_totals`."""
    targets, valid = jnp.asarray(batch_field(batch, "targets")), jnp.asarray(batch_field(batch, "mask")) != 0
    logits = model(batch_field(batch, "inputs"))
    with jax.named_scope("loss"):
        loss, totals = token_cross_entropy(logits, targets, valid, unit_scaled=model.config.unit_scaled,
                                           mult=model.config.loss_softmax_mult)
    return loss, {**totals, **window_totals(logits, targets, valid)}


def train_charlm(args: argparse.Namespace, config: TrainConfig) -> TrainResult:
    """Load the corpus, build the model and train it with :func:`experiments.train.train`."""
    lm = build_char_gpt(args, config, model_config)
    corpus = lm.corpus
    _, loss_scale = numerics(args)
    print(f"char LM {args.mixer}/{args.norm}-norm d{args.d_model}x{args.depth} ({args.variant or ''} "
          f"{'unit-scaled' if args.unit_scaled else 'standard'}, {lm.config.precision}, scaling {args.loss_scale}, "
          f"lr {config.optimizer.lr:g}, seed {config.seed}) on {corpus.source}: vocabulary {corpus.vocab.size}, "
          f"{lm.parameters:,} parameters", flush=True)
    return train(
        lm.model, charlm_loss, config, value_and_grad=backward_shift(value_and_grad_with_recipe, args.backward_shift),
        recipe_state=loss_scale,
        skips_nonfinite=loss_scale.skips_nonfinite, storage=lm.config.precision.storage, **corpus_feeds(corpus, config),
        describe={"model": lm.config.to_dict(), "variant": args.variant, "precision": args.precision,
                  "scaling": args.loss_scale, "backward_shift": args.backward_shift, "data": corpus.source,
                  "vocab_size": corpus.vocab.size, "parameters": lm.parameters})


# ----------------------------------------------------------------------------------------------
# Outcome of a run: final metrics with confidence intervals, curves, divergence
# ----------------------------------------------------------------------------------------------

Z95 = 1.959964  # two-sided 95% normal quantile


def window_ci(metrics: Mapping[str, float], name: str) -> float:
    """95% half-width of the per-token mean ``metrics[name]`` from the window sums of an evaluation
    record (every total divided by ``tokens``, as :func:`experiments.train.eval_metrics` reports them).

    Ratio estimator over W windows with sums ``L_w`` and sizes ``n_w``, mean ``m = sum L / sum n``:
    ``Var(m) = W / (W - 1) * sum_w (L_w - m n_w)^2 / (sum n)^2``.
    """
    key = {"loss": "nll", "accuracy": "correct"}[name]
    n = float(metrics["tokens"])
    windows = metrics["windows"] * n
    if windows < 2:
        return math.nan
    m = metrics[name]
    resid = (metrics[f"wsq_{key}"] - 2 * m * metrics[f"wx_{key}"] + m * m * metrics["wsq_n"]) * n
    return Z95 * math.sqrt(max(resid, 0.0) * windows / (windows - 1)) / n


def split_summary(metrics: Mapping[str, float] | None) -> dict[str, float]:
    """``loss``, ``bits`` (per token), ``accuracy`` and their 95% half-widths, and ``tokens``, of one split."""
    if not metrics:
        return {k: math.nan for k in ("loss", "loss_ci95", "bits", "bits_ci95", "accuracy", "accuracy_ci95", "tokens")}
    loss_ci = window_ci(metrics, "loss")
    return {"loss": metrics["loss"], "loss_ci95": loss_ci, "bits": metrics["bits_per_token"],
            "bits_ci95": loss_ci / math.log(2), "accuracy": metrics["accuracy"],
            "accuracy_ci95": window_ci(metrics, "accuracy"), "tokens": metrics["tokens"]}


def downsample(rows: Sequence[Any], max_points: int) -> list[Any]:
    """At most ``max_points`` evenly spaced items of ``rows``, the first and last always among them."""
    if len(rows) <= max_points:
        return list(rows)
    keep = np.unique(np.round(np.linspace(0, len(rows) - 1, max_points)).astype(int))
    return [rows[i] for i in keep]


def curves(records: Sequence[Mapping[str, Any]], max_points: int = 200) -> dict[str, dict[str, list]]:
    """Train records (step, loss, accuracy, grad norm, skipped steps) and validation records (step, loss,
    bits, accuracy) of a ``metrics.jsonl``, each downsampled to ``max_points``."""
    train = downsample([r for r in records if r.get("kind") == "train"], max_points)
    val = downsample([r for r in records if r.get("kind") == "eval" and r.get("split") == "val"], max_points)
    column = lambda rs, k: [r.get(k, math.nan) for r in rs]  # noqa: E731
    return {"train": {"step": column(train, "step"), "loss": column(train, "loss"),
                      "accuracy": column(train, "correct"), "grad_norm": column(train, "grad_norm"),
                      "skipped": column(train, "skipped"),
                      **{k: column(train, k) for k in RECIPE_METRICS if any(k in r for r in train)}},
            "val": {"step": column(val, "step"), "loss": column(val, "loss"), "bits": column(val, "bits_per_token"),
                    "accuracy": column(val, "accuracy")}}


# Per-step metrics of unitscale.precision's recipes in the train records (when the run has them).
RECIPE_METRICS = ("loss_scale", "activations_underflow", "weights_underflow", "gradients_underflow",
                  "gradients_overflow")


def run_outcome(fit: Callable[[], TrainResult], out_dir: Path) -> dict:
    """Call ``fit`` and describe what happened: status ``completed`` or ``diverged`` (with the 1-based
    step whose loss or gradients went non-finite), final metrics per split, speed and curves. Deletes
    a completed run's checkpoints (they are only needed to resume an unfinished run); a diverged run
    keeps the checkpoint of its last good step, as its error message says, to replay the failure."""
    try:
        result = fit()
        status, diverged_at, final, record = "completed", None, result.final, result.record
    except NonFiniteLossError as err:
        status, diverged_at, final, record = "diverged", err.step + 1, {}, {}
    records = read_jsonl(out_dir / "metrics.jsonl")
    train_records = [r for r in records if r.get("kind") == "train"]
    ipu = record.get("ipu") or {}
    if status == "completed":
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return {"status": status, "diverged_at_step": diverged_at,
            "steps_done": train_records[-1]["step"] if train_records else 0,
            "skipped_steps": int(sum(r.get("skipped", 0) for r in train_records)),
            "train_loss": train_records[-1]["loss"] if train_records else math.nan,
            "val": split_summary(final.get("val")), "test": split_summary(final.get("test")),
            "tokens_per_s": record.get("tokens_per_s"), "wall_time_s": record.get("wall_time_s"),
            "ipu_step_time_s": ipu.get("step_time_s"), "curves": curves(records)}


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point (:mod:`experiments.sweep`): options by name (``variant`` included), outputs in
    ``run_dir/train``; returns :func:`run_outcome`."""
    cli = make_cli()
    args, train_config = resolve(cli, cli.parse_dict({**config, "out": str(Path(run_dir) / "train"),
                                                      "no_progress": True}))
    return run_outcome(lambda: train_charlm(args, train_config), Path(train_config.out_dir))


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


def load_spec_table(path: str | Path, profile: str) -> Mapping[str, Any]:
    """The ``[profile]`` table of a TOML spec file; ValueError naming what is missing."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"spec: {path} is not a file")
    spec = tomllib.loads(path.read_text(encoding="utf-8"))
    if profile not in spec:
        raise ValueError(f"profile: {path} has no profile {profile!r}; it has {sorted(spec)}")
    return spec[profile]


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
        unknown = sorted(set(_as_list(axes["variant"])) - set(VARIANTS))
        if unknown:
            raise ValueError(f"spec: [[{name}.grid]] table {i} names unknown variants {unknown}; "
                             f"known: {list(VARIANTS)}")
    return Profile(name, dict(table["train"]), dict(lr_sweep), grid)


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _product(axes: Mapping[str, Any]) -> list[dict]:
    configs = [{}]
    for key, values in axes.items():
        configs = [{**c, key: v} for c in configs for v in _as_list(values)]
    return configs


def lr_configs(profile: Profile) -> list[dict]:
    """The learning-rate sweep: FP32, each parametrisation over its list of rates."""
    sweep = profile.lr_sweep
    fixed = {**profile.train, "mixer": sweep["mixer"], "norm": sweep["norm"], "seed": sweep["seed"]}
    return [{**fixed, "variant": f"fp32-{param}", "lr": float(lr)}
            for param in ("standard", "unit") for lr in _as_list(sweep[param])]


def grid_configs(profile: Profile, rates: Mapping[str, float]) -> list[dict]:
    """The grid, each run with the chosen rate of its parametrisation (``rates["standard"|"unit"]``)."""
    configs = []
    for axes in profile.grid:
        overrides = dict(axes.get("train", {}))
        for point in _product({k: v for k, v in axes.items() if k != "train"}):
            configs.append({**profile.train, **overrides, **point,
                            "lr": float(rates[VARIANTS[point["variant"]].parametrisation])})
    return configs


DEFERRED = "deferred: not among the variants selected for this invocation (--variants)"


def run_stage(stage_dir: Path, configs: Sequence[dict], run_fn: str | Callable[[dict, Path], dict], *, workers: int,
              variants: Sequence[str] | None = None, log: Callable[[str], None] = print) -> bool:
    """Run (or resume) one sweep over ``configs`` in ``stage_dir``; True if no run failed.

    Run names come from the whole stage, so a subset (``variants``) runs in the directories the full
    stage uses: the other unfinished runs get a temporary ``error.txt`` marker the sweep skips
    (``retry_failed=False``), and the selected runs that failed before are retried.
    """
    runs = name_runs(list(configs))
    selected = lambda r: variants is None or r.config["variant"] in variants  # noqa: E731
    markers = []
    for r in runs:
        error = stage_dir / r.name / ERROR_FILE
        if selected(r):
            error.unlink(missing_ok=True)
        elif not (stage_dir / r.name / RESULT_FILE).exists() and not error.exists():
            write_text(error, DEFERRED + "\n")
            markers.append(error)
    try:
        return run_sweep(list(configs), run_fn, stage_dir, workers=workers, retry_failed=False, log=log).ok
    finally:
        for error in markers:
            error.unlink(missing_ok=True)
            if not any(error.parent.iterdir()):  # the marker made the directory; leave no trace
                error.parent.rmdir()


def reuse_runs(source_dir: Path, source_configs: Sequence[dict], stage_dir: Path, configs: Sequence[dict]) -> list[str]:
    """Copy each finished run of ``source_configs`` (in ``source_dir``) whose config equals one of
    ``configs`` to that run's directory in ``stage_dir``, unless it has a result there; return the
    names copied. (The grid's FP32 attention pre-norm seed-0 runs at the chosen rates are runs of the
    learning-rate sweep: training is deterministic, so running them again would repeat them exactly.)"""
    finished = {json.dumps(json_round_trip(r.config), sort_keys=True): source_dir / r.name
                for r in name_runs(list(source_configs)) if (source_dir / r.name / RESULT_FILE).is_file()}
    copied = []
    for run in name_runs(list(configs)):
        source = finished.get(json.dumps(json_round_trip(run.config), sort_keys=True))
        target = stage_dir / run.name
        if source is None or (target / RESULT_FILE).exists():
            continue
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        saved = read_json(target / RESULT_FILE)
        write_json(target / RESULT_FILE, {**saved, "run": run.name, "reused_from": str(source)})
        copied.append(run.name)
    return copied


# ----------------------------------------------------------------------------------------------
# Collecting results
# ----------------------------------------------------------------------------------------------

RESULT_KEYS = ("status", "diverged_at_step", "steps_done", "val", "test", "curves")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One expected run of a stage: where it is, its config, its status and result, or the problem."""

    name: str
    config: Mapping[str, Any]
    status: str  # completed, diverged, failed, missing or malformed
    result: Mapping[str, Any] | None = None
    problem: str | None = None


def _read_result(run_dir: Path, config: Mapping[str, Any]) -> tuple[str, dict | None, str | None]:
    try:
        saved = read_json(run_dir / RESULT_FILE)
    except ValueError as err:
        return "malformed", None, f"{run_dir / RESULT_FILE} is not valid JSON ({err})"
    result = saved.get("result") if isinstance(saved, dict) else None
    if not isinstance(result, dict):
        return "malformed", None, f"{run_dir / RESULT_FILE} holds no 'result' object"
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        return "malformed", None, f"{run_dir / RESULT_FILE} lacks the result fields {missing}"
    if saved.get("config") != json_round_trip(config):
        return "malformed", None, (f"{run_dir / RESULT_FILE} was made with another config than the spec's "
                                   f"(stale run? delete the directory to rerun it)")
    if result["status"] not in ("completed", "diverged"):
        return "malformed", None, f"{run_dir / RESULT_FILE} has an unknown status {result['status']!r}"
    return result["status"], result, None


def json_round_trip(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists, ...), for comparisons with saved configs."""
    return json.loads(dumps(value))


def collect(stage_dir: Path, configs: Sequence[dict]) -> list[RunRecord]:
    """A :class:`RunRecord` for every run of ``configs``, whatever state its directory is in."""
    records = []
    for spec_run in name_runs(list(configs)):
        run_dir = stage_dir / spec_run.name
        if (run_dir / RESULT_FILE).is_file():
            status, result, problem = _read_result(run_dir, spec_run.config)
        elif (run_dir / ERROR_FILE).is_file():
            lines = [ln for ln in (run_dir / ERROR_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
            status, result, problem = "failed", None, f"{run_dir / ERROR_FILE}: {lines[-1] if lines else '?'}"
        else:
            started = (run_dir / CONFIG_FILE).is_file()
            status, result = "missing", None
            problem = f"{run_dir}: {'unfinished (no result.json yet)' if started else 'not run yet'}"
        records.append(RunRecord(spec_run.name, spec_run.config, status, result, problem))
    return records


def choose_rates(records: Sequence[RunRecord]) -> tuple[dict[str, float], list[dict]]:
    """Per parametrisation, the rate of the lowest final validation bits per token among completed
    runs; and one row per run. ValueError if a parametrisation has no usable run yet."""
    rows, rates = [], {}
    for param in ("standard", "unit"):
        mine = [r for r in records if VARIANTS[r.config["variant"]].parametrisation == param]
        rows += [{"parametrisation": param, "lr": r.config["lr"], "status": r.status, **_final_columns(r),
                  "problem": r.problem} for r in mine]
        usable = [r for r in mine if r.status == "completed" and math.isfinite(r.result["val"]["bits"])]
        if not usable:
            raise ValueError(f"lr sweep: no completed {param} run yet ({[r.problem for r in mine]})")
        rates[param] = min(usable, key=lambda r: r.result["val"]["bits"]).config["lr"]
    return rates, rows


def _final_columns(record: RunRecord) -> dict:
    result = record.result or {}
    cols = {"diverged_at_step": result.get("diverged_at_step"), "steps_done": result.get("steps_done")}
    for split in ("val", "test"):
        for key in ("bits", "bits_ci95", "loss", "accuracy"):
            cols[f"{split}_{key}"] = (result.get(split) or {}).get(key, math.nan)
    return cols


# ----------------------------------------------------------------------------------------------
# Statistics over seeds
# ----------------------------------------------------------------------------------------------

# Student's t quantiles t(0.975, df) for df = 1..10 (standard tables).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def seed_mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """``(mean, t(0.975, n-1) * sd / sqrt(n))`` of n >= 2 values (n <= 11; 1.96 beyond)."""
    x = np.asarray(values, float)
    if x.size < 2:
        raise ValueError(f"values: need at least 2 values for a spread, got {x.size}")
    t = T975[x.size - 2] if x.size - 1 <= len(T975) else Z95
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def aggregate(records: Sequence[RunRecord], split: str = "test", metric: str = "bits",
              keys: Sequence[str] = ("mixer", "norm", "variant")) -> list[dict]:
    """One row per cell (the runs sharing the config values of ``keys``): counts by status and the mean
    ``metric`` of ``split`` with its 95% CI: over seeds (``ci_kind = "seeds"``) where two or more runs
    completed, else the single run's window CI (``"tokens"``). Diverged runs are counted, not averaged."""
    cells: dict[tuple, list[RunRecord]] = {}
    for r in records:
        cells.setdefault(tuple(r.config[k] for k in keys), []).append(r)
    rows = []
    for cell, runs in cells.items():
        done = [r for r in runs if r.status == "completed" and math.isfinite(r.result[split][metric])]
        values = [r.result[split][metric] for r in done]
        if len(done) >= 2:
            mean, ci, kind = *seed_mean_ci(values), "seeds"
        elif done:
            mean, ci, kind = values[0], done[0].result[split][f"{metric}_ci95"], "tokens"
        else:
            mean, ci, kind = math.nan, math.nan, None
        diverged = [r for r in runs if r.status == "diverged"]
        rows.append({**dict(zip(keys, cell)), "split": split, "metric": metric,
                     "mean": mean, "ci95": ci, "ci_kind": kind, "runs": len(runs), "completed": len(done),
                     "diverged": len(diverged), "diverged_at_steps": [r.result["diverged_at_step"] for r in diverged],
                     "unavailable": len(runs) - len(done) - len(diverged),
                     "seeds": [r.config["seed"] for r in done], "values": values})
    return rows


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def run_rows(records: Sequence[RunRecord]) -> list[dict]:
    """One flat row per run (no curves): config, status, final metrics, speed, the problem if any."""
    rows = []
    for r in records:
        result = r.result or {}
        row = {"run": r.name, **{k: r.config.get(k) for k in (*GRID_KEYS, "lr")},
               "status": r.status, **_final_columns(r), "skipped_steps": result.get("skipped_steps"),
               "train_loss": result.get("train_loss"), "tokens_per_s": result.get("tokens_per_s"),
               "wall_time_s": result.get("wall_time_s"), "ipu_step_time_s": result.get("ipu_step_time_s"),
               "problem": r.problem}
        rows.append(row)
    return rows


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as CSV (columns in first-seen order; lists as JSON)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    return write_text(path, buffer.getvalue())


def format_cell(row: Mapping[str, Any], digits: int = 3) -> str:
    """``1.234 ± 0.010`` (``†`` marks a CI over seeds), ``diverged @ step k`` or ``n/a``."""
    if row["completed"] and math.isfinite(row["mean"]):
        text = f"{row['mean']:.{digits}f} ± {row['ci95']:.{digits}f}{' †' if row['ci_kind'] == 'seeds' else ''}"
        return text + (f" ({row['diverged']}/{row['runs']} diverged)" if row["diverged"] else "")
    if row["diverged"]:
        return "diverged @ step " + ", ".join(str(s) for s in row["diverged_at_steps"])
    return "n/a"


def markdown_table(rows: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> str:
    """Rows mixer x norm, columns ``variants``, cells :func:`format_cell`."""
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
    "results.json": "{experiment, profile, settings (options shared by all runs), variants (name -> label, "
                    "options), learning_rates (chosen per parametrisation), lr_sweep (rows), runs (rows of "
                    "runs.csv), table (rows of table.csv), problems ([{run, status, problem}]), ci (how intervals "
                    "are computed), schema}",
    "curves.json": "{run: {config, status, diverged_at_step, train: {step, loss, accuracy, grad_norm, "
                   "skipped}, val: {step, loss, bits, accuracy}}} (train: means over log intervals; val: periodic "
                   "evaluations on a prefix of the validation split; both downsampled to <= 200 points)",
}
CI_NOTE = ("95% CIs: with several completed seeds, mean +- t(0.975, n-1) sd / sqrt(n) over seeds (marked †); "
           "for a single run, 1.96 x the standard error of its mean per-character test loss from its evaluation "
           "windows (ratio estimator over 256-character windows), in bits.")


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
               "variants": {v: {"label": VARIANTS[v].label, "options": dict(VARIANTS[v].options)} for v in variants},
               "learning_rates": rates, "lr_sweep": lr_rows, "runs": rows, "table": table, "problems": problems,
               "ci": CI_NOTE, "schema": SCHEMA}
    write_json(out / "results.json", results)
    plot_table([t for t in table if t["split"] == "test"], variants, out / "bpc_table.png",
               title=f"{experiment}: test bits per character (95% CI; † over seeds)")
    for name, shown in CURVE_FIGURES.items():
        chosen = [v for v in shown if v in variants]
        if chosen:
            plot_curves(records, chosen, out / f"curves_{name}.png", title=f"{experiment}: training loss, {name}")
    plot_lr_sweep(lr_rows, rates, out / "lr_sweep.png", title=f"{experiment}: FP32 learning-rate sweep")
    return results


# ----------------------------------------------------------------------------------------------
# Plots (plain matplotlib Figures: no pyplot state)
# ----------------------------------------------------------------------------------------------

# Figure name -> the variants it compares (those in the grid are drawn).
CURVE_FIGURES: Mapping[str, tuple[str, ...]] = {
    "fp16": ("fp32-standard", "fp16-standard", "fp16-standard-static", "fp16-standard-dynamic", "fp32-unit",
             "fp16-unit"),
    "fp8": ("fp32-standard", "fp8-standard", "fp8-standard-delayed", "fp32-unit", "fp8-unit"),
    "attn32": ("fp32-standard", "fp32-unit", "fp32-unit-attn32", "fp16-unit-attn32", "fp8-unit-attn32"),
}
_COLOURS = dict(zip(VARIANTS, ("black", "tab:grey", "tab:red", "tab:orange", "tab:olive", "tab:blue", "tab:purple",
                               "tab:brown", "tab:cyan", "darkred", "sandybrown", "navy", "tab:green", "tab:pink",
                               "darkgoldenrod", "teal")))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), layout="constrained")


def plot_table(rows: Sequence[Mapping[str, Any]], variants: Sequence[str], path: Path, *, title: str) -> Path:
    """Heatmap of the mean of each (mixer / norm, variant) cell, annotated with :func:`format_cell`;
    diverged or missing cells are grey. The colour scale stops 1 bit above the best cell."""
    labels = list(dict.fromkeys((r["mixer"], r["norm"]) for r in rows))
    by_cell = {(r["mixer"], r["norm"], r["variant"]): r for r in rows}
    values = np.full((len(labels), len(variants)), np.nan)
    for i, (mixer, norm) in enumerate(labels):
        for j, v in enumerate(variants):
            if (mixer, norm, v) in by_cell:
                values[i, j] = by_cell[mixer, norm, v]["mean"]
    finite = values[np.isfinite(values)]
    low = float(finite.min()) if finite.size else 0.0
    fig = _figure(1.6 * len(variants) + 2, 0.75 * len(labels) + 2)
    ax = fig.add_subplot()
    ax.set_facecolor("lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r", vmin=low, vmax=low + 1.0, aspect="auto")
    for i, (mixer, norm) in enumerate(labels):
        for j, v in enumerate(variants):
            row = by_cell.get((mixer, norm, v))
            text = format_cell(row).replace(" ± ", "\n± ").replace(" (", "\n(").replace(" @ ", "\n@ ") if row else ""
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if np.isfinite(values[i, j]) and values[i, j] > low + 0.6 else "black")
    ax.set_xticks(range(len(variants)), [VARIANTS[v].label.replace(", ", ",\n") for v in variants], fontsize=7,
                  rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), [f"{m} / {n}-norm" for m, n in labels], fontsize=8)
    fig.colorbar(image, ax=ax, label="bits per character (clipped at best + 1)")
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)
    return path


def plot_curves(records: Sequence[RunRecord], variants: Sequence[str], path: Path, *, title: str,
                metric: str = "bits") -> Path:
    """One panel per mixer / norm: training loss (in bits per token when ``metric == "bits"``) against
    step for each of ``variants`` (every seed drawn; x marks the step a run diverged)."""
    panels = list(dict.fromkeys((r.config["mixer"], r.config["norm"]) for r in records))
    cols = min(3, len(panels)) or 1
    fig = _figure(4.2 * cols, 3.2 * -(-len(panels) // cols))
    axes = fig.subplots(-(-len(panels) // cols), cols, squeeze=False).ravel()
    scale = 1 / math.log(2) if metric == "bits" else 1.0
    for ax, (mixer, norm) in zip(axes, panels):
        for v in variants:
            mine = [r for r in records if r.result and (r.config["mixer"], r.config["norm"], r.config["variant"])
                    == (mixer, norm, v)]
            for k, r in enumerate(mine):
                train = r.result["curves"]["train"]
                y = np.asarray(train["loss"], float) * scale
                ax.plot(train["step"], y, color=_COLOURS[v], lw=1.0, alpha=0.9 if k == 0 else 0.5,
                        label=VARIANTS[v].label if k == 0 else None)
                if r.status == "diverged":
                    ax.plot([r.result["diverged_at_step"]], [np.nanmax(y) if np.isfinite(y).any() else 0.0],
                            "x", color=_COLOURS[v], ms=8, mew=2)
        ax.set_title(f"{mixer} / {norm}-norm", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss (bits/token)" if metric == "bits" else "train loss")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    return path


def plot_lr_sweep(rows: Sequence[Mapping[str, Any]], rates: Mapping[str, float], path: Path, *, title: str) -> Path:
    """Final validation bits per token against learning rate per parametrisation; the chosen rate ringed."""
    fig = _figure(5, 3.5)
    ax = fig.add_subplot()
    for param, colour in (("standard", "black"), ("unit", "tab:blue")):
        mine = sorted((r for r in rows if r["parametrisation"] == param), key=lambda r: r["lr"])
        if not mine:
            continue
        ax.plot([r["lr"] for r in mine], [r["val_bits"] for r in mine], "o-", color=colour, label=param)
        best = [r for r in mine if r["lr"] == rates.get(param)]
        if best:
            ax.plot([best[0]["lr"]], [best[0]["val_bits"]], "o", ms=14, mfc="none", color=colour)
        for r in mine:
            if r["status"] == "diverged":
                ax.annotate("diverged", (r["lr"], ax.get_ylim()[1]), fontsize=7, color=colour)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation bits/token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

QUICK_OUT = Path(tempfile.gettempdir()) / "charlm-quick"


def sweep_parser(prog: str = "python -m experiments.charlm") -> argparse.ArgumentParser:
    """Options of the sweep (and of ``summarise``, which runs nothing)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick profile (about 2-3 minutes on 2 CPU cores)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results directory (default: results/charlm; --quick: {QUICK_OUT})")
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default: OUT/runs)")
    parser.add_argument("--spec", type=Path, default=SPEC_PATH, help=f"spec file (default: {SPEC_PATH})")
    parser.add_argument("--profile", default=None, help="profile of the spec (default: full; --quick: quick)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process (default 1)")
    parser.add_argument("--stage", choices=("lr", "grid", "all"), default="all", help="stages to run (default all)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated variants of the grid to run (default: all); "
                             f"known: {', '.join(VARIANTS)}")
    return parser


@dataclasses.dataclass(frozen=True)
class SweepPaths:
    """Where a sweep reads its spec and writes its runs and results."""

    profile: Any
    out: Path
    runs: Path
    variants: tuple[str, ...] | None


def sweep_paths(args: argparse.Namespace, default_out: Path, quick_out: Path,
                load: Callable[[Path, str], Any] | None = None) -> SweepPaths:
    """The profile (read by ``load``, default :func:`load_profile`) and directories of parsed sweep
    ``args``; ValueError for unknown variants."""
    profile = (load or load_profile)(args.spec, args.profile or ("quick" if args.quick else "full"))
    out = args.out or (quick_out if args.quick else default_out)
    variants = None
    if args.variants:
        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        unknown = sorted(set(variants) - set(VARIANTS))
        if unknown:
            raise ValueError(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
    if not isinstance(args.workers, int) or args.workers < 1:
        raise ValueError(f"--workers must be a positive integer, got {args.workers!r}")
    return SweepPaths(profile, Path(out), Path(args.runs or Path(out) / "runs"), variants)


def report(results: Mapping[str, Any], out: Path, table_md: str) -> None:
    """Print the table, the chosen learning rates and every problem (missing, failed, malformed runs)."""
    print(f"\nlearning rates: {dumps(results['learning_rates'])}")
    print(table_md)
    for p in results["problems"]:
        print(f"  {p['status']}: {p['run']}: {p['problem']}")
    done = sum(r["status"] in ("completed", "diverged") for r in results["runs"])
    print(f"{done}/{len(results['runs'])} grid runs finished; results in {out}")


def sweep_main(args: argparse.Namespace, *, run_stages: bool) -> int:
    """Run the stages asked for (unless ``run_stages`` is False), then summarise into ``--out``."""
    paths = sweep_paths(args, Path("results/charlm"), QUICK_OUT)
    profile, fn, ok = paths.profile, f"{__name__}:run", True
    log = lambda s: print(s, flush=True)  # noqa: E731
    if run_stages and args.stage in ("lr", "all"):
        ok &= run_stage(paths.runs / "lr", lr_configs(profile), fn, workers=args.workers, log=log)
    rates, lr_rows = choose_rates(collect(paths.runs / "lr", lr_configs(profile)))
    configs = grid_configs(profile, rates)
    if run_stages and args.stage in ("grid", "all"):
        for name in reuse_runs(paths.runs / "lr", lr_configs(profile), paths.runs / "grid", configs):
            log(f"reused the learning-rate sweep's run for {name}")
        ok &= run_stage(paths.runs / "grid", configs, fn, workers=args.workers, variants=paths.variants, log=log)
    records = collect(paths.runs / "grid", configs)
    variants = list(dict.fromkeys(c["variant"] for c in configs))
    results = write_outputs(paths.out, experiment="charlm", profile=profile, records=records, lr_rows=lr_rows,
                            rates=rates, variants=variants)
    report(results, paths.out, (paths.out / "table.md").read_text(encoding="utf-8"))
    return 0 if ok and (run_stages or not results["problems"]) else 1


def summary(result: TrainResult) -> str:
    """One line: final validation and test bits per character with their 95% intervals."""
    val, test = split_summary(result.final["val"]), split_summary(result.final["test"])
    return (f"final: val {val['bits']:.3f} ± {val['bits_ci95']:.3f} bpc, test {test['bits']:.3f} ± "
            f"{test['bits_ci95']:.3f} bpc (95% CI over evaluation windows)")


def train_main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m experiments.charlm train ...``: one run, printed like :mod:`experiments.gpt`."""
    return run_train(make_cli(), argv, resolve=resolve, fit=train_charlm, summary=summary)


def main(argv: Sequence[str] | None = None) -> int:
    """``train ...`` (one run), ``summarise ...`` (collect only) or the sweep (anything else)."""
    return sweep_script_main(argv, prog="python -m experiments.charlm", train_main=train_main,
                             sweep_parser=sweep_parser, sweep_main=sweep_main)


if __name__ == "__main__":
    sys.exit(main())
