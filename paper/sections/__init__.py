"""The sections of the paper, one module each; ``EXPERIMENTS`` are those built from result files,
in the order they appear."""

from paper.sections import bert, charlm, discussion, ipu, method, scales, setup, shift, umup

EXPERIMENTS = (charlm, shift, bert, scales, ipu, umup)

__all__ = ["EXPERIMENTS", "bert", "charlm", "discussion", "ipu", "method", "scales", "setup", "shift", "umup"]
