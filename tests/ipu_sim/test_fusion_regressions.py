"""Element-wise fusion keeps a well-formed program: regressions and random element-wise DAGs.

The bug these guard against: an op reading one value in two operand slots (``d * d``) fused the
value's producer for the first slot and kept the removed intermediate as an input for the second,
so tile mapping met a value nothing produces (``KeyError`` in ``tiles.received``).
"""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ipu_sim
from ipu_sim import estimate_program, fuse, trace
from ipu_sim.trace import VectorWork


def sds(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def assert_well_formed(program, fused):
    """Every input of every fused op exists when it runs; nothing computed is lost or duplicated."""
    known = {v.id for v in fused.inputs + fused.constants}
    for op in fused.ops:
        missing = [v.id for v in op.inputs if v.id not in known]
        assert not missing, f"{op.name} reads values {missing} that no kept op makes"
        known |= {v.id for v in op.outputs}
    assert all(v.id in known for v in fused.outputs)
    assert fused.flops == program.flops
    assert _total_work(fused) == _total_work(program)


def _total_work(program) -> VectorWork:
    return sum((op.work for op in program.ops for _ in range(op.count)), VectorWork())


@pytest.mark.parametrize("fn, expected", [
    (lambda x: (lambda d: d * d)(x * 2), ["mul+mul"]),  # the reported repro
    (lambda x: (lambda d: d * d)((x * 2).reshape(8, 8)), ["mul+mul"]),  # through a reshape view
    (lambda x: (lambda r: r * r)((x * 2).reshape(8, 8)), ["mul+mul"]),  # the view read twice
    (lambda x: (lambda d: jnp.maximum(d, d).sum())(jnp.exp(x)), ["exp+max+reduce_sum"]),
    # sin's output has three readers (not fused); the select reads it in three slots via gt and neg.
    (lambda x: (lambda d: jax.lax.select(d > 0, d, -d))(jnp.sin(x)), ["sin", "neg+gt+select_n"]),
])
def test_a_value_read_in_several_operand_slots_is_fused_once(fn, expected):
    x = sds(64)
    program = trace(fn, x)
    fused = fuse(program)
    assert_well_formed(program, fused)
    assert [op.name for op in fused.ops] == expected
    assert all(len({v.id for v in op.inputs}) == len(op.inputs) for op in fused.ops)
    est = ipu_sim.estimate(fn, x)  # raised KeyError in tiles.received before the fix
    assert est.cycles > 0 and est.flops == program.flops
    assert est.supersteps < ipu_sim.estimate(fn, x, fuse=False).supersteps


def test_the_system_estimate_fuses_repeated_operands_too():
    def step(w, x):
        g = jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w)
        return w - 0.1 * (lambda u: u * u)(g * 0.5)  # the update reads g * 0.5 twice

    program = trace(step, sds(16, 16), sds(8, 16))
    assert_well_formed(program, fuse(program))
    est = ipu_sim.estimate_system(step, sds(16, 16), sds(8, 16))  # fuses, then costs per IPU
    assert est.step_seconds > 0 and est.fits


# Random element-wise DAGs over two inputs; "same" makes both operands of a binary op one value.
_BINARY = {"add": jnp.add, "mul": jnp.multiply, "sub": jnp.subtract, "max": jnp.maximum}
_UNARY = {"exp": jnp.exp, "neg": jnp.negative, "tanh": jnp.tanh,
          "reshape": lambda a: a.reshape(4, 8).reshape(32)}
_NODE = st.tuples(st.sampled_from(sorted(_BINARY) + sorted(_UNARY)), st.integers(0, 63),
                  st.integers(0, 63), st.booleans())


def _dag(nodes, extra_output, reduce):
    def fn(x, y):
        values = [x, y]
        for name, i, j, same in nodes:
            a = values[i % len(values)]
            b = a if same else values[j % len(values)]
            values.append(_BINARY[name](a, b) if name in _BINARY else _UNARY[name](a))
        last = values[-1].sum() if reduce else values[-1]
        return (last, values[extra_output % len(values)]) if extra_output is not None else last
    return fn


@settings(max_examples=25)
@given(nodes=st.lists(_NODE, min_size=1, max_size=8), extra_output=st.none() | st.integers(0, 63),
       reduce=st.booleans())
def test_fusing_random_elementwise_dags_with_repeated_operands_keeps_them_well_formed(
        nodes, extra_output, reduce):
    program = trace(_dag(nodes, extra_output, reduce), sds(32), sds(32))
    fused = fuse(program)
    assert_well_formed(program, fused)
    unfused_est = estimate_program(program, fuse=False)
    fused_est = estimate_program(program, fuse=True)
    assert fused_est.flops == unfused_est.flops
    assert fused_est.supersteps <= unfused_est.supersteps
