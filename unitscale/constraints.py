"""Constraints: how an op combines scales that must be tied into one.

An op proposes one scale per tensor, output first: ``(output_scale, *grad_input_scales)``.
Where a forward tensor and a gradient lie on the same non-cut path, using different factors would
make the gradient stop being the (scaled) gradient of the computed loss, so the op replaces the
group by one value ``c(*scales)`` (Blake et al., 2023, Sec. 5.1). The names and semantics follow
unit-scaling 0.3.5, ``unit_scaling.constraints``; ``None`` leaves the scales independent.

Any callable ``(*scales: float) -> float`` can be used in place of a name.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Union

__all__ = [
    "Constraint",
    "CONSTRAINTS",
    "gmean",
    "hmean",
    "amean",
    "to_output_scale",
    "to_grad_input_scale",
    "to_left_grad_scale",
    "to_right_grad_scale",
    "resolve_constraint",
    "apply_constraint",
]

Constraint = Callable[..., float]
ConstraintLike = Union[str, Constraint, None]


def gmean(*scales: float) -> float:
    """Geometric mean ``(prod s_i)^(1/n)``; the recommended choice for unit scaling."""
    return math.prod(scales) ** (1.0 / len(scales))


def hmean(*scales: float) -> float:
    """Harmonic mean ``n / sum(1 / s_i)``, as in Glorot/Xavier initialisation."""
    return len(scales) / sum(1.0 / s for s in scales)


def amean(*scales: float) -> float:
    """Arithmetic mean ``sum(s_i) / n``."""
    return sum(scales) / len(scales)


def to_output_scale(output_scale: float, *grad_input_scales: float) -> float:
    """Use the output scale for every tied tensor (unit forward pass)."""
    return output_scale


def to_grad_input_scale(output_scale: float, grad_input_scale: float) -> float:
    """For a one-input op: use the input-gradient scale (unit backward pass)."""
    return grad_input_scale


def to_left_grad_scale(
    output_scale: float, left_grad_scale: float, right_grad_scale: float
) -> float:
    """For a two-input op: use the scale of the left input's gradient."""
    return left_grad_scale


def to_right_grad_scale(
    output_scale: float, left_grad_scale: float, right_grad_scale: float
) -> float:
    """For a two-input op: use the scale of the right input's gradient."""
    return right_grad_scale


CONSTRAINTS: Mapping[str, Constraint] = MappingProxyType(
    {
        fn.__name__: fn
        for fn in (
            gmean,
            hmean,
            amean,
            to_output_scale,
            to_grad_input_scale,
            to_left_grad_scale,
            to_right_grad_scale,
        )
    }
)


def resolve_constraint(constraint: ConstraintLike) -> Constraint | None:
    """Map a constraint name, callable or ``None`` to a callable (``None`` means independent)."""
    if constraint is None or callable(constraint):
        return constraint
    if isinstance(constraint, str):
        try:
            return CONSTRAINTS[constraint]
        except KeyError:
            valid = ", ".join([repr(n) for n in CONSTRAINTS] + ["None"])
            raise ValueError(
                f"constraint {constraint!r} is unknown; valid constraints: {valid}"
            ) from None
    raise TypeError(
        f"constraint must be a name, a callable or None, got {type(constraint).__name__}"
    )


def _accepts(fn: Constraint, count: int) -> bool:
    try:
        inspect.signature(fn).bind(*([1.0] * count))
    except TypeError:
        return False
    except ValueError:  # builtins without a signature: let the call decide
        return True
    return True


def apply_constraint(constraint: ConstraintLike, *scales: float) -> tuple[float, ...]:
    """Tie ``scales = (output_scale, *grad_input_scales)`` together with ``constraint``.

    Returns ``(c, ..., c)`` with ``c = constraint(*scales)``, or ``scales`` unchanged for ``None``.
    """
    fn = resolve_constraint(constraint)
    if fn is None:
        return tuple(scales)
    if not _accepts(fn, len(scales)):
        fits = [n for n, f in CONSTRAINTS.items() if _accepts(f, len(scales))]
        raise ValueError(
            f"constraint {getattr(fn, '__name__', fn)!r} does not apply to an op with "
            f"{len(scales)} tied scales; valid here: {', '.join(map(repr, fits + [None]))}"
        )
    tied = fn(*scales)
    if not (isinstance(tied, numbers.Real) and math.isfinite(tied) and tied > 0):
        raise ValueError(f"constraint must return a positive finite float, got {tied!r}")
    return (float(tied),) * len(scales)
