"""A GPT on a character corpus: the corpus encoded with a vocabulary of its training split's characters,
the batch feeds of the training loop, the model built for it (model sizes in :data:`SIZES`) and its
training under a scaling recipe."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from experiments import data
from experiments.inputs import check_split_length
from experiments.train import TrainConfig, TrainResult, train
from experiments.train_step import GradFn, LossFn, parameter_count
from unitscale.models.gpt import GPT, GPTConfig
from experiments.variants import numerics
from unitscale.precision import value_and_grad_with_recipe

# Model sizes for a character vocabulary; "char" is the unit scaling paper's character LM
# (GPTConfig's "char" preset: d_model 128, depth 8).
SIZES: Mapping[str, Mapping[str, Any]] = {
    "tiny": dict(d_model=64, depth=2, heads=2, ffn_ratio=4.0),
    "small": dict(d_model=128, depth=4, heads=4, ffn_ratio=4.0),
    "char": {k: v for k, v in GPTConfig.PRESETS["char"].items() if k not in ("vocab_size", "max_len")},
}


def sizes_help() -> str:
    """The sizes of :data:`SIZES` in one line, for ``--size --help``."""
    return "; ".join(f"{k}: d_model {v['d_model']}, depth {v['depth']}" for k, v in SIZES.items())


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
    ``config.out_dir/vocab.json``. InputError if the training split is too short for ``--seq-len``."""
    corpus = load_char_corpus(args.data, args.cache_dir)
    # A training window is seq_len + 1 characters, drawn from slots seq_len apart (experiments.data).
    check_split_length(len(corpus.train), 2 * config.seq_len, split="training", seq_len=config.seq_len,
                       source=corpus.source)
    gpt_config = model_config(args, corpus.vocab.size)
    model = GPT(gpt_config, rngs=nnx.Rngs(params=config.seed, dropout=config.seed + 1))
    data.save_vocab(corpus.vocab, Path(config.out_dir) / "vocab.json")
    return CharGPT(corpus, gpt_config, model, parameter_count(model))


def train_char_gpt(args: argparse.Namespace, config: TrainConfig,
                   model_config: Callable[[argparse.Namespace, int], GPTConfig], loss_fn: LossFn, *,
                   announce: Callable[[CharGPT], str], value_and_grad: GradFn = value_and_grad_with_recipe,
                   describe: Mapping[str, Any] | None = None) -> TrainResult:
    """Build the model of ``args`` on its corpus (:func:`build_char_gpt`), print ``announce(lm)`` and train
    it with :func:`experiments.train.train` under the scaling recipe and storage of its numerics
    (``--precision``, ``--scaling``); ``result.json`` describes the model, then ``describe``, then the
    data, vocabulary size and parameter count."""
    lm = build_char_gpt(args, config, model_config)
    _, loss_scale = numerics(args)
    print(announce(lm), flush=True)
    return train(lm.model, loss_fn, config, value_and_grad=value_and_grad, recipe_state=loss_scale,
                 skips_nonfinite=loss_scale.skips_nonfinite, storage=lm.config.precision.storage,
                 **corpus_feeds(lm.corpus, config),
                 describe={"model": lm.config.to_dict(), **(describe or {}), "data": lm.corpus.source,
                           "vocab_size": lm.corpus.vocab.size, "parameters": lm.parameters})
