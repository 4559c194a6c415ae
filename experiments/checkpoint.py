"""Orbax checkpoints of a training state that are verified on restore.

Each checkpoint ``directory/<step>/`` holds the state's array leaves (named by flat index, so any
pytree of arrays works, typed PRNG keys included, stored as their key data) and a JSON ``meta``
record: the caller's metadata plus, for every leaf, its tree path, shape, dtype and the SHA-256 of its
bytes. :meth:`CheckpointStore.restore` checks the leaves against the state the run expects and
against their digests, so a checkpoint from another model, a damaged file or a half-copied directory
raises :class:`CheckpointError` naming the checkpoint and what to do, never loads wrong numbers.

Saving is synchronous: a checkpoint is committed (Orbax writes to a temporary directory and renames
it) before :meth:`CheckpointStore.save` returns, so an interrupt handler can save and exit at once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, corrupt, or not a checkpoint of this run's state."""


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _host_bytes(x) -> np.ndarray:
    # Replicated arrays are not fully addressable on multi-host runs; any local copy holds all of it.
    return np.asarray(x if x.is_fully_addressable else x.addressable_data(0))


def _leaf_record(path: str, x) -> dict:
    data = _host_bytes(jax.random.key_data(x) if _is_key(x) else x)
    return {"path": path, "shape": list(data.shape), "dtype": str(data.dtype), "key": _is_key(x),
            "sha256": hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()}


def _paths_and_leaves(tree) -> tuple[list[str], list[Any], Any]:
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in with_paths], [x for _, x in with_paths], treedef


class CheckpointStore:
    """Checkpoints of one run under ``directory``; the newest ``max_to_keep`` are kept."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2):
        if not isinstance(max_to_keep, int) or max_to_keep < 1:
            raise ValueError(f"max_to_keep must be a positive integer, got {max_to_keep!r}")
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=False,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._manager.close()

    def steps(self) -> list[int]:
        """Steps of the committed checkpoints, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def delete_all(self) -> None:
        """Remove every checkpoint (a run started afresh in this directory)."""
        for step in self.steps():
            self._manager.delete(step)

    def path(self, step: int) -> Path:
        return self.directory / str(step)

    def save(self, step: int, state, meta: dict | None = None) -> Path:
        """Commit ``state`` (a pytree of arrays) as checkpoint ``step`` with JSON ``meta``; a no-op if it exists."""
        if step in self.steps():
            return self.path(step)
        paths, leaves, _ = _paths_and_leaves(state)
        stored = {f"{i:05d}": jax.random.key_data(x) if _is_key(x) else x for i, x in enumerate(leaves)}
        record = {**(meta or {}), "step": step, "leaves": [_leaf_record(p, x) for p, x in zip(paths, leaves)]}
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(stored),
                                                          meta=ocp.args.JsonSave(record)))
        self._manager.wait_until_finished()
        return self.path(step)

    def read_meta(self, step: int) -> dict:
        """The JSON metadata of checkpoint ``step``."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as err:
            raise self._unreadable(step, err) from err

    def restore(self, step: int, template, sharding: jax.sharding.Sharding | None = None) -> tuple[Any, dict]:
        """``(state, meta)`` of checkpoint ``step``, shaped like ``template`` and placed with ``sharding``.

        Raises:
          CheckpointError: the checkpoint is unreadable, holds a different state, or fails its digests.
        """
        meta = self.read_meta(step)
        paths, leaves, treedef = _paths_and_leaves(template)
        self._check_layout(step, meta, paths, leaves)

        def abstract(x):
            data = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
            return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding or x.sharding)

        wanted = {f"{i:05d}": abstract(x) for i, x in enumerate(leaves)}
        try:
            stored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(wanted)))
        except Exception as err:
            raise self._unreadable(step, err) from err
        restored = []
        for i, (x, record) in enumerate(zip(leaves, meta["leaves"])):
            data = stored["state"][f"{i:05d}"]
            got = _leaf_record(record["path"], data)["sha256"]
            if got != record["sha256"]:
                raise CheckpointError(f"checkpoint {self.path(step)} is corrupt: leaf {record['path']} reads back "
                                      f"with SHA-256 {got[:16]}..., saved as {record['sha256'][:16]}...; "
                                      f"{self._advice(step)}")
            restored.append(jax.random.wrap_key_data(data, impl=jax.random.key_impl(x)) if _is_key(x) else data)
        return jax.tree_util.tree_unflatten(treedef, restored), meta

    def _check_layout(self, step: int, meta: dict, paths: list[str], leaves: list) -> None:
        saved = meta.get("leaves") if isinstance(meta, dict) else None
        if not isinstance(saved, list):
            raise CheckpointError(f"checkpoint {self.path(step)} has no leaf records in its metadata; "
                                  f"{self._advice(step)}")
        here = [_describe_leaf(p, x) for p, x in zip(paths, leaves)]
        there = [f"{r.get('path')}: {r.get('dtype')}{r.get('shape')}" for r in saved]
        if here != there:
            diff = next((f"{a!r} here, {b!r} there" for a, b in zip(here, there) if a != b),
                        f"{len(here)} leaves here, {len(there)} there")
            raise CheckpointError(f"checkpoint {self.path(step)} holds a different training state than this run "
                                  f"(another model, optimiser or recipe?): first difference {diff}. Use another "
                                  f"output directory, or start afresh there.")

    def _unreadable(self, step: int, err: Exception) -> CheckpointError:
        return CheckpointError(f"checkpoint {self.path(step)} is unreadable ({type(err).__name__}: "
                               f"{str(err)[:300]}); {self._advice(step)}")

    def _advice(self, step: int) -> str:
        older = [s for s in self.steps() if s < step]
        where = f"the previous one (step {older[-1]})" if older else "no earlier checkpoint (none is left)"
        return f"delete {self.path(step)} to resume from {where}, or start the run afresh"


def _describe_leaf(path: str, x) -> str:
    data = jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x
    return f"{path}: {np.dtype(data.dtype)}{list(data.shape)}"
