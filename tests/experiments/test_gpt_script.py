"""experiments.gpt end to end: the --quick path (fewer steps) on the shipped tiny text."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from experiments import data, gpt
from experiments.results import read_jsonl

TINY = Path(__file__).parent / "data" / "tiny.txt"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt")
    argv = ["--quick", "--steps", "12", "--warmup", "2", "--log-every", "3", "--eval-every", "6",
            "--data", str(TINY), "--out", str(out), "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = gpt.main(argv)
    return out, result, printed.getvalue()


def test_quick_run_prints_the_loss_going_down_speed_and_ipu_step_time(quick_run):
    out, result, printed = quick_run
    records = read_jsonl(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 4 and all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.2
    vals = [r["loss"] for r in records if r["kind"] == "eval" and r["split"] == "val"]
    assert vals[-1] < vals[0]
    lines = printed.splitlines()
    pattern = re.compile(r"step \d+/12 \| train loss ([\d.]+) \| val loss")
    shown = [float(m.group(1)) for line in lines if (m := pattern.match(line))]
    assert len(shown) == 2 and shown[1] < shown[0], printed
    final = lines[-1]
    assert re.match(r"final: val [\d.]+ bpc, test [\d.]+ bpc \| this machine [\d.]+k? tok/s \| "
                    r"one Bow IPU [\d.]+ ms/step = [\d.]+[kMG]? tok/s$", final), final
    assert final == gpt.summary(result)


def test_quick_run_writes_result_vocab_and_checkpoint(quick_run):
    out, result, printed = quick_run
    saved = json.loads((out / "result.json").read_text())
    assert saved["status"] == "completed" and saved["steps"] == 12
    model = saved["describe"]["model"]
    assert model["unit_scaled"] is True and model["d_model"] == gpt.SIZES["tiny"]["d_model"]
    assert saved["config"]["optimizer"]["lr"] == gpt.LEARNING_RATES[True]
    assert saved["config"]["seq_len"] == gpt.QUICK["seq_len"] == model["max_len"]
    vocab = data.load_vocab(out / "vocab.json")
    assert vocab.size == model["vocab_size"]
    assert saved["final"]["val"]["tokens"] == len(vocab.encode(data.load_corpus(str(TINY)).validation)) - 1
    assert saved["ipu"]["chip"] == "bow" and saved["ipu"]["step_time_s"] > 0
    assert (out / "checkpoints" / "12").is_dir()


def test_help_describes_the_options(capsys):
    with pytest.raises(SystemExit) as done:
        gpt.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--quick", "--out", "--size", "--precision", "--loss-scale", "--standard", "--steps", "--lr"):
        assert option in text


def test_standard_model_and_precision_reach_the_config():
    cli = gpt.make_cli()
    args, config = gpt._resolve(cli, cli.parse(["--standard", "--precision", "bf16", "--size", "small"]))
    model = gpt.model_config(args, vocab_size=70)
    assert not model.unit_scaled and model.dtype == "bfloat16" and model.d_model == gpt.SIZES["small"]["d_model"]
    assert config.optimizer.lr == gpt.LEARNING_RATES[False]
