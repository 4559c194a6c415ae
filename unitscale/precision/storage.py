"""Stored-format training state: parameters and Adam's moments kept in a number format, with no float32
master copy, as the unit scaling paper's FP16 training kept them (weights and Adam's first moment in
FP16, every store rounded stochastically by the IPU).

A :class:`Storage` says where each lives:

* ``params``: the format of the parameters (None: float32 master weights). A step computes ``p + u`` in
  float32 from the stored ``p`` and the optimiser's update ``u`` and rounds the sum into the format,
  ``p' = round(p + u)``. No float32 copy survives the step: under nearest rounding an update smaller
  than half the grid spacing at ``p`` is lost; under stochastic rounding it survives in expectation.
* ``first_moment``, ``second_moment``: formats of Adam's ``mu`` and ``nu``: :func:`scale_by_stored_adam`
  (optax's ``scale_by_adam``, which adam, adamw and lamb are built on) rounds each new moment into its
  format before the update is computed from it, as hardware that stores them does.
* ``rounding``: ``"nearest"`` (ties to even) or ``"stochastic"`` (unbiased; its bits come from a PRNG
  key carried in the optimiser state and split every step, so runs are reproducible and a resumed run
  draws the same bits).

Values are simulated as everywhere in this library: arrays stay float32 and hold values of the
format's grid, which is what a checkpoint stores. Use::

    adam = optax.chain(scale_by_stored_adam(0.9, 0.999, 1e-8, storage, seed=1), optax.scale_by_learning_rate(1e-3))
    optimizer = stored_optimizer(adam, storage, seed=0)
    params = store_params(params, storage)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    params = apply_stored_updates(params, updates, opt_state, storage)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from unitscale import formats as F
from unitscale.formats import FPFormat

__all__ = ["ROUNDINGS", "Storage", "StoredAdamState", "StoredState", "apply_stored_updates", "scale_by_stored_adam",
           "store_params", "stored_optimizer"]

ROUNDINGS: tuple[str, ...] = ("nearest", "stochastic")
_FIELDS = ("params", "first_moment", "second_moment")


@dataclasses.dataclass(frozen=True)
class Storage:
    """Formats in which the training state is stored (None: float32) and how stores round."""

    params: FPFormat | None = None
    first_moment: FPFormat | None = None
    second_moment: FPFormat | None = None
    rounding: str = "nearest"

    def __post_init__(self):
        for name in _FIELDS:
            object.__setattr__(self, name, F.as_format(getattr(self, name), name))
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")

    @property
    def active(self) -> bool:
        """Whether anything is stored outside float32."""
        return any(getattr(self, name) is not None for name in _FIELDS)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (formats as their field dicts); the constructor reads them back."""
        out: dict[str, Any] = {n: None if getattr(self, n) is None else dataclasses.asdict(getattr(self, n))
                               for n in _FIELDS}
        return {**out, "rounding": self.rounding}

    def __str__(self) -> str:
        if not self.active:
            return "float32 state"
        names = {n: "float32" if getattr(self, n) is None else getattr(self, n).name for n in _FIELDS}
        return (f"params {names['params']}, Adam moments {names['first_moment']}/{names['second_moment']}, "
                f"{self.rounding} rounding")


class StoredState(NamedTuple):
    """The state of :func:`stored_optimizer`: the wrapped optimiser's, the key of the next step and the
    key of this step's parameter rounding (used by :func:`apply_stored_updates`)."""

    inner: optax.OptState
    key: jax.Array
    param_key: jax.Array


class StoredAdamState(NamedTuple):
    """The state of :func:`scale_by_stored_adam`: optax's Adam state with the moments on their formats'
    grids, and the key of the next step's stochastic rounding."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    key: jax.Array


def _round_tree(tree: Any, fmt: FPFormat | None, rounding: str, key: jax.Array) -> Any:
    """Every floating leaf of ``tree`` rounded into ``fmt`` (leaf i with ``fold_in(key, i)``)."""
    if fmt is None:
        return tree
    leaves, treedef = jax.tree.flatten(tree)
    out = []
    for i, leaf in enumerate(leaves):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            leaf = F.quantize(leaf.astype(jnp.float32), fmt, rounding=rounding,
                              key=jax.random.fold_in(key, i) if rounding == "stochastic" else None)
        out.append(leaf)
    return jax.tree.unflatten(treedef, out)


def scale_by_stored_adam(b1: float, b2: float, eps: float, storage: Storage, seed: int = 0,
                         eps_root: float = 0.0) -> optax.GradientTransformation:
    """optax's ``scale_by_adam`` with ``mu`` and ``nu`` stored in ``storage.first_moment`` and
    ``storage.second_moment``::

        mu = round((1 - b1) g + b1 mu),   nu = round((1 - b2) g^2 + b2 nu),
        update = mu_hat / (sqrt(nu_hat + eps_root) + eps),   mu_hat = mu / (1 - b1^t), nu_hat likewise,

    the arithmetic in float32 and of the same form as optax's; ``round`` per ``storage.rounding``
    (stochastic bits from ``seed``, split every step)."""
    if not isinstance(storage, Storage):
        raise TypeError(f"storage must be a Storage, got {type(storage).__name__}")

    def init(params):
        zeros = optax.tree.zeros_like(params)
        return StoredAdamState(jnp.zeros([], jnp.int32), zeros, optax.tree.zeros_like(params), jax.random.key(seed))

    def update(updates, state, params=None):
        del params
        key, first, second = jax.random.split(state.key, 3)
        mu = _round_tree(optax.tree.update_moment(updates, state.mu, b1, 1), storage.first_moment,
                         storage.rounding, first)
        nu = _round_tree(optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2), storage.second_moment,
                         storage.rounding, second)
        count = optax.safe_increment(state.count)
        mu_hat, nu_hat = optax.tree.bias_correction(mu, b1, count), optax.tree.bias_correction(nu, b2, count)
        direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
        return direction, StoredAdamState(count, mu, nu, key)

    return optax.GradientTransformation(init, update)


def _has_stored_adam(state: Any) -> bool:
    is_state = lambda x: isinstance(x, StoredAdamState)  # noqa: E731
    return any(is_state(x) for x in jax.tree.leaves(state, is_leaf=is_state))


def stored_optimizer(optimizer: optax.GradientTransformation, storage: Storage,
                     seed: int = 0) -> optax.GradientTransformation:
    """``optimizer`` with the keys of ``storage.params``' stochastic rounding (from ``seed``) in its
    state; apply its updates with :func:`apply_stored_updates`. Stored moments need ``optimizer`` to be
    built on :func:`scale_by_stored_adam` (ValueError at ``init`` otherwise)."""
    if not isinstance(storage, Storage):
        raise TypeError(f"storage must be a Storage, got {type(storage).__name__}")

    def init(params):
        inner = optimizer.init(params)
        stores_moments = storage.first_moment is not None or storage.second_moment is not None
        if stores_moments and not _has_stored_adam(inner):
            raise ValueError("storage: first_moment/second_moment need an optimiser built on "
                             "scale_by_stored_adam (experiments.optimizers.make_optimizer builds one for adam, "
                             "adamw and lamb)")
        key, param_key = jax.random.split(jax.random.key(seed))
        return StoredState(inner, key, param_key)

    def update(updates, state, params=None):
        updates, inner = optimizer.update(updates, state.inner, params)
        key, param_key = jax.random.split(state.key)
        return updates, StoredState(inner, key, param_key)

    return optax.GradientTransformation(init, update)


def apply_stored_updates(params: Any, updates: Any, opt_state: StoredState | Any, storage: Storage | None) -> Any:
    """``round(p + u)`` into ``storage.params`` for every parameter, the sum in float32 (with the
    parameter key of ``opt_state``, the state :func:`stored_optimizer` returned with ``updates``);
    ``optax.apply_updates`` when the parameters are float32."""
    if storage is None or storage.params is None:
        return optax.apply_updates(params, updates)
    summed = jax.tree.map(lambda p, u: jnp.asarray(p, jnp.float32) + jnp.asarray(u, jnp.float32), params, updates)
    return _round_tree(summed, storage.params, storage.rounding, opt_state.param_key)


def store_params(params: Any, storage: Storage | None) -> Any:
    """Float32 ``params`` (e.g. an initialisation) rounded to nearest into ``storage.params``."""
    if storage is None or storage.params is None:
        return params
    return _round_tree(params, storage.params, "nearest", jax.random.key(0))
