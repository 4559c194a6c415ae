"""Scale analysis: where each tensor of a standard and a unit-scaled GPT sits against the FP16 / FP8
ranges at initialisation (``results/scales/``, made by ``python -m experiments.scales``).

Reads ``summary.json`` (options, per-model loss, median |log2 std|, per-format counts of tensors
losing >1% of their values), ``standard.csv`` / ``unit_scaled.csv`` (one row per tensor) and
``histogram.png``; draws ``scale_distribution.png`` (log2 of each tensor's scale statistic, forward
activations and backward gradients, against each format's range).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from paper.files import ResultError, get, read_json
from paper.markdown import caption, figure, table
from paper.section import Context, Section

KEY, TITLE = "scales", "Scale analysis at initialisation"
MODELS = {"standard": "standard.csv", "unit-scaled": "unit_scaled.csv"}
OPTIONS = {"model": str, "preset": str, "precision": str, "batch_size": int, "seq_len": int, "seed": int,
           "stat": str, "formats": list, "tensor": str, "phase": str, "quick": bool}


def load_records(path: Path, stat: str) -> list[dict]:
    """Rows of a records CSV: phase, kind, label and the ``stat`` column as a float."""
    if not path.is_file():
        raise ResultError(path, "missing (no such file)")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"phase", "kind", "label", stat}
    if not rows:
        raise ResultError(path, "no records")
    absent = sorted(need - set(rows[0]))
    if absent:
        raise ResultError(path, f"missing columns {absent}")
    out = []
    for i, row in enumerate(rows, start=2):
        try:
            value = float(row[stat])
        except (TypeError, ValueError):
            raise ResultError(path, f"line {i}: column {stat!r} is not a number: {row[stat]!r}") from None
        out.append({"phase": row["phase"], "kind": row["kind"], "label": row["label"], stat: value})
    return out


def load(ctx: Context) -> dict:
    base = ctx.results / "scales"
    path = base / "summary.json"
    summary = read_json(path)
    options = get(summary, "options", path, dict)
    opts = {k: get(options, k, path, kind) for k, kind in OPTIONS.items()}
    stat, formats = opts["stat"], opts["formats"]
    models = get(summary, "models", path, dict)
    for name in MODELS:
        model = get(models, name, path, dict)
        get(model, "loss", path, float)
        get(model, "records", path, int)
        for part in ("all", "forward", "backward"):
            get(model, f"median_abs_log2_std.{part}", path, float)
        for fmt in formats:
            for cls in ("underflow", "overflow"):
                get(model, f"coverage.{fmt}.{cls}.tensors_over_1pct", path, int)
    records = {name: load_records(base / file, stat) for name, file in MODELS.items()}
    if not (base / "histogram.png").is_file():
        raise ResultError(base / "histogram.png", "missing (no such file)")
    return {"summary": summary, "options": opts, "records": records, "stat": stat, "formats": formats,
            "base": base, "data": get(summary, "data", path, str)}


def plot_distribution(records: dict, stat: str, formats: list[str], path: Path) -> None:
    """Histograms of log2(stat) per model, forward activations vs backward gradients, with each
    format's min subnormal and max as vertical lines. The axis ends a few binades above the largest
    format maximum; tensors beyond it (e.g. logits filled with the float32 minimum under a mask) are
    counted in the panel instead of stretching the axis."""
    from matplotlib.figure import Figure

    from unitscale.formats import format_from_name

    fmts = [format_from_name(f) for f in formats]
    logs = [math.log2(r[stat]) for rows in records.values() for r in rows if r[stat] > 0]
    low = math.floor(min(logs + [math.log2(f.min_subnormal) for f in fmts])) - 1
    high = math.ceil(max(math.log2(f.max) for f in fmts)) + 6
    bins = [low + k / 2 for k in range(2 * (high - low) + 1)]
    fig = Figure(figsize=(8, 5), layout="constrained")
    axes = fig.subplots(len(records), 1, sharex=True)
    colours = ["tab:purple", "tab:green", "tab:brown", "tab:gray"]
    for ax, (name, rows) in zip(axes, records.items()):
        for phase, colour in (("forward", "tab:blue"), ("backward", "tab:orange")):
            xs = [math.log2(r[stat]) for r in rows if r["phase"] == phase and r[stat] > 0]
            ax.hist([x for x in xs if x <= high], bins=bins, alpha=0.6, color=colour,
                    label="forward values" if phase == "forward" else "backward gradients")
        for fmt, colour in zip(fmts, colours):
            ax.axvline(math.log2(fmt.min_subnormal), color=colour, ls=":", lw=1.2)
            ax.axvline(math.log2(fmt.max), color=colour, ls="-", lw=1.2, label=f"{fmt.name} range")
        beyond = [r for r in rows if r[stat] > 0 and math.log2(r[stat]) > high]
        if beyond:
            top = max(beyond, key=lambda r: r[stat])
            ax.text(0.99, 0.95, f"{len(beyond)} tensor(s) beyond 2^{high}, up to 2^"
                    f"{math.log2(top[stat]):.0f} ({top['label'][-40:]})", transform=ax.transAxes,
                    ha="right", va="top", fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("tensors")
    axes[-1].set_xlim(low, high)
    axes[-1].set_xlabel(f"log2 {stat} of the tensor (dotted: min subnormal, solid: max)")
    axes[0].legend(fontsize=8, ncols=2, loc="upper left")
    fig.savefig(path, dpi=120)


def render(ctx: Context, data: dict) -> Section:
    """The section from the checked ``data`` of :func:`load`."""
    s, formats, quick = data["summary"], data["formats"], ctx.quick
    ctx.figures.mkdir(parents=True, exist_ok=True)
    plot_distribution(data["records"], data["stat"], formats, ctx.figures / "scale_distribution.png")
    histogram = ctx.copy_figure(data["base"] / "histogram.png", "scale_histogram.png")
    models, o = s["models"], data["options"]
    header = ["model", "tensors", "median abs log2 std (all / fwd / bwd)"] + [
        f"{f}: >1% under / overflow" for f in formats]
    rows = []
    for name in MODELS:
        m = models[name]
        spread = m["median_abs_log2_std"]
        rows.append([name, str(m["records"]), f"{spread['all']:.2f} / {spread['forward']:.2f} / "
                     f"{spread['backward']:.2f}"] + [
            f"{m['coverage'][f]['underflow']['tensors_over_1pct']} / "
            f"{m['coverage'][f]['overflow']['tensors_over_1pct']}" for f in formats])
    what = (f"{o['model'].upper()} {o['preset']}, {o['precision']}, batch {o['batch_size']}x{o['seq_len']} "
            f"of {data['data']}, seed {o['seed']}")
    body = "\n\n".join([
        f"Every op output, weight and gradient of one forward and backward pass of a {what} at "
        "initialisation is recorded, once for the standard model and once for the unit-scaled one "
        f"(`{ctx.rel(data['base'])}`). Table 3 counts the tensors of which more than 1% of the values "
        "would underflow (flush to zero) or overflow in each format; Figure 2 shows the distribution of "
        "the tensors' scales and Figure 3 one gradient's values.",
        caption("Table 3", "Scale statistics per model: median over tensors of |log2 std| (0 means unit "
                "scale) and, per format, how many tensors lose more than 1% of their values to "
                f"underflow / overflow. Source: `{ctx.rel(data['base'] / 'summary.json')}`.", quick),
        table(header, rows, "lr" + "r" * (len(header) - 2)),
        figure(ctx.link("scale_distribution.png"), "scale distribution", "Figure 2",
               f"log2 {data['stat']} of every tensor, forward values and backward gradients, standard "
               "vs unit-scaled, against the formats' ranges (drawn from the per-tensor records "
               f"`{ctx.rel(data['base'] / 'standard.csv')}` and `unit_scaled.csv`). The per-op figure is "
               f"`{ctx.rel(data['base'] / 'scales.png')}`.", quick),
        figure(histogram, "gradient histogram", "Figure 3",
               f"values of one tensor ({o['tensor']}, {o['phase']}) in both models, with each format's "
               "underflow / subnormal / normal / overflow shares.", quick),
    ])
    facts = {"models": {n: {"spread": models[n]["median_abs_log2_std"],
                            "coverage": models[n]["coverage"]} for n in MODELS},
             "formats": formats, "quick": o["quick"]}
    setup = (f"Scale analysis (`{ctx.rel(data['base'])}`): {what}; formats {', '.join(formats)}.",)
    return Section(KEY, TITLE, body, setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
