"""Flax NNX modules over the op twins :mod:`unitscale.functional` (unit-scaled) and
:mod:`unitscale.standard`: a module calls ``numerics.ops``, the twin its :class:`Numerics` picks, so
one switch sets the parametrisation of a whole model. Every parameter is tagged with its kind
(:mod:`unitscale.nn.params`), every weight matmul goes through :func:`dense`."""

from unitscale.nn.attention import MultiHeadSelfAttention, attend, padding_mask
from unitscale.nn.dropout import Dropout
from unitscale.nn.embedding import Embedding, check_ids
from unitscale.nn.init import normal_weight
from unitscale.nn.linear import Linear, LinearReadout, dense
from unitscale.nn.mixers import CausalConv, ElmanRNN
from unitscale.nn.mlp import ACTIVATIONS, MLP
from unitscale.nn.norm import LayerNorm, RMSNorm
from unitscale.nn.numerics import COMPUTE_DTYPES, Numerics, op_twin
from unitscale.nn.params import KINDS, ParamInfo, ParamKind, make_param, param_info
from unitscale.nn.residual import residual_contributions, residual_taus
from unitscale.nn.transformer import NORM_PLACEMENTS, TransformerLayer, TransformerStack

__all__ = [
    "ACTIVATIONS",
    "COMPUTE_DTYPES",
    "KINDS",
    "NORM_PLACEMENTS",
    "CausalConv",
    "Dropout",
    "ElmanRNN",
    "Embedding",
    "LayerNorm",
    "Linear",
    "LinearReadout",
    "MLP",
    "MultiHeadSelfAttention",
    "Numerics",
    "ParamInfo",
    "ParamKind",
    "RMSNorm",
    "TransformerLayer",
    "TransformerStack",
    "attend",
    "check_ids",
    "dense",
    "make_param",
    "normal_weight",
    "op_twin",
    "padding_mask",
    "param_info",
    "residual_contributions",
    "residual_taus",
]
