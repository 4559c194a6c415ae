"""The u-muP residual rule: branch weights tau for a stack of alternating attention/MLP branches.

Blake et al. (2024), u-muP, as summarised in docs/reference/unit_scaling_rules.md ("Residual
rule"): with ``L = 2 * depth`` branches (index ``2i`` the sequence mixer of layer i, ``2i+1`` its
MLP),

    alpha_mlp = residual_mult * sqrt(2 / (1 + residual_attn_ratio^2)),  alpha_attn = ratio * alpha_mlp,
    tau_l = alpha_l / sqrt(L/2 + n_attn(l) alpha_attn^2 + n_mlp(l) alpha_mlp^2),

where ``n_attn(l)``, ``n_mlp(l)`` count the branches before l. With ``residual_add``'s weights
``(tau f + x) / sqrt(1 + tau^2)``, the stream after all branches is ``sum_l c_l f_l + c_0 x_0``
with ``c_0^2 + sum c_l^2 = 1`` and ``c_l^2`` proportional to ``alpha_l^2 / (L/2)`` (embedding: 1).
"""

from __future__ import annotations

import math

__all__ = ["residual_taus", "residual_contributions"]


def residual_taus(
    depth: int, residual_mult: float = 1.0, residual_attn_ratio: float = 1.0
) -> tuple[float, ...]:
    """``(tau_0, ..., tau_{2 depth - 1})``: the mixer branch of layer i is ``2i``, its MLP ``2i+1``."""
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be a positive int, got {depth!r}")
    for name, value in (("residual_mult", residual_mult), ("residual_attn_ratio", residual_attn_ratio)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    alpha_mlp = residual_mult * math.sqrt(2.0 / (1.0 + residual_attn_ratio**2))
    alpha_attn = residual_attn_ratio * alpha_mlp
    half = depth  # L / 2 with L = 2 * depth branches
    taus = []
    for index in range(2 * depth):
        n_attn, n_mlp = (index + 1) // 2, index // 2
        alpha = alpha_attn if index % 2 == 0 else alpha_mlp
        taus.append(alpha / math.sqrt(half + n_attn * alpha_attn**2 + n_mlp * alpha_mlp**2))
    return tuple(taus)


def residual_contributions(taus: tuple[float, ...]) -> tuple[float, ...]:
    """``(c_0, c_1, ..., c_L)``: the weight of the stack's input and of each branch output in the
    stack's output, given ``residual_add(f, x, tau) = (tau f + x) / sqrt(1 + tau^2)`` per branch."""
    weights = [1.0]
    for tau in taus:
        norm = math.sqrt(1.0 + tau**2)
        weights = [w / norm for w in weights] + [tau / norm]
    return tuple(weights)
