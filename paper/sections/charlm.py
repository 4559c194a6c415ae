"""Character-level language models: test bits per character by model (sequence layer x norm
placement) and by variant (precision x parametrisation x loss scaling), beside the original
paper's numbers (``results/charlm/``, made by ``python -m experiments.charlm``).

Reads ``results.json`` (``profile``, ``settings``, ``row_settings`` (optional), ``variants`` {name: {label, options}},
``learning_rates``, ``table`` rows per (mixer, norm, variant, split) with the completed runs'
``values``, ``diverged`` count and ``ci95`` / ``ci_kind``, and ``problems``) and ``curves.json``
(per run: ``config``, ``status``, ``diverged_at_step``, ``val`` {step, bits}). The schema is the
one ``experiments.charlm.write_outputs`` documents.
"""

from __future__ import annotations

from paper import reference
from paper.files import ResultError, get, numbers, read_json, variant_table
from paper.grid import Curve, grid_table, plot_curves, settings_text
from paper.markdown import caption, figure
from paper.section import Context, Section
from paper.stats import Sample, compared, difference, judge_higher, judge_matches

KEY, TITLE = "charlm", "Character-level language models"
SPLIT, METRIC = "test", "bits"
TABLE_KEYS = {"mixer": str, "norm": str, "variant": str, "split": str, "values": list, "diverged": int,
              "runs": int, "ci95": float, "ci_kind": (str, type(None))}
OPTION_KEYS = {"precision": str, "loss_scale": str, "unit_scaled": bool}
# Beyond the paper's findings (paper.reference.FINDINGS): the same questions for mixed-precision FP16
# (float32 master weights and optimiser state), for FP8 with no scaling, and for the unit-scaled
# models with a sharp attention softmax (alpha_attn-softmax 32; a column's fourth entry, 1 where not
# given).
SHARP = 32.0
EXTENSIONS = (
    ("mixed-fp16-degrades", "mixed-precision FP16 standard without loss scaling degrades against FP32 standard",
     ("fp16", "standard", "none"), ("fp32", "standard", "none"), "higher"),
    ("mixed-unit-fp16-matches", "mixed-precision unit-scaled FP16 without loss scaling matches FP32 standard",
     ("fp16", "unit-scaled", "none"), ("fp32", "standard", "none"), "matches"),
    ("fp8-standard-degrades", "FP8 standard without any scaling degrades against FP32 standard",
     ("fp8", "standard", "none"), ("fp32", "standard", "none"), "higher"),
    ("unit-fp8-matches", "unit-scaled FP8 without any scaling matches FP32 standard",
     ("fp8", "unit-scaled", "none"), ("fp32", "standard", "none"), "matches"),
) + tuple(
    (f"unit-{p}-attn32-matches", f"unit-scaled {p.upper()} with alpha_attn-softmax 32, no scaling, matches FP32 "
     "standard", (p, "unit-scaled", "none", SHARP), ("fp32", "standard", "none"), "matches")
    for p in ("fp32", "fp16", "fp8"))


SHARP_NOTE = (
    "The α_attn columns rerun the unit-scaled attention models with u-μP's attention softmax "
    "multiplier α_attn-softmax = 32 instead of 1. At α = 1 attention is near-uniform at "
    "initialisation and its fixed output scale (about 5 for a causal sequence of 128, 11 without a "
    "mask) is derived for values independent across positions; any component the values share "
    "across positions, as they do after the first layer, leaves amplified by that factor. In a "
    "post-norm model each LayerNorm then rescales the sum so that the shared part crowds out the "
    "token's own signal: the unit-scaled post-norm models end with outputs that do not depend on "
    "the input (the unigram loss). A sharper softmax keeps the scale near 1 and the model trains "
    "(`unitscale.models.config.TransformerConfig`; tests in `tests/unitscale/test_models.py`).")


def load(ctx: Context) -> dict:
    base = ctx.results / "charlm"
    path = base / "results.json"
    data = read_json(path)
    variants, rows = variant_table(data, path, select=_metric_rows, split=SPLIT, option_keys=OPTION_KEYS,
                                   row_keys=TABLE_KEYS)
    return {"variants": variants, "rows": rows, "profile": get(data, "profile", path, str),
            "settings": get(data, "settings", path, dict),
            "learning_rates": get(data, "learning_rates", path, dict),
            "row_settings": get(data, "row_settings", path, dict, {}),
            "problems": get(data, "problems", path, list),
            "curves": load_curves(base / "curves.json"), "base": base}


def _metric_rows(table: list, path) -> list[dict]:
    """The rows of ``SPLIT`` and ``METRIC`` (a row without a metric is one of bits); there must be some."""
    rows = [r for r in table
            if isinstance(r, dict) and r.get("split") == SPLIT and r.get("metric", METRIC) == METRIC]
    if not rows:
        raise ResultError(path, f"'table' has no {SPLIT!r} rows")
    return rows


def load_curves(path) -> list[dict]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ResultError(path, "must hold a JSON object of runs")
    out = []
    for name, run in data.items():
        where = f"{path} ({name})"
        config = get(run, "config", where, dict)
        steps = numbers(get(run, "val.step", where, list), "val.step", where)
        bits = get(run, "val.bits", where, list)
        if len(steps) != len(bits):
            raise ResultError(where, f"val.step and val.bits differ in length ({len(steps)} vs {len(bits)})")
        out.append({"mixer": get(config, "mixer", where, str), "norm": get(config, "norm", where, str),
                    "variant": get(config, "variant", where, str), "steps": steps,
                    "bits": numbers(bits, "val.bits", where),
                    "diverged_at": get(run, "diverged_at_step", where, (int, type(None)))})
    return out


def model_name(mixer: str, norm: str) -> str:
    return f"{mixer} {norm}-norm"


def column_of(options: dict) -> tuple[str, str, str, float]:
    """A variant's (precision, parametrisation, loss scaling, attention softmax multiplier)."""
    return (options["precision"], "unit-scaled" if options["unit_scaled"] else "standard",
            options["loss_scale"], float(options.get("attn_softmax_mult", 1.0)))


def regime_note(cols: list[str], variants: dict) -> str:
    """Which of the table's FP16 columns run the paper's own FP16 regime, if any does."""
    regime = ("The paper's FP16 is its own regime (weights and Adam's first moment stored in FP16, stochastic "
              "rounding, the loss scale on the backward pass only)")
    if any(column_of(variants[v]["options"])[0] == "fp16_paper" for v in cols):
        return (f"{regime}: the \"FP16 stored\" columns, beside which the paper's FP16 numbers stand; the other "
                "FP16 columns are mixed precision (float32 master weights and optimiser state).")
    return (f"{regime}; these results have no run of it, so the paper's FP16 numbers have no column here, and "
            "the FP16 columns are mixed precision (float32 master weights and optimiser state).")


def uses_sharp_softmax(options: dict) -> bool:
    """Whether a variant sets an attention softmax multiplier other than the default 1."""
    return column_of(options)[3] != 1.0


def _full(column: tuple) -> tuple:
    """A finding's column with the default softmax multiplier 1 when it names none."""
    return column if len(column) == 4 else (*column, 1.0)


def paper_bpc(model: str, column: tuple) -> float | None:
    """The paper's number for a column it has (its attention softmax is the default one)."""
    column = _full(column)
    return reference.BPC.get((model, column[:3])) if column[3] == 1.0 else None


def samples(rows: list[dict], key) -> tuple[dict[tuple, Sample], dict[tuple, str]]:
    """``key(row)`` -> Sample of the completed runs' values (a single run keeps its own evaluation
    CI); and the cells whose runs all failed or are missing, with a note saying so."""
    cells, absent = {}, {}
    for r in rows:
        if r["values"] or r["diverged"]:
            cells[key(r)] = Sample.of(r["values"], r["diverged"],
                                      r["ci95"] if r["ci_kind"] == "tokens" else None)
        else:
            absent[key(r)] = f"no result ({r['runs']} run(s) failed or missing)"
    return cells, absent


def findings(cells: dict, models: list[str], variants: dict) -> list[dict]:
    """Each finding (the paper's, then ours), judged per model that has both columns."""
    by_column = {column_of(v["options"]): name for name, v in variants.items()}
    out = []
    for key, claim, a, b, kind in reference.FINDINGS + EXTENSIONS:
        va, vb = by_column.get(_full(a)), by_column.get(_full(b))
        for m in models:
            if (m, va) not in cells or (m, vb) not in cells:
                continue
            d = difference(cells[(m, va)], cells[(m, vb)])
            outcome = judge_higher(d) if kind == "higher" else judge_matches(d, reference.CI_HALF_WIDTH)
            text = (f"{m}, {variants[va]['label']} against {variants[vb]['label']}: "
                    f"{compared(d, 'bpc', 'worse', 'better')}")
            paper = [paper_bpc(m, c) for c in (a, b)]
            if None not in paper:
                text += f" (paper: {paper[0] - paper[1]:+.3f} bpc)"
            out.append({"finding": key, "claim": claim, "variant": m, "outcome": outcome,
                        "source": "paper" if (key, claim, a, b, kind) in reference.FINDINGS else "extension",
                        "difference": d.estimate, "low": d.low, "high": d.high, "text": text})
    return out


def render(ctx: Context, data: dict) -> Section:
    """The section from the checked ``data`` of :func:`load`."""
    variants, rows = data["variants"], data["rows"]
    cells, absent = samples(rows, lambda r: (model_name(r["mixer"], r["norm"]), r["variant"]))
    models = list(dict.fromkeys(model_name(r["mixer"], r["norm"]) for r in rows))
    cols = [v for v in variants if any(r["variant"] == v for r in rows)]
    labels = {v: variants[v]["label"] for v in cols}
    ref = {(m, name): bpc for m in models for name in cols
           if (bpc := paper_bpc(m, column_of(variants[name]["options"]))) is not None}
    chosen = "attention pre-norm" if "attention pre-norm" in models else models[0]
    curves = [Curve(c["variant"], tuple(c["steps"]), tuple(c["bits"]), c["diverged_at"])
              for c in data["curves"] if model_name(c["mixer"], c["norm"]) == chosen and c["variant"] in labels]
    ctx.figures.mkdir(parents=True, exist_ok=True)
    plot_curves(curves, labels, "validation bits per character", chosen, ctx.figures / "charlm_curves.png")
    judged = findings(cells, models, variants)
    body = [
        "Causal character-level language models are trained with each sequence layer and norm "
        "placement in each variant (precision, parametrisation, loss scaling or FP8 scaling recipe) "
        "and evaluated on the test split in bits per character (bpc). The original paper's numbers "
        f"({reference.CITATION}; {reference.SETUP}) stand in brackets where it reports the same cell; "
        "its models, data and budget are larger, so absolute values are not comparable, only the "
        "differences between columns. " + regime_note(cols, variants),
        caption("Table 1", "Test bits per character: mean ± 95% CI over seeds (n completed runs); a "
                "cell of one run shows that run's CI from its evaluation windows (test-set noise only); "
                "\"diverged\": runs whose loss went non-finite, left out of the mean. The paper's "
                "static loss scale is 2048. Source: "
                f"`{ctx.rel(data['base'] / 'results.json')}`.", ctx.quick),
        grid_table(cells, models, cols, labels, "model", ref, absent),
        figure(ctx.link("charlm_curves.png"), "validation curves", "Figure 1",
               f"Validation bits per character during training, {chosen}, every run (one colour per "
               "column of Table 1).", ctx.quick),
        *([SHARP_NOTE] if any(uses_sharp_softmax(variants[v]["options"]) for v in cols) else []),
        "Findings, judged on these numbers (a \"matches\" finding counts as reproduced when the whole "
        f"95% interval of the difference lies within ±{reference.CI_HALF_WIDTH} bpc, the paper's own "
        "CI; the FP8 rows extend the paper's FP16 findings):\n\n"
        + "\n".join(f"- **{f['outcome']}**: {f['text']}." for f in judged),
    ]
    if data["problems"]:
        body.insert(0, f"> **INCOMPLETE RUNS.** {len(data['problems'])} run(s) of the grid have no "
                    "result (missing, failed or malformed); their cells are short of seeds or empty. "
                    "See `problems` in the source file.")
    rates = ", ".join(f"{k} {v:g}" for k, v in data["learning_rates"].items())
    rows = "".join(f"; {model_name(*row.split('/'))} instead: {settings_text(options)}"
                   for row, options in data["row_settings"].items())
    setup = (f"Character-level LMs (`{ctx.rel(data['base'])}`, profile {data['profile']}): "
             f"{settings_text(data['settings'])}{rows}; peak learning rates {rates} (chosen by an FP32 sweep).",)
    facts = {"findings": judged, "quick": data["profile"] == "quick"}
    return Section(KEY, TITLE, "\n\n".join(body), setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
