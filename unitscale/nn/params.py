"""Parameters that carry their kind, so a u-muP optimiser can set per-parameter learning rates.

Every ``nnx.Param`` that :mod:`unitscale.nn` creates holds metadata set by the module that creates
it, readable straight from ``nnx.state(model, nnx.Param)`` (``variable.kind``, ``variable.fan_in``,
...) or collected by :func:`param_info`:

* ``kind``: ``"hidden"`` (a weight mapping activations to activations: linear, convolution and
  recurrent kernels), ``"embedding"`` (a lookup table), ``"readout"`` (a weight producing the
  model's outputs, e.g. logits), ``"bias"`` or ``"norm"`` (norm gains and offsets);
* ``fan_in`` / ``fan_out``: how many inputs each output sums over and how many outputs each input
  feeds (a bias or norm parameter: 1 and its size; an embedding: vocab and width);
* ``in_residual``: whether it lives inside the residual stack (u-muP scales their learning rates
  by depth);
* ``role``: the name of the matmul a weight or bias belongs to (e.g. ``"ffn_down"``), or ``None``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
from flax import nnx

__all__ = ["KINDS", "ParamKind", "ParamInfo", "make_param", "param_info"]

ParamKind = Literal["hidden", "embedding", "readout", "bias", "norm"]
KINDS: tuple[str, ...] = ("hidden", "embedding", "readout", "bias", "norm")


@dataclasses.dataclass(frozen=True)
class ParamInfo:
    """What a parameter is: kind, fan-in, fan-out, residual membership and matmul role."""

    kind: ParamKind
    fan_in: int
    fan_out: int
    in_residual: bool
    role: str | None = None


def make_param(
    value: jax.Array,
    *,
    kind: ParamKind,
    fan_in: int,
    fan_out: int,
    in_residual: bool,
    role: str | None = None,
) -> nnx.Param:
    """An ``nnx.Param`` holding ``value`` and the :class:`ParamInfo` fields as metadata."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    for name, fan in (("fan_in", fan_in), ("fan_out", fan_out)):
        if not isinstance(fan, int) or isinstance(fan, bool) or fan < 1:
            raise ValueError(f"{name} must be a positive int, got {fan!r}")
    return nnx.Param(
        value, kind=kind, fan_in=fan_in, fan_out=fan_out, in_residual=bool(in_residual), role=role
    )


def _info(path: tuple[Any, ...], variable: nnx.Variable) -> ParamInfo:
    meta = variable.get_metadata()
    missing = [f.name for f in dataclasses.fields(ParamInfo) if f.name not in meta]
    if missing:
        where = "/".join(str(getattr(k, "key", k)) for k in path)
        raise ValueError(
            f"parameter {where!r} has no {missing} metadata; create it with "
            "unitscale.nn.params.make_param"
        )
    return ParamInfo(**{f.name: meta[f.name] for f in dataclasses.fields(ParamInfo)})


def param_info(node: nnx.Module | nnx.State) -> nnx.State:
    """The :class:`ParamInfo` of every ``nnx.Param`` of a module (or of a param state), as a state
    with the structure of ``nnx.state(node, nnx.Param)`` whose leaves are ``ParamInfo``."""
    state = nnx.state(node, nnx.Param) if isinstance(node, nnx.Module) else node
    if not isinstance(state, nnx.State):
        raise TypeError(f"node must be an nnx.Module or nnx.State, got {type(node).__name__}")
    return jax.tree_util.tree_map_with_path(
        _info, state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )
