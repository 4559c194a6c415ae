"""Variants of a run's numerics by name -- number format, scaling recipe and parametrisation: the
columns of the unit scaling paper's tables -- and the precision policy and loss scale of parsed options.

``--precision`` takes a preset of :mod:`unitscale.precision` (:data:`PRECISIONS`), ``--scaling`` one of
its recipes (:data:`SCALINGS`: loss scaling or FP8 tensor scaling), ``--standard`` / ``--unit-scaled``
the parametrisation; ``--variant NAME`` sets all three (and u-muP's alpha_attn-softmax for the
``*-attn32`` variants) from :data:`VARIANTS`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from typing import Any

from experiments.inputs import InputError
from unitscale.precision import PRESETS, RECIPES, LossScale, PrecisionPolicy, scaling_recipe

PRECISIONS: tuple[str, ...] = tuple(PRESETS)
SCALINGS: tuple[str, ...] = tuple(RECIPES)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A number format, scaling recipe and parametrisation: the options of one run that set its numerics."""

    name: str
    label: str
    precision: str
    scaling: str
    unit_scaled: bool
    attn_softmax_mult: float | None = None  # None: the model's default (1)
    colour: str = "black"  # in the figures of every experiment

    @property
    def parametrisation(self) -> str:
        return "unit" if self.unit_scaled else "standard"

    @property
    def options(self) -> dict[str, Any]:
        """The run options it sets, by option name (``args`` attribute)."""
        alpha = {} if self.attn_softmax_mult is None else {"attn_softmax_mult": self.attn_softmax_mult}
        return {"precision": self.precision, "scaling": self.scaling, "unit_scaled": self.unit_scaled, **alpha}

    def record(self) -> dict[str, Any]:
        """The variant as ``results.json`` records it: label and options, the recipe under ``loss_scale``,
        the name it has had in every results file (``paper/`` reads it)."""
        options = {"precision": self.precision, "loss_scale": self.scaling, "unit_scaled": self.unit_scaled}
        alpha = {} if self.attn_softmax_mult is None else {"attn_softmax_mult": self.attn_softmax_mult}
        return {"label": self.label, "options": {**options, **alpha}}


# One variant a line: name, precision preset, scaling recipe, parametrisation, alpha_attn-softmax ("-":
# the model's 1), figure colour, label. The static loss scale of the "static" recipes is the paper's
# 2048 (Sec. 6.1). fp16p-*: the paper's own FP16 regime (preset fp16_paper): weights and Adam's first
# moment stored in FP16 with no float32 master copy, stochastic rounding; its loss scale on the backward
# pass only. *-attn32: unit-scaled with a sharp attention softmax, which post-norm models need (see
# unitscale.models.config.TransformerConfig): u-muP's alpha_attn-softmax 32 instead of 1.
_TABLE = """
fp32-standard          fp32        none             standard  -   black          FP32 standard
fp32-unit              fp32        none             unit      -   tab:grey       FP32 unit-scaled
fp16-standard          fp16        none             standard  -   tab:red        FP16 standard, no loss scaling
fp16-standard-static   fp16        static           standard  -   tab:orange     FP16 standard, static loss scale 2048
fp16-standard-dynamic  fp16        dynamic          standard  -   tab:olive      FP16 standard, dynamic loss scaling
fp16-unit              fp16        none             unit      -   tab:blue       FP16 unit-scaled, no loss scaling
fp8-standard-delayed   fp8         delayed          standard  -   tab:purple     FP8 standard, delayed scaling
fp8-standard           fp8         none             standard  -   tab:brown      FP8 standard, no scaling
fp8-unit               fp8         none             unit      -   tab:cyan       FP8 unit-scaled, no scaling
fp16p-standard         fp16_paper  none             standard  -   darkred        FP16 stored, standard, no loss scaling
fp16p-standard-static  fp16_paper  static-backward  standard  -   sandybrown     FP16 stored, standard, loss scale 2048 (backward)
fp16p-unit             fp16_paper  none             unit      -   navy           FP16 stored, unit-scaled, no loss scaling
fp32-unit-attn32       fp32        none             unit      32  tab:green      FP32 unit-scaled, α_attn 32
fp16-unit-attn32       fp16        none             unit      32  tab:pink       FP16 unit-scaled, α_attn 32
fp8-unit-attn32        fp8         none             unit      32  darkgoldenrod  FP8 unit-scaled, α_attn 32
fp16p-unit-attn32      fp16_paper  none             unit      32  teal           FP16 stored, unit-scaled, α_attn 32
"""


def _parse_table(text: str) -> dict[str, Variant]:
    variants = {}
    for line in text.strip().splitlines():
        name, precision, scaling, parametrisation, alpha, colour, label = line.split(None, 6)
        variants[name] = Variant(name, label, precision, scaling, parametrisation == "unit",
                                 None if alpha == "-" else float(alpha), colour)
    return variants


VARIANTS: Mapping[str, Variant] = _parse_table(_TABLE)


def in_table_order(names: Any) -> list[str]:
    """The distinct variants of ``names`` in :data:`VARIANTS`' order (a table's columns), whatever order a
    spec lists them in (a sweep's order is the order it runs them)."""
    chosen = set(names)
    return [v for v in VARIANTS if v in chosen]


def check_variants(names: Any, where: str) -> None:
    """InputError naming ``where`` unless every name of ``names`` (one name or a list) is a variant."""
    unknown = sorted(set(names if isinstance(names, (list, tuple)) else [names]) - set(VARIANTS))
    if unknown:
        raise InputError(f"{where} names unknown variants {unknown}; known: {list(VARIANTS)}")


def apply_variant(args: argparse.Namespace) -> argparse.Namespace:
    """Set the options of ``args.variant`` (if any) on ``args``; InputError if its numerics are unavailable."""
    if args.variant is not None:
        for key, value in VARIANTS[args.variant].options.items():
            setattr(args, key, value)
    numerics(args)
    return args


def numerics(args: argparse.Namespace) -> tuple[PrecisionPolicy, LossScale]:
    """The precision policy and loss scale of ``--precision`` and ``--scaling``; InputError for bad pairs."""
    try:
        return scaling_recipe(args.precision, args.scaling)
    except ValueError as err:
        raise InputError(f"--precision {args.precision} with --scaling {args.scaling}: {err}") from None
