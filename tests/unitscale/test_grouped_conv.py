"""unitscale.grouped_conv: the depthwise convolution as shifted products is lax's grouped convolution,
values and gradients, to rounding in the accumulation dtype; other groupings are lax's own."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from unitscale.grouped_conv import grouped_conv1d, is_depthwise, lax_conv1d


def _value_and_grads(conv, x, w, seed):
    out, vjp = jax.vjp(conv, x, w)
    cotangent = jax.random.normal(jax.random.key(seed), out.shape, out.dtype)
    return (out, *vjp(cotangent))


@settings(max_examples=12)
@given(
    kernel=st.sampled_from([1, 3, 7]),
    stride=st.sampled_from([1, 2]),
    dilation=st.sampled_from([1, 3]),
    padding=st.sampled_from([(6, 0), (0, 0), (2, 3)]),
    dtype=st.sampled_from([jnp.float32, jnp.float16]),
    seed=st.integers(0, 2**16),
)
def test_depthwise_as_shifted_products_is_laxs_grouped_convolution(kernel, stride, dilation, padding, dtype, seed):
    channels, seq = 8, 24
    x = jax.random.normal(jax.random.key(seed), (3, seq, channels)).astype(dtype)
    w = jax.random.normal(jax.random.key(seed + 1), (kernel, 1, channels)).astype(dtype)
    options = dict(stride=stride, padding=padding, dilation=dilation, groups=channels, accumulate=jnp.float32)
    assert is_depthwise(channels, w.shape)
    ours = _value_and_grads(lambda x, w: grouped_conv1d(x, w, **options), x, w, seed + 2)
    theirs = _value_and_grads(lambda x, w: lax_conv1d(x, w, **options), x, w, seed + 2)
    assert ours[0].dtype == jnp.float32 and ours[0].shape == theirs[0].shape
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        # Float32 sums of <= 3 * 24 exact products: a few float32 roundings apart, then (for the
        # float16 gradients) rounded to float16.
        tol = 1e-5 if dtype == jnp.float32 else 2e-3
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tol, atol=tol)


def test_other_groupings_are_laxs_convolution_bit_for_bit():
    x = jax.random.normal(jax.random.key(0), (2, 16, 8))
    for groups, w_shape in ((1, (3, 8, 4)), (2, (3, 4, 8)), (8, (3, 1, 16))):  # the last: 2 filters a channel
        w = jax.random.normal(jax.random.key(1), w_shape)
        assert not is_depthwise(8, w_shape)
        options = dict(stride=1, padding=(2, 0), dilation=1, groups=groups, accumulate=jnp.float32)
        np.testing.assert_array_equal(grouped_conv1d(x, w, **options), lax_conv1d(x, w, **options))
