"""The paper's FP16 regime and the gradient-shift experiment (``results/shift/``, made by
``python -m experiments.shift``).

Reads ``summary.json``: ``profile`` (``train`` options, ``variants``, ``shifts``, ``fp32_shifts``,
``seeds``), ``cells`` (per variant and shift: ``label``, ``reference``, ``test_bits``,
``test_bits_ci95``, ``runs``, ``diverged``, ``flushed``, and per seed ``seeds`` (test bpc) and
``seeds_ci95`` (its evaluation half-width)), ``fp32_check`` (``max_difference_bits``) and ``problems``;
and the figure ``shift.png``. Every judgement is made here from the per-seed values, not read from
the file.
"""

from __future__ import annotations

import math

from paper.files import ResultError, get, read_json
from paper.grid import settings_text
from paper.markdown import caption, figure, table
from paper.section import Context, Section
from paper.stats import direction, paired_difference

KEY, TITLE = "shift", "The paper's FP16 regime and smaller gradients"
CELL_KEYS = {"variant": str, "label": str, "reference": str, "shift": int, "test_bits": float,
             "test_bits_ci95": float, "runs": int, "diverged": int, "flushed": float, "seeds": dict,
             "seeds_ci95": dict}
FP16_PLAIN = "fp16-standard"
RESCUERS = ("fp16-standard-static", "fp16-standard-dynamic", "fp16-unit")

REGIME = (
    "The paper's FP16 runs were not mixed precision: its code kept the weights themselves in FP16 "
    "(no float32 copy), stored Adam's first moment in FP16, applied the loss scale to the backward "
    "pass only (Adam is invariant to a fixed gradient scale, so it was never divided out) and relied "
    "on the IPU's stochastic rounding. `unitscale.precision.storage` builds that regime: a "
    "`Storage` of the parameters and Adam moments in a format, every store rounded nearest or "
    "stochastically from a seeded key carried in the optimiser state, as the preset `fp16_paper` "
    "with the recipe `static-backward` (tested bit for bit against a NumPy reference of Adam steps, "
    "unbiased under stochastic rounding, resumed bit-identically). Its runs in the char-LM and BERT "
    "grids (variants `fp16p-*`) are labelled \"FP16 stored\".")

SHIFT = (
    "At these budgets the gradients of an FP16 backward pass are still large, so FP16 without loss "
    "scaling loses little; the paper's failure shows in larger and longer runs, whose gradients are "
    "smaller. The shift experiment stands in for them: the backward pass runs at 2^-k (the loss's "
    "gradient starts at 2^-k; the parameter gradients are multiplied by 2^k again in float32 before "
    "the optimiser), so every gradient of the low-precision backward pass is 2^k times smaller. A "
    "float32 backward pass is unchanged by the shift but for values below float32's normal range; "
    "each variant is compared with the FP32 model of its parametrisation at shift 0, seed by seed (the "
    "same seed: the same initialisation and data order, so the seeds' own spread cancels). A variant "
    "is *degraded* at a shift when the 95% t-interval of that paired difference lies wholly above 0, "
    "*better* when wholly below, and *consistent* with FP32 when it contains 0.")


def load(ctx: Context) -> dict:
    base = ctx.results / "shift"
    path = base / "summary.json"
    data = read_json(path)
    cells = get(data, "cells", path, list)
    for i, cell in enumerate(cells):
        for key, kind in CELL_KEYS.items():
            get(cell, key, f"{path} (cell {i})", kind)
    if not (base / "shift.png").is_file():
        raise ResultError(base / "shift.png", "missing (no such file)")
    return {"cells": cells, "profile": get(data, "profile", path, dict),
            "fp32": get(data, "fp32_check.max_difference_bits", path, float),
            "problems": get(data, "problems", path, list), "base": base}


def verdict(cell: dict, reference: dict) -> str:
    """``degraded`` / ``better`` when the paired difference's interval lies wholly above / below 0,
    ``consistent`` when it contains 0 (``undetermined`` without an interval)."""
    if cell["runs"] == 0:
        return "diverged" if cell["diverged"] else "missing"
    d = paired_difference(cell["seeds"], reference["seeds"], cell["seeds_ci95"], reference["seeds_ci95"])
    return {"higher": "degraded", "lower": "better", "indistinguishable": "consistent"}.get(direction(d),
                                                                                           "undetermined")


def judged(cells: list[dict]) -> dict[tuple[str, int], str]:
    """Every (variant, shift) judged against its reference at shift 0."""
    refs = {c["variant"]: c for c in cells if c["shift"] == 0}
    return {(c["variant"], c["shift"]): verdict(c, refs[c["reference"]])
            for c in cells if c["reference"] in refs}


def shown_at(verdicts: dict[tuple[str, int], str], shifts: list[int]) -> list[int]:
    """The shifts at which plain FP16 is degraded while every rescuer present is consistent with its
    reference."""
    present = [v for v in RESCUERS if any(key[0] == v for key in verdicts)]
    return [k for k in shifts if verdicts.get((FP16_PLAIN, k)) == "degraded"
            and present and all(verdicts.get((v, k)) == "consistent" for v in present)]


def _cell_text(cell: dict, outcome: str) -> str:
    if cell["runs"] == 0:
        return outcome
    mark = {"degraded": " ▲", "better": " ▼"}.get(outcome, "")
    return f"{cell['test_bits']:.3f} ± {cell['test_bits_ci95']:.3f}{mark}"


def render(ctx: Context, data: dict) -> Section:
    cells, profile = data["cells"], data["profile"]
    verdicts = judged(cells)
    shifts = sorted({c["shift"] for c in cells if not c["variant"].startswith("fp32")})
    variants = list(dict.fromkeys(c["variant"] for c in cells))
    labels = {c["variant"]: c["label"] for c in cells}
    by = {(c["variant"], c["shift"]): c for c in cells}
    rows = [[labels[v]] + [_cell_text(by[v, k], verdicts.get((v, k), "?")) if (v, k) in by else
                           (_cell_text(by[v, 0], "") + " (any k)" if (v, 0) in by else "") for k in shifts]
            for v in variants]
    flushed = [[labels[v]] + [f"{100 * by[v, k]['flushed']:.1f}%" if (v, k) in by and by[v, k]["runs"] else ""
                              for k in shifts] for v in variants if not v.startswith("fp32")]
    ctx.copy_figure(data["base"] / "shift.png", "shift.png")
    shown = shown_at(verdicts, shifts)
    conclusion = (f"At shift k = {shown[0]} (and {len(shown)} shift(s) in all: {shown}) FP16 standard without "
                  "loss scaling is degraded beyond its interval, while loss scaling and the unit-scaled model "
                  "without loss scaling are consistent with their FP32 references: the paper's "
                  "central finding, shown with gradients 2^k smaller." if shown else
                  "At no shift is FP16 standard without loss scaling degraded beyond its interval while loss "
                  "scaling and unit scaling are consistent with their FP32 references: the paper's central "
                  "finding is not shown here.")
    body = [
        REGIME,
        SHIFT,
        caption("Table 6", "Test bits per character against the backward shift k (mean ± 95% interval "
                f"over seeds {list(profile.get('seeds', []))}; ▲ degraded, ▼ better than the FP32 reference "
                "of the same parametrisation, judged by the paired difference; FP32 rows ran at shifts "
                f"{list(profile.get('fp32_shifts', []))} and stand for every k, their largest difference "
                f"between shifts {data['fp32']:.2g} bpc). Source: `{ctx.rel(data['base'] / 'summary.json')}`.",
                ctx.quick),
        table(["variant", *(f"k = {k}" for k in shifts)], rows, "l" + "r" * len(shifts)),
        caption("Table 7", "Activation-gradient values the format flushed to zero (exact zeros of the "
                "backward pass's activation gradients in excess of the same weights' in float32, on one "
                "validation batch, mean over seeds).", ctx.quick),
        table(["variant", *(f"k = {k}" for k in shifts)], flushed, "l" + "r" * len(shifts)),
        figure(ctx.link("shift.png"), "test bpc and flushed fraction against the backward shift", "Figure 6",
               "Test bits per character (top; shaded: the FP32 references' intervals), its paired "
               "difference from the FP32 reference with its interval (middle, symmetric log scale) and "
               "flushed activation-gradient values (bottom) against the backward shift k.", ctx.quick),
        conclusion,
    ]
    if data["problems"]:
        body.insert(0, f"> **INCOMPLETE RUNS.** {len(data['problems'])} run(s) have no result; see "
                    "`problems` in the source file.")
    setup = (f"Gradient shift (`{ctx.rel(data['base'])}`): {settings_text(profile.get('train', {}))}; "
             f"shifts {profile.get('shifts')}, seeds {profile.get('seeds')}.",)
    facts = {"shown_at": shown, "verdicts": {f"{v}@{k}": o for (v, k), o in verdicts.items()},
             "flushed_max": max((c["flushed"] for c in cells if math.isfinite(c["flushed"])), default=math.nan),
             "quick": profile.get("name") == "quick"}
    return Section(KEY, TITLE, "\n\n".join(body), setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
