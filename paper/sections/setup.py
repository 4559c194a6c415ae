"""Experimental setup: each experiment section's configuration line, read from its result files."""

from __future__ import annotations

from collections.abc import Sequence

from paper.markdown import bullets
from paper.section import Context, Section

KEY, TITLE = "setup", "Experimental setup"


def build(ctx: Context, sections: Sequence[Section]) -> Section:
    lines = [line for s in sections if s.missing is None for line in s.setup]
    absent = [s.title for s in sections if s.missing is not None]
    body = ("Each experiment is one script of `experiments/`; the settings below are read from the "
            "configuration its result files record.\n\n" + bullets(lines))
    if absent:
        body += "\n\nNo results, so no setup, for: " + ", ".join(absent) + "."
    return Section(KEY, TITLE, body)
