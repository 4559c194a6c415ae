"""experiments.gpt end to end: the --quick path (fewer steps) on the shipped tiny text."""

import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from experiments import data, gpt
from experiments.cli import SMOKE_TEST, run_main
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
    assert lines[0] == lines[-1].split(" Output in")[0] == SMOKE_TEST and lines[-1].endswith(f"Output in {out}.")
    final = lines[-2]
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
    for option in ("--quick", "--out", "--size", "--precision", "--scaling", "--loss-scale", "--standard", "--steps",
                   "--lr", "--fresh", "--data", "--system"):
        assert option in text


def test_standard_model_and_precision_reach_the_config():
    cli = gpt.make_cli()
    args, config = gpt.resolve(cli, cli.parse(["--standard", "--precision", "bf16", "--size", "small"]))
    model = gpt.model_config(args, vocab_size=70)
    assert not model.unit_scaled and model.dtype == "bfloat16" and model.d_model == gpt.SIZES["small"]["d_model"]
    assert config.optimizer.lr == gpt.LEARNING_RATES[False]


def test_quick_writes_outside_the_repository_by_default():
    out = gpt.make_cli().parse(["--quick"]).out
    repo = Path(gpt.__file__).resolve().parents[1]
    assert not Path(out).resolve().is_relative_to(repo), out


@pytest.mark.parametrize("argv, message", [
    (["--seq-len", "3000"], "--seq-len 3000: the training split of"),
    (["--data", "no-such-corpus.txt"], "--data no-such-corpus.txt: no such file or directory"),
    (["--out", "FILE"], "--out FILE: is a file"),
])
def test_bad_input_ends_in_one_line_and_loses_nothing(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("kept")
    argv = [a.replace("FILE", str(tmp_path / "FILE")) for a in argv]
    options = {"--data": str(TINY), "--out": str(tmp_path / "run"), **dict(zip(argv[::2], argv[1::2]))}
    try:
        code = run_main(gpt.main, [*[x for kv in options.items() for x in kv], "--quick", "--no-progress"])
    except SystemExit as stop:  # an option the parser (or resolve) rejects
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and message.replace("FILE", str(tmp_path / "FILE")) in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "run").exists() and (tmp_path / "FILE").read_text() == "kept"


def test_a_completed_run_run_again_says_so_and_changes_nothing(quick_run, capsys):
    out, result, _ = quick_run
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = ["--quick", "--steps", "12", "--warmup", "2", "--log-every", "3", "--eval-every", "6",
            "--data", str(TINY), "--out", str(out), "--no-progress"]
    again = gpt.main(argv)
    printed = capsys.readouterr().out
    assert "complete" in printed and "nothing to do" in printed and "nan" not in printed, printed
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert again.final == json.loads(json.dumps(result.final)) and gpt.summary(again) == gpt.summary(result)
