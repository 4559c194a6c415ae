"""How long ipu_sim takes to estimate a BERT-Large-shaped training step (goal: seconds, not minutes).

The model is plain JAX written here: token + position + segment embeddings, 24 post-LN encoder
layers (d 1024, 16 heads, MLP 4096, GELU), a tied masked-LM head with softmax cross-entropy, the
gradient with ``jax.grad`` and an ``optax.adam`` update. Parameters are ``jax.ShapeDtypeStruct``s,
so nothing is allocated or run: the time is tracing + the performance model.

    python benchmarks/ipu_estimate_speed.py [--chip bow] [--layers 24]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

import ipu_sim

VOCAB, D, HEADS, FF = 30528, 1024, 16, 4096


def param_shapes(layers: int, seq: int, dtype) -> dict:
    s = lambda *shape: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
    layer = dict(qkv=s(D, 3 * D), qkv_b=s(3 * D), out=s(D, D), out_b=s(D), ln1_g=s(D), ln1_b=s(D),
                 up=s(D, FF), up_b=s(FF), down=s(FF, D), down_b=s(D), ln2_g=s(D), ln2_b=s(D))
    return dict(tok=s(VOCAB, D), pos=s(seq, D), seg=s(2, D), ln_g=s(D), ln_b=s(D),
                layers=[dict(layer) for _ in range(layers)])


def layer_norm(x, g, b):
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + 1e-12)).astype(x.dtype) * g + b


def encoder_layer(p, x):
    b, s, _ = x.shape
    qkv = x @ p["qkv"] + p["qkv_b"]
    q, k, v = (t.reshape(b, s, HEADS, D // HEADS) for t in jnp.split(qkv, 3, axis=-1))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(jnp.asarray(D // HEADS, x.dtype))
    attn = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(x.dtype)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, s, D)
    x = layer_norm(x + ctx @ p["out"] + p["out_b"], p["ln1_g"], p["ln1_b"])
    h = jax.nn.gelu(x @ p["up"] + p["up_b"])
    return layer_norm(x + h @ p["down"] + p["down_b"], p["ln2_g"], p["ln2_b"])


def loss_fn(params, tokens, segments, labels):
    with jax.named_scope("embeddings"):
        x = params["tok"][tokens] + params["pos"][None] + params["seg"][segments]
        x = layer_norm(x, params["ln_g"], params["ln_b"])
    for i, p in enumerate(params["layers"]):
        with jax.named_scope(f"layer{i}"):
            x = encoder_layer(p, x)
    with jax.named_scope("mlm_head"):
        logits = (x @ params["tok"].T).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_step_fn(optimizer):
    def train_step(params, opt_state, tokens, segments, labels):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, segments, labels)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return jax.jit(train_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chip", default="bow")
    parser.add_argument("--layers", type=int, default=24)
    args = parser.parse_args()
    optimizer = optax.adam(1e-4)
    for seq, batch in ((128, 8), (512, 2)):
        params = param_shapes(args.layers, seq, jnp.float16)
        opt_state = jax.eval_shape(optimizer.init, params)
        ints = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
        start = time.perf_counter()
        program = ipu_sim.trace(train_step_fn(optimizer), params, opt_state, ints, ints, ints)
        traced = time.perf_counter()
        est = ipu_sim.estimate_program(program, chip=args.chip)
        done = time.perf_counter()
        print(f"BERT-Large train step, seq {seq}, micro-batch {batch}, {args.layers} layers on "
              f"{args.chip}: {len(program.ops)} ops")
        print(f"  trace {traced - start:.2f} s + model {done - traced:.2f} s = "
              f"{done - start:.2f} s to estimate")
        print(f"  estimate: {est.seconds * 1e3:.2f} ms per step, {est.tflops:.1f} TFLOP/s "
              f"({100 * est.utilisation:.1f}% of peak), fits on one IPU: {est.fits}")


if __name__ == "__main__":
    main()
