"""Data parallelism through ``jax.sharding``: a 1-D device mesh, batches split, state replicated.

The same code runs on one CPU, several local devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``),
a GPU host or a multi-host cluster (:func:`initialize_distributed` first, before anything else touches
JAX). Every process computes the same global batch (batches are cheap pure functions of the step, see
:mod:`experiments.data`) and contributes the rows of its own devices; ``jax.jit`` then inserts the
gradient all-reduce. Per-device partial sums change the order of floating-point additions, so losses
agree with a single-device run to rounding, not bit for bit.
"""

from __future__ import annotations

import numpy as np
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(**kwargs) -> None:
    """``jax.distributed.initialize(**kwargs)``: join a multi-host cluster (coordinator found from the
    environment on Cloud TPU, SLURM, Open MPI, ...). Call before any other JAX use."""
    jax.distributed.initialize(**kwargs)


def data_mesh(n_devices: int | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over the first ``n_devices`` devices (all, by default)."""
    devices = jax.devices()
    if n_devices is None:
        n_devices = len(devices)
    if not isinstance(n_devices, int) or not 1 <= n_devices <= len(devices):
        raise ValueError(f"n_devices must be an integer in [1, {len(devices)}] (the devices JAX sees), "
                         f"got {n_devices!r}")
    return Mesh(np.asarray(devices[:n_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Arrays split over the mesh along ``axis`` (the batch axis: 1 for a stack of batches)."""
    return NamedSharding(mesh, PartitionSpec(*[None] * axis, DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{what} must be a multiple of the {n} data-parallel devices, got {batch_size}")


def shard_batch(batch, mesh: Mesh, axis: int = 0):
    """Global arrays for the host pytree ``batch``, every leaf split along ``axis`` (its batch axis:
    0 for one batch, 1 for a stack of batches) over the mesh."""
    sharding = batch_sharding(mesh, axis)

    def put(leaf):
        leaf = np.asarray(leaf)
        check_batch_size(leaf.shape[axis], mesh, what="the leading (batch) dimension of every batch leaf")
        return jax.make_array_from_callback(leaf.shape, sharding, lambda index: leaf[index])

    return jax.tree.map(put, batch)


def replicate(tree, mesh: Mesh):
    """``tree`` with a full copy of every leaf on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))
