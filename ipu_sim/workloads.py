"""Reference training steps for the CLI presets: BERT and GPT-2 in plain JAX, one named scope per layer.

A :class:`ModelConfig` describes a transformer (``kind`` "bert": post-LN encoder, masked-LM and
next-sentence heads as in BERT pre-training; ``kind`` "gpt": pre-LN causal decoder with a language-model
head, as GPT-2). :func:`build` turns it into a :class:`Workload`: a train step
``step(params, opt_state, batch) -> (params, opt_state, loss)`` -- loss, ``jax.grad``, and an AdamW
update written out here so that ``ipu_sim`` depends on nothing but JAX -- plus abstract arguments (``jax.ShapeDtypeStruct``s: nothing
is allocated) for one micro-batch.

The step follows the pipelining contract of :mod:`ipu_sim.placement`: embeddings under
``jax.named_scope("embeddings")``, layer ``i`` under ``"layer_{i}"`` (a Python loop, not a scan), the
output head under ``"head"``. :attr:`Workload.place` puts embeddings and the tied head on IPU 0, as
in the published configurations (docs/reference/ipu_hardware.md: "IPU0 also holds embeddings";
layers-per-IPU lists that start with 0 layers on IPU 0).

Storage: ``dtype`` "float32" keeps weights in fp32 and the optimizer updates them directly;
"float16" keeps fp16 weights for the passes and fp32 master weights in the optimizer state (which is
what ``offload_optimizer`` streams). Adam/LAMB moments are fp32. Attention runs in the activations'
dtype, and softmax and GELU keep for the backward pass what PopART's gradient ops read, as in
Graphcore's published FP16 recipes (docs/reference/ipu_hardware.md).
"""

from __future__ import annotations

import functools
import json
import math
import numbers
import types
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("bert", "gpt")
# BERT masks 15% of the positions of a sequence (Devlin et al. 2019); the MLM head runs on those only.
MASKED_FRACTION = 0.15


@dataclass(frozen=True)
class ModelConfig:
    """A BERT- or GPT-2-shaped transformer: ``depth`` layers of width ``d_model`` with ``heads``
    attention heads and an MLP of ``ffn_ratio * d_model``; ``seq`` is the default sequence length."""

    kind: str
    vocab: int
    d_model: int
    depth: int
    heads: int
    ffn_ratio: float = 4.0
    seq: int = 128
    name: str = "custom"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        for key in ("vocab", "d_model", "depth", "heads", "seq"):
            _check_positive_int(key, getattr(self, key))
        if not isinstance(self.ffn_ratio, numbers.Real) or isinstance(self.ffn_ratio, bool) \
                or self.ffn_ratio <= 0:
            raise ValueError(f"ffn_ratio must be a positive number, got {self.ffn_ratio!r}")
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")

    @property
    def ffn(self) -> int:
        return int(round(self.ffn_ratio * self.d_model))

    def to_dict(self) -> dict:
        return asdict(self)


def _check_positive_int(name: str, value) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")


# BERT: 30522-token WordPiece vocabulary, Base 12 x 768 / 12 heads, Large 24 x 1024 / 16 heads, MLP 4x
# (Devlin et al. 2019). GPT-2: 50257-token BPE vocabulary, context 1024, small 12 x 768 / 12 heads,
# medium 24 x 1024 / 16, large 36 x 1280 / 20, MLP 4x (Radford et al. 2019).
PRESETS: Mapping[str, ModelConfig] = types.MappingProxyType({
    "bert-base": ModelConfig("bert", 30522, 768, 12, 12, 4.0, 128, "bert-base"),
    "bert-large": ModelConfig("bert", 30522, 1024, 24, 16, 4.0, 128, "bert-large"),
    "gpt2-small": ModelConfig("gpt", 50257, 768, 12, 12, 4.0, 1024, "gpt2-small"),
    "gpt2-medium": ModelConfig("gpt", 50257, 1024, 24, 16, 4.0, 1024, "gpt2-medium"),
    "gpt2-large": ModelConfig("gpt", 50257, 1280, 36, 20, 4.0, 1024, "gpt2-large"),
})


def load_config(path: str | Path) -> ModelConfig:
    """A :class:`ModelConfig` from a JSON file with keys vocab, d_model, depth, heads, ffn_ratio,
    seq, kind (and optionally name, default: the file's stem)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(f"model config file {str(path)!r} cannot be read: {e.strerror}") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"model config file {str(path)!r} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"model config file {str(path)!r} must hold a JSON object")
    valid = {f.name for f in fields(ModelConfig)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"model config file {str(path)!r}: unknown keys {unknown}; "
                         f"valid: {sorted(valid)}")
    missing = sorted({"kind", "vocab", "d_model", "depth", "heads"} - set(data))
    if missing:
        raise ValueError(f"model config file {str(path)!r}: missing keys {missing}")
    data.setdefault("name", path.stem)
    try:
        return ModelConfig(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model config file {str(path)!r}: {e}") from e


def get_config(model: str | ModelConfig) -> ModelConfig:
    """A preset by name, a JSON config file by path, or ``model`` itself."""
    if isinstance(model, ModelConfig):
        return model
    if not isinstance(model, str):
        raise TypeError(f"model must be a preset name, a config file path or a ModelConfig, "
                        f"got {type(model).__name__}")
    if model.lower() in PRESETS:
        return PRESETS[model.lower()]
    if model.endswith(".json") or Path(model).is_file():
        return load_config(model)
    raise ValueError(f"unknown model {model!r}; presets: {', '.join(PRESETS)}, "
                     "or the path of a JSON model config file")


@dataclass(frozen=True)
class Workload:
    """A train step and abstract arguments for one micro-batch of ``micro_batch`` sequences of
    ``seq`` tokens. ``batch_argnums`` are the arguments fed from the host every micro-batch;
    ``place`` maps scopes outside the layers to the IPU that holds them."""

    config: ModelConfig
    step: Callable
    args: tuple
    micro_batch: int
    seq: int
    dtype: str
    batch_argnums: tuple[int, ...] = (2,)
    place: Mapping[str, int] = field(default_factory=lambda: types.MappingProxyType(
        {"embeddings": 0, "head": 0}))


_DTYPES = {"float32": jnp.float32, "float16": jnp.float16}


def build(model: str | ModelConfig, *, micro_batch: int = 1, seq: int | None = None,
          dtype: str = "float16") -> Workload:
    """The train step of ``model`` for micro-batches of ``micro_batch`` sequences of ``seq`` tokens
    (default: the config's ``seq``), weights stored in ``dtype`` ("float32" or "float16")."""
    config = get_config(model)
    _check_positive_int("micro_batch", micro_batch)
    seq = config.seq if seq is None else seq
    _check_positive_int("seq", seq)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    dt = _DTYPES[dtype]
    params = _param_shapes(config, seq, dt)
    opt_state = jax.eval_shape(lambda p: init_optimizer(p, master=dt != jnp.float32), params)
    batch = _batch_shapes(config, micro_batch, seq)
    loss = bert_loss if config.kind == "bert" else gpt_loss

    def step(params, opt_state, batch):
        value, grads = jax.value_and_grad(loss)(params, batch, config)
        params, opt_state = optimizer_update(params, opt_state, grads)
        return params, opt_state, value

    return Workload(config, jax.jit(step), (params, opt_state, batch), micro_batch, seq, dtype)


# ---------------------------------------------------------------------------------------------------
# Parameters and batches (shapes only).

def _param_shapes(c: ModelConfig, seq: int, dt) -> dict:
    s = lambda *shape: jax.ShapeDtypeStruct(shape, dt)  # noqa: E731
    d, f = c.d_model, c.ffn
    layer = dict(qkv=s(d, 3 * d), qkv_b=s(3 * d), out=s(d, d), out_b=s(d), ln1_g=s(d), ln1_b=s(d),
                 up=s(d, f), up_b=s(f), down=s(f, d), down_b=s(d), ln2_g=s(d), ln2_b=s(d))
    tok = s(c.vocab, d) if c.kind == "bert" else [s(b - a, d) for a, b in vocab_chunks(c.vocab)]
    params: dict[str, Any] = dict(tok=tok, pos=s(seq, d), layers=[dict(layer) for _ in range(c.depth)])
    if c.kind == "bert":
        params.update(seg=s(2, d), emb_g=s(d), emb_b=s(d), mlm_w=s(d, d), mlm_b=s(d), mlm_g=s(d),
                      mlm_beta=s(d), mlm_bias=s(c.vocab), pool_w=s(d, d), pool_b=s(d),
                      nsp_w=s(d, 2), nsp_b=s(2))
    else:
        params.update(final_g=s(d), final_b=s(d))
    return params


def masked_positions(seq: int) -> int:
    """Masked-LM predictions per BERT sequence: ``ceil(0.15 * seq)`` (20 at seq 128)."""
    return max(1, math.ceil(MASKED_FRACTION * seq))


def _batch_shapes(c: ModelConfig, b: int, seq: int) -> dict:
    i = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    if c.kind == "gpt":
        return dict(tokens=i(b, seq), labels=i(b, seq))
    p = masked_positions(seq)
    return dict(tokens=i(b, seq), segments=i(b, seq), positions=i(b, p), labels=i(b, p),
                nsp_labels=i(b))


# ---------------------------------------------------------------------------------------------------
# Model pieces.

def layer_norm(x, g, b, eps: float = 1e-5):
    """(x - mean) / sqrt(var + eps) * g + b over the last axis; statistics in fp32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * g + b


# Softmax and GELU differentiate as the published IPU models do: PopART's SoftmaxGradOp reads the
# softmax output and its gradient, GeluGradOp the GELU input and its gradient
# (graphcore/popart willow/src/op/softmax.cpp, elementwise.cpp). Differentiating their formulas
# instead would keep every intermediate (exp, sums, tanh, ...) alive for the backward pass.

def _row_sum(x):
    """Sum over the last axis in the dtype of ``x``: jnp.sum would first copy an FP16 tensor to
    FP32; the reduction itself accumulates in FP32 (ipu_sim.tiles costs it so) without the copy."""
    return jax.lax.reduce(x, np.zeros((), x.dtype), jax.lax.add, (x.ndim - 1,))[..., None]


@jax.custom_vjp
def softmax(x):
    """Softmax over the last axis, in the dtype of ``x``."""
    e = jnp.exp(x - jax.lax.stop_gradient(x.max(axis=-1, keepdims=True)))
    return e / _row_sum(e)


def _softmax_fwd(x):
    y = softmax(x)
    return y, y


def _softmax_bwd(y, g):
    return (y * (g - _row_sum(g * y)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)

_GELU_C = math.sqrt(2 / math.pi)  # tanh approximation of GELU (Hendrycks & Gimpel 2016)
_GELU_A = 0.044715


@jax.custom_vjp
def gelu(x):
    """GELU, tanh approximation (as ``jax.nn.gelu``)."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    t = jnp.tanh(_GELU_C * (x + _GELU_A * x ** 3))
    slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * x * x)
    return (g * slope,)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def attention(p, x, heads: int, causal: bool):
    """Multi-head self-attention: softmax(q k^T / sqrt(d_head) [+ causal mask]) v, then W_out.

    Scores and probabilities are in the activations' dtype, as in Graphcore's FP16 BERT and GPT-2
    recipes (graphcore/examples: the PyTorch models run ``.half()``, softmax included)."""
    b, s, d = x.shape
    qkv = x @ p["qkv"] + p["qkv_b"]
    q, k, v = (t.reshape(b, s, heads, d // heads) for t in jnp.split(qkv, 3, axis=-1))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d // heads)
    if causal:
        scores = jnp.where(jnp.tril(jnp.ones((s, s), bool)), scores, jnp.finfo(scores.dtype).min)
    probs = softmax(scores)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, s, d)
    return ctx @ p["out"] + p["out_b"]


def mlp(p, x):
    return gelu(x @ p["up"] + p["up_b"]) @ p["down"] + p["down_b"]


def cross_entropy(logits, labels):
    """Mean of logsumexp(logits) - logits[label], in fp32."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return (jax.nn.logsumexp(logits, axis=-1) - picked).mean()


def bert_loss(params, batch, c: ModelConfig):
    """BERT pre-training loss: masked-LM on the masked positions + next-sentence prediction."""
    tokens = batch["tokens"]
    with jax.named_scope("embeddings"):
        x = params["tok"][tokens] + params["pos"][None, : tokens.shape[1]] \
            + params["seg"][batch["segments"]]
        x = layer_norm(x, params["emb_g"], params["emb_b"])
    for i, p in enumerate(params["layers"]):
        with jax.named_scope(f"layer_{i}"):
            x = layer_norm(x + attention(p, x, c.heads, causal=False), p["ln1_g"], p["ln1_b"])
            x = layer_norm(x + mlp(p, x), p["ln2_g"], p["ln2_b"])
    with jax.named_scope("head"):
        picked = jnp.take_along_axis(x, batch["positions"][..., None], axis=1)
        h = gelu(picked @ params["mlm_w"] + params["mlm_b"])
        h = layer_norm(h, params["mlm_g"], params["mlm_beta"])
        mlm = cross_entropy(h @ params["tok"].T + params["mlm_bias"], batch["labels"])
        pooled = jnp.tanh(x[:, 0] @ params["pool_w"] + params["pool_b"])
        nsp = cross_entropy(pooled @ params["nsp_w"] + params["nsp_b"], batch["nsp_labels"])
        return mlm + nsp


def gpt_loss(params, batch, c: ModelConfig):
    """GPT-2 language-model loss: next-token cross-entropy at every position, tied embeddings."""
    tokens = batch["tokens"]
    with jax.named_scope("embeddings"):
        x = chunked_embedding(params["tok"], tokens) + params["pos"][None, : tokens.shape[1]]
    for i, p in enumerate(params["layers"]):
        with jax.named_scope(f"layer_{i}"):
            x = x + attention(p, layer_norm(x, p["ln1_g"], p["ln1_b"]), c.heads, causal=True)
            x = x + mlp(p, layer_norm(x, p["ln2_g"], p["ln2_b"]))
    with jax.named_scope("head"):
        x = layer_norm(x, params["final_g"], params["final_b"])
        return chunked_cross_entropy(x, params["tok"], batch["labels"])


# GPT's tied token table is stored as row chunks of at most HEAD_CHUNK tokens, and the head runs
# chunk by chunk, each under jax.checkpoint: a chunk's logits exist only while it is processed (and
# again in the backward), never the fp32 logits of the whole vocabulary -- 206 MB per 1024-token
# sequence for GPT-2, more than a fifth of an IPU. Costs one more forward of the head matmul. Keeping
# the chunks as separate arrays (rather than slicing one table) keeps their gradients chunk-sized.
# The chunk size is a choice of this workload (in the spirit of Graphcore's serialised embedding /
# output layer); small vocabularies have one chunk.
HEAD_CHUNK = 8192


def vocab_chunks(vocab: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of the table chunks: equal, at most HEAD_CHUNK each."""
    n = -(-vocab // HEAD_CHUNK)
    bounds = [round(i * vocab / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def chunked_embedding(tables: list, tokens):
    """Rows ``tokens`` of the table whose row chunks are ``tables``."""
    if len(tables) == 1:
        return tables[0][tokens]
    out, start = 0, 0
    for w in tables:
        index = tokens - start
        inside = ((index >= 0) & (index < w.shape[0]))[..., None]
        out = out + jnp.where(inside, w[jnp.clip(index, 0, w.shape[0] - 1)], 0)
        start += w.shape[0]
    return out


def chunked_cross_entropy(x, tables: list, labels):
    """Mean over tokens of logsumexp(x W^T) - (x W^T)[label], W given by its row chunks
    ``tables``: logsumexp combines the chunks' logsumexps; the label's logit comes from its chunk."""

    def part(x, w, start):
        logits = (x @ w.T).astype(jnp.float32)
        index = labels - start
        inside = (index >= 0) & (index < w.shape[0])
        picked = jnp.take_along_axis(logits, jnp.clip(index, 0, w.shape[0] - 1)[..., None], -1)
        return jax.nn.logsumexp(logits, axis=-1), jnp.where(inside, picked[..., 0], 0.0)

    starts = [0]
    for w in tables[:-1]:
        starts.append(starts[-1] + w.shape[0])
    parts = [jax.checkpoint(part, static_argnums=2)(x, w, a) for w, a in zip(tables, starts)]
    lse = functools.reduce(jnp.logaddexp, [p[0] for p in parts])
    return (lse - sum(p[1] for p in parts)).mean()


# ---------------------------------------------------------------------------------------------------
# Optimizer: AdamW (Kingma & Ba 2015; decoupled weight decay, Loshchilov & Hutter 2019) for every
# preset. (Graphcore's BERT recipes use LAMB, whose per-tensor trust ratio adds two norms per tensor
# once per weight update -- a negligible share of a step with gradient accumulation.)
#
# A tensor of more than OPTIMIZER_CHUNK_ELEMENTS has its moments and master weights kept as row
# chunks, updated one chunk at a time, so that state streamed from off-chip memory is live one chunk
# at a time. The chunk size is a choice of this workload (Poplar streams remote buffers piecewise);
# it changes no FLOPs or bytes moved.
OPTIMIZER_CHUNK_ELEMENTS = 1 << 21


def _row_chunks(shape: tuple[int, ...]) -> list[tuple[int, int]]:
    rows = shape[0] if shape else 1
    per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
    n = max(1, min(rows, -(-rows * per_row // OPTIMIZER_CHUNK_ELEMENTS)))
    bounds = [round(i * rows / n) for i in range(n + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _chunked(x) -> list:
    if x.ndim == 0:
        return [x]
    return [x[a:b] for a, b in _row_chunks(x.shape)]


def init_optimizer(params, master: bool) -> dict:
    """fp32 moments m, v (and fp32 master weights if ``master``) per parameter, as row chunks."""
    f32 = lambda x: [c.astype(jnp.float32) for c in _chunked(x)]  # noqa: E731
    zeros = lambda x: [jnp.zeros_like(c) for c in f32(x)]  # noqa: E731
    leaves = jax.tree.leaves(params)
    state = dict(count=jnp.zeros((), jnp.int32), m=[zeros(p) for p in leaves],
                 v=[zeros(p) for p in leaves])
    if master:
        state["master"] = [f32(p) for p in leaves]
    return state


def optimizer_update(params, state, grads, *, lr: float = 1e-4, b1: float = 0.9,
                     b2: float = 0.999, eps: float = 1e-6, weight_decay: float = 0.01):
    """One AdamW step, chunk by chunk: m = b1 m + (1-b1) g, v = b2 v + (1-b2) g^2,
    w -= lr (m_hat / (sqrt(v_hat) + eps) + wd w), weights = w in their storage dtype."""
    count = state["count"] + 1
    c1 = 1 - b1 ** count.astype(jnp.float32)
    c2 = 1 - b2 ** count.astype(jnp.float32)
    leaves, tree = jax.tree.flatten(params)
    masters = state.get("master") or [_chunked(p) for p in leaves]
    new = {k: [] for k in ("p", "m", "v", "w")}
    for p, ws, g, ms, vs in zip(leaves, masters, jax.tree.leaves(grads), state["m"], state["v"]):
        parts = {k: [] for k in ("p", "m", "v", "w")}
        for w, gc, m, v in zip(ws, _chunked(g), ms, vs):
            # Each line is one fused element-wise pass (one consumer per intermediate).
            m = b1 * m + (1 - b1) * gc.astype(jnp.float32)
            v = b2 * v + (1 - b2) * jnp.square(gc.astype(jnp.float32))
            w = w.astype(jnp.float32)
            w = w - lr * ((m / c1) / (jnp.sqrt(v / c2) + eps) + weight_decay * w)
            for key, value in (("p", w.astype(p.dtype)), ("m", m), ("v", v), ("w", w)):
                parts[key].append(value)
        new["p"].append(jnp.concatenate(parts["p"]) if p.ndim else parts["p"][0])
        for key in ("m", "v", "w"):
            new[key].append(parts[key])
    out = dict(count=count, m=new["m"], v=new["v"])
    if "master" in state:
        out["master"] = new["w"]
    return tree.unflatten(new["p"]), out
