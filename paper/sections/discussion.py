"""Discussion: what reproduced and what did not, every sentence computed from the other sections'
numbers (their ``facts``), so the text cannot contradict the tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from paper.markdown import bullets
from paper.section import Context, Section
from paper.stats import BETTER, CONSISTENT, REPRODUCED

KEY, TITLE = "discussion", "Discussion: what reproduced and what did not"
HELD = (REPRODUCED, CONSISTENT, BETTER)


def findings_paragraph(name: str, findings: Sequence[Mapping]) -> str:
    if not findings:
        return f"{name}: no finding of the paper could be judged (no pair of comparable columns)."
    counts = Counter(f["outcome"] for f in findings)
    tally = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    held = [f for f in findings if f["outcome"] in HELD]
    failed = [f for f in findings if f["outcome"] not in HELD]
    parts = [f"{name}: of {len(findings)} judged comparisons, {tally}."]
    if held:
        parts.append("Held: " + "; ".join(f"{f['text']}" for f in held) + ".")
    if failed:
        parts.append("Did not hold or could not be decided: "
                     + "; ".join(f"{f['text']} [{f['outcome']}]" for f in failed) + ".")
    return " ".join(parts)


def scales_paragraph(facts: Mapping) -> str:
    std, unit = (facts["models"][m] for m in ("standard", "unit-scaled"))
    a, b = std["spread"]["all"], unit["spread"]["all"]
    relation = "closer to" if b < a else "further from" if b > a else "as far from"
    parts = [f"At initialisation, the unit-scaled GPT's tensors sit {relation} unit scale than the "
             f"standard GPT's: the median |log2 std| over tensors is {b:.2f} against {a:.2f} "
             f"(forward {unit['spread']['forward']:.2f} vs {std['spread']['forward']:.2f}, backward "
             f"{unit['spread']['backward']:.2f} vs {std['spread']['backward']:.2f})."]
    for fmt in facts["formats"]:
        s, u = (m["coverage"][fmt]["underflow"]["tensors_over_1pct"] for m in (std, unit))
        so, uo = (m["coverage"][fmt]["overflow"]["tensors_over_1pct"] for m in (std, unit))
        word = "fewer" if u < s else "more" if u > s else "as many"
        parts.append(f"In {fmt}, {u} unit-scaled tensors lose more than 1% of their values to "
                     f"underflow against {s} standard ones ({word}), and {uo} against {so} to overflow.")
    return " ".join(parts)


def ipu_paragraph(facts: Mapping) -> str:
    parts = []
    for system in facts["systems"]:
        rows = [c for c in facts["comparisons"] if c["system"] == system]
        ratios = [c["throughput_ratio"] for c in rows]
        memory = [c["peak_tile_ratio"] - 1 for c in rows]
        unit = "with an FP8 AMP" if rows[0]["fp8_unit"] else "without an FP8 unit"
        span = (f"{min(ratios):.2f}x" if len(rows) == 1 or min(ratios) == max(ratios)
                else f"{min(ratios):.2f}x to {max(ratios):.2f}x")
        mem = (f"{min(memory):+.1%}" if len(rows) == 1 else f"{min(memory):+.1%} to {max(memory):+.1%}")
        nofit = [c["model"] for c in rows if not (c["fp16_fits"] and c["fp8_fits"])]
        parts.append(f"On {system} ({unit}), FP8 matmuls change estimated training throughput by "
                     f"{span} over FP16 and the fullest tile's peak memory by {mem} across "
                     f"{len(rows)} model(s)" + (f"; not fitting in at least one precision: "
                                                f"{', '.join(nofit)}" if nofit else "") + ".")
    return (" ".join(parts) + " These are estimates of the project's performance model with fused "
            "casts and no scaling bookkeeping -- what unit scaling's static scales permit -- not "
            "measurements.")


def umup_paragraph(facts: Mapping) -> str:
    claims = {c["group"]: c for c in facts["claims"]}
    parts = [f"{c['text']}." for c in facts["claims"]]
    sp, umup = claims.get("sp/fp32"), claims.get("umup/fp32")
    judged = ("transfers", "moves")
    if sp and umup and sp["outcome"] in judged and umup["outcome"] in judged:
        a, b = umup["spread"], sp["spread"]
        word = "less than" if a < b else "more than" if a > b else "as much as"
        parts.append(f"So u-μP's optimum moves {word} SP's across these widths ({a:.2f} vs {b:.2f} "
                     "binades).")
    elif sp and umup:
        parts.append("Whether u-μP's optimum moves less than SP's is not decided by this grid.")
    # A stable optimum is only half the claim: the loss reached there matters as much.
    parts += [f"{line}." for line in facts.get("losses", ())]
    return " ".join(parts)


def shift_paragraph(facts: Mapping) -> str:
    shown = facts["shown_at"]
    if shown:
        return (f"With the backward pass shifted by 2^-k, FP16 standard without loss scaling is degraded beyond "
                f"its interval at k in {shown} while loss scaling and unit scaling are consistent with FP32 "
                "there: the paper's central finding holds once gradients are as small as larger runs make them.")
    return ("No backward shift showed FP16 standard without loss scaling degraded while loss scaling and unit "
            "scaling were consistent with FP32: the paper's central finding is not shown by this experiment.")


# Table 1's row at the paper's own model, where the central finding is judged without a shift.
CENTRAL_MODEL = "attention pre-norm"


def central_paragraph(charlm: Mapping, shift: Mapping) -> str | None:
    """The paper's central finding (FP16 standard without loss scaling fails; loss scaling and unit
    scaling do not) where both experiments test it: Table 1's :data:`CENTRAL_MODEL` row, and the
    backward pass shifted by 2^-k. None when Table 1 has no such cell."""
    cell = next((f for f in charlm["findings"]
                 if f["finding"] == "fp16-degrades" and f["variant"] == CENTRAL_MODEL), None)
    if cell is None:
        return None
    parts = [f"In Table 1, {cell['text']} [{cell['outcome']}]."]
    shown = shift["shown_at"]
    if not shown:
        parts.append("No backward shift shows the failure either.")
    elif cell["outcome"] in HELD:
        parts.append(f"The shift experiment's FP16 standard model without loss scaling fails too, at k in {shown}.")
    else:
        parts.append(f"In the shift experiment, FP16 standard without loss scaling is degraded beyond its interval at "
                     f"k in {shown} while loss scaling and unit scaling stay consistent with FP32: the failure appears "
                     "once that model's gradients are 2^k times smaller than its own.")
    return " ".join(parts)


PARAGRAPHS = {
    "charlm": lambda f: findings_paragraph("Character-level LMs", f["findings"]),
    "shift": shift_paragraph,
    "bert": lambda f: findings_paragraph("BERT", f["findings"]),
    "scales": scales_paragraph,
    "ipu": ipu_paragraph,
    "umup": umup_paragraph,
}


def build(ctx: Context, sections: Sequence[Section]) -> Section:
    items = []
    facts = {s.key: s.facts for s in sections if s.missing is None}
    if "charlm" in facts and "shift" in facts and (central := central_paragraph(facts["charlm"], facts["shift"])):
        items.append("**The paper's central finding.** " + central)
    for s in sections:
        if s.missing is not None:
            items.append(f"{s.title}: **results missing**, nothing is concluded ({s.missing}).")
        elif s.key in PARAGRAPHS:
            items.append(f"**{s.title}.** " + PARAGRAPHS[s.key](s.facts))
    intro = ("Each statement below is generated from the numbers of the sections above; a finding of "
             "the paper counts as reproduced only when its confidence interval says so.")
    if ctx.quick:
        intro = "**[QUICK BUILD -- not results.]** " + intro
    return Section(KEY, TITLE, intro + "\n\n" + bullets(items))
