"""The IPU table: FP16 vs FP8 training throughput and per-IPU memory, estimated with ipu_sim
(``results/ipu/``, made by ``python -m experiments.ipu``)."""

from __future__ import annotations

from paper.files import ResultError, get, read_json
from paper.markdown import caption, figure
from paper.section import Context, Section

KEY, TITLE = "ipu", "What FP8 buys on the IPU"
ROW_KEYS = {"model": str, "system": str, "chip": str, "precision": str, "fp8_unit": bool,
            "layers_per_ipu": list, "replicas": int, "samples_per_s": float, "tokens_per_s": float,
            "fits": bool, "peak_tile_kib": float, "sram_kib": float, "config_source": str,
            "assumed": str, "micro_batch": int, "grad_accum": int, "seq": int}
COMPARISON_KEYS = {"model": str, "system": str, "fp8_unit": bool, "throughput_ratio": float,
                   "peak_tile_ratio": float, "fp16_fits": bool, "fp8_fits": bool, "verdict": str}


def load(ctx: Context) -> dict:
    base = ctx.results / "ipu"
    path = base / "ipu_table.json"
    data = read_json(path)
    rows = get(data, "rows", path, list)
    comparisons = get(data, "comparisons", path, list)
    if not rows or not comparisons:
        raise ResultError(path, "'rows' and 'comparisons' must not be empty")
    for i, r in enumerate(rows):
        for key, kind in ROW_KEYS.items():
            get(r, key, f"{path} (rows[{i}])", kind)
    keys = {(r["model"], r["system"], r["precision"]) for r in rows}
    for i, c in enumerate(comparisons):
        for key, kind in COMPARISON_KEYS.items():
            get(c, key, f"{path} (comparisons[{i}])", kind)
        for p in ("fp16", "fp8"):
            if (c["model"], c["system"], p) not in keys:
                raise ResultError(path, f"comparisons[{i}] ({c['model']} on {c['system']}) has no {p} row")
    if not (base / "ipu_table.png").is_file():
        raise ResultError(base / "ipu_table.png", "missing (no such file)")
    for i, r in enumerate(rows):
        get(r, "out_of_memory", f"{path} (rows[{i}])", (str, type(None)), None)
    return {"rows": rows, "comparisons": comparisons, "quick": get(data, "quick", path, bool),
            "command": get(data, "command", path, str), "base": base,
            "assumption": get(data, "c600_x8_assumption", path, str, None)}


def render(ctx: Context, data: dict) -> Section:
    """The section from the checked ``data`` of :func:`load`."""
    from experiments.ipu import markdown_table

    rows, comparisons = data["rows"], data["comparisons"]
    link = ctx.copy_figure(data["base"] / "ipu_table.png", "ipu_table.png")
    systems = list(dict.fromkeys(r["system"] for r in rows))
    chips = {r["system"]: (r["chip"], r["fp8_unit"]) for r in rows}
    unit = ", ".join(f"{s} ({c}: {'has an FP8 AMP' if f else 'no FP8 unit'})" for s, (c, f) in chips.items())
    sources = sorted({f"{r['model']} on {r['system']}: {r['config_source']}; {r['assumed']}" for r in rows})
    body = "\n\n".join([
        "Unit scaling makes FP8 training a change of matmul operand format and nothing else: the scales "
        "are compile-time constants, so there is no loss scale to tune and no per-tensor amax history to "
        "keep. What that is worth in speed depends on the hardware. We ask the project's IPU performance "
        "model (`ipu_sim`) for one weight update of pre-training at FP16 (fp16 matmul inputs and "
        "partials) and at FP8 (FP8 inputs, fp16 partials, fp16 weights) under the same configuration, "
        f"on {unit}. These are model estimates, not measurements.",
        caption("Table 4", "Training throughput and the peak tile memory of the fullest IPU (KiB used / "
                "KiB per tile), FP16 vs FP8 matmuls, per model and system; \"what FP8 buys\" is worded "
                "from the two rows' ratios. Source: "
                f"`{ctx.rel(data['base'] / 'ipu_table.json')}`.", ctx.quick),
        markdown_table(rows, comparisons),
        figure(link, "IPU throughput and memory", "Figure 4",
               "Training tokens/s (log axis) and peak tile memory of the fullest IPU, FP16 vs FP8; "
               "hatched bars do not fit in tile memory.", ctx.quick),
        "Configurations (from the published recipes of the reference where they exist, else the "
        "model's automatic pipeline balancer):\n\n" + "\n".join(f"- {s}" for s in sources),
    ])
    misfits = [f"{r['model']} on {r['system']}, {r['precision'].upper()}: "
               + (r.get("out_of_memory") or "does not fit").splitlines()[0]
               for r in rows if not r["fits"]]
    if misfits:
        body += ("\n\nRows that do not fit in tile memory (their throughput is what the model "
                 "predicts if they did), with the fullest tile:\n\n" + "\n".join(f"- {m}" for m in misfits))
    if data["assumption"]:
        body += f"\n\nThe C600 system is an assumption of this table: {data['assumption']}."
    facts = {"comparisons": comparisons, "systems": systems, "quick": data["quick"]}
    setup = (f"IPU table (`{ctx.rel(data['base'])}`): {len(comparisons)} model/system pairs on "
             f"{', '.join(systems)}; `{data['command']}`.",)
    return Section(KEY, TITLE, body, setup, facts)


def build(ctx: Context) -> Section:
    return render(ctx, load(ctx))
