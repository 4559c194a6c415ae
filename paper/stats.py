"""Means, 95% confidence intervals and differences over seeds, and the words a claim may use.

A cell of a results table is a :class:`Sample`: the values of one metric of its completed runs
(seeds), how many runs diverged, and -- for a cell with a single completed run -- that run's own
95% half-width from its evaluation (test-set sampling noise only, not seed-to-seed variation).

* two or more runs: the Student-t interval ``mean +- t_{0.975, n-1} s / sqrt(n)`` (kind "seeds");
* one run: its evaluation half-width if recorded (kind "evaluation"), else none.

A difference of two cells uses Welch's interval when both have seeds, else (normal approximation)
``+- sqrt(h_a^2 + h_b^2)`` of the two half-widths, labelled with the weaker kind. Wording is chosen
only by comparing an interval with zero (and with an equivalence margin for "matches" claims), so
a sentence can never say more than its numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy.stats import t as student_t

LEVEL = 0.95


@dataclass(frozen=True)
class Sample:
    """Finite values of one metric over completed runs, the number of diverged runs, and the single
    completed run's own 95% half-width (``run_ci``), if any."""

    values: tuple[float, ...]
    diverged: int = 0
    run_ci: float | None = None

    @classmethod
    def of(cls, values: Iterable[float], diverged: int = 0, run_ci: float | None = None) -> "Sample":
        """Non-finite ``values`` count as diverged runs."""
        values = tuple(float(v) for v in values)
        finite = tuple(v for v in values if math.isfinite(v))
        diverged += len(values) - len(finite)
        if not values and not diverged:
            raise ValueError("values: a sample needs at least one run")
        if run_ci is not None and not (math.isfinite(run_ci) and run_ci >= 0):
            run_ci = None
        return cls(finite, diverged, run_ci)

    @property
    def n(self) -> int:
        """Completed runs."""
        return len(self.values)

    @property
    def runs(self) -> int:
        return self.n + self.diverged

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.n else math.nan

    @property
    def sd(self) -> float:
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def kind(self) -> str | None:
        """"seeds", "evaluation" or None: what the interval accounts for."""
        return "seeds" if self.n >= 2 else "evaluation" if self.n == 1 and self.run_ci is not None else None

    @property
    def half_width(self) -> float | None:
        if self.kind == "seeds":
            return student_t.ppf(0.5 + LEVEL / 2, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.run_ci if self.kind == "evaluation" else None

    def text(self, digits: int = 3) -> str:
        """``1.623 ± 0.004 (n=3)``; ``diverged (3/3)``; ``1.701 ± 0.010 (n=1, 2/3 diverged)``."""
        if not self.n:
            return f"diverged ({self.diverged}/{self.runs})"
        hw = self.half_width
        note = f"n={self.n}" + (f", {self.diverged}/{self.runs} diverged" if self.diverged else "")
        return f"{self.mean:.{digits}f}" + ("" if hw is None else f" ± {hw:.{digits}f}") + f" ({note})"


@dataclass(frozen=True)
class Difference:
    """``a - b`` with a 95% interval (``low``/``high`` None without one); ``kind`` says what the
    interval accounts for; ``diverged`` names the side(s) with no completed run."""

    estimate: float
    low: float | None
    high: float | None
    kind: str | None = None
    diverged: str | None = None  # "a", "b", "both" or None

    @property
    def has_interval(self) -> bool:
        return self.low is not None


def difference(a: Sample, b: Sample) -> Difference:
    """``mean(a) - mean(b)`` with Welch's interval (both cells over seeds) or the root-sum-square of
    the two half-widths (otherwise, when both have one)."""
    if not a.n or not b.n:
        side = "both" if not (a.n or b.n) else "a" if not a.n else "b"
        return Difference(math.nan, None, None, None, side)
    d = a.mean - b.mean
    if a.kind == b.kind == "seeds":
        va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
        if va + vb == 0:
            return Difference(d, d, d, "seeds")
        df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
        hw = student_t.ppf(0.5 + LEVEL / 2, df) * math.sqrt(va + vb)
        return Difference(d, d - hw, d + hw, "seeds")
    if a.half_width is None or b.half_width is None:
        return Difference(d, None, None)
    hw = math.hypot(a.half_width, b.half_width)
    return Difference(d, d - hw, d + hw, "evaluation")


def paired_difference(a: Mapping[str, float], b: Mapping[str, float], a_ci: Mapping[str, float] | None = None,
                      b_ci: Mapping[str, float] | None = None) -> Difference:
    """``a - b`` over the seeds both completed (``a`` and ``b`` map seed to value): the mean of the
    per-seed differences with its t-interval (two or more pairs; the same seed shares initialisation
    and data, so the seeds' own spread cancels), or for a single pair the root-sum-square of the two
    runs' half-widths ``a_ci``/``b_ci`` when given."""
    shared = sorted(set(a) & set(b))
    if not shared:
        side = "a" if b and not a else "b" if a and not b else "both"
        return Difference(math.nan, None, None, None, side)
    diffs = Sample.of(a[s] - b[s] for s in shared)
    if diffs.kind == "seeds":
        hw = diffs.half_width
        return Difference(diffs.mean, diffs.mean - hw, diffs.mean + hw, "seeds")
    (seed,) = shared
    if a_ci is None or b_ci is None or seed not in a_ci or seed not in b_ci:
        return Difference(diffs.mean, None, None)
    hw = math.hypot(a_ci[seed], b_ci[seed])
    return Difference(diffs.mean, diffs.mean - hw, diffs.mean + hw, "evaluation")


# Outcomes of a claim against the numbers.
REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, CONTRADICTED, UNDETERMINED, DIVERGED, CONSISTENT, BETTER = (
    "reproduced", "not reproduced", "inconclusive", "contradicted", "undetermined", "diverged",
    "consistent", "better than matching")


def direction(d: Difference) -> str:
    """``"higher"``, ``"lower"`` (the interval excludes 0), ``"indistinguishable"`` (it contains 0),
    ``"unknown"`` (no interval) or ``"diverged"`` (a side has no completed run)."""
    if d.diverged:
        return "diverged"
    if not d.has_interval:
        return "unknown"
    if d.low > 0:
        return "higher"
    if d.high < 0:
        return "lower"
    return "indistinguishable"


def judge_higher(d: Difference) -> str:
    """Outcome of "a is higher (worse) than b"; every run of a diverging while b trains counts as
    higher."""
    if d.diverged:
        return REPRODUCED if d.diverged == "a" else DIVERGED
    return {"higher": REPRODUCED, "indistinguishable": NOT_REPRODUCED, "lower": CONTRADICTED,
            "unknown": UNDETERMINED}[direction(d)]


def judge_matches(d: Difference, margin: float) -> str:
    """Outcome of "a matches b" (lower is better): reproduced when the whole interval lies within
    ``+-margin``; better than matching when all of it lies below ``-margin`` (a claim of "no loss"
    then holds with room to spare, but a is not b); contradicted when it excludes 0 and reaches
    beyond ``+margin`` (or a diverged and b did not); inconclusive otherwise."""
    if d.diverged:
        return CONTRADICTED if d.diverged == "a" else DIVERGED
    where = direction(d)
    if where == "unknown":
        return UNDETERMINED
    if -margin <= d.low and d.high <= margin:
        return REPRODUCED
    if d.high < -margin:
        return BETTER
    if where != "indistinguishable" and d.low > margin:
        return CONTRADICTED
    return INCONCLUSIVE


def judge_not_worse(d: Difference) -> str:
    """Outcome of "a is no worse than b" (lower is better) without an equivalence margin:
    ``consistent`` when the interval contains 0 (no detectable difference, which a wide interval
    also gives), ``reproduced`` when a is detectably better, ``not reproduced`` when worse."""
    if d.diverged:
        return NOT_REPRODUCED if d.diverged == "a" else DIVERGED
    return {"higher": NOT_REPRODUCED, "indistinguishable": CONSISTENT, "lower": REPRODUCED,
            "unknown": UNDETERMINED}[direction(d)]


def compared(d: Difference, unit: str, higher: str, lower: str, digits: int = 3) -> str:
    """A phrase for ``a - b`` that stands after "a against b:": ``"0.079 bpc worse (95% CI [...] over
    seeds)"`` when the interval excludes 0, ``"indistinguishable: difference +0.004 bpc, 95% CI [...]
    over seeds contains 0"`` when it contains 0, ``"0.010 bpc worse, one run per cell and no
    confidence interval"`` without one, ``"worse: every run diverged"`` when a never finished."""
    if d.diverged:
        return {"a": f"{higher}: every run diverged", "b": f"{lower}: every run of the other diverged",
                "both": "not comparable: every run of both diverged"}[d.diverged]
    where = direction(d)
    size = f"{abs(d.estimate):.{digits}f} {unit}"
    word = higher if d.estimate > 0 else lower
    if where == "unknown":
        return f"{size} {word}, one run per cell and no confidence interval"
    basis = "over seeds" if d.kind == "seeds" else "from evaluation noise only, one seed"
    ci = f"95% CI [{d.low:+.{digits}f}, {d.high:+.{digits}f}] {basis}"
    if where == "indistinguishable":
        return f"indistinguishable: difference {d.estimate:+.{digits}f} {unit}, {ci} contains 0"
    return f"{size} {word} ({ci})"
