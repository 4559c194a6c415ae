"""Tracing: ops, shapes, dtypes, FLOPs and bytes from the jaxpr, through calls and control flow."""

import jax
import jax.extend
import jax.numpy as jnp
import optax
import pytest

import ipu_sim
from ipu_sim import trace
from ipu_sim.trace import COPY, MATMUL, VectorWork

F32, F16 = jnp.float32, jnp.float16


def sds(*shape, dtype=F32):
    return jax.ShapeDtypeStruct(shape, dtype)


def matmuls(program):
    return [op.detail for op in program.ops if op.kind == MATMUL]


def test_dot_general_dims_flops_and_bytes():
    p = trace(lambda a, b: jnp.einsum("bqd,bkd->bqk", a, b), sds(3, 5, 7), sds(3, 11, 7))
    (op,) = [op for op in p.ops if op.kind == MATMUL]
    d = op.detail
    assert (d.batch, d.m, d.k, d.n) == (3, 5, 7, 11)
    assert op.flops == 2 * 3 * 5 * 7 * 11 == p.flops
    assert op.bytes_in == 4 * (3 * 5 * 7 + 3 * 11 * 7)
    assert op.bytes_out == 4 * 3 * 5 * 11


def test_activation_matmul_folds_leading_dims_into_rows():
    (d,) = matmuls(trace(lambda x, w: x @ w, sds(4, 6, 8), sds(8, 10)))
    assert (d.batch, d.m, d.k, d.n) == (1, 24, 8, 10)


def test_partials_follow_preferred_element_type_else_output_dtype():
    a, b = sds(8, 8, dtype=F16), sds(8, 8, dtype=F16)
    (d,) = matmuls(trace(lambda a, b: a @ b, a, b))
    assert (d.inputs, d.partials) == ("fp16", "fp16")
    (d,) = matmuls(trace(lambda a, b: jnp.matmul(a, b, preferred_element_type=F32), a, b))
    assert (d.inputs, d.partials) == ("fp16", "fp32")
    (d,) = matmuls(trace(lambda a, b: a @ b, a, sds(8, 8)))
    assert d.inputs == "fp32"


@pytest.mark.parametrize("fn, expected", [
    (lambda a, b: jnp.matmul(a, b, preferred_element_type=F32), "fp8"),
    (lambda a, b: a.astype(F16) @ b.astype(F16), "fp8"),
    (lambda a, b: (a.astype(F16) * 0.5) @ b.astype(jnp.bfloat16).T.T.astype(F16), "fp8"),
    (lambda a, b: (a.astype(F16) + 1.0) @ b.astype(F16), "fp16"),
    (lambda a, b: a.astype(F16) @ jnp.ones((16, 4), F16), "fp16"),
])
def test_fp8_rule(fn, expected):
    a, b = sds(8, 16, dtype=jnp.float8_e4m3fn), sds(16, 4, dtype=jnp.float8_e5m2)
    (d,) = matmuls(trace(fn, a, b))
    assert d.inputs == expected
    assert d.lhs_itemsize == (1 if expected == "fp8" else 2)


def test_nested_jit_custom_jvp_and_custom_vjp_are_inlined():
    @jax.custom_vjp
    def double(x):
        return 2 * x

    double.defvjp(lambda x: (2 * x, None), lambda _, g: (2 * g,))
    fn = jax.jit(lambda x: double(jax.nn.relu(jax.jit(jnp.tanh)(x))))
    names = [op.primitive for op in trace(fn, sds(4)).ops]
    assert names == ["tanh", "max", "mul"]


def test_remat_is_recomputed_in_the_backward_pass():
    f = lambda x: jnp.sin(jnp.sin(x)).sum()  # noqa: E731
    plain = trace(jax.grad(f), sds(3))
    remat = trace(jax.grad(jax.checkpoint(f)), sds(3))
    count = lambda p: sum(op.primitive == "sin" for op in p.ops)  # noqa: E731
    # sin(sin(x))' = cos(sin(x)) cos(x): the inner sin is recomputed in the backward pass.
    assert count(remat) == count(plain) + 1
    assert any("rematted_computation" in op.path for op in remat.ops if op.primitive == "sin")


def test_scan_multiplies_counts_and_slices_its_operands():
    def body(c, x):
        return c @ x, jnp.sin(c)

    p = trace(lambda c, xs: jax.lax.scan(body, c, xs), sds(8, 8), sds(5, 8, 8))
    counts = {op.primitive: op.count for op in p.ops}
    assert counts == {"scan_buffer": 1, "dynamic_slice": 5, "dot_general": 5, "sin": 5,
                      "dynamic_update_slice": 5}
    assert p.flops == 5 * (2 * 8 ** 3 + 8 * 8)


def test_nested_scans_multiply():
    inner = lambda c, _: (jnp.cos(c), None)  # noqa: E731
    outer = lambda c, _: (jax.lax.scan(inner, c, None, length=3)[0], None)  # noqa: E731
    p = trace(lambda c: jax.lax.scan(outer, c, None, length=4)[0], sds(2))
    (cos,) = [op for op in p.ops if op.primitive == "cos"]
    assert cos.count == 12 and len(cos.loops) == 2


def test_while_with_static_bounds_is_counted():
    fn = lambda x: jax.lax.while_loop(lambda c: c[0] < 10, lambda c: (c[0] + 3, c[1] * 2), (0, x))
    p = trace(fn, sds(3))
    (mul,) = [op for op in p.ops if op.primitive == "mul"]
    (lt,) = [op for op in p.ops if op.primitive == "lt"]
    assert (mul.count, lt.count) == (4, 5)


def test_while_without_trip_count_names_the_loop():
    fn = lambda x, n: jax.lax.fori_loop(0, n, lambda i, c: c * 2, x)  # noqa: E731
    with pytest.raises(ValueError, match=r"while_loop at test_trace.py:\d+ .*while_trip_counts"):
        trace(fn, sds(3), 4)
    p = trace(fn, sds(3), 4, while_trip_counts=7)
    assert [op.count for op in p.ops if op.primitive == "mul"] == [7]
    key = f"test_trace.py:{fn.__code__.co_firstlineno}"
    p = trace(fn, sds(3), 4, while_trip_counts={key: 9})
    assert [op.count for op in p.ops if op.primitive == "mul"] == [9]


def test_cond_keeps_the_costlier_branch_or_all():
    fn = lambda p, x: jax.lax.cond(p, lambda x: x @ x, jnp.sin, x)  # noqa: E731
    kept = {op.primitive for op in trace(fn, True, sds(4, 4)).ops}
    assert "dot_general" in kept and "sin" not in kept
    both = {op.primitive for op in trace(fn, True, sds(4, 4), cond="all").ops}
    assert {"dot_general", "sin"} <= both


def test_unsupported_primitive_is_named():
    fn = lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (2,), (2,), "VALID")  # noqa: E731
    with pytest.raises(ValueError, match="unsupported primitive 'reduce_window_sum' at test_trace"):
        trace(fn, sds(4))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="cond must be"):
        trace(jnp.sin, sds(3), cond="min")
    with pytest.raises(ValueError, match="while_trip_counts"):
        trace(jnp.sin, sds(3), while_trip_counts=-1)


def test_unsupported_matmul_dtype_is_named():
    with pytest.raises(ValueError, match="dot_general at .* lhs has dtype int32"):
        trace(lambda a, b: a @ b, sds(4, 4, dtype=jnp.int32), sds(4, 4, dtype=jnp.int32))


def test_stage_cuts_a_subprogram_with_its_boundary_values():
    p = trace(lambda x: jnp.cos(jnp.sin(x) * 2), sds(8))
    first, rest = p.stage([0]), p.stage(range(1, len(p.ops)))
    assert first.inputs == p.inputs and first.outputs == p.ops[0].outputs
    assert rest.inputs == p.ops[0].outputs and rest.outputs == p.outputs


def test_convolution_is_costed_as_the_matmul_poplar_plans():
    conv = lambda x, w: jax.lax.conv_general_dilated(  # noqa: E731
        x, w, (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC"), feature_group_count=2)
    (d,) = matmuls(trace(conv, sds(4, 10, 8), sds(3, 4, 6)))
    # groups x (batch * output positions) x (input channels per group * kernel) x (outputs per group)
    assert (d.batch, d.m, d.k, d.n) == (2, 4 * 8, 4 * 3, 3)


# ---------------------------------------------------------------------------------------------------
# Primitives of a typical training step and of the FP8 quantiser.

def test_stack_is_a_copy_of_its_inputs_moving_bytes_without_flops():
    p = trace(lambda a, b: jnp.stack([a, b * 2, a], axis=1), sds(8, 16), sds(8, 16))
    (op,) = [op for op in p.ops if op.primitive == "stack"]
    assert op.kind == COPY and op.flops == 0 and op.work == VectorWork()
    assert op.bytes_in == 3 * 8 * 16 * 4 and op.bytes_out == op.bytes_in
    assert op.outputs[0].shape == (8, 3, 16)
    e = ipu_sim.estimate(lambda a: jnp.stack([a, a]), sds(256, 64))
    (cost,) = e.ops
    assert cost.flops == 0 and cost.exchange_cycles > 0 and cost.compute_cycles == 0


def test_a_stacked_fp8_value_stays_an_fp8_matmul_operand():
    fn = lambda a, b: jnp.stack([a.astype(F16)])[0] @ b.astype(F16)  # noqa: E731
    a, b = sds(8, 16, dtype=jnp.float8_e4m3fn), sds(16, 4, dtype=jnp.float8_e5m2)
    (d,) = matmuls(trace(fn, a, b))
    assert d.inputs == "fp8"


def test_tile_unstack_and_scatter_sub_are_costed_by_kind():
    kinds = lambda fn, *a: {op.primitive: op.kind for op in trace(fn, *a).ops}  # noqa: E731
    assert kinds(lambda a: jnp.tile(a, (2, 3)), sds(4, 8))["tile"] == COPY
    assert kinds(lambda a: jnp.unstack(a)[1], sds(3, 8))["unstack"] == "view"
    assert kinds(lambda a: a.at[0].subtract(1.0), sds(4, 8))["scatter-sub"] == "scatter"
    (op,) = [op for op in trace(lambda a: jnp.tile(a, (2, 3)), sds(4, 8)).ops]
    assert op.bytes_out == 6 * op.bytes_in and op.flops == 0


def test_total_order_compares_cost_more_than_a_plain_compare():
    # searchsorted orders NaNs with le_to: three simple instructions against lt's one, no FLOPs.
    p = trace(lambda a: jnp.searchsorted(jnp.arange(16.0), a), sds(8))
    (to,) = [op for op in p.ops if op.primitive == "le_to"]
    assert to.work == VectorWork(3) and to.flops == 0
    (lt,) = [op for op in trace(lambda a, b: a < b, sds(8), sds(8)).ops]
    assert lt.work == VectorWork(1)


def test_rng_bit_generator_costs_its_random_values_like_random_bits():
    shape = (64, 32)
    rbg = ipu_sim.estimate(lambda k: jax.lax.rng_bit_generator(k, shape)[1],
                           sds(4, dtype=jnp.uint32))
    bits = ipu_sim.estimate(lambda k: jax.random.bits(k, shape), jax.random.key(0))
    (a,), (b,) = rbg.ops, bits.ops
    assert a.kind == b.kind == "rng"
    # mapped by its 8 KiB of random words, not by its 16-byte generator state
    assert (a.tiles, a.compute_cycles) == (b.tiles, b.compute_cycles)


def _optimizer_update(opt):
    params = {"w": jnp.ones((8, 4)), "b": jnp.ones(4)}
    state = opt.init(params)
    return lambda g, s, p: opt.update(g, s, p), (params, state, params)


_X, _I, _KEY = sds(8, 16), sds(8, 16, dtype=jnp.int32), jax.random.key(0)
TRAINING_STEP_PIECES = {
    "adamw": _optimizer_update(optax.adamw(1e-3, weight_decay=0.1)),
    "lamb": _optimizer_update(optax.lamb(1e-3)),
    "sgd momentum": _optimizer_update(optax.sgd(1e-2, momentum=0.9)),
    "clip_by_global_norm": _optimizer_update(optax.chain(optax.clip_by_global_norm(1.0),
                                                         optax.adam(1e-3))),
    "where": (lambda a: jnp.where(a > 0, a, 0.0), (_X,)),
    "argmax": (lambda a: jnp.argmax(a, -1), (_X,)),
    "cumsum": (lambda a: jnp.cumsum(a, -1), (_X,)),
    "sort": (lambda a: jnp.sort(a, -1), (_X,)),
    "top_k": (lambda a: jax.lax.top_k(a, 3), (_X,)),
    "iota": (lambda a: a + jnp.arange(16), (_X,)),
    "random_bits / uniform": (lambda k: jax.random.uniform(k, (8, 16)), (_KEY,)),
    "normal (erf_inv)": (lambda k: jax.random.normal(k, (8, 16)), (_KEY,)),
    "split / fold_in / clone": (lambda k: jax.random.fold_in(jax.random.clone(k), 3), (_KEY,)),
    "threefry2x32": (lambda k, c: jax.extend.random.threefry_2x32(k, c),
                     (sds(2, dtype=jnp.uint32), sds(64, dtype=jnp.uint32))),
    "rng_bit_generator": (lambda k: jax.lax.rng_bit_generator(k, (8, 16))[1],
                          (sds(4, dtype=jnp.uint32),)),
    "reduce_precision": (lambda a: jax.lax.reduce_precision(a, 4, 3), (_X,)),
    "bitcast_convert_type": (lambda a: jax.lax.bitcast_convert_type(a, jnp.uint32) >> 3, (_X,)),
    "clamp": (lambda a: jax.lax.clamp(0.0, a, 1.0), (_X,)),
    "nextafter": (lambda a: jnp.nextafter(a, jnp.inf), (_X,)),
    "population_count": (lambda i: jax.lax.population_count(i), (_I,)),
    "shifts / and / or": (lambda i: ((i << 2) & 0xFF) | (i >> 1), (_I,)),
    "stack": (lambda a: jnp.stack([a, a]), (_X,)),
    "searchsorted": (lambda a: jnp.searchsorted(jnp.arange(16.0), a), (_X,)),
}


@pytest.mark.parametrize("name", sorted(TRAINING_STEP_PIECES))
def test_primitives_of_a_typical_training_step_are_traced_and_estimated(name):
    fn, args = TRAINING_STEP_PIECES[name]
    e = ipu_sim.estimate(fn, *args)
    assert e.cycles > 0 and e.seconds > 0 and e.fits


def test_deliberately_unsupported_primitives_are_named():
    # Windowed reductions and linear algebra have no IPU cost model here (Poplar has poplibs
    # codelets for some; nothing in a training step of this project needs them).
    for fn, name in [(lambda a: jnp.linalg.cholesky(a @ a.T), "cholesky"),
                     (lambda a: jnp.fft.fft(a).real, "fft")]:
        with pytest.raises(ValueError, match=f"unsupported primitive '{name}'"):
            trace(fn, sds(4, 4))


def test_optimization_barrier_with_a_literal_operand_aliases_only_its_arrays():
    # The FP8 matmul fences its quantised operand with an optimization_barrier; a literal (scale 1.0)
    # among the fenced values has no storage, so only array outputs alias their inputs.
    def fn(x):
        y, s = jax.lax.optimization_barrier((x * 2.0, 1.0))
        return (y * s).sum()

    program = trace(jax.grad(fn), jax.ShapeDtypeStruct((8, 8), jnp.float32))
    barrier = next(op for op in program.ops if op.primitive == "optimization_barrier")
    assert len(barrier.inputs) < len(barrier.outputs) and barrier.aliases[0] >= 0 > barrier.aliases[1]
    roots = program.roots()
    assert roots[barrier.outputs[0].id] == roots[barrier.inputs[barrier.aliases[0]].id]
    assert ipu_sim.estimate_program(program).seconds > 0
