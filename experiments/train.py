"""The one training loop of every experiment: jitted data-parallel steps, evaluation, metrics,
checkpoints, exact resume, and the IPU estimate of the same step.

A run is ``train(model, loss_fn, config, batches=..., eval_data=...)``:

- ``loss_fn(model, batch) -> (loss, totals)`` (see :mod:`experiments.train_step`: ``totals`` are per-batch
  sums with a ``"count"``); ``batches(start_step)`` yields the training batches from ``start_step`` on
  (e.g. ``lambda s: data.lm_batches(tokens, ..., start_step=s)``), so the data position is the step;
  ``eval_data`` maps split names to zero-argument functions returning fresh evaluation batch iterables.
- Every ``log_every`` steps a ``train`` record (means over the interval) is appended to
  ``out_dir/metrics.jsonl``; every ``eval_every`` steps an ``eval`` record of the ``"val"`` split
  (``eval_batches`` batches); at the end every split of ``eval_data`` is evaluated
  (``final_eval_batches``, all by default) and ``out_dir/result.json`` is written. Evaluation reports
  ``totals[k] / totals["count"]`` with ``nll`` named ``loss`` and ``correct`` named ``accuracy``, plus
  ``perplexity = exp(loss)`` and ``bits_per_token = loss / ln 2`` (bits per character for a character
  vocabulary, per byte for a byte vocabulary).
- Steps run on the device in loops of up to ``steps_per_call`` (:func:`experiments.train_step.make_multi_step`),
  cut at every record, evaluation and checkpoint, with the same states as one call per step.
- Orbax checkpoints (``out_dir/checkpoints``) every ``checkpoint_every`` steps, at the end, on SIGINT /
  SIGTERM (the current loop of steps finishes, the state is saved, :class:`TrainingInterrupted` is raised;
  a second signal interrupts at once) and when a loss goes non-finite (the state of the last good step is
  saved and :class:`NonFiniteLossError` raised; a dynamic loss scaler's skipped steps don't count).
- Once per run, after the final evaluation, ``result.json["ipu"]`` gets the estimate of the same train
  step on an IPU system (``ipu_system``, default one Bow IPU) at the run's batch and precision, from
  :func:`ipu_sim.system.estimate_system` (see :func:`ipu_estimate`); the run prints it beside this
  machine's tokens/s (:func:`speed_summary`). A model whose precision policy simulates FP8 matmuls in
  float32 is estimated from its twin that rounds through real float8 arrays
  (:func:`unitscale.precision.float8_operands`: same values and state), so its FP8 matmuls are costed
  as FP8 and the matmuls its policy keeps in BF16 as 16-bit ones.
- Scaling recipes plug in through ``value_and_grad`` and ``recipe_state``: for a model built with a
  :class:`unitscale.precision.PrecisionPolicy`, ``value_and_grad=unitscale.precision.value_and_grad_with_recipe``
  and ``recipe_state`` a loss scale (or None); a dynamic loss scale skips non-finite steps.
- With ``resume`` (the default) a run restarts from its newest checkpoint: params, optimiser, recipe
  and model state (RNG counters included), metric accumulators and the data position, with
  ``metrics.jsonl`` cut back to what it held at that checkpoint. On CPU the resumed run's records are
  bit-identical to those of an uninterrupted run. A run that is already complete (its ``result.json``
  says so, with the same settings, and its final step is checkpointed) is not run again: ``train``
  says so, loads the final weights into the model and returns the saved result, writing nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from experiments import parallel
from experiments.checkpoint import CheckpointStore
from experiments.optimizers import OptimizerConfig, learning_rate_schedule, make_optimizer
from experiments.progress import Clock, Progress, format_rate
from experiments.results import append_jsonl, dumps, read_json, read_jsonl, run_metadata, write_json, write_text
from experiments.train_step import (GradFn, LossFn, TrainState, init_state, interval_metrics, make_eval_step,
                                    make_multi_step, make_train_step, plain_value_and_grad, eval_graphdef,
                                    split_model)
from ipu_sim.hardware import get_system
from ipu_sim.system import estimate_system
from unitscale.precision import Storage, float8_operands, store_params, stored_optimizer

METRICS_FILE, RESULT_FILE, CHECKPOINT_DIR = "metrics.jsonl", "result.json", "checkpoints"
# Fields that change nothing in the trajectory: differences in them are not reported on resume.
_BOOKKEEPING = frozenset({"out_dir", "resume", "progress", "ipu_estimate", "ipu_system", "steps_per_call"})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the model and data are the script's)."""

    steps: int = 1000
    batch_size: int = 32
    seq_len: int = 128
    optimizer: OptimizerConfig = OptimizerConfig()
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int | None = 20
    final_eval_batches: int | None = None
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    out_dir: str = "results/run"
    resume: bool = True
    progress: bool = True
    data_parallel: int | None = None  # devices in the data mesh; None = all
    max_consecutive_skips: int = 100  # a recipe that skips non-finite steps gives up after this many
    ipu_estimate: bool = True
    ipu_system: str = "bow-ipu"  # a name of ipu_sim.SYSTEMS (or an alias, e.g. a chip name)
    steps_per_call: int = 32  # steps per call of the compiled step (experiments.train_step.make_multi_step)

    def __post_init__(self):
        if isinstance(self.optimizer, Mapping):
            object.__setattr__(self, "optimizer", OptimizerConfig(**self.optimizer))
        if not isinstance(self.optimizer, OptimizerConfig):
            raise TypeError(f"optimizer must be an OptimizerConfig, got {type(self.optimizer).__name__}")
        for name in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "checkpoint_every",
                     "keep_checkpoints", "max_consecutive_skips", "steps_per_call"):
            _check_int(name, getattr(self, name), low=1)
        for name in ("eval_batches", "final_eval_batches", "data_parallel"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), low=1)
        _check_int("seed", self.seed, low=0)
        if not isinstance(self.out_dir, str) or not self.out_dir:
            raise ValueError(f"out_dir must be a non-empty string, got {self.out_dir!r}")
        object.__setattr__(self, "ipu_system", _system_name(self.ipu_system))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def _system_name(name) -> str:
    """The canonical name of IPU system (or alias) ``name``; ValueError/TypeError naming ``ipu_system``."""
    if not isinstance(name, str):
        raise TypeError(f"ipu_system must be a system name, got {type(name).__name__}")
    try:
        return get_system(name).name
    except ValueError as err:
        raise ValueError(f"ipu_system: {err}") from None


def _check_int(name: str, value, low: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped the run after a step; its state was saved at ``step``."""

    def __init__(self, step: int, checkpoint: Path, signal_name: str):
        super().__init__(f"{signal_name}: stopped after step {step}; checkpoint saved at {checkpoint}. "
                         f"Run the same command again to resume.")
        self.step, self.checkpoint, self.signal_name = step, checkpoint, signal_name


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradients became NaN/inf; the last good state was saved at ``step``."""

    def __init__(self, message: str, step: int, checkpoint: Path):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


class ResumeError(RuntimeError):
    """A run cannot be resumed consistently (its metrics file lost records the checkpoint knows of)."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns: the trained model, the final metrics and where everything was written."""

    model: nnx.Module = dataclasses.field(repr=False)
    step: int
    final: dict
    record: dict = dataclasses.field(repr=False)
    out_dir: Path


# ----------------------------------------------------------------------------------------------
# Run files
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Files:
    """The files of one run; only process 0 writes them (all processes write checkpoints)."""

    out_dir: Path
    writer: bool

    @property
    def metrics(self) -> Path:
        return self.out_dir / METRICS_FILE

    def append(self, record: dict) -> None:
        if self.writer:
            append_jsonl(self.metrics, record)

    def fingerprint(self) -> dict:
        data = self.metrics.read_bytes() if self.metrics.is_file() else b""
        return {"metrics_bytes": len(data), "metrics_sha256": hashlib.sha256(data).hexdigest()}

    def extends(self, meta: dict) -> bool:
        """Whether ``metrics.jsonl`` still begins with what it held when checkpoint ``meta`` was saved."""
        data = self.metrics.read_bytes() if self.metrics.is_file() else b""
        n = meta.get("metrics_bytes")
        return isinstance(n, int) and len(data) >= n and hashlib.sha256(data[:n]).hexdigest() == meta.get(
            "metrics_sha256")

    def rewind(self, meta: dict) -> None:
        """Cut ``metrics.jsonl`` back to its content when checkpoint ``meta`` was saved, after checking it."""
        if not self.writer:
            return
        data = self.metrics.read_bytes() if self.metrics.is_file() else b""
        n = meta.get("metrics_bytes")
        if not isinstance(n, int):
            raise ResumeError(f"checkpoint of step {meta.get('step')} records no metrics fingerprint; "
                              f"start afresh (--fresh) or use another --out")
        if len(data) < n or hashlib.sha256(data[:n]).hexdigest() != meta.get("metrics_sha256"):
            what = (f"has {len(data)} bytes, fewer than the {n} it had" if len(data) < n
                    else "differs from what it was")
            raise ResumeError(f"{self.metrics} {what} when the checkpoint of step {meta.get('step')} was saved: "
                              f"records were lost or changed (a truncated or edited file?). Restore the file, "
                              f"or start afresh (--fresh / resume=False) or in another output directory.")
        if len(data) > n:
            write_text(self.metrics, data[:n].decode("utf-8"))

    def clear(self) -> None:
        """Remove the outputs of an earlier run in this directory (checkpoints are cleared by the caller)."""
        if self.writer:
            for name in (METRICS_FILE, RESULT_FILE):
                (self.out_dir / name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------

class _StopSignals:
    """Within the block, SIGINT/SIGTERM ask the loop to stop after the current step; a second one
    interrupts at once. Only the main thread can own signal handlers; elsewhere this does nothing."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without saving")
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------

_RENAMES = {"nll": "loss", "correct": "accuracy"}


def eval_metrics(totals: Mapping[str, float]) -> dict[str, float]:
    """Pooled means ``totals[k] / totals["count"]`` (``nll`` -> ``loss``, ``correct`` -> ``accuracy``),
    with ``perplexity`` and ``bits_per_token`` when a ``loss`` exists, and ``tokens`` = the count."""
    count = float(totals["count"])
    out = {_RENAMES.get(k, k): (float(v) / count if count else math.nan)
           for k, v in totals.items() if k != "count"}
    if "loss" in out:
        out["perplexity"] = math.exp(out["loss"]) if out["loss"] < 700 else math.inf
        out["bits_per_token"] = out["loss"] / math.log(2)
    out["tokens"] = int(count)
    return out


def evaluate(eval_step: Callable, state: TrainState, batches: Iterable, mesh, limit: int | None = None) -> dict:
    """:func:`eval_metrics` over the first ``limit`` batches (all if None), summed in float64 on the host."""
    pending = []
    for i, batch in enumerate(batches):
        if limit is not None and i >= limit:
            break
        pending.append(eval_step(state, parallel.shard_batch(batch, mesh)))
    if not pending:
        raise ValueError("eval_data: a split yielded no batches")
    totals = {k: float(np.sum([np.float64(t[k]) for t in jax.device_get(pending)])) for k in pending[0]}
    return eval_metrics(totals)


# ----------------------------------------------------------------------------------------------
# IPU estimate
# ----------------------------------------------------------------------------------------------

def ipu_estimate(step_fn: Callable, state: TrainState, batch, *, seq_len: int, system: str = "bow-ipu") -> dict:
    """One train step of the run on an IPU ``system`` per :func:`ipu_sim.system.estimate_system`.

    The step is traced at the run's own batch and precision (matmuls are costed in the dtypes they
    trace to). On a system of ``N`` IPUs the batch ``B`` is split data-parallel over ``R`` replicas of
    one IPU each, ``R`` the largest divisor of ``B`` with ``R <= N``, so every replica runs a
    micro-batch of ``B / R`` samples and a step is one weight update of ``B`` samples either way.
    Returns the system, step time, tokens/s and samples/s (each with the model's range from its
    calibration error), FLOP utilisation, whether it fits in tile memory and the matmul precision, or
    ``{"system": ..., "error": ...}`` if the model cannot say.
    """
    chosen = get_system(system)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(batch)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"batch: every leaf needs the same leading (batch) dimension, got {sorted(sizes, key=str)}")
    (rows,) = sizes
    replicas = max(r for r in range(1, min(rows, chosen.ipus) + 1) if rows % r == 0)
    micro = rows // replicas
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), state)
    abstract_batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct((micro, *np.shape(x)[1:]), x.dtype), batch)
    try:
        est = estimate_system(step_fn, abstract_state, abstract_batch, system=chosen, micro_batch=micro,
                              seq=seq_len, replicas=replicas, batch_argnums=(1,))
    except Exception as err:  # the estimate annotates a run; it must never lose one
        return {"system": chosen.name, "description": chosen.description,
                "error": f"{type(err).__name__}: {str(err)[:500]}"}
    return {"system": chosen.name, "description": chosen.description, "chip": chosen.chip.name,
            "replicas": replicas, "micro_batch": micro, "step_time_s": est.step_seconds,
            "step_time_range_s": list(est.step_seconds_range), "tokens_per_s": est.tokens_per_second,
            "tokens_per_s_range": _as_list(est.tokens_per_second_range), "samples_per_s": est.samples_per_second,
            "samples_per_s_range": list(est.samples_per_second_range),
            "utilisation": est.utilisation, "fits": est.fits, "out_of_memory": est.out_of_memory,
            "precision": est.precision, "notes": list(est.notes), "detail": est.to_dict()}


def _as_list(pair: tuple | None) -> list | None:
    return None if pair is None else list(pair)


def speed_summary(result: Mapping[str, Any]) -> str:
    """This machine's training speed beside the IPU estimate of the same step, from a run's ``result``:
    ``this machine 5.09k tok/s (12.6 ms/step) | one Bow IPU (bow-ipu) estimate 1.8M tok/s (0.0356 ms/step,
    353x this machine), 0.0335% of peak FLOP/s, fits in tile memory``."""
    tokens = result["config"]["batch_size"] * result["config"]["seq_len"]
    cpu = result.get("tokens_per_s")
    parts = [f"this machine {format_rate(cpu)} tok/s ({_figure(tokens / cpu * 1e3)} ms/step)" if cpu
             else "this machine: too few timed steps for a speed"]
    ipu = result.get("ipu")
    if ipu and "error" in ipu:
        parts.append(f"IPU estimate ({ipu['system']}) unavailable: {ipu['error'][:160]}")
    elif ipu:
        ratio = f", {_figure(ipu['tokens_per_s'] / cpu)}x this machine" if cpu else ""
        parts.append(f"{ipu['description']} ({ipu['system']}) estimate {format_rate(ipu['tokens_per_s'])} tok/s "
                     f"({_figure(ipu['step_time_s'] * 1e3)} ms/step{ratio}), "
                     f"{_figure(100 * ipu['utilisation'])}% of peak FLOP/s, "
                     f"{'fits' if ipu['fits'] else 'does NOT fit'} in tile memory")
    return " | ".join(parts)


def _figure(x: float) -> str:
    """Three significant digits without an exponent: 0.0356, 12.6, 353, 1,570."""
    if not math.isfinite(x) or x <= 0:
        return f"{x:.3g}"
    return f"{x:,.{max(0, 2 - math.floor(math.log10(x)))}f}"


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Loop:
    """The moving parts of one call of :func:`train`, so each phase is a short method."""

    config: TrainConfig
    files: _Files
    store: CheckpointStore
    mesh: Any
    train_step: Callable
    eval_step: Callable
    eval_data: Mapping[str, Callable[[], Iterable]]
    lr: Callable | None
    on_record: Callable[[dict], None] | None
    progress: Progress
    clock: Clock
    describe: dict
    last_train: dict | None = None

    def record(self, record: dict) -> None:
        self.files.append(record)
        if self.on_record is not None:
            self.on_record(record)

    def save(self, state: TrainState, step: int) -> Path:
        meta = {"config": self.config.to_dict(), **self.files.fingerprint()}
        with self.clock.paused():
            return self.store.save(step, state, meta)

    def log_train(self, state: TrainState, step: int, elapsed: float) -> dict:
        sums = {k: float(v) for k, v in jax.device_get(state.sums).items()}  # waits for the step: timed
        rate = self.clock.steps_per_second(step) * self.config.tokens_per_step
        with self.clock.paused():
            record = {"kind": "train", "step": step, **interval_metrics(sums)}
            if self.lr is not None:
                record["lr"] = float(self.lr(step - 1))
            record.update(tokens_per_s=rate, elapsed_s=elapsed)
            self.record(record)
            self.last_train = record
            self.progress.show(loss=record["loss"], tok_s=format_rate(rate))
        return record

    def log_eval(self, state: TrainState, step: int, split: str, limit: int | None) -> dict:
        with self.clock.paused():
            metrics = evaluate(self.eval_step, state, self.eval_data[split](), self.mesh, limit)
        record = {"kind": "eval", "split": split, "step": step, **metrics}
        self.record(record)
        return record

    def print_line(self, step: int, val: dict | None) -> None:
        train = self.last_train or {}
        parts = [f"step {step}/{self.config.steps}", f"train loss {train.get('loss', math.nan):.4f}"]
        if val is not None:
            parts.append(f"val loss {val['loss']:.4f} ({val['bits_per_token']:.3f} bits/token)"
                         if "loss" in val else "val " + ", ".join(f"{k} {v:.4g}" for k, v in val.items()))
        parts.append(f"{format_rate(train.get('tokens_per_s', math.nan))} tok/s")
        self.progress.write(" | ".join(parts))

    def check_finite(self, state: TrainState) -> None:
        halted = int(jax.device_get(state.halted_at))
        if halted < 0:
            return
        good = dataclasses.replace(state, halted_at=state.halted_at * 0 - 1)
        path = self.save(good, halted)
        message = (f"the loss or gradients became NaN/inf at step {halted + 1} (0-based batch {halted}); "
                   f"kept the checkpoint of the last good step {halted} at {path}. Lower the learning rate, "
                   f"use loss scaling or another precision; resuming from it replays the same step.")
        self.record({"kind": "event", "event": "nonfinite", "step": halted, "message": message})
        raise NonFiniteLossError(message, halted, path)


def _restore_or_start(loop: _Loop, state: TrainState) -> tuple[TrainState, int]:
    """Resume from the newest checkpoint if asked and present; else clear the directory and start at 0."""
    config, store = loop.config, loop.store
    latest = store.latest_step() if config.resume else None
    if latest is None:
        store.delete_all()
        loop.files.clear()
        return state, 0
    state, meta = store.restore(latest, state, parallel.replicated(loop.mesh))
    loop.files.rewind(meta)
    before = meta.get("config", {})
    changed = {k: [before.get(k), v] for k, v in config.to_dict().items()
               if k not in _BOOKKEEPING and before.get(k) != v}
    loop.record({"kind": "event", "event": "resume", "step": latest, "changed": changed})
    if changed:
        loop.progress.write(f"resuming at step {latest} with changed settings {dumps(changed)}")
    return state, latest


def _next_stop(step: int, config: TrainConfig) -> int:
    """The step after ``step`` at which the loop must look at the state: the next record, evaluation,
    checkpoint or the end, at most ``steps_per_call`` steps on."""
    every = (config.log_every, config.eval_every, config.checkpoint_every)
    events = [step + n - step % n for n in every] + [config.steps, step + config.steps_per_call]
    return min(events)


def _stacked_batches(batches: Iterator, first: int, count: int, size: int, stop: _StopSignals) -> tuple[Any, int]:
    """``(stack, n)``: the next ``count`` batches (of steps ``first``, ``first + 1``, ...) stacked along a
    new leading axis and padded to ``size`` with copies of the last (the loop runs only the first ``n``),
    and their number ``n``: fewer than ``count`` when a stop signal arrives while they are drawn, so that
    the loop stops after the step whose batch was being drawn."""
    taken = []
    for step in range(first, first + count):
        batch = next(batches, None)
        if batch is None:
            raise ValueError(f"batches: the iterator ran out before step {step}")
        taken.append(batch)
        if stop.received:
            break
    n = len(taken)
    taken += taken[-1:] * (size - n)
    return jax.tree.map(lambda *leaves: np.stack([np.asarray(x) for x in leaves]), *taken), n


def _run_steps(loop: _Loop, state: TrainState, start: int, batches: Iterator, stop: _StopSignals,
               started: float) -> tuple[TrainState, dict]:
    config, timings = loop.config, {"first_step_s": math.nan}
    step = start
    while step < config.steps:
        # The first step runs alone, so that its time (compiling included) is measured apart.
        count = 1 if step == start else _next_stop(step, config) - step
        stacked, count = _stacked_batches(batches, step + 1, count, config.steps_per_call, stop)
        state = loop.train_step(state, parallel.shard_batch(stacked, loop.mesh, axis=1), np.int32(count))
        step += count
        loop.progress.advance(count)
        if step == start + 1:
            jax.block_until_ready(state)
            timings["first_step_s"] = time.perf_counter() - started
            loop.clock.start(step)
        logging = step % config.log_every == 0 or step == config.steps
        if logging or stop.received:
            loop.check_finite(state)  # before any record or checkpoint of a step past the failure
        if logging:
            loop.log_train(state, step, time.perf_counter() - started)
        if step % config.eval_every == 0 and step < config.steps:
            val = loop.log_eval(state, step, "val", config.eval_batches) if "val" in loop.eval_data else None
            loop.print_line(step, val)
        if step % config.checkpoint_every == 0:
            loop.save(state, step)
        if stop.received:
            path = loop.save(state, step)
            loop.record({"kind": "event", "event": "interrupted", "step": step, "signal": stop.received})
            raise TrainingInterrupted(step, path, stop.received)
    timings["train_s"] = loop.clock.seconds()
    return state, timings


def train(model: nnx.Module, loss_fn: LossFn, config: TrainConfig, *,
          batches: Callable[[int], Iterator], eval_data: Mapping[str, Callable[[], Iterable]] | None = None,
          optimizer: optax.GradientTransformation | None = None, value_and_grad: GradFn = plain_value_and_grad,
          recipe_state: Any = None, skips_nonfinite: bool | None = None, storage: Storage | None = None,
          describe: Mapping[str, Any] | None = None, on_record: Callable[[dict], None] | None = None) -> TrainResult:
    """Train ``model`` in place with ``loss_fn`` as the module docstring describes; returns the result.

    ``optimizer`` overrides the one built from ``config.optimizer`` (e.g. a u-muP transform);
    ``value_and_grad``, ``recipe_state`` and ``skips_nonfinite`` plug in a scaling recipe
    (``skips_nonfinite`` defaults to the recipe state's own ``skips_nonfinite``, e.g. True for
    :class:`unitscale.precision.DynamicLossScale`, else False);
    ``storage`` (e.g. ``model_config.precision.storage``) stores the parameters and Adam moments in
    its formats with no float32 master copy (:mod:`unitscale.precision.storage`; stochastic rounding
    seeded from ``config.seed``): the model's float32 initialisation is rounded into it first;
    ``describe`` (model config, data, vocab, ...) is stored in ``result.json``; ``on_record`` sees
    every metrics record as it is written.

    Raises:
      TrainingInterrupted: on SIGINT/SIGTERM, after saving a checkpoint.
      NonFiniteLossError: when the loss goes NaN/inf (and no recipe skips the step), after saving.
      CheckpointError, ResumeError: when the run cannot be resumed faithfully.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    started = time.perf_counter()
    eval_data = dict(eval_data or {})
    mesh = parallel.data_mesh(config.data_parallel)
    parallel.check_batch_size(config.batch_size, mesh)
    lr = learning_rate_schedule(config.optimizer, config.steps) if optimizer is None else None
    if storage is not None and not storage.active:
        storage = None
    # Stochastic rounding draws from streams apart from initialisation (seed) and dropout (seed + 1).
    optimizer = optimizer or make_optimizer(config.optimizer, config.steps, storage, seed=config.seed + 3)
    if storage is not None:
        optimizer = stored_optimizer(optimizer, storage, seed=config.seed + 2)
        nnx.update(model, store_params(nnx.state(model, nnx.Param), storage))
    probe = next(iter(batches(0)))
    rows = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(probe)}
    if rows != {config.batch_size}:
        raise ValueError(f"batches: leading dimensions {sorted(rows, key=str)} of the batch leaves differ from "
                         f"config.batch_size = {config.batch_size}")
    if skips_nonfinite is None:
        skips_nonfinite = bool(getattr(recipe_state, "skips_nonfinite", False))
    graphdef, state = init_state(model, loss_fn, optimizer, probe, recipe_state,
                                 None if value_and_grad is plain_value_and_grad else value_and_grad)
    step_options = dict(log_every=config.log_every, value_and_grad=value_and_grad, skips_nonfinite=skips_nonfinite,
                        max_consecutive_skips=config.max_consecutive_skips, storage=storage)
    step_fn = make_train_step(graphdef, loss_fn, optimizer, **step_options)
    cost_model = float8_operands(model)
    cost_step_fn = (step_fn if cost_model is model
                    else make_train_step(split_model(cost_model)[0], loss_fn, optimizer, **step_options))
    replicated = parallel.replicated(mesh)
    files = _Files(Path(config.out_dir), writer=jax.process_index() == 0)
    with CheckpointStore(files.out_dir / CHECKPOINT_DIR, config.keep_checkpoints) as store, \
            _StopSignals() as stop:
        saved = _completed_result(files, store, config)
        if saved is not None:
            return _completed_run(model, store, parallel.replicate(state, mesh), replicated, saved, files)
        progress = Progress(config.steps, 0, enabled=config.progress and files.writer)
        loop = _Loop(config, files, store, mesh,
                     jax.jit(make_multi_step(step_fn), donate_argnums=0, out_shardings=replicated),
                     jax.jit(make_eval_step(eval_graphdef(model), loss_fn), out_shardings=replicated),
                     eval_data, lr, on_record, progress, Clock(), dict(describe or {}))
        try:
            state, start = _restore_or_start(loop, parallel.replicate(state, mesh))
            progress.advance(start)
            state, timings = _run_steps(loop, state, start, iter(batches(start)), stop, started)
            result = _finish(loop, state, cost_step_fn, probe, start, timings, started)
        finally:
            progress.close()
    nnx.update(model, state.params, state.rest)
    return TrainResult(model, config.steps, result["final"], result, files.out_dir)


def _completed_result(files: _Files, store: CheckpointStore, config: TrainConfig) -> dict | None:
    """The ``result.json`` of ``files`` if it records this run as completed -- the same settings but for
    bookkeeping, every step done and checkpointed, the metrics file intact -- else None (and the run
    resumes, or starts, as it would without one)."""
    path = files.out_dir / RESULT_FILE
    if not config.resume or store.latest_step() != config.steps or not path.is_file():
        return None
    try:
        saved = read_json(path)
    except ValueError:  # a damaged result.json is rewritten by finishing the run again
        return None
    if not isinstance(saved, dict) or saved.get("status") != "completed" or not isinstance(saved.get("config"), dict):
        return None
    now = json.loads(dumps(config.to_dict()))
    same = all(saved["config"].get(k) == v for k, v in now.items() if k not in _BOOKKEEPING)
    return saved if same and files.extends(store.read_meta(config.steps)) else None


def _completed_run(model: nnx.Module, store: CheckpointStore, state: TrainState, sharding, saved: dict,
                   files: _Files) -> TrainResult:
    """A completed run, run again: the model gets its final checkpoint's weights, the result is the saved
    one, and nothing is written (no metrics record, no new result.json)."""
    state, _ = store.restore(saved["steps"], state, sharding)
    nnx.update(model, state.params, state.rest)
    if files.writer:
        print(f"{files.out_dir} holds this run, complete (all {saved['steps']} steps; {RESULT_FILE} and the final "
              f"checkpoint); nothing to do. --fresh starts it again.", flush=True)
    return TrainResult(model, saved["steps"], saved["final"], saved, files.out_dir)


def _finish(loop: _Loop, state: TrainState, cost_step_fn: Callable, probe, start: int, timings: dict,
            started: float) -> dict:
    """Final evaluation, checkpoint, IPU estimate (of ``cost_step_fn``) and ``result.json``."""
    config = loop.config
    loop.check_finite(state)
    loop.save(state, config.steps)  # before the final records, so a rerun rewinds and rewrites them
    # A run resumed from its last step trained nothing now: its last train record is in the metrics file.
    loop.last_train = loop.last_train or _last_record(loop.files, "train")
    final = {"train": loop.last_train}
    for split in loop.eval_data:
        final[split] = loop.log_eval(state, config.steps, split, config.final_eval_batches)
    loop.print_line(config.steps, final.get("val"))
    ipu = (ipu_estimate(cost_step_fn, state, probe, seq_len=config.seq_len, system=config.ipu_system)
           if config.ipu_estimate else None)
    train_s = timings.get("train_s", 0.0)
    steps_timed = max(config.steps - start - 1, 0)
    result = {"status": "completed", "steps": config.steps, "resumed_from": start or None,
              "config": config.to_dict(), "describe": loop.describe, "final": final,
              "wall_time_s": time.perf_counter() - started, "first_step_s": timings["first_step_s"],
              "train_s": train_s, "tokens_per_s": steps_timed * config.tokens_per_step / train_s if train_s else None,
              "devices": loop.mesh.devices.size, "ipu": ipu, "environment": run_metadata()}
    if loop.files.writer:
        write_json(loop.files.out_dir / RESULT_FILE, result)
    loop.progress.write(speed_summary(result))
    return result


def _last_record(files: _Files, kind: str) -> dict | None:
    if not files.metrics.is_file():
        return None
    records = [r for r in read_jsonl(files.metrics) if r.get("kind") == kind]
    return records[-1] if records else None
