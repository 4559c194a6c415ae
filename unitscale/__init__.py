"""unitscale: unit scaling and exact low-precision number formats for JAX.

The subpackages, from the bottom up (each imports only those above it):

* :mod:`~unitscale.formats`: floating-point formats as data and the one quantiser, :func:`quantize`;
* :mod:`~unitscale.scale` and :mod:`~unitscale.constraints`: separate forward/backward scale factors;
* :mod:`~unitscale.functional`: unit-scaled ops, each op's scales stated in its docstring, and
  :mod:`~unitscale.standard`, the same ops (names, signatures) unscaled;
* :mod:`~unitscale.precision`: precision policies and scaling recipes (loss scaling, FP8, MX);
* :mod:`~unitscale.nn` and :mod:`~unitscale.models`: Flax NNX layers and the GPT / BERT models;
* :mod:`~unitscale.optim`: u-muP learning-rate rules as optax transformations;
* :mod:`~unitscale.analysis`: every tensor's scale against a format's range (:func:`track_scales`).
"""

from unitscale import analysis, constraints, formats, functional, models, nn, optim, precision, scale, standard
from unitscale.analysis import track_model_scales, track_scales
from unitscale.formats import (
    BF16, E2M1, E2M3, E3M2, E4M3, E4M3_FNUZ, E5M2, E5M2_FNUZ, FP16, FP32, FPFormat, format_from_name, quantize,
)
from unitscale.models import BERT, GPT, BERTConfig, GPTConfig
from unitscale.precision import PrecisionPolicy, precision_policy
from unitscale.scale import scale_bwd, scale_fwd

__all__ = [
    "BERT", "BF16", "BERTConfig", "E2M1", "E2M3", "E3M2", "E4M3", "E4M3_FNUZ", "E5M2", "E5M2_FNUZ", "FP16",
    "FP32", "FPFormat", "GPT", "GPTConfig", "PrecisionPolicy", "analysis", "constraints", "format_from_name",
    "formats", "functional", "models", "nn", "optim", "precision", "precision_policy", "quantize", "scale",
    "scale_bwd", "scale_fwd", "standard", "track_model_scales", "track_scales",
]
