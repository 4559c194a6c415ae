"""BERT and GPT models, standard and unit-scaled."""

from unitscale.models.bert import BERT, BERTConfig, ClassificationBatch, classification_loss, mlm_loss
from unitscale.models.config import NORMS, TransformerConfig
from unitscale.models.convert import convert_model, convert_params, forward_factor
from unitscale.models.gpt import GPT, GPTConfig, lm_loss
from unitscale.models.losses import token_cross_entropy
from unitscale.models.transformer import MIXERS, Embeddings, make_mixer, make_norm, make_stack

__all__ = [
    "BERT",
    "BERTConfig",
    "ClassificationBatch",
    "Embeddings",
    "GPT",
    "GPTConfig",
    "MIXERS",
    "NORMS",
    "TransformerConfig",
    "classification_loss",
    "convert_model",
    "convert_params",
    "forward_factor",
    "lm_loss",
    "make_mixer",
    "make_norm",
    "make_stack",
    "mlm_loss",
    "token_cross_entropy",
]
