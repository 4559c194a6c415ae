"""Checks of what a user hands a script -- output directories, corpora, sequence lengths -- made before
any work starts, so that a bad value ends in one line naming the option instead of a traceback.

Every check raises :class:`InputError`, a ``ValueError`` whose message is that line. Command lines
print it and exit with status 2 (:func:`experiments.cli.run_main`, the sweep scripts' ``main``); a
sweep records it as the failed run's error. A bad option argparse itself finds is reported the same
way by :class:`ScriptParser`, the parser of every script: one line, not the usage of every option.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

# Corpora :func:`experiments.data.load_corpus` knows by name; any other --data is a path.
NAMED_CORPORA = ("shakespeare", "gcide")


class InputError(ValueError):
    """A bad option value, file or spec; the message is one line that names the option and the fix."""


class ScriptParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line on stderr, ``PROG: error: MESSAGE (--help lists the
    options)``, and exit status 2, like argparse's own but without the usage of every option."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the options)\n")


def print_error(error: Exception) -> int:
    """Print ``error`` as one line on stderr; the exit status of a bad input, 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a Path if it is a directory or can become one; InputError if it (or a parent) is a file."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "is a file" if part == path else f"lies under {part}, which is a file"
            raise InputError(f"{option} {path}: {where}; give a directory (it is made if missing)")
    return path


def check_data(name: str | os.PathLike, option: str = "--data", also: tuple[str, ...] = ()) -> str:
    """``name`` if it is a named corpus (or one of ``also``) or an existing file or directory; else InputError."""
    if str(name) in NAMED_CORPORA + also or Path(name).exists():
        return str(name)
    named = ", ".join(NAMED_CORPORA + also)
    raise InputError(f"{option} {name}: no such file or directory; give {named}, a WikiText directory or a text file")


def check_split_length(tokens: int, needed: int, *, split: str, seq_len: int, source: str) -> None:
    """InputError when the ``split`` of ``source`` has fewer than ``needed`` tokens, the least that
    windows of ``--seq-len seq_len`` need."""
    if tokens < needed:
        raise InputError(f"--seq-len {seq_len}: the {split} split of {source} has {tokens:,} tokens, fewer than "
                         f"the {needed:,} that windows of this length need; use a smaller --seq-len or more data")
