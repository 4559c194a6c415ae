"""GPT: a causal language model with a selectable sequence mixer (attention, causal convolution or
Elman RNN), standard or unit-scaled by ``GPTConfig.unit_scaled``.

``tokens -> Embeddings -> TransformerStack -> final norm (pre-norm only) -> readout -> logits``.
"""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from unitscale.models.config import TransformerConfig
from unitscale.models.losses import batch_field, token_cross_entropy
from unitscale.models.transformer import MIXERS, Embeddings, make_norm, make_stack
from unitscale.nn.embedding import check_ids
from unitscale.nn.linear import LinearReadout

__all__ = ["GPTConfig", "GPT", "lm_loss"]

_GPT2 = dict(vocab_size=50257, max_len=1024, dropout=0.1, norm_placement="pre", activation="gelu")


@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    """Config of :class:`GPT` (fields of :class:`~unitscale.models.config.TransformerConfig` plus the
    sequence mixer). ``mixer``: ``"attention"``, ``"conv"`` (grouped causal convolution of
    ``conv_kernel`` taps and ``conv_groups`` groups, depthwise when None) or ``"rnn"`` (Elman).

    Presets (``GPTConfig.preset(name, **overrides)``): ``gpt2-small`` / ``gpt2-medium`` /
    ``gpt2-large`` (Radford et al., 2019: d_model 768/1024/1280, depth 12/24/36, heads 12/16/20,
    vocab 50257, context 1024; here input and output embeddings are untied and GELU is the exact erf
    form, where GPT-2 ties them and uses the tanh approximation), ``char`` (the unit scaling
    paper's character-level LM: hidden 128, depth 8, seq 256, FFN x4; heads 2 is our choice; set
    vocab_size to the corpus vocabulary) and ``tiny`` (for tests).
    """

    mixer: str = "attention"
    conv_kernel: int = 7
    conv_groups: int | None = None

    PRESETS: ClassVar = MappingProxyType({
        "gpt2-small": dict(_GPT2, d_model=768, depth=12, heads=12),
        "gpt2-medium": dict(_GPT2, d_model=1024, depth=24, heads=16),
        "gpt2-large": dict(_GPT2, d_model=1280, depth=36, heads=20),
        "char": dict(vocab_size=256, d_model=128, depth=8, heads=2, max_len=256, ffn_ratio=4.0),
        "tiny": dict(vocab_size=64, d_model=32, depth=2, heads=2, max_len=64, ffn_ratio=4.0),
    })

    def __post_init__(self):
        super().__post_init__()
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {self.mixer!r}")
        if not isinstance(self.conv_kernel, int) or isinstance(self.conv_kernel, bool) or self.conv_kernel < 1:
            raise ValueError(f"conv_kernel must be a positive int, got {self.conv_kernel!r}")
        groups = self.conv_groups
        if groups is not None and (not isinstance(groups, int) or groups < 1 or self.d_model % groups):
            raise ValueError(f"conv_groups ({groups}) must be None or a positive divisor of d_model ({self.d_model})")


class GPT(nnx.Module):
    """Causal LM: ``GPT(config, rngs=nnx.Rngs(0))(ids) -> logits (..., seq, vocab_size)``."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = Embeddings(config, rngs=rngs)
        self.stack = make_stack(
            config, causal=True, mixer=config.mixer, conv_kernel=config.conv_kernel,
            conv_groups=config.conv_groups, rngs=rngs,
        )
        self.final_norm = make_norm(config, in_residual=False) if config.norm_placement == "pre" else nnx.data(None)
        self.readout = LinearReadout(
            config.d_model, config.vocab_size, role="readout", use_bias=False, numerics=config.numerics,
            init_std=config.init_std, rngs=rngs,
        )

    def hidden_states(self, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """The final hidden states ``(..., seq, d_model)`` (after the final norm)."""
        if attention_mask is not None and self.config.mixer != "attention":
            raise ValueError(f"attention_mask: the {self.config.mixer!r} mixer takes no padding mask")
        x = self.stack(self.embeddings(ids), attention_mask)
        return x if self.final_norm is None else self.final_norm(x)

    def __call__(self, ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """Next-token logits for int ``ids`` ``(..., seq)``; ``attention_mask`` ``(batch, seq)``
        (1 = real token) masks padded keys (attention mixer only)."""
        return self.readout(self.hidden_states(ids, attention_mask))


def lm_loss(model: GPT, batch: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-token cross-entropy and totals for a batch with ``inputs``, ``targets`` and an
    optional ``mask`` (1 where a target counts), e.g. ``experiments.data.LMBatch`` or a dict.

    Returns ``(loss, {"nll", "correct", "count"})`` (sums; accuracy = correct / count).
    """
    inputs, targets = batch_field(batch, "inputs"), jnp.asarray(batch_field(batch, "targets"))
    mask = batch_field(batch, "mask", required=False)
    valid = jnp.ones(targets.shape, bool) if mask is None else jnp.asarray(mask) != 0
    check_ids(jnp.where(valid, targets, 0), model.config.vocab_size, "vocab_size")
    logits = model(inputs)
    with jax.named_scope("loss"):
        return token_cross_entropy(
            logits, targets, valid, unit_scaled=model.config.unit_scaled, mult=model.config.loss_softmax_mult
        )
