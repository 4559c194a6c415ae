"""paper.build end to end on fixture result directories: a complete one gives every section with the
fixture's numbers; a missing or malformed result file stops the build loudly (exit 1, the file and
the problem named, no paper written) unless --allow-missing names its section; quick builds are
marked; the discussion's words follow the confidence intervals."""

import json
import math
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # `paper` is run from the repo root, not installed
    sys.path.insert(0, str(REPO))

from paper import build as paper_build  # noqa: E402
from paper import stats  # noqa: E402
from paper.files import ResultError, get  # noqa: E402
from paper.sections import EXPERIMENTS  # noqa: E402

PNG = (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f"
       b"\x15\xc4\x89\x00\x00\x00\rIDATx\x9cc\xf8\x0f\x00\x00\x01\x01\x00\x05\x18\xd8N\x00\x00\x00"
       b"\x00IEND\xaeB`\x82")
# Test-set BPC per variant and seed: FP16 standard clearly worse, unit-scaled FP16 within 0.002 of
# FP32, FP8 standard diverged in every run.
VARIANTS = {"fp32-standard": ("FP32 standard", "fp32", "none", False),
            "fp32-unit": ("FP32 unit-scaled", "fp32", "none", True),
            "fp16-standard": ("FP16 stored, standard, no loss scaling", "fp16_paper", "none", False),
            "fp16-unit": ("FP16 stored, unit-scaled, no loss scaling", "fp16_paper", "none", True),
            "fp8-standard": ("FP8 standard, no scaling", "fp8", "none", False)}
CHARLM_BPC = {"fp32-standard": [1.600, 1.602, 1.604], "fp32-unit": [1.590, 1.591, 1.592],
              "fp16-standard": [1.900, 1.910, 1.920], "fp16-unit": [1.601, 1.602, 1.603], "fp8-standard": []}
BERT_LOSS = {"fp32-standard": [2.50, 2.52], "fp16-unit": [2.51, 2.53]}


def _variants(names):
    return {n: {"label": VARIANTS[n][0], "options": dict(precision=VARIANTS[n][1], loss_scale=VARIANTS[n][2],
                                                         unit_scaled=VARIANTS[n][3])} for n in names}


def _row(values, **where):
    return dict(where, values=values, diverged=3 - len(values) if not values else 0, runs=max(len(values), 3),
                ci95=0.01, ci_kind="seeds" if len(values) > 1 else None, completed=len(values))


def _curves(cells, **config):
    return {f"{v}/seed={s}": {"config": dict(config, variant=v, seed=s), "status": "completed",
                              "diverged_at_step": None if values else 50,
                              "val": {"step": [0, 50, 100], "bits": [6.0, 3.0, values[s] if values else None],
                                      "loss": [4.0, 3.0, 2.5]}}
            for v, values in cells.items() for s in range(max(len(values), 1))}


def _charlm(root: Path):
    table = [_row(values, mixer="attention", norm="pre", variant=v, split=split, metric="bits")
             for v, values in CHARLM_BPC.items() for split in ("val", "test")]
    table.append(_row([1.7], mixer="conv", norm="post", variant="fp16-standard", split="test", metric="bits"))
    table[-1].update(ci95=0.02, ci_kind="tokens")
    _json(root / "charlm" / "results.json",
          {"experiment": "charlm", "profile": "full", "settings": {"steps": 100, "d_model": 32},
           "row_settings": {"attention/pre": {"steps": 400, "d_model": 128}},
           "variants": _variants(CHARLM_BPC), "learning_rates": {"standard": 0.003, "unit": 0.03},
           "table": table, "problems": [], "runs": []})
    _json(root / "charlm" / "curves.json", _curves(CHARLM_BPC, mixer="attention", norm="pre"))


def _bert(root: Path):
    table = [_row(values if metric == "loss" else [0.4] * len(values), stage="grid", size="tiny", variant=v,
                  split="test", metric=metric)
             for v, values in BERT_LOSS.items() for metric in ("loss", "accuracy")]
    _json(root / "bert" / "results.json",
          {"profile": "full", "settings": {"steps": 50}, "base_settings": {}, "variants": _variants(BERT_LOSS),
           "table": table, "problems": []})
    curves = _curves(BERT_LOSS, size="tiny")
    _json(root / "bert" / "curves.json", {f"grid/{k}": v for k, v in curves.items()})


def _umup(root: Path):
    def optimum(width, lr):
        return dict(width=width, best_log2_lr=lr, best_val_loss=2.0, refined_log2_lr=lr + 0.25,
                    bracketed=True, runs=3, diverged=0)

    groups = {"sp/fp32": {"optima": [optimum(64, -8), optimum(256, -11)],
                          "transfer": dict(widths=[64, 256], spread_binades=3.0, slope_per_doubling=-1.5,
                                           transfer_regret=0.4)},
              "umup/fp32": {"optima": [optimum(64, -2), optimum(256, -2)],
                            "transfer": dict(widths=[64, 256], spread_binades=0.0, slope_per_doubling=0.0,
                                             transfer_regret=0.0)}}
    _json(root / "umup" / "summary.json", {"command": "python -m experiments.umup", "groups": groups})
    lines = ["parametrisation,precision,width,log2_lr,val_loss,train_loss,seconds"]
    lines += [f"{p},fp32,{w},{lr},2.0,2.0,1.0" for p in ("sp", "umup") for w in (64, 256)
              for lr in (-12, -10, -8, -6, -4, -2, 0)]
    (root / "umup" / "runs.csv").write_text("\n".join(lines) + "\n")
    (root / "umup" / "lr_sweep.png").write_bytes(PNG)


def _scales(root: Path):
    def model(spread, under):
        cov = {"underflow": {"tensors_over_1pct": under, "worst_share": 0.5, "worst": "x"},
               "overflow": {"tensors_over_1pct": 1, "worst_share": 0.5, "worst": "y"}}
        return {"loss": 4.0, "records": 4, "coverage": {f: cov for f in ("FP16", "E4M3FN")},
                "median_abs_log2_std": {"all": spread, "forward": spread / 2, "backward": spread * 2}}

    options = dict(model="gpt", preset="tiny", precision="fp32", batch_size=2, seq_len=16, seed=0,
                   stat="rms", formats=["FP16", "E4M3FN"], tensor="ffn_up", phase="backward", quick=False)
    _json(root / "scales" / "summary.json", {"options": options, "data": "tiny text",
                                              "models": {"standard": model(7.25, 31),
                                                         "unit-scaled": model(0.75, 3)}})
    for stem, scale in (("standard", 1e-5), ("unit_scaled", 1.0)):
        rows = ["index,phase,kind,label,rms"] + [f"{i},{ph},activation,t{i},{scale * (i + 1)}"
                                                 for i, ph in enumerate(["forward", "forward", "backward", "backward"])]
        (root / "scales" / f"{stem}.csv").write_text("\n".join(rows) + "\n")
    (root / "scales" / "histogram.png").write_bytes(PNG)


def _ipu(root: Path):
    def row(precision, samples):
        return dict(model="bert-base", system="bow-pod16", chip="bow", precision=precision, fp8_unit=False,
                    layers_per_ipu=[0, 4, 4, 4], replicas=4, samples_per_s=samples, tokens_per_s=samples * 128,
                    fits=True, peak_tile_kib=600.0, sram_kib=624.0, config_source="published",
                    assumed="fixture", micro_batch=32, grad_accum=512, seq=128)

    comparison = dict(model="bert-base", system="bow-pod16", fp8_unit=False, throughput_ratio=1.5,
                      peak_tile_ratio=1.0, fp16_fits=True, fp8_fits=True, verdict="fixture verdict")
    _json(root / "ipu" / "ipu_table.json", {"quick": False, "command": "python -m experiments.ipu",
                                            "rows": [row("fp16", 12345.6), row("fp8", 18518.4)],
                                            "comparisons": [comparison]})
    (root / "ipu" / "ipu_table.png").write_bytes(PNG)


SHIFT_BPC = {("fp32-standard", 0): 2.00, ("fp32-standard", 12): 2.00, ("fp32-unit", 0): 2.10, ("fp32-unit", 12): 2.10,
             ("fp16-standard", 0): 2.01, ("fp16-standard", 12): 2.60, ("fp16-standard-static", 0): 2.00,
             ("fp16-standard-static", 12): 2.02, ("fp16-unit", 0): 2.11, ("fp16-unit", 12): 2.11}


def _seeds(variant: str, bpc: float) -> dict[str, float]:
    """Two seeds whose paired differences from FP32 spread by 0.02 (a t-interval of +-0.127)."""
    spread = 0.01 if variant.startswith("fp32") else 0.02
    return {"0": bpc - spread, "1": bpc + spread}


def _shift(root: Path, bpc=SHIFT_BPC):
    labels = {"fp32-standard": "FP32 standard", "fp32-unit": "FP32 unit-scaled",
              "fp16-standard": "FP16 standard, no loss scaling", "fp16-standard-static": "FP16 standard, static",
              "fp16-unit": "FP16 unit-scaled, no loss scaling"}
    cells = [dict(variant=v, label=labels[v], reference="fp32-unit" if "unit" in v else "fp32-standard", shift=k,
                  test_bits=b, test_bits_ci95=0.03, runs=2, diverged=0, flushed=0.4 if b > 2.5 else 0.001,
                  seeds=_seeds(v, b), seeds_ci95={"0": 0.02, "1": 0.02}, verdict="fixture")
             for (v, k), b in bpc.items()]
    profile = {"name": "full", "train": {"steps": 500}, "variants": list(labels), "shifts": [0, 12],
               "fp32_shifts": [0, 12], "seeds": [0, 1]}
    _json(root / "shift" / "summary.json", {"profile": profile, "cells": cells, "problems": [],
                                            "fp32_check": {"max_difference_bits": 1e-7, "pairs_checked": 4}})
    (root / "shift" / "shift.png").write_bytes(PNG)


def _json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def make_results(root: Path) -> Path:
    for write in (_charlm, _shift, _bert, _umup, _scales, _ipu):
        write(root)
    return root


def run(results: Path, out: Path, *extra: str) -> int:
    return paper_build.main(["--results", str(results), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def complete(tmp_path_factory):
    root = tmp_path_factory.mktemp("complete")
    results = make_results(root / "results")
    out = root / "paper" / "paper.md"
    assert run(results, out) == 0
    return results, out, out.read_text()


def test_complete_results_give_every_section_and_no_missing_box(complete):
    _, out, text = complete
    for module in EXPERIMENTS:
        assert f". {module.TITLE}\n" in text
    for title in ("Introduction", "Method", "Experimental setup", "Discussion"):
        assert f". {title}" in text
    assert "MISSING" not in text and "INCOMPLETE" not in text and "QUICK" not in text
    for name in ("charlm_curves.png", "bert_curves.png", "scale_distribution.png", "scale_histogram.png",
                 "ipu_table.png", "umup_lr_sweep.png"):
        assert (out.parent / "figures" / name).is_file() and f"(figures/{name})" in text


def test_tables_hold_the_fixture_numbers(complete):
    _, _, text = complete
    fp16 = stats.Sample.of(CHARLM_BPC["fp16-standard"])
    assert f"| {fp16.text()} [paper 1.661] |" in text and fp16.text().startswith("1.910 ± ")
    assert "| diverged (3/3) |" in text and "| 1.700 ± 0.020 (n=1) |" in text
    assert "| BERT tiny | 2.510 ± 0.127 (n=2) | 2.520 ± 0.127 (n=2) |" in text  # t(0.975, 1) = 12.71
    assert "**consistent**: BERT tiny, test MLM loss of FP16 stored, unit-scaled" in text
    assert "12,345.6" in text and "18,518.4" in text and "1.50" in text  # IPU table
    assert "7.25 / 3.62 / 14.50" in text and "0.75 / 0.38 / 1.50" in text and "31 / 1" in text  # scales
    assert f"{2 ** -1.75:.3g} (-1.75) / 2.000" in text  # u-muP optimum at width 64
    assert "steps 100" in text and "python -m experiments.umup" in text  # setup from the configs
    assert "standard 0.003, unit 0.03" in text
    assert "d_model 32, steps 100; attention pre-norm instead: d_model 128, steps 400" in text  # a row's budget


def test_discussion_words_follow_the_intervals(complete):
    _, _, text = complete
    discussion = text[text.index(". Discussion"):]
    d = stats.difference(stats.Sample.of(CHARLM_BPC["fp16-standard"]), stats.Sample.of(CHARLM_BPC["fp32-standard"]))
    assert d.low > 0
    assert f"**reproduced**: attention pre-norm, FP16 stored, standard, no loss scaling against FP32 standard: " \
           f"{d.estimate:.3f} bpc worse (95% CI [{d.low:+.3f}, {d.high:+.3f}] over seeds) (paper: +0.079 bpc)" in text
    assert "FP8 standard, no scaling against FP32 standard: worse: every run diverged" in discussion
    assert "FP16 stored, unit-scaled, no loss scaling against FP32 unit-scaled: 0.011 bpc worse" in discussion
    assert "[inconclusive]" in discussion
    assert "sit closer to unit scale" in discussion and "0.75 against 7.25" in discussion
    assert "u-μP fp32: the optimum moves 0.00 binades" in discussion and "within one grid step" in discussion
    assert "SP fp32: the optimum moves 3.00 binades" in discussion and "more than one grid step" in discussion
    assert "u-μP's optimum moves less than SP's across these widths (0.00 vs 3.00 binades)" in discussion


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.KEY)
def test_missing_result_file_fails_naming_the_file(tmp_path, module, capsys):
    results = make_results(tmp_path / "results")
    victim = next(p for p in sorted((results / module.KEY).iterdir()) if p.suffix in (".json", ".png"))
    victim.unlink()
    out = tmp_path / "paper" / "paper.md"
    assert run(results, out) == 1
    err = capsys.readouterr().err
    assert str(victim) in err and "missing" in err and f"--allow-missing {module.KEY}" in err
    assert not out.exists()


@pytest.mark.parametrize("damage, problem", [
    (lambda d: "{\"table\": [", "malformed JSON"),
    (lambda d: json.dumps({**d, "table": "many"}), "'table' must be a list, got a string"),
    (lambda d: json.dumps({k: v for k, v in d.items() if k != "profile"}), "missing key 'profile'"),
    (lambda d: json.dumps({**d, "table": [{**d["table"][1], "ci95": "low"}]}), "'ci95' must be a number"),
    (lambda d: json.dumps({**d, "table": [{**d["table"][1], "values": [1.5, "x"]}]}), "values[1] must be a number"),
    (lambda d: json.dumps({**d, "table": [{**d["table"][1], "variant": "fp4"}]}), "'fp4', which 'variants' does not"),
], ids=["truncated", "wrong-type", "missing-key", "bad-number", "bad-value", "unknown-variant"])
def test_malformed_result_file_fails_naming_file_and_problem(tmp_path, damage, problem, capsys):
    results = make_results(tmp_path / "results")
    path = results / "charlm" / "results.json"
    path.write_text(damage(json.loads(path.read_text())))
    assert run(results, tmp_path / "paper.md") == 1
    err = capsys.readouterr().err
    assert str(path) in err and problem in err


def test_malformed_csv_fails_naming_line(tmp_path, capsys):
    results = make_results(tmp_path / "results")
    path = results / "scales" / "unit_scaled.csv"
    path.write_text(path.read_text().replace(",1.0\n", ",one\n", 1))
    assert run(results, tmp_path / "paper.md") == 1
    err = capsys.readouterr().err
    assert str(path) in err and "line 2" in err and "'one'" in err


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    results = make_results(tmp_path / "results")
    (results / "bert" / "results.json").unlink()
    (results / "umup" / "runs.csv").write_text("width\n1\n")
    assert run(results, tmp_path / "paper.md", "--allow-missing", "charlm") == 1
    err = capsys.readouterr().err
    assert "section 'bert'" in err and "section 'umup'" in err and "runs.csv" in err
    assert "--allow-missing bert --allow-missing umup" in err and "section 'charlm'" not in err


def test_failed_build_keeps_the_previous_paper(tmp_path):
    results = make_results(tmp_path / "results")
    out = tmp_path / "paper" / "paper.md"
    assert run(results, out) == 0
    before = out.read_text()
    (results / "ipu" / "ipu_table.json").write_text("not json")
    assert run(results, out) == 1
    assert out.read_text() == before and (out.parent / "figures" / "ipu_table.png").is_file()


def test_allow_missing_puts_a_visible_box_in_that_section_only(tmp_path):
    results = make_results(tmp_path / "results")
    (results / "bert" / "results.json").unlink()
    out = tmp_path / "paper.md"
    assert run(results, out, "--allow-missing", "bert") == 0
    text = out.read_text()
    bert_section = text[text.index(". BERT pre-training"):text.index(". Scale analysis")]
    assert "MISSING RESULTS" in bert_section and "bert/results.json" in bert_section
    assert text.count("MISSING RESULTS") == 1 and "INCOMPLETE: results missing for bert" in text
    assert "BERT pre-training: **results missing**" in text


def test_allow_missing_rejects_unknown_section(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, tmp_path / "paper.md", "--allow-missing", "nonsense")
    assert stop.value.code == 2 and "--allow-missing" in capsys.readouterr().err


def test_quick_build_is_marked_at_the_top_and_in_every_caption(tmp_path):
    results = make_results(tmp_path / "results")
    out = tmp_path / "paper.md"
    paper_build.build(results, out, quick=True, allow_missing=set(), command="test")
    text = out.read_text()
    assert text.splitlines()[2].startswith("> **QUICK BUILD")
    captions = [ln for ln in text.splitlines() if ln.startswith(("**Table", "**Figure"))]
    assert len(captions) >= 9 and all("[QUICK BUILD -- not results]" in c for c in captions)


def test_quick_results_in_a_full_build_are_flagged(tmp_path):
    results = make_results(tmp_path / "results")
    path = results / "ipu" / "ipu_table.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "quick": True}))
    out = tmp_path / "paper.md"
    assert run(results, out) == 0
    text = out.read_text()
    ipu = text[text.index(". What FP8 buys"):text.index(". u-μP")]
    assert "QUICK RESULTS" in ipu and text.count("QUICK RESULTS") == 1


def test_quick_with_an_absent_script_fails_or_boxes(tmp_path, monkeypatch):
    monkeypatch.setattr(paper_build, "QUICK_COMMANDS", {"bert": ["experiments.no_such_script", "--quick"]})
    with pytest.raises(paper_build.BuildError, match="experiments.no_such_script does not exist"):
        paper_build.run_quick(tmp_path, set(), log=lambda s: None)
    unavailable, failed = paper_build.run_quick(tmp_path, {"bert"}, log=lambda s: None)
    assert "does not exist" in unavailable["bert"] and not failed
    results = make_results(tmp_path / "results")
    out = tmp_path / "paper.md"
    paper_build.build(results, out, quick=True, allow_missing={"bert"}, command="test", unavailable=unavailable)
    text = out.read_text()
    assert "MISSING RESULTS" in text and "experiments.no_such_script does not exist" in text


def test_a_failed_quick_script_is_flagged_or_named_in_the_error(tmp_path):
    results = make_results(tmp_path / "results")
    failed = {"ipu": "python -m experiments.ipu --quick exited with status 1:\nboom"}
    out = tmp_path / "paper.md"
    paper_build.build(results, out, quick=True, allow_missing=set(), command="test", failed=failed)
    ipu = out.read_text().split(". What FP8 buys")[1]
    assert "SCRIPT FAILED" in ipu and "> boom" in ipu
    (results / "ipu" / "ipu_table.json").unlink()
    with pytest.raises(paper_build.BuildError, match=r"(?s)ipu_table.json: missing.*quick script failed.*boom"):
        paper_build.build(results, out, quick=True, allow_missing=set(), command="test", failed=failed)


def test_get_names_key_and_type():
    with pytest.raises(ResultError, match=r"f.json: 'a.b' must be an integer, got a bool"):
        get({"a": {"b": True}}, "a.b", "f.json", int)
    with pytest.raises(ResultError, match=r"f.json: a must be a JSON object, got a list"):
        get({"a": [1]}, "a.b", "f.json", int)
    assert get({"a": 1}, "a", "f.json", float) == 1.0 and isinstance(get({"a": 1}, "a", "f.json", float), float)


values = st.lists(st.floats(0.5, 3.0, allow_nan=False), min_size=1, max_size=6)


@settings(max_examples=200)
@given(values, values)
def test_comparison_wording_never_exceeds_the_interval(a, b):
    d = stats.difference(stats.Sample.of(a), stats.Sample.of(b))
    text = stats.compared(d, "bpc", "worse", "better")
    if len(a) < 2 or len(b) < 2:
        assert not d.has_interval and "no confidence interval" in text
    elif d.low <= 0 <= d.high:
        assert text.startswith("indistinguishable: ") and stats.judge_higher(d) == stats.NOT_REPRODUCED
    else:
        word = "worse" if d.low > 0 else "better"
        assert f" bpc {word} (95% CI" in text
        assert stats.judge_higher(d) == (stats.REPRODUCED if d.low > 0 else stats.CONTRADICTED)
    if d.has_interval and stats.judge_matches(d, 0.01) == stats.REPRODUCED:
        assert -0.01 <= d.low <= d.high <= 0.01
    if d.has_interval and stats.judge_matches(d, 0.01) == stats.BETTER:
        assert d.high < -0.01
    if d.has_interval and stats.judge_matches(d, 0.01) == stats.CONTRADICTED:
        assert d.low > 0.01


def test_sample_interval_is_student_t():
    s = stats.Sample.of([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.sd == 1.0
    assert s.half_width == pytest.approx(4.302652729749462 / math.sqrt(3))
    assert stats.Sample.of([1.0]).half_width is None and stats.Sample.of([1.0], run_ci=0.5).half_width == 0.5
    assert stats.Sample.of([math.nan, math.inf]).text() == "diverged (2/2)"
    assert stats.Sample.of([1.0, math.nan]).text() == "1.000 (n=1, 1/2 diverged)"


def test_difference_without_seeds_combines_the_evaluation_intervals():
    d = stats.difference(stats.Sample.of([1.5], run_ci=0.03), stats.Sample.of([1.4], run_ci=0.04))
    assert d.kind == "evaluation" and d.low == pytest.approx(0.05) and d.high == pytest.approx(0.15)
    assert "evaluation noise only" in stats.compared(d, "bpc", "worse", "better")
    gone = stats.difference(stats.Sample.of([math.nan]), stats.Sample.of([1.0, 1.1]))
    assert stats.judge_higher(gone) == stats.REPRODUCED and stats.judge_matches(gone, 0.01) == stats.CONTRADICTED


def test_umup_section_reports_the_best_loss_beside_the_optimum():
    from paper.sections.umup import loss_comparisons

    def group(losses):
        return {"optima": [{"width": w, "best_val_loss": v} for w, v in losses.items()]}

    groups = {"sp/fp32": group({32: 2.4, 64: 2.3}), "umup/fp32": group({32: 2.5, 64: 2.25, 128: 2.2}),
              "umup/fp8": group({64: 2.47})}
    (line,) = loss_comparisons(groups)  # no BF16 group: no FP8 comparison
    assert line.startswith("Best validation loss, u-μP minus SP") and "+0.100 at width 32" in line
    assert "-0.050 at width 64" in line and "128" not in line


def test_shift_section_shows_the_finding_where_the_intervals_say_so(complete):
    _, _, paper = complete
    assert "| FP16 standard, no loss scaling | 2.010 ± 0.030 | 2.600 ± 0.030 ▲ |" in paper
    assert "At shift k = 12" in paper and "degraded beyond its interval at k in [12]" in paper


def test_the_discussion_opens_with_the_central_finding_from_table_1_and_the_shift(complete):
    _, _, paper = complete
    discussion = paper[paper.index(". Discussion"):]
    central = discussion[discussion.index("**The paper's central finding.**"):].split("\n")[0]
    assert "In Table 1, attention pre-norm, FP16 stored, standard, no loss scaling against FP32 standard" in central
    assert "[reproduced]" in central and "without loss scaling fails too, at k in [12]." in central


def test_the_central_finding_says_when_only_smaller_gradients_show_it():
    from paper.sections.discussion import central_paragraph
    cell = {"finding": "fp16-degrades", "variant": "attention pre-norm", "text": "T", "outcome": "not reproduced"}
    text = central_paragraph({"findings": [cell]}, {"shown_at": [6, 8]})
    assert text.startswith("In Table 1, T [not reproduced].") and "at k in [6, 8]" in text
    assert "the failure appears once that model's gradients are 2^k times smaller" in text
    assert "No backward shift" in central_paragraph({"findings": [cell]}, {"shown_at": []})
    assert central_paragraph({"findings": [{**cell, "variant": "conv pre-norm"}]}, {"shown_at": [6]}) is None


def test_shift_section_says_when_the_finding_is_not_shown(tmp_path):
    results = make_results(tmp_path / "results")
    _shift(results, {**SHIFT_BPC, ("fp16-unit", 12): 2.30})  # unit scaling degraded too
    assert run(results, tmp_path / "paper.md") == 0
    paper = (tmp_path / "paper.md").read_text()
    assert "the paper's central finding is not shown here" in paper
    assert "| FP16 unit-scaled, no loss scaling | 2.110 ± 0.030 | 2.300 ± 0.030 ▲ |" in paper


def test_the_shift_verdict_pairs_seeds_so_their_spread_cancels():
    from paper.sections.shift import verdict
    reference = {"runs": 3, "diverged": 0, "seeds": {"0": 2.00, "1": 2.05, "2": 1.96}, "seeds_ci95": {}}
    shifted = {s: b + 0.05 for s, b in reference["seeds"].items()}
    shifted["1"] += 0.002
    cell = {"runs": 3, "diverged": 0, "seeds": shifted, "seeds_ci95": {}}
    assert verdict(cell, reference) == "degraded"  # unpaired, the 0.045 bpc seed spread would hide it
    cell["seeds"] = {s: b + (0.01 if s == "0" else -0.01) for s, b in reference["seeds"].items()}
    assert verdict(cell, reference) == "consistent"
    one = {"runs": 1, "diverged": 0, "seeds": {"0": 2.04}, "seeds_ci95": {"0": 0.03}}
    assert verdict(one, {**reference, "seeds_ci95": {"0": 0.04}}) == "consistent"  # 0.04 < hypot(0.03, 0.04)


def test_table_1_says_when_no_run_has_the_papers_fp16_regime(tmp_path):
    from paper.sections.charlm import regime_note
    mixed = {"fp16-standard": {"options": {"precision": "fp16", "unit_scaled": False, "loss_scale": "none"}}}
    assert "have no run of it" in regime_note(["fp16-standard"], mixed)
    stored = {"fp16p-standard": {"options": {"precision": "fp16_paper", "unit_scaled": False, "loss_scale": "none"}}}
    assert "the \"FP16 stored\" columns" in regime_note(["fp16p-standard"], stored)
