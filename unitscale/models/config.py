"""Fields, validation and presets shared by the GPT and BERT configs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

from unitscale.nn.mlp import ACTIVATIONS
from unitscale.nn.numerics import Numerics
from unitscale.nn.residual import residual_taus
from unitscale.nn.transformer import NORM_PLACEMENTS
from unitscale.precision.policy import PrecisionPolicy, precision_policy

__all__ = ["NORMS", "TransformerConfig"]

NORMS: tuple[str, ...] = ("layer", "rms")


def _check_int(config: Any, name: str, low: int) -> None:
    value = getattr(config, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _check_positive(config: Any, name: str) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _check_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    if getattr(config, name) not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {getattr(config, name)!r}")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """A transformer's sizes, numerics and u-muP hyperparameters (base of GPTConfig/BERTConfig).

    ``unit_scaled`` switches between the unit-scaled model (N(0, 1) weights, unitscale.functional
    ops, residual weights tau from ``residual_mult``/``residual_attn_ratio``) and the standard one
    (weights N(0, ``init_std``^2), unitscale.standard ops, 1/sqrt(d_head) attention); the layers
    get the twin from :attr:`numerics` (``Numerics.ops``). The u-muP multipliers
    (``attn_softmax_mult``, ``ffn_act_mult``, ``loss_softmax_mult``, and the residual rule) are used
    by the unit-scaled model only. Parameters stay float32.

    Post-norm and unit-scaled: raise ``attn_softmax_mult`` (32 at d_head 32; results/charlm). At
    the default 1 attention is near-uniform at init, and its output scale (sqrt(S) bidirectional,
    sqrt(S / log S) causal) multiplies any component the values share across positions by up to
    that factor. After the first layer the values share such a component; each post-norm LayerNorm
    rescales the sum to unit, so the amplified shared part crowds out the token's own signal layer
    by layer, and training collapses to input-independent outputs (unigram loss). A larger
    multiplier sharpens the softmax, so the scale stays near 1.

    ``precision`` is the model's :class:`~unitscale.precision.PrecisionPolicy` or a preset name
    (``"fp32"``, ``"bf16"``, ``"fp16"``, ``"fp8"``, ``"fp8_fnuz"``, ``"umup_fp8"``, ``"mxfp8"``, ...;
    see ``unitscale.precision.PRESETS``), applied by every weight matmul; the same model runs in another
    precision by changing this one value. ``dtype`` (None by default) overrides the policy's activation
    dtype, e.g. ``precision="fp8", dtype="bfloat16"`` simulates FP8 matmuls on bfloat16 arithmetic;
    :attr:`compute_dtype` is the dtype in effect.
    """

    vocab_size: int = 256
    d_model: int = 128
    depth: int = 2
    heads: int = 2
    ffn_ratio: float = 4.0
    max_len: int = 256
    dropout: float = 0.0
    norm_placement: str = "pre"
    norm: str = "layer"
    norm_eps: float = 1e-5
    activation: str = "gelu"
    use_bias: bool = True
    unit_scaled: bool = True
    precision: PrecisionPolicy | str = "fp32"
    dtype: str | None = None
    init_std: float = 0.02
    remat: bool = False
    residual_mult: float = 1.0
    residual_attn_ratio: float = 1.0
    attn_softmax_mult: float = 1.0
    ffn_act_mult: float = 1.0
    loss_softmax_mult: float = 1.0

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = MappingProxyType({})

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "depth", "heads", "max_len"):
            _check_int(self, name, 1)
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        for name in ("ffn_ratio", "norm_eps", "init_std", "residual_mult", "residual_attn_ratio",
                     "attn_softmax_mult", "ffn_act_mult", "loss_softmax_mult"):
            _check_positive(self, name)
        if self.ffn_hidden < 1:
            raise ValueError(f"ffn_ratio ({self.ffn_ratio}) * d_model ({self.d_model}) must be >= 1")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        _check_choice(self, "norm_placement", NORM_PLACEMENTS)
        _check_choice(self, "norm", NORMS)
        _check_choice(self, "activation", ACTIVATIONS)
        for name in ("use_bias", "unit_scaled", "remat"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        try:
            object.__setattr__(self, "precision", precision_policy(self.precision))
        except (TypeError, ValueError) as error:
            raise ValueError(f"precision: {error}") from None
        if self.dtype is not None:
            try:
                object.__setattr__(self, "dtype", Numerics(dtype=self.dtype).dtype)
            except (TypeError, ValueError) as error:
                raise ValueError(f"dtype: {error}") from None

    @property
    def numerics(self) -> Numerics:
        return Numerics(unit_scaled=self.unit_scaled, dtype=self.dtype, precision=self.precision)

    @property
    def compute_dtype(self) -> str:
        """The activation dtype in effect: ``dtype`` if given, else the policy's."""
        return self.numerics.dtype

    @property
    def ffn_hidden(self) -> int:
        """FFN width ``round(ffn_ratio * d_model)``."""
        return int(round(self.ffn_ratio * self.d_model))

    @property
    def taus(self) -> tuple[float, ...]:
        """Residual branch weights (mixer of layer i at ``2i``, MLP at ``2i+1``); see
        :func:`unitscale.nn.residual.residual_taus`."""
        return residual_taus(self.depth, self.residual_mult, self.residual_attn_ratio)

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """The named preset (``cls.PRESETS``) with ``overrides`` applied."""
        if name not in cls.PRESETS:
            raise ValueError(f"preset {name!r} is unknown; valid presets: {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (the policy as :meth:`PrecisionPolicy.to_dict`, which the
        constructor reads back)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["precision"] = self.precision.to_dict()
        return out
