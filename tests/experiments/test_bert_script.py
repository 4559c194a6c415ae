"""experiments.bert: the grid and BERT-Base stages end to end on a reduced profile, the documented
result files, the summariser's problem report, and the masked-LM loss totals."""

import json
import math
import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import bert, bert_run, data
from experiments.variants import apply_variant
from experiments.results import read_json
from experiments.runner import RESULT_FILE

SCRIPT = bert  # run by the fixtures of tests/experiments/conftest.py
TINY = Path(__file__).parent / "data" / "tiny.txt"

# Two runs for the test budget: the grid stage with FP16 + dynamic loss scaling (standard), and the
# base stage (here at the tiny size) unit-scaled FP8.
SPEC = f"""
[t.train]
data = "{TINY}"
size = "tiny"
optimizer = "lamb"
lr = 5e-3
steps = 6
batch_size = 4
seq_len = 16
warmup = 1
log_every = 2
eval_every = 3
eval_batches = 2
final_eval_batches = 4
checkpoint_every = 3
no_ipu_estimate = true

[[t.grid]]
variant = ["fp16-standard-dynamic"]
seed = [0]

[t.base]
variant = "fp8-unit"
steps = 4
"""


def test_both_stages_run_and_write_the_documented_files(sweep):
    root, _, code, printed = sweep
    out = root / "out"
    assert code == 0, printed
    for name in (*bert.SCHEMA, "mlm_curves.png"):
        assert (out / name).is_file(), name
    results = read_json(out / "results.json")
    assert results["problems"] == [] and results["base_settings"]["variant"] == "fp8-unit"
    runs = results["runs"]
    assert [(r["stage"], r["variant"], r["status"], r["steps_done"]) for r in runs] == [
        ("grid", "fp16-standard-dynamic", "completed", 6), ("base", "fp8-unit", "completed", 4)]
    for r in runs:
        for split in ("val", "test"):
            assert 0 < r[f"{split}_loss"] < 10 and 0 < r[f"{split}_loss_ci95"] < 2
            assert 0 <= r[f"{split}_accuracy"] <= 1 and r[f"{split}_accuracy_ci95"] > 0
    table = results["table"]
    assert {(t["stage"], t["split"], t["metric"]) for t in table} == {
        (s, split, m) for s in ("grid", "base") for split in ("val", "test") for m in ("loss", "accuracy")}
    assert all(t["completed"] == 1 and t["ci_kind"] == "tokens" for t in table)
    text = (out / "table.md").read_text()
    assert "| grid | FP16 standard, dynamic loss scaling |" in text and "| base | FP8 unit-scaled" in text


def test_curves_hold_mlm_loss_and_accuracy(sweep):
    curves = read_json(sweep[0] / "out" / "curves.json")
    assert sorted(curves) == ["base/run", "grid/run"]
    grid, base = curves["grid/run"], curves["base/run"]
    assert grid["train"]["step"] == [2, 4, 6] and grid["val"]["step"] == [3, 6] and base["val"]["step"] == [3, 4]
    for c in (grid, base):
        assert all(0 <= a <= 1 for a in c["train"]["accuracy"] + c["val"]["accuracy"])
    assert all(0 < s <= 2.0**15 for s in grid["train"]["loss_scale"])
    assert "gradients_underflow" in base["train"]


def test_summariser_reports_a_missing_and_a_malformed_run(sweep, tmp_path, run_script):
    root, argv, _, _ = sweep
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    (runs / "base" / "run" / RESULT_FILE).unlink()
    saved = read_json(runs / "grid" / "run" / RESULT_FILE)
    saved["result"]["status"] = "exploded"
    (runs / "grid" / "run" / RESULT_FILE).write_text(json.dumps(saved))
    code, printed = run_script(["summarise", *argv[:4], "--out", str(tmp_path / "out"), "--runs", str(runs)])
    assert code == 1
    problems = {p["run"]: p for p in read_json(tmp_path / "out" / "results.json")["problems"]}
    assert problems["base/run"]["status"] == "missing" and "unfinished" in problems["base/run"]["problem"]
    assert problems["grid/run"]["status"] == "malformed" and "unknown status 'exploded'" in problems["grid/run"]["problem"]
    assert "0/2 runs finished" in printed


def test_loss_counts_only_masked_characters():
    vocab = data.build_char_vocab("abcdefgh", specials=data.MLM_SPECIALS)
    tokens = vocab.encode("abcdefgh" * 8)
    batch = data.mlm_batch(tokens, 0, vocab=vocab, batch_size=3, seq_len=12, seed=1, mask_prob=0.3)
    args = bert_run.make_cli().parse(["--size", "tiny"])
    model = bert_run.BERT(bert_run.model_config(args, vocab.size), rngs=nnx.Rngs(0))
    loss, totals = bert_run.bert_loss(model, batch)
    masked = np.asarray(batch.labels) != data.IGNORE_INDEX
    assert float(totals["count"]) == masked.sum() > 0
    per_row = masked.sum(axis=1)
    assert float(totals["wsq_n"]) == float(np.sum(per_row**2)) and float(totals["windows"]) == np.sum(per_row > 0)
    assert float(totals["nll"]) == pytest.approx(float(loss) * masked.sum(), rel=1e-5)
    assert math.isfinite(float(jnp.asarray(loss)))


def test_the_table_lists_each_stage_in_the_variant_tables_order_whatever_order_the_spec_ran():
    def cell(stage, variant, metric, mean):
        return {"stage": stage, "variant": variant, "split": "test", "metric": metric, "mean": mean, "ci95": 0.01,
                "ci_kind": "tokens", "completed": 1, "runs": 1, "diverged": 0, "diverged_at_steps": []}
    ran = [("grid", "fp16p-standard"), ("grid", "fp8-unit"), ("grid", "fp32-standard"), ("base", "fp8-unit-attn32")]
    table = [cell(s, v, m, 1.0 + i) for i, (s, v) in enumerate(ran) for m in ("loss", "accuracy")]
    lines = bert.markdown_table(table).splitlines()[2:]
    labels = [line.split(" | ")[:2] for line in lines]
    assert labels == [["| grid", "FP32 standard"], ["| grid", "FP8 unit-scaled, no scaling"],
                      ["| grid", "FP16 stored, standard, no loss scaling"], ["| base", "FP8 unit-scaled, α_attn 32"]]


def test_full_spec_pretrains_the_required_variants_and_a_bert_base():
    profile = bert.load_profile(bert.SPEC_PATH, "full")
    variants = {c["variant"] for c in bert.grid_configs(profile)}
    assert {"fp32-standard", "fp16-standard-dynamic", "fp16-unit", "fp8-unit"} <= variants
    base, = bert.base_configs(profile)
    assert base["variant"] == "fp8-unit-attn32" and base["size"] == "base" and 100 <= base["steps"] <= 1000
    args = bert_run.make_cli().parse(["--size", "base", "--variant", "fp8-unit"])
    config = bert_run.model_config(apply_variant(args), vocab_size=90)
    preset = bert_run.BERTConfig.PRESETS["bert-base"]
    assert (config.d_model, config.depth, config.heads, config.ffn_hidden) == (preset["d_model"], preset["depth"],
                                                                               preset["heads"], 3072)
    assert config.unit_scaled and config.precision.matmul_fwd is not None and config.norm_placement == "post"
    assert bert.load_profile(bert.SPEC_PATH, "quick").train["steps"] < profile.train["steps"]


def test_bad_spec_names_the_problem(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC.replace('variant = "fp8-unit"', 'variant = "fp4"'))
    with pytest.raises(ValueError, match="base.*known variant"):
        bert.load_profile(spec, "t")


def test_help_lists_the_options_and_every_command(capsys):
    for argv, options in ((["--help"], ("usage: python -m experiments.bert [run | summarise | train]", "--quick",
                                        "--out", "--runs", "--workers", "--stage", "--fresh", "--data")),
                          (["train", "--help"], ("--variant", "--size", "--mask-prob", "--precision", "--scaling",
                                                 "--fresh", "--data"))):
        with pytest.raises(SystemExit) as done:
            bert.main(argv)
        assert done.value.code == 0
        printed = capsys.readouterr().out
        assert all(o in printed for o in options), printed


def test_a_too_long_sequence_ends_in_one_line_before_the_model_is_built(tmp_path, capsys):
    code = bert.main(["train", "--data", str(TINY), "--size", "tiny", "--seq-len", "4000", "--out", str(tmp_path / "o"),
                      "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--seq-len 4000: the training split of" in err and err.strip().count("\n") == 0
    assert not (tmp_path / "o").exists()
