"""BERT masked-language-model pre-training in each precision and parametrisation
(``results/bert/``, made by ``python -m experiments.bert``).

Reads ``results.json`` (``profile``, ``settings``, ``variants`` {name: {label, options}}, ``table``
rows per (stage, size, variant, split, metric) with the completed runs' ``values``, ``diverged``
count and ``ci95`` / ``ci_kind``, ``problems``) and ``curves.json`` (per ``stage/run``: ``config``
with ``size`` and ``variant``, ``diverged_at_step``, ``val`` {step, loss}); the schema is the one
``experiments.bert.write_outputs`` documents. Metric: masked-token cross-entropy on the test split.
"""

from __future__ import annotations

from paper.files import ResultError, get, numbers, read_json, variant_table
from paper.grid import Curve, grid_table, plot_curves, settings_text
from paper.markdown import caption, figure
from paper.section import Context, Section
from paper.sections.charlm import OPTION_KEYS, samples, uses_sharp_softmax
from paper.stats import compared, difference, judge_not_worse

KEY, TITLE = "bert", "BERT pre-training"
SPLIT, METRICS = "test", ("loss", "accuracy")
TABLE_KEYS = {"stage": str, "size": str, "variant": str, "split": str, "metric": str, "values": list,
              "diverged": int, "runs": int, "ci95": float, "ci_kind": (str, type(None))}
# The paper's finding (docs/reference/unit_scaling_rules.md): unit-scaled FP16 and FP8 match the FP32
# and loss-scaled baselines with no loss scaling. Each unit-scaled low-precision variant without loss
# scaling is compared with the FP32 standard baseline of the same model.
CLAIM = "unit-scaled FP16 and FP8 without loss scaling match the FP32 baseline"
BASELINE = ("fp32", False, "none")
SHARP_NOTE = (
    "The α_attn columns use u-μP's attention softmax multiplier α_attn-softmax = 32 instead of 1. "
    "BERT is post-norm, and at α = 1 its unit-scaled model fails as the post-norm character LMs do: "
    "bidirectional near-uniform attention's fixed output scale (sqrt(S) = 11 here) amplifies what the "
    "values share across positions, and each LayerNorm lets that crowd out the token (see the "
    "character-level section).")


def load(ctx: Context) -> dict:
    base = ctx.results / "bert"
    path = base / "results.json"
    data = read_json(path)
    variants, rows = variant_table(data, path, select=_metric_rows, split=SPLIT, option_keys=OPTION_KEYS,
                                   row_keys=TABLE_KEYS)
    return {"variants": variants, "rows": rows, "profile": get(data, "profile", path, str),
            "settings": get(data, "settings", path, dict), "problems": get(data, "problems", path, list),
            "base_settings": get(data, "base_settings", path, dict, {}),
            "curves": load_curves(base / "curves.json"), "base": base}


def _metric_rows(table: list, path) -> list[dict]:
    """The rows of ``SPLIT`` and ``METRICS``; every metric must have some."""
    rows = [r for r in table if isinstance(r, dict) and r.get("split") == SPLIT and r.get("metric") in METRICS]
    if not {r["metric"] for r in rows} >= set(METRICS):
        raise ResultError(path, f"'table' lacks {SPLIT!r} rows of the metrics {list(METRICS)}")
    return rows


def model_name(stage: str, size: str) -> str:
    """``BERT small`` for the grid stage, ``BERT base (base stage)`` for another stage."""
    return f"BERT {size}" + ("" if stage == "grid" else f" ({stage} stage)")


def load_curves(path) -> list[tuple[str, Curve]]:
    data = read_json(path)
    if not isinstance(data, dict):
        raise ResultError(path, "must hold a JSON object of runs")
    out = []
    for name, run in data.items():
        where = f"{path} ({name})"
        steps = numbers(get(run, "val.step", where, list), "val.step", where)
        loss = numbers(get(run, "val.loss", where, list), "val.loss", where)
        if len(steps) != len(loss):
            raise ResultError(where, f"val.step and val.loss differ in length ({len(steps)} vs {len(loss)})")
        model = model_name(name.split("/", 1)[0], get(run, "config.size", where, str))
        out.append((model, Curve(get(run, "config.variant", where, str), tuple(steps), tuple(loss),
                                 get(run, "diverged_at_step", where, (int, type(None))))))
    return out


def findings(cells: dict, models: list[str], variants: dict) -> list[dict]:
    key = lambda o: (o["precision"], o["unit_scaled"], o["loss_scale"])  # noqa: E731
    baseline = next((n for n, v in variants.items() if key(v["options"]) == BASELINE), None)
    out = []
    for m in models:
        for name, v in variants.items():
            o = v["options"]
            if not o["unit_scaled"] or o["precision"] == "fp32" or o["loss_scale"] != "none":
                continue
            if (m, name) not in cells or (m, baseline) not in cells:
                continue
            d = difference(cells[(m, name)], cells[(m, baseline)])
            text = (f"{m}, test MLM loss of {v['label']} against {variants[baseline]['label']}: "
                    f"{compared(d, 'nats', 'worse', 'better')}")
            out.append({"finding": "bert-unit-matches", "claim": CLAIM, "variant": m,
                        "outcome": judge_not_worse(d), "difference": d.estimate, "low": d.low,
                        "high": d.high, "text": text})
    return out


def render(ctx: Context, data: dict) -> Section:
    """The section from the checked ``data`` of :func:`load`."""
    variants, rows = data["variants"], data["rows"]
    key = lambda r: (model_name(r["stage"], r["size"]), r["variant"])  # noqa: E731
    loss, loss_absent = samples([r for r in rows if r["metric"] == "loss"], key)
    accuracy, accuracy_absent = samples([r for r in rows if r["metric"] == "accuracy"], key)
    models = list(dict.fromkeys(key(r)[0] for r in rows))
    cols = [v for v in variants if any(r["variant"] == v for r in rows)]
    labels = {v: variants[v]["label"] for v in cols}
    chosen = models[0]
    ctx.figures.mkdir(parents=True, exist_ok=True)
    plot_curves([c for m, c in data["curves"] if m == chosen and c.column in labels], labels,
                "validation MLM loss (nats)", chosen, ctx.figures / "bert_curves.png")
    judged = findings(loss, models, variants)
    body = [
        "BERT models are pre-trained with the masked-language-model objective in each variant, "
        "without loss scaling unless its name says so. The original paper pre-trains BERT-Base and "
        "BERT-Large with LAMB and fine-tunes on SQuAD; we compare pre-training loss only, at a far "
        "smaller budget.",
        caption("Table 2", "Test masked-LM loss (nats per masked token): mean ± 95% CI over seeds (a "
                "single run: its CI over evaluation rows, test-set noise only); diverged runs are left "
                f"out of the mean. Source: `{ctx.rel(data['base'] / 'results.json')}`.", ctx.quick),
        grid_table(loss, models, cols, labels, "model", None, loss_absent),
        caption("Table 2b", "Test masked-token accuracy, as Table 2.", ctx.quick),
        grid_table(accuracy, models, cols, labels, "model", None, accuracy_absent),
        figure(ctx.link("bert_curves.png"), "BERT validation curves", "Figure 1b",
               f"Validation MLM loss during training, {chosen}, every run.", ctx.quick),
        *([SHARP_NOTE] if any(uses_sharp_softmax(variants[v]["options"]) for v in cols) else []),
        f"The paper's finding that {CLAIM}, judged on these numbers (no equivalence margin: "
        "\"consistent\" means the 95% interval of the difference contains 0):\n\n"
        + ("\n".join(f"- **{f['outcome']}**: {f['text']}." for f in judged) or "- no comparable pair of cells."),
    ]
    if data["problems"]:
        body.insert(0, f"> **INCOMPLETE RUNS.** {len(data['problems'])} run(s) have no result (missing, "
                    "failed or malformed); see `problems` in the source file.")
    extra = (f"; the {', '.join(m for m in models if '(base stage)' in m)} run: "
             f"{settings_text(data['base_settings'])}" if data["base_settings"] else "")
    setup = (f"BERT (`{ctx.rel(data['base'])}`, profile {data['profile']}): "
             f"{settings_text(data['settings'])}{extra}.",)
    facts = {"findings": judged, "quick": data["profile"] == "quick"}
    return Section(KEY, TITLE, "\n\n".join(body), setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
