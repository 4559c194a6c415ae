"""Character-level language models: bits per character by model variant and by precision x
parametrisation, beside the original paper's numbers (``results/charlm/``, made by
``python -m experiments.charlm``).

Reads ``summary.json``::

    {"command": "python -m experiments.charlm ...",
     "settings": {...},             # what every run shares (data, sizes, steps, optimiser, ...)
     "runs": [{"mixer": "attention", "norm": "pre", "precision": "fp16",
               "parametrisation": "standard" | "unit-scaled", "loss_scale": "none" | "2048" | ...,
               "seed": 0, "test_bpc": 1.62 (NaN if diverged), "diverged": false,
               "curve": [[step, validation bpc], ...]}, ...]}

Each cell of Table 1 is the mean over seeds with a 95% t-interval (paper.stats).
"""

from __future__ import annotations

from paper import reference
from paper.files import get, read_json
from paper.grid import cells, check_runs, column_label, columns, grid_table, plot_curves, settings_text
from paper.markdown import caption, figure
from paper.section import Context, Section
from paper.stats import compared, difference, judge_higher, judge_matches

KEY, TITLE = "charlm", "Character-level language models"
EXTRA_KEYS = {"test_bpc": float, "mixer": str, "norm": str}


def variant(run: dict) -> str:
    return f"{run['mixer']} {run['norm']}-norm"


def load(ctx: Context) -> dict:
    base = ctx.results / "charlm"
    path = base / "summary.json"
    data = read_json(path)
    runs = get(data, "runs", path, list)
    check_runs(runs, path, EXTRA_KEYS)
    return {"runs": runs, "settings": get(data, "settings", path, dict),
            "command": get(data, "command", path, str), "base": base}


def findings(samples: dict, variants: list[str]) -> list[dict]:
    """Each finding of the paper, judged per model variant that has both columns."""
    out = []
    for key, claim, a, b, kind in reference.FINDINGS:
        for v in variants:
            if (v, a) not in samples or (v, b) not in samples:
                continue
            d = difference(samples[(v, a)], samples[(v, b)])
            outcome = (judge_higher(d) if kind == "higher" else
                       judge_matches(d, reference.CI_HALF_WIDTH))
            text = (f"{v}: {column_label(a)} is {compared(d, 'bpc', 'worse', 'better')} than "
                    f"{column_label(b)}")
            paper = [reference.BPC.get((v, c)) for c in (a, b)]
            if None not in paper:
                text += f" (paper: {paper[0] - paper[1]:+.3f} bpc)"
            out.append({"finding": key, "claim": claim, "variant": v, "outcome": outcome,
                        "difference": d.estimate, "low": d.low, "high": d.high, "text": text})
    return out


def render(ctx: Context, data: dict) -> Section:
    """The section from the checked ``data`` of :func:`load`."""
    runs = data["runs"]
    samples = cells(runs, variant, "test_bpc")
    variants = sorted({variant(r) for r in runs}, key=lambda v: (not v.startswith("attention"), v))
    cols = columns(runs)
    chosen = "attention pre-norm" if "attention pre-norm" in variants else variants[0]
    ctx.figures.mkdir(parents=True, exist_ok=True)
    plot_curves([r for r in runs if variant(r) == chosen], "validation bits per character", chosen,
                ctx.figures / "charlm_curves.png")
    judged = findings(samples, variants)
    seeds = sorted({r["seed"] for r in runs})
    body = "\n\n".join([
        "We train small character-level language models with each sequence layer and norm placement "
        "in each precision and parametrisation, without loss scaling unless a column says so, and "
        f"report the test bits per character (bpc) of the final model over seeds {seeds}. The original "
        f"paper's numbers ({reference.CITATION}; {reference.SETUP}) stand under ours where it "
        "reports the same cell; its models, data and budget are larger, so absolute values are not "
        "comparable, only the differences between columns.",
        caption("Table 1", "Test bits per character, mean ± 95% CI half-width over seeds (n runs; "
                "\"diverged (k/n)\": k runs went non-finite). Source: "
                f"`{ctx.rel(data['base'] / 'summary.json')}`.", ctx.quick),
        grid_table(samples, variants, cols, "model", reference.BPC),
        figure(ctx.link("charlm_curves.png"), "validation curves", "Figure 1",
               f"Validation bits per character during training, {chosen}, every run (one colour per "
               "column of Table 1).", ctx.quick),
        "The paper's findings, judged on these numbers (a \"matches\" finding counts as reproduced "
        f"when the whole 95% interval of the difference lies within ±{reference.CI_HALF_WIDTH} bpc, "
        "the paper's own CI):\n\n" + "\n".join(f"- **{f['outcome']}**: {f['text']}." for f in judged),
    ])
    facts = {"findings": judged, "variants": variants, "columns": [column_label(c) for c in cols],
             "quick": "--quick" in data["command"]}
    setup = (f"Character-level LMs (`{ctx.rel(data['base'])}`): {settings_text(data['settings'])}; "
             f"`{data['command']}`.",)
    return Section(KEY, TITLE, body, setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
