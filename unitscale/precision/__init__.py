"""Precision policies and the scaling baselines unit scaling is compared against.

* :mod:`~unitscale.precision.policy`: :class:`PrecisionPolicy` (formats of activations, matmul inputs,
  output-gradients, roles kept in higher precision, tensor scaling) and presets by name: ``fp32``,
  ``bf16``, ``fp16`` (real 16-bit arithmetic), ``fp8`` / ``fp8_fnuz`` (E4M3 forward, E5M2 backward,
  simulated exactly on float32 arithmetic), ``umup_fp8``, ``mxfp8`` / ``mxfp6`` / ``mxfp4``.
* :mod:`~unitscale.precision.matmul`: the quantised weight matmul every ``unitscale.nn`` Linear runs
  through, and its recipe state (amax histories, range counts).
* :mod:`~unitscale.precision.tensor_scaling`, :mod:`~unitscale.precision.mx`: current / delayed
  per-tensor scales, OCP MX block scaling.
* :mod:`~unitscale.precision.loss_scale`: jmp-style ``NoOpLossScale``, ``StaticLossScale``,
  ``DynamicLossScale``, ``all_finite``, ``select_tree``.
* :mod:`~unitscale.precision.recipe`: :func:`value_and_grad_with_recipe` (the training-step contract)
  and :func:`apply_if_finite`.
* :mod:`~unitscale.precision.stats`: overflow / underflow counts.
* :mod:`~unitscale.precision.storage`: parameters and Adam moments stored in a format with no float32
  master copy, updates rounded nearest or stochastically (the paper's FP16 regime, ``fp16_paper``).

Attention's ``q k^T`` and ``p v`` matmuls are not quantised by any policy: Transformer Engine's FP8
recipe quantises the linear layers and leaves the attention core in higher precision, and u-muP's
"about 70% of matmul FLOPs in FP8" is the linear layers' share (with SwiGLU at width 8/3 d: qkv 3 d^2
+ gate/up 16/3 d^2 in FP8 against attn-out d^2 + down 8/3 d^2 kept: 8.3 / 12 = 69%). Softmax
probabilities near 1/seq would also sit at E4M3's subnormal floor for seq >= 256.
"""

from unitscale.precision.loss_scale import (DynamicLossScale, LossScale, NoOpLossScale, StaticLossScale, all_finite,
                                            select_tree)
from unitscale.precision.matmul import AmaxHistory, MatmulQuantizer, MatmulSpec, RangeCounts, RecipeVariable
from unitscale.precision.mx import mx_decode, mx_emax, mx_encode, mx_quantize
from unitscale.precision.policy import COMPUTE_DTYPES, PRESETS, SCALINGS, PrecisionPolicy, precision_policy
from unitscale.precision.recipe import (RECIPES, apply_if_finite, float8_operands, precision_metrics, scaling_recipe,
                                        value_and_grad_with_recipe)
from unitscale.precision.stats import STAT_NAMES, range_counts
from unitscale.precision.storage import (Storage, StoredAdamState, StoredState, apply_stored_updates,
                                        scale_by_stored_adam, store_params, stored_optimizer)
from unitscale.precision.tensor_scaling import amax, push_amax, scale_from_amax, scale_from_history

__all__ = [
    "COMPUTE_DTYPES",
    "PRESETS",
    "RECIPES",
    "SCALINGS",
    "STAT_NAMES",
    "AmaxHistory",
    "DynamicLossScale",
    "LossScale",
    "MatmulQuantizer",
    "MatmulSpec",
    "NoOpLossScale",
    "PrecisionPolicy",
    "RangeCounts",
    "RecipeVariable",
    "StaticLossScale",
    "Storage",
    "StoredAdamState",
    "StoredState",
    "all_finite",
    "amax",
    "apply_if_finite",
    "apply_stored_updates",
    "float8_operands",
    "mx_decode",
    "mx_emax",
    "mx_encode",
    "mx_quantize",
    "precision_metrics",
    "precision_policy",
    "push_amax",
    "range_counts",
    "scale_from_amax",
    "scale_by_stored_adam",
    "scale_from_history",
    "scaling_recipe",
    "select_tree",
    "store_params",
    "stored_optimizer",
    "value_and_grad_with_recipe",
]
