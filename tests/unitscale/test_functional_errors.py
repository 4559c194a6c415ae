"""Bad input gives a ValueError / TypeError whose message names the argument and the problem."""

import jax
import jax.numpy as jnp
import pytest

import unitscale.functional as U

x46 = jnp.ones((4, 6))
w68 = jnp.ones((6, 8))
qkv = jnp.ones((2, 5, 2, 4))
ids = jnp.zeros((2, 3), jnp.int32)
KEY = jax.random.key(0)

CASES = {
    # shapes
    "matmul inner mismatch": (
        lambda: U.matmul(x46, jnp.ones((5, 3))),
        ValueError,
        r"left's last dimension \(6\) must equal right's",
    ),
    "matmul batch mismatch": (
        lambda: U.matmul(jnp.ones((2, 4, 6)), jnp.ones((3, 6, 2))),
        ValueError,
        "batch dimensions of left",
    ),
    "matmul scalar": (lambda: U.matmul(jnp.ones(()), w68), ValueError, "at least one dimension"),
    "linear fan_in": (
        lambda: U.linear(jnp.ones((4, 5)), w68),
        ValueError,
        "input's last dimension must equal weight's fan_in 6",
    ),
    "linear fan_in zero": (
        lambda: U.linear(jnp.ones((4, 0)), jnp.ones((0, 8))),
        ValueError,
        r"weight must have fan_in and fan_out >= 1, got shape \(0, 8\)",
    ),
    "linear fan_out zero": (
        lambda: U.linear(x46, jnp.ones((6, 0))),
        ValueError,
        "weight must have fan_in and fan_out >= 1",
    ),
    "linear_readout fan_in zero": (
        lambda: U.linear_readout(jnp.ones((4, 0)), jnp.ones((0, 8))),
        ValueError,
        "weight must have fan_in and fan_out >= 1",
    ),
    "matmul empty contraction": (
        lambda: U.matmul(jnp.ones((4, 0)), jnp.ones((0, 3))),
        ValueError,
        "left and right must have non-empty matrix dimensions",
    ),
    "linear weight rank": (lambda: U.linear(x46, jnp.ones(6)), ValueError, "weight must be 2-D"),
    "linear bias shape": (
        lambda: U.linear(x46, w68, jnp.ones(6)),
        ValueError,
        r"bias must have shape \(8,\)",
    ),
    "linear scale_power": (
        lambda: U.linear(x46, w68, scale_power=(0.5, 0.5)),
        ValueError,
        "scale_power",
    ),
    "silu_glu shapes": (
        lambda: U.silu_glu(x46, jnp.ones((4, 5))),
        ValueError,
        "input and gate must have equal shapes",
    ),
    "layer_norm shape": (lambda: U.layer_norm(x46, (5,)), ValueError, "normalized_shape"),
    "layer_norm weight": (
        lambda: U.layer_norm(x46, 6, jnp.ones(5)),
        ValueError,
        r"weight must have shape \(6,\)",
    ),
    "layer_norm bias": (
        lambda: U.layer_norm(x46, 6, None, jnp.ones(5)),
        ValueError,
        r"bias must have shape \(6,\)",
    ),
    "rms_norm shape": (lambda: U.rms_norm(x46, (4, 7)), ValueError, "normalized_shape"),
    "add broadcast": (
        lambda: U.add(x46, jnp.ones((5,))),
        ValueError,
        "shapes of input .* and other .* do not broadcast",
    ),
    "residual_add shapes": (
        lambda: U.residual_add(x46, jnp.ones((4, 5))),
        ValueError,
        "residual and skip must have equal shapes",
    ),
    "embedding table rank": (
        lambda: U.embedding(ids, jnp.ones(6)),
        ValueError,
        "weight must be a 2-D",
    ),
    "attention rank": (
        lambda: U.scaled_dot_product_attention(x46, x46, x46),
        ValueError,
        r"\(\.\.\., seq, heads, d_head\)",
    ),
    "attention heads": (
        lambda: U.scaled_dot_product_attention(qkv, jnp.ones((2, 5, 1, 4)), jnp.ones((2, 5, 1, 4))),
        ValueError,
        "query and key must share",
    ),
    "attention kv": (
        lambda: U.scaled_dot_product_attention(qkv, qkv, jnp.ones((2, 4, 2, 4))),
        ValueError,
        "key and value must share",
    ),
    "attention batch": (
        lambda: U.scaled_dot_product_attention(qkv, qkv[:1], qkv[:1]),
        ValueError,
        "batch dimensions",
    ),
    "attention mask shape": (
        lambda: U.scaled_dot_product_attention(qkv, qkv, qkv, jnp.ones((3, 5, 5), bool)),
        ValueError,
        "attn_mask of shape",
    ),
    "cross_entropy target shape": (
        lambda: U.cross_entropy(x46, jnp.zeros((3,), jnp.int32)),
        ValueError,
        "target shape",
    ),
    "cross_entropy one class": (
        lambda: U.cross_entropy(jnp.ones((4, 1)), jnp.zeros((4,), jnp.int32)),
        ValueError,
        "at least 2 classes",
    ),
    "cross_entropy label too large": (
        lambda: U.cross_entropy(x46, jnp.asarray([0, 1, 6, 2])),
        ValueError,
        r"target must hold class indices in \[0, 6\) or ignore_index=-100; got 6",
    ),
    "cross_entropy negative label": (
        lambda: U.cross_entropy(x46, jnp.asarray([0, -1, 2, -100])),
        ValueError,
        r"target must hold class indices in \[0, 6\) or ignore_index=-100; got -1",
    ),
    "mse shapes": (
        lambda: U.mse_loss(x46, jnp.ones((1, 6))),
        ValueError,
        "input and target must have equal shapes",
    ),
    "conv1d no output channels": (
        lambda: U.conv1d(jnp.ones((2, 5, 4)), jnp.ones((3, 4, 0))),
        ValueError,
        "weight must be 3-D .* with no empty axis",
    ),
    "rnn no hidden units": (
        lambda: U.rnn(jnp.ones((2, 5, 0)), jnp.ones((0, 0))),
        ValueError,
        "hidden >= 1",
    ),
    # axes
    "softmax dim range": (lambda: U.softmax(x46, 2), ValueError, "dim=2 is out of range"),
    "softmax dim type": (lambda: U.softmax(x46, 1.0), TypeError, "dim must be an int"),
    # constraints
    "unknown constraint": (
        lambda: U.matmul(x46, w68, constraint="geo"),
        ValueError,
        "constraint 'geo' is unknown; valid constraints: 'gmean'",
    ),
    "constraint arity": (
        lambda: U.linear(x46, w68, constraint="to_left_grad_scale"),
        ValueError,
        "constraint 'to_left_grad_scale' does not apply",
    ),
    "constraint type": (lambda: U.gelu(x46, constraint=1), TypeError, "constraint must be"),
    # rates and keys
    "dropout p one": (lambda: U.dropout(x46, 1.0, rng=KEY), ValueError, r"p must lie in \[0, 1\)"),
    "dropout p negative": (
        lambda: U.dropout(x46, -0.1, rng=KEY),
        ValueError,
        r"p must lie in \[0, 1\)",
    ),
    "dropout p traced": (
        lambda: jax.jit(lambda p: U.dropout(x46, p, rng=KEY))(0.5),
        TypeError,
        "p must be a static",
    ),
    "dropout missing key": (lambda: U.dropout(x46, 0.1), ValueError, "rng"),
    "attention dropout_p": (
        lambda: U.scaled_dot_product_attention(qkv, qkv, qkv, dropout_p=1.5, rng=KEY),
        ValueError,
        r"dropout_p must lie in \[0, 1\)",
    ),
    "attention missing key": (
        lambda: U.scaled_dot_product_attention(qkv, qkv, qkv, dropout_p=0.1),
        ValueError,
        "rng",
    ),
    # other hyperparameters
    "mult zero": (lambda: U.silu(x46, mult=0.0), ValueError, "mult must be positive"),
    "mult traced": (
        lambda: jax.jit(lambda m: U.gelu(x46, mult=m))(1.0),
        TypeError,
        "mult must be a static",
    ),
    "tau negative": (lambda: U.residual_split(x46, -1.0), ValueError, "tau must be non-negative"),
    "gelu approximate": (
        lambda: U.gelu(x46, approximate="fast"),
        ValueError,
        "approximate must be 'none' or 'tanh'",
    ),
    "reduction": (
        lambda: U.cross_entropy(x46, jnp.zeros((4,), jnp.int32), reduction="none"),
        ValueError,
        "reduction must be 'mean' or 'sum'",
    ),
    "mse reduction": (
        lambda: U.mse_loss(x46, x46, reduction="avg"),
        ValueError,
        "reduction must be",
    ),
    "padding_idx range": (
        lambda: U.embedding(ids, w68, padding_idx=6),
        ValueError,
        "padding_idx must be an int in",
    ),
    "residual_apply fn": (lambda: U.residual_apply(3, x46), TypeError, "fn must be callable"),
    # dtypes
    "integer logits": (
        lambda: U.cross_entropy(jnp.ones((4, 6), jnp.int32), jnp.zeros((4,), jnp.int32)),
        TypeError,
        "input must be a floating-point array",
    ),
    "float targets": (
        lambda: U.cross_entropy(x46, jnp.zeros((4,))),
        TypeError,
        "target must be an integer array",
    ),
    "float token ids": (
        lambda: U.embedding(jnp.zeros((2, 3)), w68),
        TypeError,
        "input must be an integer array",
    ),
    "integer activation": (
        lambda: U.gelu(jnp.ones(3, jnp.int32)),
        TypeError,
        "input must be a floating-point array",
    ),
    "integer matmul": (
        lambda: U.matmul(jnp.ones((4, 6), jnp.int32), w68),
        TypeError,
        "left must be a floating-point array",
    ),
    "integer mask": (
        lambda: U.scaled_dot_product_attention(qkv, qkv, qkv, jnp.ones((5, 5), jnp.int32)),
        TypeError,
        "attn_mask must be boolean or floating-point",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_rejected_with_a_clear_message(case):
    call, error, message = CASES[case]
    with pytest.raises(error, match=message):
        call()
