"""Markdown pieces of the paper: tables, figures, captions, the quick banner and the missing box."""

from __future__ import annotations

from collections.abc import Sequence

QUICK_BANNER = ("> **QUICK BUILD -- NOT RESULTS.** Every number and figure below comes from the "
                "experiment scripts' `--quick` modes (CI-sized runs of seconds to minutes), made to "
                "check the pipeline end to end. They say nothing about the method.")


def table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A pipe table; ``align`` is one character per column: ``l``, ``r`` or ``c``."""
    if any(len(r) != len(header) for r in rows):
        raise ValueError("rows: every row needs one cell per header column")
    align = align or "l" * len(header)
    if len(align) != len(header):
        raise ValueError(f"align: one of l/r/c per column ({len(header)}), got {align!r}")
    rule = {"l": "---", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def caption(label: str, text: str, quick: bool) -> str:
    """``**Table 2.** text`` (prefixed with QUICK in a quick build, so no table is mistaken for a result)."""
    return f"**{label}.** " + ("**[QUICK BUILD -- not results]** " if quick else "") + text


def figure(path: str, alt: str, label: str, text: str, quick: bool) -> str:
    return f"![{alt}]({path})\n\n{caption(label, text, quick)}"


def missing_box(section: str, reason: str) -> str:
    """The visible box a section gets when its results are missing and ``--allow-missing`` was given."""
    return ("> **MISSING RESULTS.** This section is incomplete: its result files could not be read "
            f"and the build was told to go on (`--allow-missing {section}`).\n>\n> Reason: {reason}")


def bullets(items: Sequence[str]) -> str:
    return "\n".join(f"- {item}" for item in items)
