"""The original paper's numbers, the only numbers in the paper that do not come from results/.

Source: Blake, Orr, Luschi, "Unit Scaling: Out-of-the-Box Low-Precision Training", ICML 2023
(arXiv 2303.11257), as recorded in docs/reference/unit_scaling_rules.md ("Paper results worth
reproducing"): best test bits per character of character-level language models on WikiText-103 raw
(hidden 128, depth 8, sequence 256, batch 8, FFN x4, AdamW), 95% CI +-0.01.
"""

from __future__ import annotations

from types import MappingProxyType

CITATION = ("Blake, Orr & Luschi, *Unit Scaling: Out-of-the-Box Low-Precision Training*, ICML 2023, "
            "arXiv:2303.11257")
UMUP_CITATION = ("Blake et al., *u-μP: The Unit-Scaled Maximal Update Parametrization*, 2024, "
                 "arXiv:2407.17465")
SETUP = ("WikiText-103 raw, hidden 128, depth 8, sequence 256, batch 8, FFN x4, AdamW; best test bits "
         "per character, 95% CI ±0.01")
CI_HALF_WIDTH = 0.01  # the paper's reported 95% CI of each BPC

# (model, column) -> best test BPC. Model: "<sequence layer> <norm placement>-norm"; column:
# (precision, parametrisation, loss scaling) with parametrisation "standard" ("regular" in the
# paper) or "unit-scaled". The paper's FP16 is its own regime, precision preset "fp16_paper" here
# (FP16 weights and first moment, no float32 copy, stochastic rounding), with its static loss scale
# 2048 on the backward pass only ("static-backward").
BPC = MappingProxyType({
    ("attention pre-norm", ("fp16_paper", "standard", "none")): 1.661,
    ("attention pre-norm", ("fp16_paper", "unit-scaled", "none")): 1.567,
    ("attention pre-norm", ("fp16_paper", "standard", "static-backward")): 1.587,
    ("attention pre-norm", ("fp32", "standard", "none")): 1.582,
    ("attention pre-norm", ("fp32", "unit-scaled", "none")): 1.562,
})

# The paper's findings as comparisons of two columns of the BPC table: (key, claim, a, b, kind) with
# kind "higher" (a is worse than b) or "matches".
FINDINGS = (
    ("fp16-degrades", "FP16 standard without loss scaling degrades clearly against FP32 standard",
     ("fp16_paper", "standard", "none"), ("fp32", "standard", "none"), "higher"),
    ("fp16-static-matches", "FP16 standard with loss scale 2048 matches FP32 standard",
     ("fp16_paper", "standard", "static-backward"), ("fp32", "standard", "none"), "matches"),
    ("unit-fp16-matches", "unit-scaled FP16 without loss scaling matches FP32",
     ("fp16_paper", "unit-scaled", "none"), ("fp32", "standard", "none"), "matches"),
    ("unit-fp16-matches-unit-fp32", "unit-scaled FP16 matches unit-scaled FP32",
     ("fp16_paper", "unit-scaled", "none"), ("fp32", "unit-scaled", "none"), "matches"),
)
