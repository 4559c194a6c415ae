"""What a section of the paper is, and what every section builder is given.

An experiment section module in :mod:`paper.sections` has ``KEY`` (its name for
``--allow-missing``), ``TITLE``, ``load(ctx) -> data`` and ``render(ctx, data) -> Section``
(``build(ctx)`` does both). ``load`` reads and checks every result file the section needs, through
:mod:`paper.files`, so a missing or malformed file raises :class:`paper.files.ResultError` naming
the file and the problem before anything is drawn; ``render`` only formats checked data.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Context:
    """Where results are read from and figures written to; ``quick`` marks a CI-sized build."""

    results: Path
    figures: Path  # directory the paper's figures are written to
    figure_link: str  # how paper.md refers to that directory (relative)
    quick: bool

    def copy_figure(self, source: Path, name: str) -> str:
        """Copy ``source`` into the figures directory as ``name``; the link for paper.md."""
        self.figures.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, self.figures / name)
        return self.link(name)

    def link(self, name: str) -> str:
        return f"{self.figure_link}/{name}"

    def rel(self, path: Path) -> str:
        """``path`` relative to the results directory's parent, e.g. ``results/ipu/ipu_table.json``."""
        try:
            return str(path.relative_to(self.results.parent))
        except ValueError:
            return str(path)


@dataclass(frozen=True)
class Section:
    """A rendered section: its body, lines for the setup section, and the numbers (``facts``) the
    discussion draws on. ``missing`` holds the reason when the section is a missing box."""

    key: str
    title: str
    body: str
    setup: tuple[str, ...] = ()
    facts: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    missing: str | None = None

    def markdown(self, level: int = 2) -> str:
        return f"{'#' * level} {self.title}\n\n{self.body.strip()}\n"
