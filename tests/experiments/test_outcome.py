"""experiments.outcome: what a sweep run reports -- a diverged run keeps its step and last good checkpoint."""

import math

from experiments.outcome import run_outcome
from experiments.results import append_jsonl
from experiments.stages import RunRecord
from experiments.tables import aggregate, format_cell
from experiments.train import NonFiniteLossError


def test_a_diverged_run_is_recorded_with_its_step_and_keeps_its_last_good_checkpoint(tmp_path):
    out = tmp_path / "train"
    for step, loss in ((2, 3.0), (4, 2.5)):
        append_jsonl(out / "metrics.jsonl", {"kind": "train", "step": step, "loss": loss, "skipped": 0})
    (out / "checkpoints" / "4").mkdir(parents=True)

    def fit():
        raise NonFiniteLossError("nan at step 6", 5, out / "checkpoints" / "4")

    result = run_outcome(fit, out)
    assert result["status"] == "diverged" and result["diverged_at_step"] == 6 and result["steps_done"] == 4
    assert math.isnan(result["test"]["bits"]) and result["curves"]["train"]["loss"] == [3.0, 2.5]
    assert (out / "checkpoints" / "4").is_dir()
    record = RunRecord("r", {"mixer": "a", "norm": "pre", "variant": "fp16-standard", "seed": 0}, "diverged", result)
    row = aggregate([record])[0]
    assert (row["diverged"], row["completed"], row["diverged_at_steps"]) == (1, 0, [6])
    assert format_cell(row) == "diverged @ step 6"
