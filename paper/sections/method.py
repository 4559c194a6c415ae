"""The method, in the project's own words (static text: ``paper/text/method.md``)."""

from __future__ import annotations

from pathlib import Path

from paper.section import Context, Section

KEY, TITLE = "method", "Method"
TEXT = Path(__file__).resolve().parents[1] / "text" / "method.md"


def build(ctx: Context) -> Section:
    return Section(KEY, TITLE, TEXT.read_text(encoding="utf-8"))
