"""experiments.stages: a subset of a stage runs in the whole stage's directories; --fresh clears only it."""

import pytest

from experiments.inputs import InputError
from experiments.stages import clear_stage, load_spec_table, run_stage

CONFIGS = [{"variant": v, "mixer": "attention", "norm": "pre", "seed": s, "lr": 1.0}
           for v in ("fp32-standard", "fp8-unit") for s in (0, 1)]


def _recording(seen):
    def fake_run(config, run_dir):
        seen.append(config["variant"])
        return {"status": "completed"}
    return fake_run


def test_variant_subset_runs_in_the_full_stage_directories(tmp_path):
    seen = []
    assert run_stage(tmp_path, CONFIGS, _recording(seen), workers=1, variants=["fp8-unit"], log=lambda s: None)
    assert seen == ["fp8-unit", "fp8-unit"]
    assert not list(tmp_path.rglob("error.txt"))  # the temporary markers are gone
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_dir())
    assert names == sorted(f"seed={s},variant=fp8-unit" for s in (0, 1))
    run_stage(tmp_path, CONFIGS, _recording(seen), workers=1, log=lambda s: None)
    assert seen == ["fp8-unit"] * 2 + ["fp32-standard"] * 2


def test_clearing_a_stage_deletes_only_the_selected_runs(tmp_path):
    seen, lines = [], []
    run_stage(tmp_path, CONFIGS, _recording(seen), workers=1, log=lambda s: None)
    removed = clear_stage(tmp_path, CONFIGS, ["fp8-unit"], log=lines.append)
    assert sorted(removed) == sorted(f"seed={s},variant=fp8-unit" for s in (0, 1))
    assert lines == [f"--fresh: deleted 2 run directories under {tmp_path}"]
    run_stage(tmp_path, CONFIGS, _recording(seen), workers=1, log=lambda s: None)
    assert seen[4:] == ["fp8-unit", "fp8-unit"]


@pytest.mark.parametrize("text, message", [("[full\nsteps = 1\n", "is not valid TOML"),
                                           ("[other]\nsteps = 1\n", "has no profile 'full'")])
def test_a_bad_spec_file_raises_an_input_error_naming_it(tmp_path, text, message):
    (tmp_path / "spec.toml").write_text(text)
    with pytest.raises(InputError, match=message):
        load_spec_table(tmp_path / "spec.toml", "full")
    with pytest.raises(InputError, match="is not a file"):
        load_spec_table(tmp_path / "missing.toml", "full")
