"""BERT masked-language-model pre-training in each precision and parametrisation
(``results/bert/``, made by ``python -m experiments.bert``).

Reads ``summary.json``::

    {"command": "python -m experiments.bert ...",
     "settings": {...},             # what every run shares
     "runs": [{"size": "base", "precision": "fp8", "parametrisation": "unit-scaled",
               "loss_scale": "none", "seed": 0, "val_loss": 2.31 (NaN if diverged),
               "val_accuracy": 0.54, "diverged": false, "curve": [[step, validation loss], ...]}, ...]}
"""

from __future__ import annotations

from paper.files import get, read_json
from paper.grid import (NO_LOSS_SCALE, cells, check_runs, column_label, columns, grid_table,
                        plot_curves, settings_text)
from paper.markdown import caption, figure
from paper.section import Context, Section
from paper.stats import compared, difference, judge_not_worse

KEY, TITLE = "bert", "BERT pre-training"
EXTRA_KEYS = {"val_loss": float, "size": str, "val_accuracy": float}
BASELINE = ("fp32", "standard", NO_LOSS_SCALE)
# The paper's finding (docs/reference/unit_scaling_rules.md): unit-scaled FP16 and FP8 match the FP32
# and loss-scaled baselines with no loss scaling. Each unit-scaled low-precision column is compared
# with the FP32 standard baseline.
CLAIM = "unit-scaled FP16 and FP8 without loss scaling match the FP32 baseline"


def load(ctx: Context) -> dict:
    base = ctx.results / "bert"
    path = base / "summary.json"
    data = read_json(path)
    runs = get(data, "runs", path, list)
    check_runs(runs, path, EXTRA_KEYS)
    return {"runs": runs, "settings": get(data, "settings", path, dict),
            "command": get(data, "command", path, str), "base": base}


def size(run: dict) -> str:
    return f"BERT {run['size']}"


def findings(samples: dict, sizes: list[str], cols: list) -> list[dict]:
    out = []
    for s in sizes:
        for c in cols:
            if c[1] != "unit-scaled" or c[0] == "fp32" or c[2] != NO_LOSS_SCALE:
                continue
            if (s, c) not in samples or (s, BASELINE) not in samples:
                continue
            d = difference(samples[(s, c)], samples[(s, BASELINE)])
            text = (f"{s}: {column_label(c)} is {compared(d, 'nats', 'worse', 'better')} than "
                    f"{column_label(BASELINE)} in validation MLM loss")
            out.append({"finding": "bert-unit-matches", "claim": CLAIM, "variant": s,
                        "outcome": judge_not_worse(d), "difference": d.estimate, "low": d.low,
                        "high": d.high, "text": text})
    return out


def render(ctx: Context, data: dict) -> Section:
    """The section from the checked ``data`` of :func:`load`."""
    runs = data["runs"]
    sizes = sorted({size(r) for r in runs})
    cols = columns(runs)
    loss, accuracy = cells(runs, size, "val_loss"), cells(runs, size, "val_accuracy")
    ctx.figures.mkdir(parents=True, exist_ok=True)
    plot_curves([r for r in runs if size(r) == sizes[-1]], "validation MLM loss (nats)", sizes[-1],
                ctx.figures / "bert_curves.png")
    judged = findings(loss, sizes, cols)
    body = "\n\n".join([
        "BERT models are pre-trained with the masked-language-model objective in each precision and "
        "parametrisation, without loss scaling unless a column says so. The original paper "
        "pre-trains BERT-Base and BERT-Large and fine-tunes on SQuAD; we compare pre-training loss "
        "only, at a far smaller budget.",
        caption("Table 2", "Validation masked-LM loss (nats per masked token), mean ± 95% CI over "
                f"seeds. Source: `{ctx.rel(data['base'] / 'summary.json')}`.", ctx.quick),
        grid_table(loss, sizes, cols, "model"),
        caption("Table 2b", "Validation masked-token accuracy, mean ± 95% CI over seeds.", ctx.quick),
        grid_table(accuracy, sizes, cols, "model"),
        figure(ctx.link("bert_curves.png"), "BERT validation curves", "Figure 1b",
               f"Validation MLM loss during training, {sizes[-1]}, every run.", ctx.quick),
        f"The paper's finding that {CLAIM}, judged on these numbers (no equivalence margin: "
        "\"consistent\" means the 95% interval of the difference contains 0):\n\n"
        + "\n".join(f"- **{f['outcome']}**: {f['text']}." for f in judged),
    ])
    facts = {"findings": judged, "quick": "--quick" in data["command"]}
    setup = (f"BERT (`{ctx.rel(data['base'])}`): {settings_text(data['settings'])}; "
             f"`{data['command']}`.",)
    return Section(KEY, TITLE, body, setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
