"""Precision policies: the number format of each class of tensor in a model, as one static value.

A :class:`PrecisionPolicy` names

* the *compute dtype* of activations and of every non-matmul op (``float32``, ``bfloat16`` or
  ``float16``: real arithmetic in that dtype, nothing simulated);
* the format of the *matmul inputs in the forward pass* (activations and weights entering a weight
  matmul, ``matmul_fwd``) and of the *output-gradients in the backward pass* (``matmul_bwd``), both
  simulated exactly with :func:`unitscale.formats.quantize` and accumulated in float32, as FP8
  hardware does;
* the matmul *roles* kept in a higher-precision format (``keep_roles`` in ``keep_format``);
* the *tensor scaling* of the quantised matmuls (``"none"``, ``"current"``, ``"delayed"``, ``"mx"``).

Parameters are float32 master weights (the optimiser updates them in float32) unless ``storage``
keeps them, and Adam's moments, in a format with no float32 copy (:mod:`unitscale.precision.storage`,
the unit scaling paper's FP16 regime: preset ``fp16_paper``); a matmul casts them to the compute dtype,
or quantises them to ``matmul_fwd``. Loss scaling is not part of the policy: it lives in the training
state (:mod:`unitscale.precision.loss_scale`).

Policies are frozen and hashable, so they work as static ``jit`` arguments and as fields of the model
configs; ``name`` is a label and takes no part in equality.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unitscale import formats as F
from unitscale.formats import FPFormat
from unitscale.precision.storage import Storage

__all__ = [
    "COMPUTE_DTYPES",
    "OPERANDS",
    "PRESETS",
    "SCALINGS",
    "PrecisionPolicy",
    "precision_policy",
]

COMPUTE_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
SCALINGS: tuple[str, ...] = ("none", "current", "delayed", "mx")
OPERANDS: tuple[str, ...] = ("simulated", "float8")


def _dtype_name(value: object, name: str) -> str:
    try:
        dtype_name = jnp.dtype(value).name
    except TypeError:
        dtype_name = value
    if dtype_name not in COMPUTE_DTYPES:
        raise ValueError(f"{name} must be one of {COMPUTE_DTYPES}, got {value!r}")
    return dtype_name


def _int(value: object, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class PrecisionPolicy:
    """Which format each tensor class of a model uses (see the module docstring).

    Attributes:
      compute_dtype: dtype of activations and non-matmul arithmetic, one of ``COMPUTE_DTYPES``.
      matmul_fwd: format of both inputs of every weight matmul in the forward pass (None: the
        compute dtype, nothing quantised).
      matmul_bwd: format of the output-gradient entering a weight matmul's backward pass (None:
        not quantised).
      keep_roles: matmul roles (``"ffn_down"``, ``"attn_out"``, ...) not quantised to the two
        formats above but to ``keep_format`` (None: left in the compute dtype), in both passes.
      scaling: per-tensor scaling of the quantised matmul inputs and output-gradients:
        ``"none"`` (unit scaling's recipe: quantise the values as they are), ``"current"`` (scale
        ``fmt.max / amax / 2^margin`` from the tensor's own amax), ``"delayed"`` (the same from the
        max of the last ``amax_history`` amaxes, Transformer Engine's recipe) or ``"mx"`` (OCP MX
        block scaling, ``mx_block`` elements along each matmul's contraction axis).
      amax_history, margin, mx_block: parameters of the scalings above.
      operands: ``"simulated"`` quantises with :func:`~unitscale.formats.quantize` in float32 (fast
        on CPU); ``"float8"`` feeds the matmuls real float8 values (:func:`~unitscale.formats.cast`,
        bit-identical results, about 2x slower per matmul on CPU) so that cost models which read
        dtypes off the program (``ipu_sim``) see FP8 matmuls. MX always simulates.
      stats: count overflowing (saturated) and underflowing (flushed to zero) values of the
        quantised matmul inputs and output-gradients each training step.
      storage: the :class:`~unitscale.precision.storage.Storage` of parameters and Adam moments
        (default: all float32); the training loop applies it to the optimiser.
      name: a label (the preset's name); not compared.

    Attention's two activation-activation matmuls (``q k^T`` and ``p v``) are never quantised;
    see :mod:`unitscale.precision` for why.
    """

    compute_dtype: str = "float32"
    matmul_fwd: FPFormat | None = None
    matmul_bwd: FPFormat | None = None
    keep_roles: tuple[str, ...] = ()
    keep_format: FPFormat | None = None
    scaling: str = "none"
    amax_history: int = 1024
    margin: int = 0
    mx_block: int = 32
    operands: str = "simulated"
    stats: bool = True
    storage: Storage = Storage()
    name: str = dataclasses.field(default="custom", compare=False)

    def __post_init__(self) -> None:
        set_ = lambda field, value: object.__setattr__(self, field, value)  # noqa: E731
        set_("compute_dtype", _dtype_name(self.compute_dtype, "compute_dtype"))
        for field in ("matmul_fwd", "matmul_bwd", "keep_format"):
            set_(field, F.as_format(getattr(self, field), field))
        roles = (self.keep_roles,) if isinstance(self.keep_roles, str) else self.keep_roles
        if not all(isinstance(r, str) and r for r in roles):
            raise TypeError(f"keep_roles must be a sequence of role names, got {self.keep_roles!r}")
        set_("keep_roles", tuple(roles))
        if self.scaling not in SCALINGS:
            raise ValueError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.scaling != "none" and not self.quantized:
            raise ValueError(f"scaling={self.scaling!r} needs matmul_fwd or matmul_bwd to scale into")
        set_("amax_history", _int(self.amax_history, "amax_history", 1))
        set_("margin", _int(self.margin, "margin", 0))
        set_("mx_block", _int(self.mx_block, "mx_block", 1))
        if self.operands not in OPERANDS:
            raise ValueError(f"operands must be one of {OPERANDS}, got {self.operands!r}")
        if not isinstance(self.stats, bool):
            raise TypeError(f"stats must be a bool, got {self.stats!r}")
        if isinstance(self.storage, Mapping):
            set_("storage", Storage(**self.storage))
        if not isinstance(self.storage, Storage):
            raise TypeError(f"storage must be a Storage or its dict, got {type(self.storage).__name__}")
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if self.operands == "float8":
            _check_real_formats(self)

    @property
    def quantized(self) -> bool:
        """Whether any matmul input or output-gradient is quantised to a matmul format."""
        return self.matmul_fwd is not None or self.matmul_bwd is not None

    def kept(self, role: str) -> bool:
        """Whether matmul ``role`` stays out of the matmul formats."""
        return role in self.keep_roles

    def replace(self, **changes: Any) -> PrecisionPolicy:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; formats by name, so :meth:`from_dict` / ``precision_policy`` read them back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for field in ("matmul_fwd", "matmul_bwd", "keep_format"):
            fmt = out[field]
            out[field] = None if fmt is None else dataclasses.asdict(fmt)
        out["keep_roles"] = list(self.keep_roles)
        out["storage"] = self.storage.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PrecisionPolicy:
        """The policy of :meth:`to_dict`'s output."""
        return cls(**values)

    def __str__(self) -> str:
        stored = f", stored {self.storage}" if self.storage.active else ""
        if not self.quantized:
            return f"{self.name}: {self.compute_dtype} arithmetic{stored}"
        fmt = lambda f: "compute dtype" if f is None else f.name  # noqa: E731
        kept = f", {'/'.join(self.keep_roles)} in {fmt(self.keep_format)}" if self.keep_roles else ""
        return (f"{self.name}: matmul inputs {fmt(self.matmul_fwd)}, gradients {fmt(self.matmul_bwd)}, "
                f"scaling {self.scaling}{kept}, {self.compute_dtype} arithmetic{stored}")


def _check_real_formats(policy: PrecisionPolicy) -> None:
    """operands="float8" needs formats the backend holds (probed eagerly, outside any trace)."""
    for field in ("matmul_fwd", "matmul_bwd", "keep_format"):
        fmt = getattr(policy, field)
        if fmt is None or policy.scaling == "mx":
            continue
        try:
            with jax.ensure_compile_time_eval():
                F.cast(np.zeros((), np.float32), fmt)
        except ValueError as err:
            raise ValueError(f"operands='float8': {field}={fmt.name} cannot be a real array ({err})") from None


_FP8 = dict(matmul_fwd=F.E4M3, matmul_bwd=F.E5M2)
PRESETS: Mapping[str, PrecisionPolicy] = MappingProxyType({
    name: PrecisionPolicy(name=name, **fields)
    for name, fields in {
        "fp32": {},
        "bf16": dict(compute_dtype="bfloat16"),
        "fp16": dict(compute_dtype="float16"),
        # The unit scaling paper's FP16 training: FP16 arithmetic, weights and Adam's first moment stored
        # in FP16 with no float32 master copy, every store rounded stochastically as the IPU does.
        "fp16_paper": dict(compute_dtype="float16", storage=Storage(params=F.FP16, first_moment=F.FP16,
                                                                    rounding="stochastic")),
        # The common "hybrid" FP8 recipe (number_formats.md): E4M3 forward, E5M2 backward.
        "fp8": _FP8,
        "fp8_fnuz": dict(matmul_fwd=F.E4M3_FNUZ, matmul_bwd=F.E5M2_FNUZ),
        # u-muP's recipe (unit_scaling_rules.md, "FP8 recipe in u-muP"): the inputs of the FFN
        # down-projection and of the attention output projection stay in BF16.
        "umup_fp8": dict(_FP8, keep_roles=("ffn_down", "attn_out"), keep_format=F.BF16),
        # OCP MX v1.0 formats: 32-element blocks sharing an E8M0 scale.
        "mxfp8": dict(_FP8, scaling="mx"),
        "mxfp6": dict(matmul_fwd=F.E2M3, matmul_bwd=F.E3M2, scaling="mx"),
        "mxfp4": dict(matmul_fwd=F.E2M1, matmul_bwd=F.E2M1, scaling="mx"),
    }.items()
})


def precision_policy(policy: str | PrecisionPolicy | Mapping[str, Any] = "fp32", **overrides: Any) -> PrecisionPolicy:
    """A preset by name (``PRESETS``), a policy, or a :meth:`PrecisionPolicy.to_dict` mapping, with
    ``overrides`` applied: ``precision_policy("fp8", scaling="delayed", margin=1)``."""
    if isinstance(policy, PrecisionPolicy):
        base = policy
    elif isinstance(policy, str):
        if policy not in PRESETS:
            raise ValueError(f"precision {policy!r} is unknown; presets: {', '.join(PRESETS)}")
        base = PRESETS[policy]
    elif isinstance(policy, Mapping):
        base = PrecisionPolicy.from_dict(policy)
    else:
        raise TypeError(f"policy must be a preset name, a PrecisionPolicy or a mapping, got {type(policy).__name__}")
    return base.replace(**overrides) if overrides else base
