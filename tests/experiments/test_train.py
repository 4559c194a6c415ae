"""The training loop of experiments.train on a tiny NNX character LM over the shipped tiny corpus.

One reference run (24 steps, records every 4, evaluation every 8, checkpoints every 5) is shared by
the tests; interrupted, crashed, diverged and resumed runs are compared with it record by record.
Run as a script (``python test_train.py sharded OUT``) it trains the reference on one device and on
every device JAX sees, which tests/experiments/test_train_sharding.py does under 4 forced CPU devices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import experiments.train
from experiments import data
from experiments.checkpoint import CheckpointError, CheckpointStore
from experiments.cli import ExperimentCLI
from experiments.optimizers import OptimizerConfig
from experiments.results import read_jsonl
from experiments.train import (NonFiniteLossError, ResumeError, TrainConfig, TrainingInterrupted, eval_metrics,
                               ipu_estimate, speed_summary, train)
from experiments.train_step import plain_value_and_grad

TINY = Path(__file__).parent / "data" / "tiny.txt"
SPLITS = data.split_text(TINY.read_text(encoding="utf-8"), (0.8, 0.1, 0.1))
VOCAB = data.build_char_vocab(SPLITS.train)
TRAIN, VAL, TEST = (VOCAB.encode(t) for t in (SPLITS.train, SPLITS.validation, SPLITS.test))
POISON = 2  # a mask value no real batch has: a batch marked with it gets a NaN loss
B, T = 4, 16
TIMING = ("tokens_per_s", "elapsed_s")


class TinyLM(nnx.Module):
    """Embedding -> GELU MLP with dropout -> logits; dropout makes RNG state part of what resumes."""

    def __init__(self, vocab: int, width: int, *, seed: int = 0):
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        self.embed = nnx.Embed(vocab, width, rngs=rngs)
        self.hidden = nnx.Linear(width, 2 * width, rngs=rngs)
        self.dropout = nnx.Dropout(0.1, rngs=rngs)
        self.readout = nnx.Linear(2 * width, vocab, rngs=rngs)

    def __call__(self, ids):
        return self.readout(self.dropout(jax.nn.gelu(self.hidden(self.embed(ids)))))


def lm_loss(model, batch):
    logits = model(batch.inputs).astype(jnp.float32)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch.targets)
    nll = nll * jnp.where(jnp.any(batch.mask == POISON), jnp.nan, 1.0)
    mask = (batch.mask > 0).astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch.targets) * mask
    return (nll * mask).sum() / mask.sum(), {"nll": (nll * mask).sum(), "correct": correct.sum(), "count": mask.sum()}


def batches_fn(poison_at: int | None = None, hook=None):
    def batches(start):
        for step, batch in enumerate(data.lm_batches(TRAIN, batch_size=B, seq_len=T, start_step=start), start):
            if hook is not None:
                hook(step)
            if step == poison_at:
                batch = dataclasses.replace(batch, mask=np.full_like(batch.mask, POISON))
            yield batch
    return batches


EVAL_DATA = {"val": lambda: data.lm_eval_batches(VAL, batch_size=B, seq_len=T),
             "test": lambda: data.lm_eval_batches(TEST, batch_size=B, seq_len=T)}


def config(out, **changes) -> TrainConfig:
    base = dict(steps=24, batch_size=B, seq_len=T, log_every=4, eval_every=8, eval_batches=3, checkpoint_every=5,
                keep_checkpoints=5, out_dir=str(out), progress=False, ipu_estimate=False,
                optimizer=OptimizerConfig(lr=1e-2, warmup_steps=3))
    return TrainConfig(**{**base, **changes})


def run(out, *, width=16, poison_at=None, hook=None, **kwargs):
    changes = {k: kwargs.pop(k) for k in list(kwargs) if k in TrainConfig.__dataclass_fields__}
    return train(TinyLM(VOCAB.size, width), lm_loss, config(out, **changes), batches=batches_fn(poison_at, hook),
                 eval_data=EVAL_DATA, describe={"model": "TinyLM", "width": width}, **kwargs)


def records(out, kinds=("train", "eval")) -> list[dict]:
    """The metrics records of a run without their timing fields: what must match bit for bit."""
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_jsonl(Path(out) / "metrics.jsonl")
            if r["kind"] in kinds]


@dataclasses.dataclass(frozen=True)
class ReferenceRun:
    out: Path
    result: object
    printed: str  # the run's stdout
    estimates: int  # calls of ipu_sim's estimate_system during the run


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    real, calls = experiments.train.estimate_system, []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("system"))
        return real(*args, **kwargs)

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(experiments.train, "estimate_system", counted)
        result = run(out, ipu_estimate=True)
    return ReferenceRun(out, result, printed.getvalue(), len(calls))


@pytest.fixture(scope="module")
def reference(reference_run):
    return reference_run.out, reference_run.result


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# What a run writes
# ---------------------------------------------------------------------------------------------

def test_metrics_records_cover_the_schedule_and_the_loss_goes_down(reference):
    out, _ = reference
    recs = records(out)
    train_steps = [r["step"] for r in recs if r["kind"] == "train"]
    evals = [(r["split"], r["step"]) for r in recs if r["kind"] == "eval"]
    assert train_steps == [4, 8, 12, 16, 20, 24]
    assert evals == [("val", 8), ("val", 16), ("val", 24), ("test", 24)]
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] - 0.3
    val = [r for r in recs if r["kind"] == "eval" and r["split"] == "val"]
    assert val[-1]["loss"] < val[0]["loss"]
    assert all(r["steps"] == 4 and r["skipped"] == 0 for r in recs if r["kind"] == "train")


def test_final_evaluation_pools_every_token_of_each_split_once(reference):
    _, result = reference
    assert result.final["val"]["tokens"] == len(VAL) - 1
    assert result.final["test"]["tokens"] == len(TEST) - 1
    val = result.final["val"]
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]))
    assert val["bits_per_token"] == pytest.approx(val["loss"] / math.log(2))
    assert 0.0 <= val["accuracy"] <= 1.0


def test_result_json_holds_config_environment_final_metrics_and_speed(reference):
    out, result = reference
    saved = json.loads((out / "result.json").read_text())
    assert saved["status"] == "completed" and saved["steps"] == 24
    assert saved["config"] == config(out, ipu_estimate=True).to_dict()
    assert saved["describe"] == {"model": "TinyLM", "width": 16}
    assert set(saved["final"]) == {"train", "val", "test"}
    assert saved["final"]["val"]["loss"] == result.final["val"]["loss"]
    assert saved["final"]["train"]["step"] == 24
    env = saved["environment"]
    assert env["git"] is None or len(env["git"]["revision"]) == 40
    assert env["packages"]["jax"] == jax.__version__
    assert saved["wall_time_s"] > 0 and saved["tokens_per_s"] > 0 and saved["devices"] == 1


def test_result_json_holds_the_ipu_estimate_of_the_train_step(reference):
    out, _ = reference
    saved = json.loads((out / "result.json").read_text())
    ipu = saved["ipu"]
    assert "error" not in ipu, ipu.get("error")
    assert (ipu["system"], ipu["description"], ipu["chip"]) == ("bow-ipu", "one Bow IPU", "bow")
    assert saved["config"]["ipu_system"] == "bow-ipu"
    assert (ipu["replicas"], ipu["micro_batch"]) == (1, B)  # the run's own batch on one IPU
    assert ipu["step_time_s"] > 0 and ipu["tokens_per_s"] == pytest.approx(B * T / ipu["step_time_s"])
    assert 0 < ipu["utilisation"] <= 1 and isinstance(ipu["fits"], bool)
    for key, point in (("step_time_range_s", "step_time_s"), ("tokens_per_s_range", "tokens_per_s"),
                       ("samples_per_s_range", "samples_per_s")):
        low, high = ipu[key]  # the model's own uncertainty, from its calibration error
        assert low <= ipu[point] <= high and low < high, key
    assert ipu["precision"].startswith("matmuls fp32 inputs, fp32 partials")  # TinyLM runs in float32
    detail = ipu["detail"]
    assert (detail["system"], detail["micro_batch"], detail["seq"], detail["replicas"]) == ("bow-ipu", B, T, 1)
    assert detail["step_seconds"] == ipu["step_time_s"] and detail["fits"] == ipu["fits"]


def test_the_ipu_estimate_is_made_once_per_run_and_printed_beside_the_cpu_speed(reference_run):
    assert reference_run.estimates == 1  # 24 steps, one estimate
    saved = json.loads((reference_run.out / "result.json").read_text())
    last = reference_run.printed.splitlines()[-1]
    assert last == speed_summary(saved)
    number = r"[\d.,]+"
    assert re.fullmatch(rf"this machine {number}[kM]? tok/s \({number} ms/step\) \| one Bow IPU \(bow-ipu\) "
                        rf"estimate {number}[kMG]? tok/s \({number} ms/step, {number}x this machine\), "
                        rf"{number}% of peak FLOP/s, (fits|does NOT fit) in tile memory", last), last
    shown = float(re.search(rf"({number})x this machine", last).group(1).replace(",", ""))
    assert shown == pytest.approx(saved["ipu"]["tokens_per_s"] / saved["tokens_per_s"], rel=5e-3)


def _tiny_step():
    """TinyLM's train step and step-0 state, as the loop builds them."""
    from experiments.optimizers import make_optimizer
    from experiments.train_step import init_state, make_train_step

    cfg = config("unused")
    optimizer = make_optimizer(cfg.optimizer, cfg.steps)
    probe = data.lm_batch(TRAIN, 0, batch_size=B, seq_len=T)
    graphdef, state = init_state(TinyLM(VOCAB.size, 16), lm_loss, optimizer, probe)
    return make_train_step(graphdef, lm_loss, optimizer, log_every=4), state


def test_a_device_loop_of_steps_equals_one_call_per_step():
    from experiments.train_step import make_multi_step

    step, state = _tiny_step()
    batches = [data.lm_batch(TRAIN, i, batch_size=B, seq_len=T) for i in range(5)]
    one_by_one = state
    for batch in batches:
        one_by_one = jax.jit(step)(one_by_one, batch)
    stacked = jax.tree.map(lambda *x: np.stack(x), *batches, batches[-1], batches[-1])  # padded to 7
    looped = jax.jit(make_multi_step(step))(state, stacked, np.int32(5))
    as_data = lambda x: jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x  # noqa: E731
    for a, b in zip(jax.tree.leaves(one_by_one), jax.tree.leaves(looped)):
        np.testing.assert_array_equal(np.asarray(as_data(a)), np.asarray(as_data(b)))


@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_steps_per_call_changes_no_record(reference, tmp_path, steps_per_call):
    run(tmp_path, steps_per_call=steps_per_call)
    assert records(tmp_path) == records(reference[0])


@pytest.mark.parametrize("system, rows, replicas", [("bow-pod16", 4, 4), ("bow-m2000", 6, 3)])
def test_ipu_estimate_splits_the_batch_over_the_ipus_of_a_system(system, rows, replicas):
    step, state = _tiny_step()
    batch = data.lm_batch(TRAIN, 0, batch_size=rows, seq_len=T)
    ipu = ipu_estimate(step, state, batch, seq_len=T, system=system)
    assert "error" not in ipu, ipu.get("error")
    # replicas: the largest divisor of the batch that the system has IPUs for
    assert (ipu["system"], ipu["replicas"], ipu["micro_batch"]) == (system, replicas, rows // replicas)
    assert ipu["detail"]["ipus_used"] == replicas and ipu["detail"]["samples_per_step"] == rows
    assert ipu["tokens_per_s"] == pytest.approx(rows * T / ipu["step_time_s"])


def test_ipu_estimate_costs_a_step_through_the_fp8_quantiser():
    from unitscale.formats import E4M3, E5M2, quantize

    def step(w, x):
        def loss(w):
            h = quantize(x, E4M3) @ quantize(w, E4M3)
            return jnp.mean(quantize(h, E5M2, rounding="stochastic", key=jax.random.key(1)) ** 2)
        return w - 0.1 * jax.grad(loss)(w)

    ipu = ipu_estimate(step, jnp.ones((16, 8)), np.ones((4, 16), np.float32), seq_len=1)
    assert "error" not in ipu, ipu.get("error")
    # quantize simulates FP8 in float32 values: the matmuls are costed as the float32 they trace to
    assert ipu["step_time_s"] > 0 and ipu["precision"].startswith("matmuls fp32 inputs")


def test_ipu_estimate_refuses_a_batch_without_one_leading_dimension():
    with pytest.raises(ValueError, match=r"batch: every leaf needs the same leading \(batch\) dimension, got \[3, 4\]"):
        ipu_estimate(lambda s, b: s, jnp.zeros(()), {"a": np.ones((4, 2)), "b": np.ones(3)}, seq_len=2)


def test_an_ipu_estimate_that_fails_is_recorded_and_summarised_not_raised():
    def step(state, batch):  # a windowed sum: a primitive ipu_sim has no cost model for
        return state + jax.lax.reduce_window(batch, 0.0, jax.lax.add, (1, 2), (1, 2), "VALID").sum()

    ipu = ipu_estimate(step, jnp.zeros(()), np.ones((4, 8), np.float32), seq_len=8)
    assert set(ipu) == {"system", "description", "error"} and ipu["system"] == "bow-ipu"
    assert ipu["error"].startswith("ValueError: unsupported primitive 'reduce_window_sum'")
    line = speed_summary({"config": {"batch_size": 4, "seq_len": 8}, "tokens_per_s": 3200.0, "ipu": ipu})
    assert line.startswith("this machine 3.2k tok/s (10.0 ms/step) | IPU estimate (bow-ipu) unavailable: "
                           "ValueError: unsupported primitive 'reduce_window_sum'")


def test_trained_model_is_returned_with_the_final_weights(reference):
    out, result = reference
    with CheckpointStore(out / "checkpoints") as store:
        assert store.latest_step() == 24
        meta = store.read_meta(24)
    assert meta["step"] == 24
    val_again = eval_metrics(_totals(result.model, VAL))
    assert val_again["loss"] == pytest.approx(result.final["val"]["loss"], rel=1e-6)


def _totals(model, tokens):
    model.eval()
    sums = {}
    for batch in data.lm_eval_batches(tokens, batch_size=B, seq_len=T):
        for k, v in lm_loss(model, batch)[1].items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return sums


# ---------------------------------------------------------------------------------------------
# Interrupts and resume
# ---------------------------------------------------------------------------------------------

def test_sigint_mid_interval_saves_and_the_resumed_run_is_bit_identical(reference, tmp_path):
    def interrupt(step):
        if step == 10:  # drawn before step 11 runs: the loop stops after step 11, between records
            os.kill(os.getpid(), signal.SIGINT)

    # Whatever SIGINT did before (default_int_handler, or SIG_IGN when pytest runs in the background
    # under nohup), the loop must put it back.
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as stop:
        run(tmp_path, hook=interrupt)
    assert stop.value.step == 11 and stop.value.signal_name == "SIGINT"
    assert stop.value.checkpoint == tmp_path / "checkpoints" / "11" and stop.value.checkpoint.is_dir()
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    run(tmp_path)
    assert records(tmp_path) == records(reference[0])
    events = [r["event"] for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "event"]
    assert events == ["resume"]  # the interrupt note is cut back with the records after step 11


def test_crash_then_resume_from_the_last_periodic_checkpoint_is_bit_identical(reference, tmp_path):
    def crash(record):
        if record["kind"] == "train" and record["step"] == 20:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path, on_record=crash)
    assert CheckpointStore(tmp_path / "checkpoints").latest_step() == 15
    run(tmp_path)
    assert records(tmp_path) == records(reference[0])


def test_stored_format_training_resumes_bit_identically_with_the_weights_on_the_grid(tmp_path):
    from unitscale import formats as F
    from unitscale.precision import Storage

    storage = Storage(params=F.FP16, first_moment=F.FP16, rounding="stochastic")

    def crash(record):
        if record["kind"] == "train" and record["step"] == 20:
            raise RuntimeError("simulated crash")

    whole = run(tmp_path / "whole", storage=storage)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tmp_path / "resumed", storage=storage, on_record=crash)
    saved = CheckpointStore(tmp_path / "resumed" / "checkpoints")
    assert saved.latest_step() == 15
    resumed = run(tmp_path / "resumed", storage=storage)
    assert records(tmp_path / "resumed") == records(tmp_path / "whole")
    for result in (whole, resumed):
        for w in jax.tree.leaves(nnx.state(result.model, nnx.Param)):
            np.testing.assert_array_equal(w, np.asarray(w).astype(np.float16).astype(np.float32))
    run(tmp_path / "fp32")
    assert records(tmp_path / "whole") != records(tmp_path / "fp32")  # the storage took part


def test_sigterm_from_outside_saves_and_exits_cleanly_with_143(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    child = subprocess.Popen([sys.executable, __file__, "long", str(tmp_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parents[2])
    try:
        first = json.loads(child.stdout.readline())  # training is under way
        child.send_signal(signal.SIGTERM)
        rest, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert first["kind"] == "train" and child.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "SIGTERM: stopped after step" in err
    stopped = int(err.split("stopped after step ")[1].split(";")[0])
    assert stopped >= first["step"]
    assert CheckpointStore(tmp_path / "checkpoints").steps() == [stopped]
    last = read_jsonl(tmp_path / "metrics.jsonl")[-1]
    assert last == {**last, "kind": "event", "event": "interrupted", "step": stopped, "signal": "SIGTERM"}


# ---------------------------------------------------------------------------------------------
# Non-finite losses
# ---------------------------------------------------------------------------------------------

def test_nan_loss_stops_the_run_and_keeps_the_last_good_step(reference, tmp_path):
    # Batch 10 is poisoned: step 11 fails, the loop notices at the record of step 12. Checkpoints
    # every 7 steps here, so step 10's is the one saved on halting; the reference has its own.
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf at step 11 .*last good step 10") as err:
        run(tmp_path, poison_at=10, checkpoint_every=7)
    assert err.value.step == 10
    template = _fresh_state()
    with CheckpointStore(tmp_path / "checkpoints") as store:
        assert store.steps() == [7, 10]
        kept, _ = store.restore(10, template)
    with CheckpointStore(reference[0] / "checkpoints") as store:
        expected, _ = store.restore(10, template)
    same = jax.tree.map(lambda a, b: np.array_equal(_raw(a), _raw(b)), kept, expected)
    assert jax.tree.all(same), same  # params, optimiser, RNG counters, metric sums: all of step 10
    assert int(kept.halted_at) == -1 and int(kept.step) == 10
    recs = read_jsonl(tmp_path / "metrics.jsonl")
    assert all(math.isfinite(r["loss"]) for r in recs if "loss" in r)
    assert max(r["step"] for r in recs if r["kind"] != "event") <= 10
    assert recs[-1]["event"] == "nonfinite"


def _raw(x):
    return jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x


def _fresh_state():
    """The step-0 state of the reference configuration: a template to restore checkpoints into."""
    from experiments.optimizers import make_optimizer
    from experiments.train_step import init_state

    cfg = config("unused")
    probe = data.lm_batch(TRAIN, 0, batch_size=B, seq_len=T)
    return init_state(TinyLM(VOCAB.size, 16), lm_loss, make_optimizer(cfg.optimizer, cfg.steps), probe)[1]


def halving_scaler(loss_fn, model, batch, scale):
    """A stand-in dynamic loss scaler: skips non-finite steps and halves its scale."""
    loss, totals, grads, _, finite = plain_value_and_grad(loss_fn, model, batch, scale)
    return loss, totals, grads, jnp.where(finite, scale, scale / 2), finite


def test_a_recipe_that_skips_nonfinite_steps_keeps_training(tmp_path):
    run(tmp_path, poison_at=5, value_and_grad=halving_scaler, recipe_state=jnp.float32(2.0 ** 15),
        skips_nonfinite=True, steps=12)
    train_recs = [r for r in records(tmp_path) if r["kind"] == "train"]
    assert [(r["steps"], r["skipped"]) for r in train_recs] == [(4, 0), (3, 1), (4, 0)]
    assert all(math.isfinite(r["loss"]) for r in train_recs)
    with CheckpointStore(tmp_path / "checkpoints") as store:
        meta = store.read_meta(12)
    assert meta["step"] == 12


# ---------------------------------------------------------------------------------------------
# Damaged files
# ---------------------------------------------------------------------------------------------

def _garble(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:] = bytes(255 - b for b in raw[len(raw) // 2:])
    path.write_bytes(bytes(raw))


# Orbax leaves an asyncio callback behind after a failed read, reported when its loop is collected.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["garbled arrays", "missing metadata", "truncated arrays", "arrays of step 20"])
def test_a_damaged_checkpoint_gives_a_clear_error(reference, tmp_path, damage):
    out = copy_run(reference[0], tmp_path / "run")
    latest = out / "checkpoints" / "24"
    arrays = [p for p in (latest / "state").rglob("*") if p.is_file() and "/d/" in str(p)]
    if damage == "arrays of step 20":  # readable, but not the numbers this checkpoint saved
        shutil.rmtree(latest / "state")
        shutil.copytree(out / "checkpoints" / "20" / "state", latest / "state")
    elif damage == "garbled arrays":
        for p in arrays:
            _garble(p)
    elif damage == "truncated arrays":
        for p in arrays:
            p.write_bytes(p.read_bytes()[:8])
    else:
        shutil.rmtree(latest / "meta")
    problem = "corrupt: leaf" if damage == "arrays of step 20" else "unreadable"
    with pytest.raises(CheckpointError, match=rf"checkpoint {latest} is {problem}.*delete {latest} "
                                              rf"to resume from the previous one \(step 20\)"):
        run(out)


def test_a_checkpoint_of_another_model_is_refused(reference, tmp_path):
    out = copy_run(reference[0], tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"holds a different training state.*float32\[53, 8\]. here, "
                                              r".*float32\[53, 16\]. there"):
        run(out, width=8)


def test_a_truncated_metrics_file_gives_a_clear_error(reference, tmp_path):
    out = copy_run(reference[0], tmp_path / "run")
    metrics = out / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[: metrics.stat().st_size // 2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ResumeError, match=r"metrics.jsonl has \d+ bytes, fewer than the \d+ it had when the "
                                              r"checkpoint of step 24 was saved"):
            run(out)


def test_a_torn_record_after_the_last_checkpoint_is_dropped_on_resume(reference, tmp_path):
    out = copy_run(reference[0], tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "24")  # the run stopped after step 20's checkpoint ...
    (out / "result.json").unlink()
    with open(out / "metrics.jsonl", "ab") as f:
        f.write(b'{"kind": "train", "step": 2')  # ... and crashed mid-append
    result = run(out, steps=24)
    assert (out / "metrics.jsonl").read_bytes().endswith(b"}\n")  # the torn record is gone from the file
    assert records(out) == records(reference[0])
    assert result.final["val"] == {**reference[1].final["val"]}


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("steps", 0, "steps must be an integer >= 1"),
    ("batch_size", 2.5, "batch_size must be an integer"),
    ("eval_batches", 0, "eval_batches must be an integer >= 1"),
    ("seed", -1, "seed must be an integer >= 0"),
    ("steps_per_call", 0, "steps_per_call must be an integer >= 1"),
    ("out_dir", "", "out_dir must be a non-empty string"),
    ("ipu_system", "tpu-v4", "ipu_system: unknown system 'tpu-v4'; valid systems: gc2-ipu"),
])
def test_train_config_rejects_bad_values_by_name(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_train_config_takes_an_ipu_system_or_alias_by_its_canonical_name():
    assert TrainConfig().ipu_system == "bow-ipu"
    assert TrainConfig(ipu_system="BOW").ipu_system == "bow-ipu"
    assert TrainConfig(ipu_system="bow-pod16").ipu_system == "bow-pod16"
    with pytest.raises(TypeError, match="ipu_system must be a system name, got int"):
        TrainConfig(ipu_system=4)


def test_the_cli_chooses_the_ipu_system_and_keeps_the_old_chip_option(capsys):
    cli = ExperimentCLI("prog", "test")
    assert cli.train_config(cli.parse([])).ipu_system == "bow-ipu"
    assert cli.train_config(cli.parse(["--ipu-system", "bow-pod16"])).ipu_system == "bow-pod16"
    assert cli.train_config(cli.parse(["--ipu-chip", "gc200"])).ipu_system == "gc200-ipu"
    assert cli.train_config(cli.parse_dict({"ipu_system": "c600"})).ipu_system == "c600"
    assert cli.train_config(cli.parse(["--system", "c600"])).ipu_system == "c600"
    assert "--system SYSTEM, --ipu-system SYSTEM, --ipu-chip SYSTEM" in cli.parser.format_help()
    with pytest.raises(SystemExit) as bad:
        cli.parse(["--ipu-system", "tpu-v4"])
    assert bad.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'tpu-v4'" in err and "'bow-pod64'" in err


def test_train_config_accepts_an_optimizer_dict():
    assert TrainConfig(optimizer={"name": "sgd", "lr": 0.1}).optimizer == OptimizerConfig(name="sgd", lr=0.1)


def test_eval_metrics_pools_sums_over_the_count():
    m = eval_metrics({"nll": 6.0, "correct": 3.0, "count": 4.0})
    assert m == {"loss": 1.5, "accuracy": 0.75, "perplexity": math.exp(1.5), "bits_per_token": 1.5 / math.log(2),
                 "tokens": 4}


def test_a_loss_without_a_count_is_refused(tmp_path):
    with pytest.raises(ValueError, match="totals a dict holding 'count'"):
        train(TinyLM(VOCAB.size, 8), lambda m, b: (lm_loss(m, b)[0], {}), config(tmp_path),
              batches=batches_fn())


# ---------------------------------------------------------------------------------------------
# Script mode for the sharding test
# ---------------------------------------------------------------------------------------------

def _sharded_main(out: Path) -> None:
    from experiments import parallel

    report = {"devices": jax.device_count()}
    try:
        parallel.check_batch_size(6, parallel.data_mesh())
    except ValueError as err:
        report["odd_batch_error"] = str(err)
    for n in (1, jax.device_count()):
        result = run(out / f"devices={n}", data_parallel=n)
        report[str(n)] = {"records": records(out / f"devices={n}"), "devices": result.record["devices"]}
    print(json.dumps(report))


def _long_main(out: Path) -> int:
    """A run far longer than the test waits, announcing each record on stdout, under ``run_main``."""
    from experiments.cli import run_main

    def announce(record):
        print(json.dumps({"kind": record["kind"], "step": record["step"]}), flush=True)

    return run_main(lambda argv: run(out, steps=100_000, checkpoint_every=50_000, on_record=announce), [])


if __name__ == "__main__":
    modes = {"sharded": _sharded_main, "long": _long_main}
    if len(sys.argv) != 3 or sys.argv[1] not in modes:
        raise SystemExit(f"usage: python test_train.py {{{','.join(modes)}}} OUT")
    sys.exit(modes[sys.argv[1]](Path(sys.argv[2])))
