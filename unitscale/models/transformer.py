"""Model pieces GPT and BERT share: input embeddings and the layer stack built from a config."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from unitscale.models.config import TransformerConfig
from unitscale.nn.attention import MultiHeadSelfAttention
from unitscale.nn.dropout import Dropout
from unitscale.nn.embedding import Embedding, check_ids
from unitscale.nn.mixers import CausalConv, ElmanRNN
from unitscale.nn.mlp import MLP
from unitscale.nn.norm import LayerNorm, RMSNorm
from unitscale.nn.transformer import TransformerLayer, TransformerStack

__all__ = ["MIXERS", "Embeddings", "make_norm", "make_mixer", "make_stack"]

MIXERS: tuple[str, ...] = ("attention", "conv", "rnn")


def make_norm(config: TransformerConfig, *, in_residual: bool) -> nnx.Module:
    """The config's norm (``"layer"`` or ``"rms"``) over ``d_model``."""
    common = dict(eps=config.norm_eps, numerics=config.numerics, in_residual=in_residual)
    if config.norm == "rms":
        return RMSNorm(config.d_model, **common)
    return LayerNorm(config.d_model, **common)


def make_mixer(
    config: TransformerConfig, kind: str, *, causal: bool, conv_kernel: int, conv_groups: int | None,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """One sequence mixer of ``kind`` in ``MIXERS`` (conv and rnn are causal by construction)."""
    common = dict(use_bias=config.use_bias, numerics=config.numerics, init_std=config.init_std,
                  in_residual=True, rngs=rngs)
    if kind == "attention":
        return MultiHeadSelfAttention(
            config.d_model, config.heads, causal=causal, dropout=config.dropout,
            softmax_mult=config.attn_softmax_mult, **common,
        )
    if kind == "conv":
        return CausalConv(config.d_model, kernel=conv_kernel, groups=conv_groups, **common)
    if kind == "rnn":
        return ElmanRNN(config.d_model, **common)
    raise ValueError(f"mixer must be one of {MIXERS}, got {kind!r}")


def make_stack(
    config: TransformerConfig, *, causal: bool, mixer: str = "attention", conv_kernel: int = 7,
    conv_groups: int | None = None, rngs: nnx.Rngs,
) -> TransformerStack:
    """``config.depth`` layers with the u-muP residual weights ``config.taus``."""
    taus = config.taus
    layers = []
    for i in range(config.depth):
        mlp = MLP(
            config.d_model, config.ffn_hidden, activation=config.activation, act_mult=config.ffn_act_mult,
            use_bias=config.use_bias, numerics=config.numerics, init_std=config.init_std,
            in_residual=True, rngs=rngs,
        )
        layers.append(TransformerLayer(
            make_mixer(config, mixer, causal=causal, conv_kernel=conv_kernel, conv_groups=conv_groups, rngs=rngs),
            mlp, make_norm(config, in_residual=True), make_norm(config, in_residual=True),
            norm_placement=config.norm_placement, taus=(taus[2 * i], taus[2 * i + 1]),
            dropout=config.dropout, numerics=config.numerics, rngs=rngs,
        ))
    return TransformerStack(layers, remat=config.remat)


class Embeddings(nnx.Module):
    """Token + learned position (+ token-type) embeddings, then an optional norm, then dropout.

    Tables: ``tokens`` (vocab_size, d), ``positions`` (max_len, d), ``token_types`` (type_vocab_size,
    d) when ``type_vocab_size > 0``. The sums are ``add`` of the config's ops (unit-scaled, the sum
    of two unit-variance tables is scaled by 2^-1/2).
    """

    def __init__(self, config: TransformerConfig, *, type_vocab_size: int = 0, norm: bool = False,
                 rngs: nnx.Rngs):
        self.config, self.numerics = config, config.numerics
        common = dict(numerics=config.numerics, init_std=config.init_std, rngs=rngs)
        self.tokens = Embedding(config.vocab_size, config.d_model, role="token_embedding", **common)
        self.positions = Embedding(config.max_len, config.d_model, role="position_embedding", **common)
        self.token_types = (
            Embedding(type_vocab_size, config.d_model, role="token_type_embedding", **common)
            if type_vocab_size > 0
            else nnx.data(None)
        )
        self.norm = make_norm(config, in_residual=False) if norm else nnx.data(None)
        self.dropout = Dropout(config.dropout, numerics=config.numerics, rngs=rngs)

    def __call__(self, ids: jax.Array, token_type_ids: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        ids = jnp.asarray(ids)
        if ids.ndim < 1:
            raise ValueError(f"input ids must be (..., seq), got shape {ids.shape}")
        if ids.shape[-1] > cfg.max_len:
            raise ValueError(f"sequence length {ids.shape[-1]} exceeds max_len={cfg.max_len}")
        check_ids(ids, cfg.vocab_size, "vocab_size")
        add = self.numerics.ops.add
        with jax.named_scope("embeddings"):
            x = add(self.tokens(ids), self.positions(jnp.arange(ids.shape[-1])))
            if token_type_ids is not None:
                if self.token_types is None:
                    raise ValueError("token_type_ids given but type_vocab_size is 0")
                token_type_ids = jnp.asarray(token_type_ids)
                if token_type_ids.shape != ids.shape:
                    raise ValueError(
                        f"token_type_ids must have the shape of the ids {ids.shape}, got {token_type_ids.shape}"
                    )
                check_ids(token_type_ids, self.token_types.num_embeddings, "type_vocab_size")
                x = add(x, self.token_types(token_type_ids))
            elif self.token_types is not None:
                x = add(x, self.token_types(jnp.zeros_like(ids)))
            if self.norm is not None:
                x = self.norm(x)
            return self.dropout(x)
