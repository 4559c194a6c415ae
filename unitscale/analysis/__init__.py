"""Scale analysis: every tensor's scale in the forward and backward pass, against a format's range.

* :mod:`~unitscale.analysis.program` flattens a function's jaxpr into ops with module paths;
* :mod:`~unitscale.analysis.tracking` re-runs it with zero probes to record values and gradients
  (:func:`track_scales`, :func:`track_model_scales`);
* :mod:`~unitscale.analysis.stats` and :mod:`~unitscale.analysis.coverage` reduce a tensor to its
  statistics and to the shares of its values each format can hold;
* :mod:`~unitscale.analysis.records` holds the results; :mod:`~unitscale.analysis.plots` draws them.
"""

from unitscale.analysis.coverage import (
    COVERAGE_CLASSES,
    Coverage,
    RangeThresholds,
    range_coverage,
    range_thresholds,
)
from unitscale.analysis.plots import PLOT_FORMATS, plot_histogram, plot_scales
from unitscale.analysis.records import KINDS, PHASES, ScaleRecord, ScaleReport
from unitscale.analysis.stats import STAT_NAMES, TensorStats, log2_histogram, tensor_stats
from unitscale.analysis.tracking import DEFAULT_FORMATS, track_model_scales, track_scales

__all__ = [
    "COVERAGE_CLASSES",
    "DEFAULT_FORMATS",
    "KINDS",
    "PHASES",
    "PLOT_FORMATS",
    "STAT_NAMES",
    "Coverage",
    "RangeThresholds",
    "ScaleRecord",
    "ScaleReport",
    "TensorStats",
    "log2_histogram",
    "plot_histogram",
    "plot_scales",
    "range_coverage",
    "range_thresholds",
    "tensor_stats",
    "track_model_scales",
    "track_scales",
]
