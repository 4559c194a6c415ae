"""How a module computes: unit-scaled or standard parametrisation, activation dtype, precision policy.

The parametrisation is decided here and nowhere else: :attr:`Numerics.ops` is the op twin a layer
calls (:mod:`unitscale.functional` or :mod:`unitscale.standard`, same names and signatures) and
:meth:`Numerics.weight_std` the scale of its initial weights, so layers hold no branch on it.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import jax
import jax.numpy as jnp

from unitscale import functional, standard
from unitscale.precision.policy import COMPUTE_DTYPES, PrecisionPolicy, precision_policy

__all__ = ["COMPUTE_DTYPES", "Numerics", "op_twin"]


def op_twin(unit_scaled: bool) -> ModuleType:
    """The op set of a parametrisation: :mod:`unitscale.functional` (unit-scaled) or
    :mod:`unitscale.standard`."""
    return functional if unit_scaled else standard


@dataclasses.dataclass(frozen=True)
class Numerics:
    """Shared by every module of a model; static (hashable), so it lives in the graph definition.

    Attributes:
      unit_scaled: N(0, 1) weights and :mod:`unitscale.functional` ops if True; the usual
        initialisations and :mod:`unitscale.standard` ops otherwise (see :attr:`ops`,
        :meth:`weight_std`).
      dtype: activation (compute) dtype name, one of ``COMPUTE_DTYPES``; None (default) takes the
        policy's ``compute_dtype``, a given dtype replaces it. Parameters stay float32 and are cast
        to it where they are used.
      precision: the :class:`~unitscale.precision.PrecisionPolicy` (or preset name) whose matmul
        formats and scaling every :func:`unitscale.nn.linear.dense` applies (default ``"fp32"``).
    """

    unit_scaled: bool = True
    dtype: str | None = None
    precision: PrecisionPolicy | str = "fp32"

    def __post_init__(self):
        if not isinstance(self.unit_scaled, bool):
            raise TypeError(f"unit_scaled must be a bool, got {type(self.unit_scaled).__name__}")
        policy = precision_policy(self.precision)
        if self.dtype is not None:
            name = jnp.dtype(self.dtype).name if _is_dtype_like(self.dtype) else self.dtype
            if name not in COMPUTE_DTYPES:
                raise ValueError(f"dtype must be one of {COMPUTE_DTYPES}, got {self.dtype!r}")
            if name != policy.compute_dtype:
                policy = policy.replace(compute_dtype=name)
        object.__setattr__(self, "precision", policy)
        object.__setattr__(self, "dtype", policy.compute_dtype)

    @property
    def ops(self) -> ModuleType:
        """The op twin of this parametrisation (:func:`op_twin`); layers call ``numerics.ops.<op>``."""
        return op_twin(self.unit_scaled)

    def weight_std(self, fan_in: int, std: float | None) -> float:
        """The std ``s`` of a weight's N(0, s^2) initialisation: 1 unit-scaled (the ops' scales
        assume unit-variance weights); else ``std``, or ``fan_in^-1/2`` (LeCun, the variance of
        Flax's default kernel init) when ``std`` is None."""
        if self.unit_scaled:
            return 1.0
        if std is None:
            return fan_in**-0.5
        if std > 0:
            return float(std)
        raise ValueError(f"init std must be positive, got {std!r}")

    @property
    def compute_dtype(self) -> jnp.dtype:
        """The activation dtype as a ``jnp.dtype``."""
        return jnp.dtype(self.dtype)

    def cast(self, x: jax.Array) -> jax.Array:
        """``x`` in the compute dtype."""
        return jnp.asarray(x).astype(self.compute_dtype)


def _is_dtype_like(value: object) -> bool:
    try:
        jnp.dtype(value)
    except TypeError:
        return False
    return True
