"""One run of the unit scaling paper's character-level language model: its options, model, loss and
training (``python -m experiments.charlm train``, and every run of the char-LM and shift sweeps).

Blake, Orr & Luschi (ICML 2023, Sec. 6.1) train causal character LMs (hidden 128, depth 8, sequence
256, batch 8, FFN x4, AdamW) with attention, convolution or RNN sequence layers, pre- or post-norm.
The loss returns, besides the token totals, the window sums of :func:`experiments.intervals.window_totals`,
so every evaluation carries a 95% interval of its bits per character.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from experiments import data
from experiments.char_gpt import train_char_gpt
from experiments.cli import ExperimentCLI, quick_out, run_train
from experiments.intervals import split_summary, window_totals
from experiments.outcome import run_outcome
from experiments.train import TrainConfig, TrainResult
from experiments.train_step import backward_shift
from experiments.variants import PRECISIONS, SCALINGS, VARIANTS, apply_variant, numerics
from unitscale.models.gpt import GPT, GPTConfig
from unitscale.models.losses import batch_field, token_cross_entropy
from unitscale.precision import value_and_grad_with_recipe

# Peak AdamW rates per parametrisation (unit-scaled weights are N(0, 1), so their steps are larger):
# the choice of the full profile's FP32 learning-rate sweep, results/charlm/lr_sweep.csv.
LEARNING_RATES: Mapping[bool, float] = {False: 3e-3, True: 3e-2}
DEFAULTS = {"out": "results/charlm/train", "steps": 1000, "batch_size": 8, "seq_len": 256, "lr": None,
            "warmup": 100, "weight_decay": 0.01, "grad_clip": 0.0, "eval_every": 100, "eval_batches": 10,
            "checkpoint_every": 200, "log_every": 10}
QUICK = {"out": str(quick_out("charlm-train")), "steps": 60, "seq_len": 64, "warmup": 10, "eval_every": 20,
         "eval_batches": 4, "final_eval_batches": 16, "checkpoint_every": 30, "log_every": 5}


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
    cli.add_model_options(precision="fp32", precisions=PRECISIONS, scaling="none", scalings=SCALINGS)
    cli.add("--backward-shift", type=int, default=0, group=model,
            help="multiply the backward pass by 2^-K, dividing the parameter gradients by it again in float32 "
                 "(experiments.train_step.backward_shift): gradients 2^K times smaller, as in larger runs")
    cli.add("--variant", default=None, choices=list(VARIANTS), group=model,
            help="sets --precision, --scaling and --standard/--unit-scaled together (and --attn-softmax-mult "
                 "for the *-attn32 variants)")
    return cli


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


def charlm_loss(model: GPT, batch: data.LMBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-character cross-entropy (unit-scaled gradient in the unit-scaled model) and the totals
    ``nll, correct, count`` plus :func:`experiments.intervals.window_totals`."""
    targets, valid = jnp.asarray(batch_field(batch, "targets")), jnp.asarray(batch_field(batch, "mask")) != 0
    logits = model(batch_field(batch, "inputs"))
    with jax.named_scope("loss"):
        loss, totals = token_cross_entropy(logits, targets, valid, unit_scaled=model.config.unit_scaled,
                                           mult=model.config.loss_softmax_mult)
    return loss, {**totals, **window_totals(logits, targets, valid)}


def train_charlm(args: argparse.Namespace, config: TrainConfig) -> TrainResult:
    """Load the corpus, build the model and train it with :func:`experiments.train.train`."""
    announce = lambda lm: (  # noqa: E731
        f"char LM {args.mixer}/{args.norm}-norm d{args.d_model}x{args.depth} ({args.variant or ''} "
        f"{'unit-scaled' if args.unit_scaled else 'standard'}, {lm.config.precision}, scaling {args.scaling}, "
        f"lr {config.optimizer.lr:g}, seed {config.seed}) on {lm.corpus.source}: vocabulary {lm.corpus.vocab.size}, "
        f"{lm.parameters:,} parameters")
    return train_char_gpt(args, config, model_config, charlm_loss, announce=announce,
                          value_and_grad=backward_shift(value_and_grad_with_recipe, args.backward_shift),
                          describe={"variant": args.variant, "precision": args.precision, "scaling": args.scaling,
                                    "backward_shift": args.backward_shift})


def parse_run(config: Mapping[str, Any], run_dir: str | Path) -> tuple[argparse.Namespace, TrainConfig]:
    """The options and TrainConfig of a sweep run: ``config`` by option name (``variant`` included),
    outputs in ``run_dir/train``, no progress bar."""
    cli = make_cli()
    return resolve(cli, cli.parse_dict({**config, "out": str(Path(run_dir) / "train"), "no_progress": True}))


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point (:mod:`experiments.runner`): one run of ``config`` in ``run_dir/train``; returns
    :func:`experiments.outcome.run_outcome`."""
    args, train_config = parse_run(config, run_dir)
    return run_outcome(lambda: train_charlm(args, train_config), Path(train_config.out_dir))


def summary(result: TrainResult) -> str:
    """One line: final validation and test bits per character with their 95% intervals."""
    val, test = split_summary(result.final["val"]), split_summary(result.final["test"])
    return (f"final: val {val['bits']:.3f} ± {val['bits_ci95']:.3f} bpc, test {test['bits']:.3f} ± "
            f"{test['bits_ci95']:.3f} bpc (95% CI over evaluation windows)")


def train_main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m experiments.charlm train ...``: one run, printed like :mod:`experiments.gpt`."""
    return run_train(make_cli(), argv, resolve=resolve, fit=train_charlm, summary=summary)
