"""One masked-LM pre-training run of a character-level BERT: its options, model, loss and training
(``python -m experiments.bert train``, and every run of the BERT sweep).

The vocabulary is the characters of the training split plus ``[UNK] [PAD] [CLS] [SEP] [MASK]``; each
row is ``[CLS] x [SEP]`` with ``--mask-prob`` of the characters chosen for prediction by BERT's
80/10/10 rule (:func:`experiments.data.mlm_batch`). The loss returns, besides the token totals, the
row sums of :func:`experiments.intervals.window_totals` (a row is one window), so every evaluation
carries a 95% interval.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from experiments import data
from experiments.cli import ExperimentCLI, quick_out, run_train
from experiments.inputs import check_split_length
from experiments.intervals import split_summary, window_totals
from experiments.outcome import run_outcome
from experiments.train import TrainConfig, TrainResult, train
from experiments.train_step import parameter_count
from experiments.variants import PRECISIONS, SCALINGS, VARIANTS, apply_variant, numerics
from unitscale.models.bert import BERT, BERTConfig
from unitscale.models.losses import batch_field, token_cross_entropy
from unitscale.precision import value_and_grad_with_recipe

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
QUICK = {"out": str(quick_out("bert-train")), "steps": 60, "batch_size": 8, "seq_len": 64, "warmup": 10,
         "eval_every": 20, "eval_batches": 4, "final_eval_batches": 16, "checkpoint_every": 30, "log_every": 5}


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
    cli.add_model_options(precision="fp32", precisions=PRECISIONS, scaling="none", scalings=SCALINGS)
    cli.add("--variant", default=None, choices=list(VARIANTS), group=model,
            help="sets --precision, --scaling and --standard/--unit-scaled together (and --attn-softmax-mult "
                 "for the *-attn32 variants)")
    return cli


def resolve(cli: ExperimentCLI, args: argparse.Namespace) -> tuple[argparse.Namespace, TrainConfig]:
    """Apply ``--variant``; the run's TrainConfig."""
    return apply_variant(args), cli.train_config(args)


def model_config(args: argparse.Namespace, vocab_size: int) -> BERTConfig:
    """The BERT of the parsed options: no token types or classifier (single-segment MLM)."""
    return BERTConfig(vocab_size=vocab_size, max_len=args.seq_len, dropout=args.dropout, type_vocab_size=0,
                      num_labels=0, unit_scaled=args.unit_scaled, precision=numerics(args)[0],
                      attn_softmax_mult=args.attn_softmax_mult, **SIZES[args.size])


def bert_loss(model: BERT, batch: data.MLMBatch) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over the masked positions, totals ``nll, correct, count`` and the row sums of
    :func:`experiments.intervals.window_totals` (a row is one window)."""
    labels = jnp.asarray(batch_field(batch, "labels"))
    valid = labels != model.config.ignore_index
    logits = model(batch_field(batch, "inputs"), None, batch_field(batch, "attention_mask"))
    with jax.named_scope("loss"):
        loss, totals = token_cross_entropy(logits, labels, valid, unit_scaled=model.config.unit_scaled,
                                           mult=model.config.loss_softmax_mult)
    return loss, {**totals, **window_totals(logits, labels, valid)}


def train_bert(args: argparse.Namespace, config: TrainConfig) -> TrainResult:
    """Load the corpus with an MLM vocabulary, build the model and train it; InputError if the training
    split is too short for ``--seq-len``."""
    splits = data.load_corpus(args.data, cache_dir=args.cache_dir)
    vocab = data.build_char_vocab(splits.train, specials=data.MLM_SPECIALS)
    train_ids, val_ids, test_ids = (vocab.encode(t) for t in (splits.train, splits.validation, splits.test))
    # A row holds seq_len - 2 characters between [CLS] and [SEP], drawn from slots that far apart.
    check_split_length(len(train_ids), 2 * (config.seq_len - 2) - 1, split="training", seq_len=config.seq_len,
                       source=splits.source)
    bert_config = model_config(args, vocab.size)
    model = BERT(bert_config, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    n_params = parameter_count(model)
    data.save_vocab(vocab, Path(config.out_dir) / "vocab.json")
    shape = dict(vocab=vocab, batch_size=config.batch_size, seq_len=config.seq_len, mask_prob=args.mask_prob)
    _, loss_scale = numerics(args)
    print(f"BERT {args.size} ({args.variant or ''} {'unit-scaled' if args.unit_scaled else 'standard'}, "
          f"{bert_config.precision}, scaling {args.scaling}, {config.optimizer.name} lr {config.optimizer.lr:g}, "
          f"seed {config.seed}) on {splits.source}: vocabulary {vocab.size}, {n_params:,} parameters", flush=True)
    return train(
        model, bert_loss, config, value_and_grad=value_and_grad_with_recipe, recipe_state=loss_scale,
        skips_nonfinite=loss_scale.skips_nonfinite, storage=bert_config.precision.storage,
        batches=lambda start: data.mlm_batches(train_ids, seed=config.seed, start_step=start, **shape),
        eval_data={"val": lambda: data.mlm_eval_batches(val_ids, **shape),
                   "test": lambda: data.mlm_eval_batches(test_ids, **shape)},
        describe={"model": bert_config.to_dict(), "size": args.size, "variant": args.variant,
                  "precision": args.precision, "scaling": args.scaling, "data": splits.source,
                  "vocab_size": vocab.size, "parameters": n_params, "mask_prob": args.mask_prob})


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point: options by name (``variant`` included), outputs in ``run_dir/train``."""
    cli = make_cli()
    args, train_config = resolve(cli, cli.parse_dict({**config, "out": str(Path(run_dir) / "train"),
                                                      "no_progress": True}))
    return run_outcome(lambda: train_bert(args, train_config), Path(train_config.out_dir))


def summary(result: TrainResult) -> str:
    """One line: final test MLM loss and accuracy with their 95% intervals."""
    test = split_summary(result.final["test"])
    return (f"final: test MLM loss {test['loss']:.3f} ± {test['loss_ci95']:.3f}, accuracy {test['accuracy']:.4f} ± "
            f"{test['accuracy_ci95']:.4f} (95% CI over evaluation rows)")


def train_main(argv: Sequence[str] | None = None) -> TrainResult:
    """``python -m experiments.bert train ...``: one run."""
    return run_train(make_cli(), argv, resolve=resolve, fit=train_bert, summary=summary)
