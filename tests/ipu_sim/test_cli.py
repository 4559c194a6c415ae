"""`python -m ipu_sim`: runs on a model config file, prints JSON that parses, lists systems, and
rejects bad input with a message naming it."""

import json
import subprocess
import sys

import pytest

from ipu_sim.__main__ import main

TINY = dict(kind="gpt", vocab=128, d_model=64, depth=4, heads=4, ffn_ratio=4, seq=32)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_cli_runs_as_a_module_and_prints_json(tiny_file):
    out = subprocess.run([sys.executable, "-m", "ipu_sim", tiny_file, "--system", "bow-pod16",
                          "--micro-batch", "2", "--pipeline", "1,3", "--replicas", "4",
                          "--grad-accum", "16", "--recompute", "--offload-optimizer", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["model"]["name"] == "tiny" and d["system"] == "bow-pod16"
    assert d["layers_per_ipu"] == [1, 3] and d["replicas"] == 4 and d["ipus_used"] == 8
    assert d["samples_per_step"] == 2 * 16 * 4 and d["seq"] == 32
    assert d["tokens_per_second"] == pytest.approx(d["samples_per_second"] * 32)
    assert d["recompute"] and d["offload_optimizer"] and d["fits"]
    assert len(d["ipus"]) == 2 and all(0 < i["utilisation"] < 1 for i in d["ipus"])


def test_cli_text_report_fills_the_system_by_default(tiny_file, capsys):
    assert main([tiny_file, "--system", "bow-m2000", "--pipeline", "2,2", "--grad-accum", "8",
                 "--precision", "fp8"]) == 0
    out = capsys.readouterr().out
    assert "x 2 replica(s) = 4 of 4 IPUs" in out and "samples/s" in out
    assert "bow has no FP8 AMP" in out and "fits" in out


def test_cli_lists_systems(capsys):
    assert main(["--system", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("bow-ipu", "c600", "gc200-m2000", "bow-m2000", "gc200-pod16", "bow-pod256"):
        assert f"\n{name} " in out


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--pipeline 3,7,7,7" in out and "bert-large" in out


@pytest.mark.parametrize("argv, message", [
    (["bert-huge"], "unknown model 'bert-huge'; presets: bert-base"),
    (["TINY", "--system", "bow-pod32"], "unknown system 'bow-pod32'"),
    (["TINY", "--system", "bow-m2000", "--pipeline", "1,1"],
     "pipeline 1,1 sums to 2 layers, but the model has 4"),
    (["TINY", "--system", "bow-m2000", "--pipeline", "2,2", "--replicas", "3"],
     "pipeline x replicas = 2 x 3 = 6 IPUs, but bow-m2000 has 4"),
    (["TINY", "--system", "bow-m2000", "--pipeline", "8"], "pipeline of 8 IPUs, but bow-m2000 has 4"),
    (["TINY", "--pipeline", "a,b"], "--pipeline must be layers per IPU like 3,7,7,7"),
    (["TINY", "--micro-batch", "0"], "micro_batch must be positive"),
    (["TINY", "--system", "c600", "--offload-optimizer"], "c600 has no streaming memory"),
    ([], "MODEL is required"),
])
def test_cli_rejects_bad_input_naming_it(argv, message, tiny_file, capsys):
    argv = [tiny_file if a == "TINY" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error:" in err and message in err


@pytest.mark.parametrize("count", ["0", "-1"])
def test_cli_pipeline_count_below_one_is_one_line_naming_the_flag(count, tiny_file, capsys):
    # 0 used to raise ZeroDivisionError, -1 to blame "replicas".
    assert main([tiny_file, "--pipeline", count]) == 2
    err = capsys.readouterr().err
    assert err == f"python -m ipu_sim: error: --pipeline N must be an IPU count >= 1, got '{count}'\n"


def test_cli_exit_status_says_when_a_configuration_does_not_fit(tmp_path, capsys):
    path = tmp_path / "wide.json"
    path.write_text(json.dumps(dict(kind="gpt", vocab=256, d_model=1024, depth=6, heads=8, seq=32)))
    assert main([str(path), "--system", "bow-m2000", "--pipeline", "5,1", "--replicas", "1",
                 "--precision", "fp32"]) == 1
    out = capsys.readouterr().out
    assert "DOES NOT FIT: IPU 0 (embeddings, layers 0-4, head) does not fit" in out


def test_cli_reads_one_memory_proportion_per_ipu_and_rejects_garbage(tiny_file, capsys):
    assert main([tiny_file, "--system", "bow-m2000", "--pipeline", "2,2",
                 "--available-memory-proportion", "0.3,0.2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert [i["available_memory_proportion"] for i in d["ipus"]] == [0.3, 0.2]
    assert main([tiny_file, "--available-memory-proportion", "lots"]) == 2
    assert "--available-memory-proportion must be a number or one per IPU" in capsys.readouterr().err


def test_cli_no_outline_compiles_every_layers_own_code(tiny_file, capsys):
    code = {}
    for flag in ([], ["--no-outline"]):
        assert main([tiny_file, "--system", "bow-ipu", "--json"] + flag) == 0
        d = json.loads(capsys.readouterr().out)
        code[bool(flag)] = d["ipus"][0]["memory"]["at_worst_tile"]["code"]
    assert code[True] > code[False]
