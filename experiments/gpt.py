"""Train a small GPT on Shakespeare at character level with the one training loop.

    python -m experiments.gpt --quick                       # a smoke test, about a minute on 2 CPU cores
    python -m experiments.gpt --standard --scaling delayed --out results/gpt/standard-delayed
    python -m experiments.gpt --size char --precision bf16 --steps 20000 --out results/gpt/char-bf16

By default the model is unit-scaled with FP8 matmuls (E4M3 inputs, E5M2 gradients, simulated exactly
on float32 arithmetic) and no scaling recipe: unit scaling's claim. ``--precision`` picks any preset of
``unitscale.precision`` (fp32, bf16, fp16, fp8, fp8_fnuz, umup_fp8, mxfp8, ...), ``--scaling`` a
recipe: static / dynamic loss scaling or delayed / current / mx scaling of the FP8 matmuls.

Prints the loss going down (train, validation and bits per character), this machine's tokens/s and
the IPU-equivalent step time of the same train step on one Bow IPU; writes ``metrics.jsonl``,
``result.json``, ``vocab.json`` and checkpoints under ``--out`` (``--quick``: a temporary directory).
Interrupt it (Ctrl-C) and run the same command again to resume where it stopped; run a finished one
again and it says it is complete; ``--fresh`` starts over. The corpus is fetched with pip on first
use (see :mod:`experiments.data`); ``--data`` takes any other text file.
For sweeps: ``python -m experiments.sweep run spec.toml --fn experiments.gpt:run --out runs/gpt``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.char_gpt import SIZES, sizes_help, train_char_gpt
from experiments.cli import ExperimentCLI, quick_out, run_main, run_train
from experiments.progress import format_rate
from experiments.train import TrainConfig, TrainResult
from experiments.variants import PRECISIONS, SCALINGS, numerics
from unitscale.models.gpt import GPTConfig, lm_loss

# Peak Adam learning rates: unit-scaled weights are N(0, 1), not N(0, 0.02^2), so the same relative
# update needs a larger step. Chosen from 200-step runs of the tiny model (lr 1e-2, 3e-2, 1e-1
# unit-scaled; 3e-3 standard) on Shakespeare, where 3e-2 and 3e-3 reached the same loss.
LEARNING_RATES = {True: 3e-2, False: 3e-3}
DEFAULTS = {"out": "results/gpt", "steps": 5000, "batch_size": 32, "seq_len": 256, "lr": None, "warmup": 200,
            "eval_every": 250, "eval_batches": 20, "checkpoint_every": 500, "log_every": 25}
# The quick run spends the faster step on 400 steps instead of 300 and evaluates at 200 and 400 only:
# 3.595 validation bpc in 23.5-24.0 s against 3.645 in 24.7-26.0 s for the 300-step run of fc8263d
# (both measured side by side, 2 cores).
QUICK = {"out": str(quick_out("gpt")), "steps": 400, "batch_size": 16, "seq_len": 128, "warmup": 40,
         "eval_every": 200, "eval_batches": 8, "final_eval_batches": 32, "checkpoint_every": 400, "log_every": 50}


def make_cli() -> ExperimentCLI:
    """The options of one run (``python -m experiments.gpt``)."""
    rates = ", ".join(f"{lr:g} ({'unit-scaled' if u else 'standard'})" for u, lr in LEARNING_RATES.items())
    cli = ExperimentCLI("python -m experiments.gpt", __doc__.split("\n")[0], defaults=DEFAULTS, quick=QUICK,
                        epilog=f"{__doc__.split(chr(10) * 2, 1)[1]}\n--lr defaults to {rates}.")
    model = cli.parser.add_argument_group("model")
    cli.add("--size", default="small", quick="tiny", choices=sorted(SIZES), group=model,
            help=f"model size: {sizes_help()}")
    cli.add("--dropout", type=float, default=0.0, group=model, help="dropout rate")
    cli.add("--mixer", default="attention", choices=("attention", "conv", "rnn"), group=model,
            help="sequence mixer")
    cli.add_model_options(precision="fp8", precisions=PRECISIONS, scaling="none", scalings=SCALINGS)
    return cli


def model_config(args: argparse.Namespace, vocab_size: int) -> GPTConfig:
    """The GPT of the parsed options for a vocabulary of ``vocab_size`` ids and context ``args.seq_len``."""
    policy, _ = numerics(args)
    return GPTConfig(vocab_size=vocab_size, max_len=args.seq_len, dropout=args.dropout, mixer=args.mixer,
                     unit_scaled=args.unit_scaled, precision=policy, dtype=policy.compute_dtype,
                     attn_softmax_mult=args.attn_softmax_mult, **SIZES[args.size])


def train_gpt(args: argparse.Namespace, config: TrainConfig) -> TrainResult:
    """Load the corpus, build the model and train it with :func:`experiments.train.train`."""
    announce = lambda lm: (  # noqa: E731
        f"GPT {args.size} ({'unit-scaled' if args.unit_scaled else 'standard'}, {lm.config.precision}, "
        f"scaling {args.scaling}) on {lm.corpus.source}: {len(lm.corpus.train):,} training characters, "
        f"vocabulary {lm.corpus.vocab.size}")
    return train_char_gpt(args, config, model_config, lm_loss, announce=announce,
                          describe={"size": args.size, "precision": args.precision, "scaling": args.scaling})


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


def resolve(cli: ExperimentCLI, args: argparse.Namespace) -> tuple[argparse.Namespace, TrainConfig]:
    """The default learning rate of the parametrisation; the run's TrainConfig (InputError for bad options)."""
    if args.lr is None:
        args.lr = LEARNING_RATES[args.unit_scaled]
    numerics(args)
    return args, cli.train_config(args)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m experiments.gpt ...``: one run."""
    return run_train(make_cli(), argv, resolve=resolve, fit=train_gpt, summary=summary)


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point (:mod:`experiments.runner`): options by name, outputs in ``run_dir/train``."""
    cli = make_cli()
    args, train_config = resolve(cli, cli.parse_dict({**config, "out": str(Path(run_dir) / "train"),
                                                      "no_progress": True}))
    result = train_gpt(args, train_config)
    ipu = result.record.get("ipu") or {}
    return {"val_bpc": result.final["val"]["bits_per_token"], "test_bpc": result.final["test"]["bits_per_token"],
            "train_loss": result.final["train"]["loss"], "tokens_per_s": result.record["tokens_per_s"],
            "ipu_step_time_s": ipu.get("step_time_s")}


if __name__ == "__main__":
    sys.exit(run_main(main))
