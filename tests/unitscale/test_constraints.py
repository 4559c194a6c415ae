"""Constraints: the means, the selectors, name resolution and how ops apply them."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unitscale import constraints as C

scales = st.lists(st.floats(min_value=1e-4, max_value=1e4), min_size=1, max_size=4)


def test_means_on_known_values():
    assert C.gmean(8.0, 2.0) == 4.0
    assert C.hmean(8.0, 2.0) == 3.2
    assert C.amean(8.0, 2.0) == 5.0
    assert C.gmean(12.75, 55.0, 0.001) == pytest.approx((12.75 * 55.0 * 0.001) ** (1 / 3))
    assert C.hmean(12.75, 55.0, 0.001) == pytest.approx(3 / (1 / 12.75 + 1 / 55.0 + 1000))


@settings(max_examples=50)
@given(values=scales)
def test_means_are_ordered_and_bounded(values):
    g, h, a = C.gmean(*values), C.hmean(*values), C.amean(*values)
    lo, hi = min(values), max(values)
    rel = 1e-9
    assert lo * (1 - rel) <= h <= g * (1 + rel)  # HM <= GM
    assert g <= a * (1 + rel) and a <= hi * (1 + rel)  # GM <= AM <= max
    assert C.gmean(*[values[0]] * len(values)) == pytest.approx(values[0])


def test_selectors_pick_their_scale():
    assert C.to_output_scale(2.0, 3.0) == 2.0
    assert C.to_output_scale(2.0, 3.0, 4.0) == 2.0
    assert C.to_grad_input_scale(2.0, 3.0) == 3.0
    assert C.to_left_grad_scale(2.0, 3.0, 4.0) == 3.0
    assert C.to_right_grad_scale(2.0, 3.0, 4.0) == 4.0


def test_resolves_every_name_callable_and_none():
    for name, fn in C.CONSTRAINTS.items():
        assert C.resolve_constraint(name) is fn and fn.__name__ == name
    custom = min
    assert C.resolve_constraint(custom) is custom
    assert C.resolve_constraint(None) is None
    assert set(C.CONSTRAINTS) == {
        "gmean", "hmean", "amean", "to_output_scale", "to_grad_input_scale",
        "to_left_grad_scale", "to_right_grad_scale",
    }  # fmt: skip


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="constraint 'geomean' is unknown") as info:
        C.resolve_constraint("geomean")
    for name in C.CONSTRAINTS:
        assert repr(name) in str(info.value)
    assert "None" in str(info.value)


def test_non_name_non_callable_is_a_type_error():
    with pytest.raises(TypeError, match="constraint must be"):
        C.resolve_constraint(3.0)


@settings(max_examples=20)
@given(
    name=st.sampled_from(["gmean", "hmean", "amean", "to_output_scale"]),
    values=st.lists(st.floats(min_value=1e-3, max_value=1e3), min_size=2, max_size=3),
)
def test_apply_ties_every_scale_to_one_value(name, values):
    tied = C.apply_constraint(name, *values)
    assert len(tied) == len(values)
    assert len(set(tied)) == 1
    assert tied[0] == pytest.approx(C.CONSTRAINTS[name](*values))


def test_apply_none_leaves_scales_independent():
    assert C.apply_constraint(None, 1.0, 4.0, 2.0) == (1.0, 4.0, 2.0)


def test_apply_accepts_callables():
    assert C.apply_constraint(lambda *s: min(s), 1.0, 4.0, 0.5) == (0.5, 0.5, 0.5)


@pytest.mark.parametrize(
    "name, count",
    [("to_grad_input_scale", 3), ("to_left_grad_scale", 2), ("to_right_grad_scale", 2)],
)
def test_apply_rejects_constraints_of_the_wrong_arity(name, count):
    with pytest.raises(ValueError, match=f"constraint '{name}' does not apply .* {count} tied"):
        C.apply_constraint(name, *[1.0] * count)


@pytest.mark.parametrize("bad", [-1.0, 0.0, math.inf, "x"])
def test_apply_rejects_a_bad_tied_value(bad):
    with pytest.raises(ValueError, match="positive finite"):
        C.apply_constraint(lambda *s: bad, 1.0, 2.0)
