"""Means, 95% confidence intervals and differences over seeds, and the words a claim may use.

A cell of a results table is a :class:`Sample` of one metric over seeds. Its interval is the
Student-t interval ``mean +- t_{0.975, n-1} s / sqrt(n)``; a difference of two cells uses Welch's
interval (unequal variances, Welch-Satterthwaite degrees of freedom). With one run in either cell
there is no interval, and every wording says so instead of guessing.

Wording is chosen only by comparing an interval with zero (and with an equivalence margin for
"matches" claims), so a sentence can never say more than its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95


@dataclass(frozen=True)
class Sample:
    """Values of one metric over runs (seeds); non-finite values are diverged runs."""

    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Iterable[float]) -> "Sample":
        values = tuple(float(v) for v in values)
        if not values:
            raise ValueError("values: a sample needs at least one run")
        return cls(values)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def diverged(self) -> int:
        """Runs whose value is NaN or infinite."""
        return sum(not math.isfinite(v) for v in self.values)

    @property
    def mean(self) -> float:
        return math.nan if self.diverged else sum(self.values) / self.n

    @property
    def sd(self) -> float:
        if self.n < 2 or self.diverged:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def half_width(self) -> float | None:
        """95% t-interval half-width; None with one run or a diverged run."""
        if self.n < 2 or self.diverged:
            return None
        return student_t.ppf(0.5 + LEVEL / 2, self.n - 1) * self.sd / math.sqrt(self.n)

    def text(self, digits: int = 3) -> str:
        """``1.623 ± 0.004`` (``1.623`` for one run, ``diverged (2/3)`` when runs diverged)."""
        if self.diverged:
            return f"diverged ({self.diverged}/{self.n})"
        hw = self.half_width
        return f"{self.mean:.{digits}f}" + ("" if hw is None else f" ± {hw:.{digits}f}")


@dataclass(frozen=True)
class Difference:
    """``a - b`` with Welch's 95% interval (``low``/``high`` None without one)."""

    estimate: float
    low: float | None
    high: float | None
    n_a: int
    n_b: int

    @property
    def has_interval(self) -> bool:
        return self.low is not None

    def text(self, digits: int = 3) -> str:
        ci = (f" (95% CI [{self.low:+.{digits}f}, {self.high:+.{digits}f}])" if self.has_interval
              else " (one run in a cell: no confidence interval)")
        return f"{self.estimate:+.{digits}f}{ci}"


def difference(a: Sample, b: Sample) -> Difference:
    """``mean(a) - mean(b)`` and Welch's interval; NaN estimate if either diverged."""
    if a.diverged or b.diverged:
        return Difference(math.nan, None, None, a.n, b.n)
    d = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(d, None, None, a.n, b.n)
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(d, d, d, a.n, b.n)
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    hw = student_t.ppf(0.5 + LEVEL / 2, df) * se
    return Difference(d, d - hw, d + hw, a.n, b.n)


# Outcomes of a claim against the numbers.
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, CONTRADICTED, UNDETERMINED, DIVERGED, CONSISTENT = (
    "reproduced", "not reproduced", "inconclusive", "contradicted", "undetermined", "diverged",
    "consistent")


def direction(d: Difference) -> str:
    """``"higher"``, ``"lower"`` (the interval excludes 0), ``"indistinguishable"`` (it contains 0),
    ``"unknown"`` (no interval) or ``"diverged"``."""
    if math.isnan(d.estimate):
        return "diverged"
    if not d.has_interval:
        return "unknown"
    if d.low > 0:
        return "higher"
    if d.high < 0:
        return "lower"
    return "indistinguishable"


def judge_higher(d: Difference) -> str:
    """Outcome of the claim "a is higher than b" (e.g. a worse bits-per-character)."""
    return {"higher": REPRODUCED, "indistinguishable": NOT_REPRODUCED, "lower": CONTRADICTED,
            "unknown": UNDETERMINED, "diverged": DIVERGED}[direction(d)]


def judge_matches(d: Difference, margin: float) -> str:
    """Outcome of "a matches b": reproduced when the whole interval lies within ``+-margin``;
    contradicted when it excludes 0 and reaches beyond the margin; inconclusive otherwise."""
    where = direction(d)
    if where in ("unknown", "diverged"):
        return UNDETERMINED if where == "unknown" else DIVERGED
    if -margin <= d.low and d.high <= margin:
        return REPRODUCED
    if where != "indistinguishable" and (d.low > margin or d.high < -margin):
        return CONTRADICTED
    return INCONCLUSIVE


def judge_not_worse(d: Difference) -> str:
    """Outcome of "a is no worse than b" (lower is better) without an equivalence margin:
    ``consistent`` when the interval contains 0 (no detectable difference, which a wide interval
    also gives), ``reproduced`` when a is detectably better, ``not reproduced`` when worse."""
    return {"higher": NOT_REPRODUCED, "indistinguishable": CONSISTENT, "lower": REPRODUCED,
            "unknown": UNDETERMINED, "diverged": DIVERGED}[direction(d)]


def compared(d: Difference, unit: str, higher: str, lower: str, digits: int = 3) -> str:
    """A phrase for ``a - b``: ``"0.079 bpc worse (95% CI [...])"`` when the interval excludes 0,
    ``"indistinguishable (difference +0.004 bpc, 95% CI [...] contains 0)"`` when it contains 0,
    ``"0.010 bpc worse in a single run (no confidence interval)"`` without an interval."""
    where = direction(d)
    if where == "diverged":
        return "not comparable (a run diverged)"
    size = f"{abs(d.estimate):.{digits}f} {unit}"
    word = higher if d.estimate > 0 else lower
    if where == "unknown":
        return f"{size} {word} with one run per cell (no confidence interval)"
    ci = f"95% CI [{d.low:+.{digits}f}, {d.high:+.{digits}f}]"
    if where == "indistinguishable":
        return f"indistinguishable (difference {d.estimate:+.{digits}f} {unit}, {ci} contains 0)"
    return f"{size} {word} ({ci})"
