"""Graphcore's published pre-training configurations: they ran on real IPU systems, so they fit.

Each :class:`PublishedConfig` is one configuration of graphcore/examples as its config file gives
it (docs/reference/ipu_hardware.md, "Published training configurations"): the PyTorch BERT of
``nlp/bert/pytorch/configs_pretraining.yml``, the TensorFlow 2 BERT of
``nlp/bert/tensorflow2/configs/*.json`` and the PyTorch GPT-2 of ``nlp/gpt2/pytorch``, run by the
examples' ``benchmarks.yml`` (and run scripts) on IPU-POD systems. The GC200 systems are the ones
named (a POD16 holds 4 replicas of a 4-IPU pipeline or 2 of an 8-IPU one, a POD64 four times as
many); the Bow systems run the same configurations, since a Bow-2000 runs IPU-M2000 programs
unchanged (Bow-2000 datasheet) and has the same tiles and tile memory.

:func:`estimate` runs one with ``ipu_sim``'s BERT workload (:mod:`ipu_sim.workloads`) as a user of
``python -m ipu_sim`` would: the recipe's layers per IPU, micro-batch, replicas, gradient
accumulation, per-IPU availableMemoryProportion, recomputation and optimizer state in streaming
memory, FP16 matmuls with FP16 partials. What the workload does not reproduce is listed in each
config's ``not_modelled``; every difference makes the workload's memory larger, not smaller, except
dropout (none in the workload; the recipes use 0.1 on hidden states and, in GPT-2, attention).
"""

from __future__ import annotations

from dataclasses import dataclass

from ipu_sim.system import SystemEstimate, estimate_system
from ipu_sim.trace import Program, trace
from ipu_sim.workloads import build

_PYTORCH = "graphcore/examples nlp/bert/pytorch/configs_pretraining.yml"
_TF2 = "graphcore/examples nlp/bert/tensorflow2/configs/"
# What the BERT workload does differently from the recipes (each makes the workload's memory larger,
# or -- embedding serialisation -- splits a matmul the workload runs whole).
_PYTORCH_GAPS = ("LAMB optimizer (the workload: AdamW, same state size)",
                 "replicated tensor sharding of the optimizer state (streaming time only)",
                 "layer norms with FP16 inputs and outputs (the workload: FP32 statistics)")
_TF2_GAPS = ("LAMB optimizer (the workload: AdamW, same state size)",
             "vocabulary 30400 (the workload: 30522)",
             "layer norms with FP16 inputs and outputs (the workload: FP32 statistics)")
_GPT = "graphcore/examples nlp/gpt2/pytorch/"
_GPT_GAPS = ("replicated tensor sharding of the optimizer state (streaming time only)",
             "sequence-serialised attention (the workload: whole sequences)",
             "embedding serialisation (the workload: head in row chunks of 8192 tokens)",
             "dropout 0.1 (the workload: none)")


@dataclass(frozen=True)
class PublishedConfig:
    """One published configuration and the systems it is checked on."""

    key: str
    source: str  # repository file and configuration name
    model: str  # an ipu_sim.workloads preset
    seq: int
    micro_batch: int
    layers_per_ipu: tuple[int, ...]
    replicas: int
    grad_accum: int
    available_memory_proportion: tuple[float, ...]  # per IPU of a replica
    systems: tuple[str, ...]
    not_modelled: tuple[str, ...] = ()
    recompute: bool = True  # recompute_checkpoint_every_layer / recomputation checkpoints
    offload_optimizer: bool = True  # optimizer_state_offchip


PUBLISHED: tuple[PublishedConfig, ...] = (
    PublishedConfig("pytorch-bert-large-128-pod16", f"{_PYTORCH}: pretrain_large_128",
                    "bert-large", 128, 8, (3, 7, 7, 7), 4, 2048, (0.15, 0.25, 0.25, 0.25),
                    ("gc200-pod16", "bow-pod16"), _PYTORCH_GAPS + ("embedding serialisation 2",)),
    PublishedConfig("pytorch-bert-large-128-pod64", f"{_PYTORCH}: pretrain_large_128_POD64",
                    "bert-large", 128, 8, (3, 7, 7, 7), 16, 512, (0.14, 0.19, 0.19, 0.19),
                    ("gc200-pod64", "bow-pod64"), _PYTORCH_GAPS + ("embedding serialisation 2",)),
    PublishedConfig("pytorch-bert-large-512-pod16", f"{_PYTORCH}: pretrain_large_512",
                    "bert-large", 512, 2, (3, 7, 7, 7), 4, 2048, (0.10, 0.15, 0.15, 0.15),
                    ("gc200-pod16", "bow-pod16"), _PYTORCH_GAPS + ("embedding serialisation 2",)),
    PublishedConfig("pytorch-bert-large-512-pod64", f"{_PYTORCH}: pretrain_large_512_POD64",
                    "bert-large", 512, 2, (3, 7, 7, 7), 16, 512, (0.13, 0.19, 0.19, 0.19),
                    ("gc200-pod64", "bow-pod64"), _PYTORCH_GAPS + ("embedding serialisation 2",)),
    PublishedConfig("pytorch-bert-base-128-pod16", f"{_PYTORCH}: pretrain_base_128",
                    "bert-base", 128, 32, (0, 4, 4, 4), 4, 512, (0.25,) * 4,
                    ("gc200-pod16", "bow-pod16"), _PYTORCH_GAPS),
    PublishedConfig("pytorch-bert-base-512-pod16", f"{_PYTORCH}: pretrain_base_512",
                    "bert-base", 512, 8, (0, 4, 4, 4), 4, 512, (0.25,) * 4,
                    ("gc200-pod16", "bow-pod16"), _PYTORCH_GAPS + ("embedding serialisation 2",)),
    PublishedConfig("tf2-bert-large-128-pod16", f"{_TF2}pretrain_large_128_phase1.json",
                    "bert-large", 128, 8, (3, 7, 7, 7), 4, 2040, (0.10, 0.19, 0.20, 0.25),
                    ("gc200-pod16", "bow-pod16"), _TF2_GAPS),
    PublishedConfig("tf2-bert-large-512-pod16", f"{_TF2}pretrain_large_512_phase2.json",
                    "bert-large", 512, 2, (2, 7, 7, 8), 4, 2040, (0.05, 0.10, 0.10, 0.10),
                    ("gc200-pod16", "bow-pod16"), _TF2_GAPS),
    PublishedConfig("tf2-bert-base-128-pod16", f"{_TF2}pretrain_base_128_phase1.json",
                    "bert-base", 128, 32, (0, 4, 4, 4), 4, 510, (0.28, 0.26, 0.28, 0.28),
                    ("gc200-pod16", "bow-pod16"), _TF2_GAPS),
    PublishedConfig("pytorch-gpt2-medium-pod16",
                    f"{_GPT}benchmarks.yml: pytorch_gpt2_medium_train_gen_pod16", "gpt2-medium",
                    1024, 1, (0, 3, 3, 3, 3, 4, 4, 4), 2, 4096, (0.30,) + (0.15,) * 7,
                    ("gc200-pod16", "bow-pod16"), _GPT_GAPS),
    PublishedConfig("pytorch-gpt2-large-512-pod16",
                    f"{_GPT}benchmarks.yml: pytorch_gpt2_large_sl512_train_gen_pod16", "gpt2-large",
                    512, 1, (1, 5, 5, 5, 5, 5, 5, 5), 2, 4096, (0.15, 0.12) + (0.15,) * 6,
                    ("gc200-pod16",), _GPT_GAPS),
    PublishedConfig("pytorch-gpt2-large-1024-pod16", f"{_GPT}run/pretraining_large.sh",
                    "gpt2-large", 1024, 1, (0, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 2), 1,
                    8192, (0.2, 0.15, 0.2, 0.2, 0.2, 0.15, 0.15, 0.2, 0.2, 0.15, 0.2, 0.2, 0.2,
                           0.15, 0.15, 0.2), ("gc200-pod16",), _GPT_GAPS),
)


def get_published(key: str) -> PublishedConfig:
    """The :class:`PublishedConfig` named ``key``."""
    for config in PUBLISHED:
        if config.key == key:
            return config
    raise ValueError(f"unknown published configuration {key!r}; known: "
                     f"{', '.join(c.key for c in PUBLISHED)}")


def trace_published(config: PublishedConfig) -> Program:
    """The traced train step of ``config``'s model for one micro-batch (FP16 weights)."""
    work = build(config.model, micro_batch=config.micro_batch, seq=config.seq)
    return trace(work.step, *work.args)


def estimate(config: PublishedConfig, system: str, program: Program | None = None) -> SystemEstimate:
    """``config`` on ``system``; ``program`` is :func:`trace_published`'s (traced here if None)."""
    work = build(config.model, micro_batch=config.micro_batch, seq=config.seq)
    program = trace(work.step, *work.args) if program is None else program
    return estimate_system(
        program, system=system, pipeline=list(config.layers_per_ipu), place=dict(work.place),
        micro_batch=config.micro_batch, seq=config.seq, replicas=config.replicas,
        grad_accum=config.grad_accum, recompute=config.recompute,
        offload_optimizer=config.offload_optimizer, precision="fp16",
        available_memory_proportion=config.available_memory_proportion)
