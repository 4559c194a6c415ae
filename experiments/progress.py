"""Progress of a training run: a tqdm bar (loss, tokens/s, ETA) and a throughput clock.

The clock measures training only: it starts after the first step has run (which includes compiling
the step) and is paused around evaluation and checkpointing, so ``tokens/s`` is the steady-state rate
of the step itself. The bar is drawn only on a terminal; the record lines printed through
:meth:`Progress.write` appear either way, so logs piped to a file still show the loss going down.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

from tqdm.auto import tqdm


class Clock:
    """Seconds and steps of steady-state training since :meth:`start`, excluding :meth:`paused` spans."""

    def __init__(self):
        self._started: float | None = None
        self._excluded = 0.0
        self._first_step = 0

    def start(self, step: int) -> None:
        self._started, self._excluded, self._first_step = time.perf_counter(), 0.0, step

    @property
    def running(self) -> bool:
        return self._started is not None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self._excluded += time.perf_counter() - begin

    def seconds(self) -> float:
        return 0.0 if self._started is None else time.perf_counter() - self._started - self._excluded

    def steps_per_second(self, step: int) -> float:
        """Steps done since :meth:`start` per second of training; NaN before two measurements exist."""
        seconds, steps = self.seconds(), step - self._first_step
        return steps / seconds if steps > 0 and seconds > 0 else float("nan")


class Progress:
    """A step bar from ``initial`` to ``total`` showing loss and tokens/s in its postfix, with tqdm's ETA."""

    def __init__(self, total: int, initial: int = 0, *, enabled: bool = True, file: TextIO | None = None):
        self._file = file or sys.stderr
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=self._file,
                         disable=None if enabled else True, leave=True)

    def advance(self, steps: int = 1) -> None:
        self._bar.update(steps)

    def show(self, **values: float | str) -> None:
        """Set the postfix, e.g. ``show(loss=2.31, tok_s="12.3k")``."""
        self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in values.items()},
                              refresh=False)

    def write(self, line: str) -> None:
        """Print a line to stdout above the bar (which lives on stderr), or plainly when there is no bar."""
        self._bar.write(line, file=sys.stdout)

    def close(self) -> None:
        self._bar.close()


def format_rate(per_second: float) -> str:
    """``12345.6 -> "12.3k"``; a compact rate for the bar and the log lines."""
    if per_second != per_second:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if per_second >= size:
            return f"{per_second / size:.3g}{unit}"
    return f"{per_second:.3g}"
