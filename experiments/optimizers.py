"""Optimisers and learning-rate schedules of the training loop, built from a frozen :class:`OptimizerConfig`.

Schedule (``warmup_steps = W``, ``steps = S``, peak ``lr``, floor ``lr_min = final_lr_fraction * lr``)::

    lr(t) = lr * (t + 1) / W                                   for t < W   (linear warm-up from lr / W)
    lr(t) = lr_min + (lr - lr_min) * d((t - W) / (S - W))      for t >= W

with ``d(u) = (1 + cos(pi u)) / 2`` (cosine), ``1 - u`` (linear) or ``1`` (constant), ``u`` clipped to 1.
Warm-up starts at ``lr / W`` rather than 0 so that the first step already moves the weights.

Weight decay is decoupled for ``adamw`` and ``lamb`` (Loshchilov & Hutter, 2019) and an L2 term added to
the gradient for ``adam`` and ``sgd``; either way it applies only to parameters with two or more
dimensions (matrices and embeddings, not biases or norm scales), the usual rule for transformers.
Gradients are clipped to global norm ``grad_clip`` before the optimiser when ``grad_clip > 0``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

from unitscale.precision.storage import Storage, scale_by_stored_adam

OPTIMIZERS = ("adamw", "adam", "sgd", "lamb")
SCHEDULES = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimiser, schedule and gradient clipping; ``momentum`` is used by ``sgd`` only, betas by the rest."""

    name: str = "adamw"
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    momentum: float = 0.9
    warmup_steps: int = 100
    schedule: str = "cosine"
    final_lr_fraction: float = 0.1
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optimizer name must be one of {OPTIMIZERS}, got {self.name!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check_number("lr", self.lr, low=0.0, low_open=True)
        for name in ("b1", "b2", "momentum"):
            _check_number(name, getattr(self, name), low=0.0, high=1.0, high_open=True)
        _check_number("eps", self.eps, low=0.0)
        _check_number("weight_decay", self.weight_decay, low=0.0)
        _check_number("final_lr_fraction", self.final_lr_fraction, low=0.0, high=1.0)
        _check_number("grad_clip", self.grad_clip, low=0.0)
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")


def _check_number(name: str, value, *, low=None, high=None, low_open=False, high_open=False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")


def learning_rate_schedule(config: OptimizerConfig, steps: int) -> optax.Schedule:
    """``t -> lr(t)`` for a run of ``steps`` optimiser steps (formula in the module docstring)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    peak, warmup = config.lr, config.warmup_steps
    floor = config.final_lr_fraction * peak
    decay_steps = max(steps - warmup, 1)

    def schedule(t):
        t = jnp.asarray(t, jnp.float32)
        u = jnp.clip((t - warmup) / decay_steps, 0.0, 1.0)
        if config.schedule == "cosine":
            shape = 0.5 * (1.0 + jnp.cos(jnp.pi * u))
        elif config.schedule == "linear":
            shape = 1.0 - u
        else:
            shape = jnp.ones_like(u)
        decayed = floor + (peak - floor) * shape
        return jnp.where(t < warmup, peak * (t + 1.0) / max(warmup, 1), decayed)

    return schedule


def decay_mask(params):
    """True for leaves with two or more dimensions: the parameters that weight decay applies to."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(config: OptimizerConfig, steps: int, storage: Storage | None = None,
                   seed: int = 0) -> optax.GradientTransformation:
    """The optax transformation of ``config`` for a run of ``steps`` steps, clipping included.

    With a ``storage`` that stores Adam's moments, adam, adamw and lamb are built on
    :func:`unitscale.precision.scale_by_stored_adam` (stochastic rounding seeded from ``seed``): the same
    chain as optax's, with the moments rounded into their formats."""
    lr = learning_rate_schedule(config, steps)
    wd = config.weight_decay
    stored = storage is not None and (storage.first_moment is not None or storage.second_moment is not None)
    if stored and config.name == "sgd":
        raise ValueError("storage: sgd keeps no Adam moments to store (first_moment/second_moment need adam, "
                         "adamw or lamb)")
    if stored:
        moments = scale_by_stored_adam(config.b1, config.b2, config.eps, storage, seed=seed)
        decay = optax.add_decayed_weights(wd, decay_mask)
        core = {"adamw": optax.chain(moments, decay, optax.scale_by_learning_rate(lr)),
                "lamb": optax.chain(moments, decay, optax.scale_by_trust_ratio(), optax.scale_by_learning_rate(lr)),
                "adam": optax.chain(decay, moments, optax.scale_by_learning_rate(lr))}[config.name]
    elif config.name == "adamw":
        core = optax.adamw(lr, config.b1, config.b2, config.eps, weight_decay=wd, mask=decay_mask)
    elif config.name == "lamb":
        core = optax.lamb(lr, config.b1, config.b2, config.eps, weight_decay=wd, mask=decay_mask)
    elif config.name == "adam":
        core = optax.chain(optax.add_decayed_weights(wd, decay_mask), optax.adam(lr, config.b1, config.b2, config.eps))
    else:
        core = optax.chain(optax.add_decayed_weights(wd, decay_mask),
                           optax.sgd(lr, momentum=config.momentum or None))
    if config.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(config.grad_clip), core)
    return core
