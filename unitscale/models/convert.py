"""Move weights between the standard and the unit-scaled parametrisation of the same model.

Parameters are matched by name (both parametrisations build the same tree). By default each weight
is rescaled so that every layer whose parametrisations differ only by a constant factor computes the
same map in both: a unit-scaled hidden kernel (and its bias) is multiplied by ``fan_in^-1/2`` in the
forward pass and a readout by ``1/fan_in`` (:func:`unitscale.functional.linear`, ``linear_readout``,
``conv1d``), so ``W_standard = W_unit * fan_in^-p``. Embeddings and norms carry over unchanged. The
models as a whole still differ where unit scaling changes the ops themselves (residual weights tau,
embedding sums scaled by 2^-1/2, attention logits mult/d_head vs 1/sqrt(d_head), activation
scales, the RNN's internal gains), so a converted model needs fine-tuning, not just evaluation.
"""

from __future__ import annotations

import dataclasses

import jax
from flax import nnx

__all__ = ["forward_factor", "convert_params", "convert_model"]


def forward_factor(kind: str, fan_in: int) -> float:
    """The constant the unit-scaled op multiplies a parameter of ``kind`` by in the forward pass."""
    return {"hidden": fan_in**-0.5, "readout": 1.0 / fan_in}.get(kind, 1.0)


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def convert_params(params: nnx.State, *, to_unit_scaled: bool, preserve_maps: bool = True) -> nnx.State:
    """``params`` (``nnx.state(model, nnx.Param)`` of unitscale.nn modules) for the other
    parametrisation: unchanged if not ``preserve_maps``, else rescaled as the module docstring says."""
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_var)
    by_path = {_path_str(p): v for p, v in leaves}
    out = []
    for path, var in leaves:
        meta = var.get_metadata()
        if "kind" not in meta:
            raise ValueError(f"parameter {_path_str(path)!r} has no kind metadata (not a unitscale.nn parameter)")
        factor = forward_factor(meta["kind"], meta["fan_in"])
        if meta["kind"] == "bias":
            sibling = by_path.get(_path_str(path[:-1]) + "/kernel")
            if sibling is not None:
                sib_meta = sibling.get_metadata()
                factor = forward_factor(sib_meta["kind"], sib_meta["fan_in"])
        if not preserve_maps:
            factor = 1.0
        scale = (1.0 / factor) if to_unit_scaled else factor
        out.append(var.replace(var[...] * scale) if scale != 1.0 else var)
    return jax.tree_util.tree_unflatten(treedef, out)


def convert_model(model: nnx.Module, *, unit_scaled: bool, preserve_maps: bool = True, seed: int = 0) -> nnx.Module:
    """A new model of ``type(model)`` with ``config.unit_scaled = unit_scaled`` holding ``model``'s
    weights (converted by :func:`convert_params`). The models' other state (e.g. dropout RNG
    streams) is fresh from ``seed``. Raises ValueError if parameter names or shapes differ."""
    config = getattr(model, "config", None)
    if config is None or not dataclasses.is_dataclass(config):
        raise TypeError(f"model must have a dataclass config (GPT, BERT), got {type(model).__name__}")
    target = type(model)(dataclasses.replace(config, unit_scaled=unit_scaled), rngs=nnx.Rngs(seed))
    source = nnx.state(model, nnx.Param)
    if config.unit_scaled != unit_scaled:
        source = convert_params(source, to_unit_scaled=unit_scaled, preserve_maps=preserve_maps)
    want = {_path_str(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(target, nnx.Param))}
    have = {_path_str(p): v.shape for p, v in jax.tree_util.tree_leaves_with_path(source)}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))
        raise ValueError(f"parameters differ by name or shape: {diff[:6]}")
    nnx.update(target, source)
    return target
