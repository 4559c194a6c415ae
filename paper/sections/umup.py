"""u-μP: does the optimal learning rate stay put as the model widens? (``results/umup/``, made by
``python -m experiments.umup``.)

Reads ``summary.json`` (per group ``"<parametrisation>/<precision>"``: the optimum per width and how
far it moves), ``runs.csv`` (one row per run: the learning-rate grid) and ``lr_sweep.png``.
"""

from __future__ import annotations

import csv
import math

from paper.files import ResultError, get, read_json
from paper.markdown import caption, figure, table
from paper.section import Context, Section

KEY, TITLE = "umup", "u-μP: learning-rate transfer across width"
OPTIMUM_KEYS = {"width": int, "best_log2_lr": float, "best_val_loss": float, "refined_log2_lr": float,
                "bracketed": bool, "runs": int, "diverged": int}
NAMES = {"sp": "SP", "umup": "u-μP"}


def load_grid(path) -> dict[str, float]:
    """The smallest spacing of the log2 learning-rate grid per group, from ``runs.csv``."""
    if not path.is_file():
        raise ResultError(path, "missing (no such file)")
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"parametrisation", "precision", "log2_lr"} <= set(rows[0]):
        raise ResultError(path, "needs rows with columns parametrisation, precision, log2_lr")
    values: dict[str, set[float]] = {}
    for i, r in enumerate(rows, start=2):
        try:
            values.setdefault(f"{r['parametrisation']}/{r['precision']}", set()).add(float(r["log2_lr"]))
        except ValueError:
            raise ResultError(path, f"line {i}: log2_lr is not a number: {r['log2_lr']!r}") from None
    return {g: min((b - a for a, b in zip(sorted(v), sorted(v)[1:])), default=math.nan)
            for g, v in values.items()}


def load(ctx: Context) -> dict:
    base = ctx.results / "umup"
    path = base / "summary.json"
    data = read_json(path)
    groups = get(data, "groups", path, dict)
    if not groups:
        raise ResultError(path, "'groups' is empty")
    for name, group in groups.items():
        for i, row in enumerate(get(group, "optima", path, list)):
            for key, kind in OPTIMUM_KEYS.items():
                get(row, key, f"{path} (groups.{name}.optima[{i}])", kind)
        get(group, "transfer", path, dict)
    grid = load_grid(base / "runs.csv")
    if not (base / "lr_sweep.png").is_file():
        raise ResultError(base / "lr_sweep.png", "missing (no such file)")
    return {"groups": groups, "grid": grid, "command": get(data, "command", path, str), "base": base}


def label(group: str) -> str:
    parametrisation, _, precision = group.partition("/")
    return f"{NAMES.get(parametrisation, parametrisation)} {precision}"


def transfer_claim(group: str, g: dict, step: float) -> dict:
    """How far the optimum moves across widths, judged against the grid spacing ``step``: within one
    step is "transfers"; an optimum on the grid edge leaves the question open."""
    t = g["transfer"]
    spread = t.get("spread_binades", math.nan)
    edge = [r["width"] for r in g["optima"] if not r["bracketed"]]
    if len(g["optima"]) < 2 or not math.isfinite(spread):
        outcome = "undetermined"
        text = f"{label(group)}: fewer than two widths with an optimum, so transfer cannot be judged"
    elif edge:
        outcome = "inconclusive"
        text = (f"{label(group)}: the optimum moves {spread:.2f} binades across widths "
                f"{t['widths'][0]}-{t['widths'][-1]}, but at width(s) {edge} it lies on the edge of the "
                "grid, so the true optimum may lie further out")
    else:
        outcome = "transfers" if spread <= step else "moves"
        within = (f"within one grid step ({binades(step)})" if spread <= step else
                  f"more than one grid step ({binades(step)})")
        text = (f"{label(group)}: the optimum moves {spread:.2f} binades across widths "
                f"{t['widths'][0]}-{t['widths'][-1]}, {within}; slope {t['slope_per_doubling']:+.2f} "
                f"binades per doubling of width; using the narrowest width's best learning rate at the "
                f"widest costs {t['transfer_regret']:.3f} nats")
    return {"group": group, "outcome": outcome, "text": text, "spread": spread, "step": step}


def binades(x: float) -> str:
    return f"{x:g} binade" + ("" if x == 1 else "s")


def loss_comparisons(groups: dict) -> list[str]:
    """What each width's best loss says beside the optimum's position: u-muP against SP in FP32, and
    the u-muP FP8 recipe against BF16, at every width both groups have."""
    lines = []
    for a, b, what in (("umup/fp32", "sp/fp32", "Best validation loss, u-μP minus SP (FP32)"),
                       ("umup/fp8", "umup/bf16", "Best validation loss, u-μP's FP8 recipe minus BF16")):
        if a not in groups or b not in groups:
            continue
        best = {name: {r["width"]: r["best_val_loss"] for r in groups[name]["optima"]} for name in (a, b)}
        widths = sorted(set(best[a]) & set(best[b]))
        if widths:
            diffs = ", ".join(f"{best[a][w] - best[b][w]:+.3f} at width {w}" for w in widths)
            lines.append(f"{what} (nats, lower is better, one seed): {diffs}")
    return lines


def optimum_table(groups: dict) -> tuple[list[str], list[list[str]]]:
    widths = sorted({r["width"] for g in groups.values() for r in g["optima"]})
    header = ["width"] + [f"{label(name)}: optimal lr (log2) / val loss" for name in groups]
    rows = []
    for w in widths:
        cells = [str(w)]
        for g in groups.values():
            r = next((r for r in g["optima"] if r["width"] == w), None)
            if r is None or not math.isfinite(r["refined_log2_lr"]):
                cells.append("—")
                continue
            edge = "" if r["bracketed"] else ", grid edge"
            cells.append(f"{2 ** r['refined_log2_lr']:.3g} ({r['refined_log2_lr']:+.2f}{edge}) / "
                         f"{r['best_val_loss']:.3f}" + (f", {r['diverged']}/{r['runs']} diverged"
                                                       if r["diverged"] else ""))
        rows.append(cells)
    return header, rows


def render(ctx: Context, data: dict) -> Section:
    """The section from the checked ``data`` of :func:`load`."""
    groups = data["groups"]
    link = ctx.copy_figure(data["base"] / "lr_sweep.png", "umup_lr_sweep.png")
    claims = [transfer_claim(name, g, data["grid"].get(name, math.nan)) for name, g in groups.items()]
    header, rows = optimum_table(groups)
    body = "\n\n".join([
        "u-μP (Blake et al., 2024) combines unit scaling with μP-style learning-rate multipliers so that "
        "the best learning rate should not depend on the width. We train character-level GPTs of "
        "several widths at fixed depth, sweep the learning rate on a log2 grid for the standard "
        "parametrisation (SP, plain AdamW) and for u-μP (unit-scaled model, u-μP AdamW), and take "
        "each width's optimum as the best grid point refined by a parabola through its neighbours.",
        figure(link, "loss against learning rate per width", "Figure 5",
               "Final validation loss against log2 learning rate, one curve per width, one panel per "
               f"parametrisation (star: best point). Source: `{ctx.rel(data['base'])}`.", ctx.quick),
        caption("Table 5", "Optimal learning rate per width (parabola-refined; log2 in brackets) and the "
                "best validation loss (nats per character) of each group. Source: "
                f"`{ctx.rel(data['base'] / 'summary.json')}`.", ctx.quick),
        table(header, rows, "r" * len(header)),
        "\n".join([f"- {c['text']}." for c in claims] + [f"- {line}." for line in loss_comparisons(groups)]),
    ])
    setup = (f"u-μP sweep (`{ctx.rel(data['base'])}`): groups {', '.join(label(g) for g in groups)}; "
             f"`{data['command']}`.",)
    facts = {"claims": claims, "losses": loss_comparisons(groups), "quick": "--quick" in data["command"]}
    return Section(KEY, TITLE, body, setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
