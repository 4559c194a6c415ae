"""BERT: a bidirectional masked language model with a pooled classification head, standard or
unit-scaled by ``BERTConfig.unit_scaled``.

``tokens (+ token types) -> Embeddings (+ norm) -> TransformerStack -> final norm (pre-norm only)``,
then the MLM head ``Linear "mlm_transform" -> GELU -> norm -> readout`` and, for fine-tuning, the
pooler ``Linear "pooler" -> tanh`` on the first ([CLS]) position and ``readout "classifier"``.
The 80/10/10 masking of the inputs is the data pipeline's job (``experiments.data.mlm_batch``).
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
from unitscale.models.transformer import Embeddings, make_norm, make_stack
from unitscale.nn.dropout import Dropout
from unitscale.nn.embedding import check_ids
from unitscale.nn.linear import Linear, LinearReadout

__all__ = ["BERTConfig", "BERT", "ClassificationBatch", "mlm_loss", "classification_loss"]

_BERT = dict(vocab_size=30522, max_len=512, dropout=0.1, norm_placement="post", norm_eps=1e-12,
             activation="gelu", type_vocab_size=2)


@dataclasses.dataclass(frozen=True)
class BERTConfig(TransformerConfig):
    """Config of :class:`BERT`: the :class:`~unitscale.models.config.TransformerConfig` fields plus
    ``type_vocab_size`` (0 disables token-type embeddings), ``num_labels`` of the pooled
    classification head (0: no head) and the ``ignore_index`` of MLM labels.

    Presets (``BERTConfig.preset(name, **overrides)``): ``bert-base`` / ``bert-large`` (Devlin et
    al., 2019: d_model 768/1024, depth 12/24, heads 12/16, vocab 30522, 512 positions, post-norm,
    GELU, dropout 0.1, LayerNorm eps 1e-12) and ``tiny`` (for tests).
    """

    norm_placement: str = "post"
    type_vocab_size: int = 2
    num_labels: int = 2
    ignore_index: int = -100

    PRESETS: ClassVar = MappingProxyType({
        "bert-base": dict(_BERT, d_model=768, depth=12, heads=12),
        "bert-large": dict(_BERT, d_model=1024, depth=24, heads=16),
        "tiny": dict(vocab_size=64, d_model=32, depth=2, heads=2, max_len=64, type_vocab_size=2),
    })

    def __post_init__(self):
        super().__post_init__()
        for name in ("type_vocab_size", "num_labels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.ignore_index, int) or 0 <= self.ignore_index < self.vocab_size:
            raise ValueError(f"ignore_index must be an int outside [0, vocab_size), got {self.ignore_index!r}")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClassificationBatch:
    """Sequence-classification batch: int ``inputs`` ``(batch, seq)``, ``labels`` ``(batch,)``,
    optional ``token_types`` and ``attention_mask`` ``(batch, seq)`` (1 = real token)."""

    inputs: Any
    labels: Any
    token_types: Any = None
    attention_mask: Any = None


class BERT(nnx.Module):
    """Masked LM: ``BERT(config, rngs=nnx.Rngs(0))(ids, token_type_ids, attention_mask) -> logits``."""

    def __init__(self, config: BERTConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, BERTConfig):
            raise TypeError(f"config must be a BERTConfig, got {type(config).__name__}")
        self.config, self.numerics = config, config.numerics
        d, common = config.d_model, dict(numerics=config.numerics, init_std=config.init_std, rngs=rngs)
        self.embeddings = Embeddings(config, type_vocab_size=config.type_vocab_size, norm=True, rngs=rngs)
        self.stack = make_stack(config, causal=False, rngs=rngs)
        self.final_norm = make_norm(config, in_residual=False) if config.norm_placement == "pre" else nnx.data(None)
        self.mlm_transform = Linear(d, d, role="mlm_transform", use_bias=config.use_bias, **common)
        self.mlm_norm = make_norm(config, in_residual=False)
        self.readout = LinearReadout(d, config.vocab_size, role="readout", use_bias=True, **common)
        if config.num_labels:
            self.pooler = Linear(d, d, role="pooler", use_bias=config.use_bias, **common)
            self.pooler_dropout = Dropout(config.dropout, numerics=config.numerics, rngs=rngs)
            self.classifier = LinearReadout(d, config.num_labels, role="classifier", use_bias=True, **common)
        else:
            self.pooler = self.pooler_dropout = self.classifier = nnx.data(None)

    def hidden_states(
        self, ids: jax.Array, token_type_ids: jax.Array | None = None, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """The encoder output ``(batch, seq, d_model)``."""
        x = self.stack(self.embeddings(ids, token_type_ids), attention_mask)
        return x if self.final_norm is None else self.final_norm(x)

    def __call__(
        self, ids: jax.Array, token_type_ids: jax.Array | None = None, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """MLM logits ``(batch, seq, vocab_size)`` at every position."""
        h = self.mlm_transform(self.hidden_states(ids, token_type_ids, attention_mask))
        with jax.named_scope("mlm_head"):
            h = self.numerics.ops.gelu(h, self.config.ffn_act_mult)
            return self.readout(self.mlm_norm(h))

    def classify(
        self, ids: jax.Array, token_type_ids: jax.Array | None = None, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """Class logits ``(batch, num_labels)`` from the pooled first position."""
        if self.pooler is None:
            raise ValueError("num_labels is 0: this BERT has no classification head")
        first = self.hidden_states(ids, token_type_ids, attention_mask)[..., 0, :]
        pooled = self.pooler(first)
        with jax.named_scope("pooler"):
            pooled = self.numerics.ops.tanh(pooled)
        return self.classifier(self.pooler_dropout(pooled))


def mlm_loss(model: BERT, batch: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy over the masked positions (``labels != config.ignore_index``) of a batch
    with ``inputs``, ``labels`` and optional ``token_types``, ``attention_mask`` (e.g.
    ``experiments.data.MLMBatch`` or a dict). Returns ``(loss, {"nll", "correct", "count"})``;
    MLM accuracy = correct / count.
    """
    cfg = model.config
    labels = jnp.asarray(batch_field(batch, "labels"))
    valid = labels != cfg.ignore_index
    check_ids(jnp.where(valid, labels, 0), cfg.vocab_size, "vocab_size")
    logits = model(
        batch_field(batch, "inputs"),
        batch_field(batch, "token_types", required=False),
        batch_field(batch, "attention_mask", required=False),
    )
    with jax.named_scope("loss"):
        return token_cross_entropy(logits, labels, valid, unit_scaled=cfg.unit_scaled, mult=cfg.loss_softmax_mult)


def classification_loss(model: BERT, batch: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean cross-entropy of the pooled head over a :class:`ClassificationBatch` (or a dict with its
    fields); labels equal to ``config.ignore_index`` are skipped. Returns ``(loss, totals)``."""
    cfg = model.config
    labels = jnp.asarray(batch_field(batch, "labels"))
    valid = labels != cfg.ignore_index
    check_ids(jnp.where(valid, labels, 0), cfg.num_labels, "num_labels")
    logits = model.classify(
        batch_field(batch, "inputs"),
        batch_field(batch, "token_types", required=False),
        batch_field(batch, "attention_mask", required=False),
    )
    with jax.named_scope("loss"):
        return token_cross_entropy(logits, labels, valid, unit_scaled=cfg.unit_scaled, mult=cfg.loss_softmax_mult)
