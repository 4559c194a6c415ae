"""Train a small GPT on Shakespeare at character level with the one training loop.

    python -m experiments.gpt --quick                       # about a minute on 2 CPU cores
    python -m experiments.gpt --standard --scaling delayed --out results/gpt/standard-delayed
    python -m experiments.gpt --size char --precision bf16 --steps 20000 --out results/gpt/char-bf16

By default the model is unit-scaled with FP8 matmuls (E4M3 inputs, E5M2 gradients, simulated exactly
on float32 arithmetic) and no scaling recipe: unit scaling's claim. ``--precision`` picks any preset of
``unitscale.precision`` (fp32, bf16, fp16, fp8, fp8_fnuz, umup_fp8, mxfp8, ...), ``--scaling`` a
recipe: static / dynamic loss scaling or delayed / current / mx scaling of the FP8 matmuls.

Prints the loss going down (train, validation and bits per character), this machine's tokens/s and
the IPU-equivalent step time of the same train step on one Bow IPU; writes ``metrics.jsonl``,
``result.json``, ``vocab.json`` and checkpoints under ``--out``. Interrupt it (Ctrl-C) and run the
same command again to resume where it stopped; ``--fresh`` starts over. The corpus is fetched with
pip on first use (see :mod:`experiments.data`); ``--data`` takes any other text file.
For sweeps: ``python -m experiments.sweep run spec.toml --fn experiments.gpt:run --out runs/gpt``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from experiments import data
from experiments.cli import ExperimentCLI, run_main, run_train
from experiments.progress import format_rate
from experiments.train import TrainConfig, TrainResult, train
from unitscale.models.gpt import GPT, GPTConfig, lm_loss
from unitscale.precision import PRESETS, RECIPES, LossScale, PrecisionPolicy, scaling_recipe, value_and_grad_with_recipe

# Model sizes for a character vocabulary; "char" is the unit scaling paper's character LM
# (GPTConfig's "char" preset: d_model 128, depth 8).
SIZES: Mapping[str, Mapping[str, Any]] = {
    "tiny": dict(d_model=64, depth=2, heads=2, ffn_ratio=4.0),
    "small": dict(d_model=128, depth=4, heads=4, ffn_ratio=4.0),
    "char": {k: v for k, v in GPTConfig.PRESETS["char"].items() if k not in ("vocab_size", "max_len")},
}
# --precision: the presets of unitscale.precision; --scaling: its recipes.
PRECISIONS: tuple[str, ...] = tuple(PRESETS)
LOSS_SCALES: tuple[str, ...] = RECIPES

# Peak Adam learning rates: unit-scaled weights are N(0, 1), not N(0, 0.02^2), so the same relative
# update needs a larger step. Chosen from 200-step runs of the tiny model (lr 1e-2, 3e-2, 1e-1
# unit-scaled; 3e-3 standard) on Shakespeare, where 3e-2 and 3e-3 reached the same loss.
LEARNING_RATES = {True: 3e-2, False: 3e-3}
DEFAULTS = {"out": "results/gpt", "steps": 5000, "batch_size": 32, "seq_len": 256, "lr": None, "warmup": 200,
            "eval_every": 250, "eval_batches": 20, "checkpoint_every": 500, "log_every": 25}
QUICK = {"steps": 300, "batch_size": 16, "seq_len": 128, "warmup": 30, "eval_every": 50, "eval_batches": 8,
         "final_eval_batches": 32, "checkpoint_every": 100, "log_every": 10}


def make_cli() -> ExperimentCLI:
    rates = ", ".join(f"{lr:g} ({'unit-scaled' if u else 'standard'})" for u, lr in LEARNING_RATES.items())
    cli = ExperimentCLI("python -m experiments.gpt", __doc__.split("\n")[0], defaults=DEFAULTS, quick=QUICK,
                        epilog=f"{__doc__.split(chr(10) * 2, 1)[1]}\n--lr defaults to {rates}.")
    model = cli.parser.add_argument_group("model")
    cli.add("--size", default="small", quick="tiny", choices=sorted(SIZES), group=model,
            help="model size: " + "; ".join(f"{k}: d_model {v['d_model']}, depth {v['depth']}"
                                            for k, v in SIZES.items()))
    cli.add("--dropout", type=float, default=0.0, group=model, help="dropout rate")
    cli.add("--mixer", default="attention", choices=("attention", "conv", "rnn"), group=model,
            help="sequence mixer")
    cli.add_model_options(precision="fp8", precisions=PRECISIONS, loss_scale="none", loss_scales=LOSS_SCALES)
    return cli


@dataclasses.dataclass(frozen=True)
class CharCorpus:
    """A corpus split and encoded with a character vocabulary built from its training split."""

    vocab: data.CharVocab
    train: np.ndarray = dataclasses.field(repr=False)
    validation: np.ndarray = dataclasses.field(repr=False)
    test: np.ndarray = dataclasses.field(repr=False)
    source: str = ""


def load_char_corpus(name: str, cache_dir: str | None = None) -> CharCorpus:
    """``name`` (``"shakespeare"``, ``"gcide"``, a WikiText directory or a text file) as character ids."""
    splits = data.load_corpus(name, cache_dir=cache_dir)
    vocab = data.build_char_vocab(splits.train)
    return CharCorpus(vocab, vocab.encode(splits.train), vocab.encode(splits.validation), vocab.encode(splits.test),
                      splits.source)


def numerics(args: argparse.Namespace) -> tuple[PrecisionPolicy, LossScale]:
    """The precision policy and loss scale of ``--precision`` and ``--scaling``; bad pairs raise ValueError."""
    return scaling_recipe(args.precision, args.loss_scale)


def model_config(args: argparse.Namespace, vocab_size: int) -> GPTConfig:
    """The GPT of the parsed options for a vocabulary of ``vocab_size`` ids and context ``args.seq_len``."""
    policy, _ = numerics(args)
    return GPTConfig(vocab_size=vocab_size, max_len=args.seq_len, dropout=args.dropout, mixer=args.mixer,
                     unit_scaled=args.unit_scaled, precision=policy, dtype=policy.compute_dtype,
                     attn_softmax_mult=args.attn_softmax_mult, **SIZES[args.size])


def parameter_count(model: nnx.Module) -> int:
    """Number of trainable parameter values of ``model``."""
    return sum(int(np.size(x)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def corpus_feeds(corpus: CharCorpus, config: TrainConfig) -> dict[str, Any]:
    """The ``batches`` and ``eval_data`` arguments of :func:`experiments.train.train` for a character
    corpus: contiguous training windows in the seed's order, full passes over validation and test."""
    shape = dict(batch_size=config.batch_size, seq_len=config.seq_len)
    return dict(batches=lambda start: data.lm_batches(corpus.train, seed=config.seed, start_step=start, **shape),
                eval_data={"val": lambda: data.lm_eval_batches(corpus.validation, **shape),
                           "test": lambda: data.lm_eval_batches(corpus.test, **shape)})


@dataclasses.dataclass(frozen=True)
class CharGPT:
    """A GPT built for a character corpus: the encoded corpus, the model's config, the model and its
    number of parameters."""

    corpus: CharCorpus
    config: GPTConfig
    model: GPT = dataclasses.field(repr=False)
    parameters: int


def build_char_gpt(args: argparse.Namespace, config: TrainConfig,
                   model_config: Callable[[argparse.Namespace, int], GPTConfig]) -> CharGPT:
    """Load ``args.data`` as characters, build ``GPT(model_config(args, vocabulary size))`` initialised
    from ``config.seed`` (dropout from ``config.seed + 1``) and save the vocabulary to
    ``config.out_dir/vocab.json``."""
    corpus = load_char_corpus(args.data, args.cache_dir)
    gpt_config = model_config(args, corpus.vocab.size)
    model = GPT(gpt_config, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    data.save_vocab(corpus.vocab, Path(config.out_dir) / "vocab.json")
    return CharGPT(corpus, gpt_config, model, parameter_count(model))


def train_gpt(args: argparse.Namespace, config: TrainConfig) -> TrainResult:
    """Load the corpus, build the model and train it with :func:`experiments.train.train`."""
    lm = build_char_gpt(args, config, model_config)
    corpus = lm.corpus
    _, loss_scale = numerics(args)
    print(f"GPT {args.size} ({'unit-scaled' if args.unit_scaled else 'standard'}, {lm.config.precision}, "
          f"scaling {args.loss_scale}) on {corpus.source}: {len(corpus.train):,} training characters, "
          f"vocabulary {corpus.vocab.size}")
    return train(
        lm.model, lm_loss, config, value_and_grad=value_and_grad_with_recipe, recipe_state=loss_scale,
        skips_nonfinite=loss_scale.skips_nonfinite, storage=lm.config.precision.storage, **corpus_feeds(corpus, config),
        describe={"model": lm.config.to_dict(), "size": args.size, "precision": args.precision,
                  "loss_scale": args.loss_scale, "data": corpus.source, "vocab_size": corpus.vocab.size,
                  "parameters": lm.parameters})


def summary(result: TrainResult) -> str:
    """One line: final bits per character, this machine's speed and the IPU-equivalent step time."""
    final, record = result.final, result.record
    parts = [f"final: val {final['val']['bits_per_token']:.3f} bpc, test {final['test']['bits_per_token']:.3f} bpc",
             f"this machine {format_rate(record['tokens_per_s'] or float('nan'))} tok/s"]
    ipu = record.get("ipu")
    if ipu and "error" not in ipu:
        parts.append(f"{ipu['description']} {ipu['step_time_s'] * 1e3:.3g} ms/step = {format_rate(ipu['tokens_per_s'])} tok/s")
    elif ipu:
        parts.append(f"IPU estimate unavailable ({ipu['error'][:120]})")
    return " | ".join(parts)


def _resolve(cli: ExperimentCLI, args: argparse.Namespace) -> tuple[argparse.Namespace, TrainConfig]:
    if args.lr is None:
        args.lr = LEARNING_RATES[args.unit_scaled]
    try:
        numerics(args)
    except ValueError as err:
        cli.parser.error(f"--precision {args.precision} with --scaling {args.loss_scale}: {err}")
    return args, cli.train_config(args)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    return run_train(make_cli(), argv, resolve=_resolve, fit=train_gpt, summary=summary)


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point (:mod:`experiments.sweep`): options by name, outputs in ``run_dir/train``."""
    cli = make_cli()
    args, train_config = _resolve(cli, cli.parse_dict({**config, "out": str(Path(run_dir) / "train"),
                                                       "no_progress": True}))
    result = train_gpt(args, train_config)
    ipu = result.record.get("ipu") or {}
    return {"val_bpc": result.final["val"]["bits_per_token"], "test_bpc": result.final["test"]["bits_per_token"],
            "train_loss": result.final["train"]["loss"], "tokens_per_s": result.record["tokens_per_s"],
            "ipu_step_time_s": ipu.get("step_time_s")}


if __name__ == "__main__":
    sys.exit(run_main(main))
