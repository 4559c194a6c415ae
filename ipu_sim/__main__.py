"""Command line: what training a BERT / GPT-2 model would cost on an IPU system.

    python -m ipu_sim MODEL --system SYSTEM [options] [--json]
    python -m ipu_sim --system list
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Sequence

from ipu_sim.hardware import SYSTEMS, get_system
from ipu_sim.system import SystemEstimate, estimate_system
from ipu_sim.transforms import PRECISIONS
from ipu_sim.workloads import PRESETS, ModelConfig, build, get_config

EXAMPLES = """\
examples:
  python -m ipu_sim bert-large --system gc200-pod16 --seq 128 --micro-batch 8 \\
      --pipeline 3,7,7,7 --replicas 4 --grad-accum 2048 --recompute --offload-optimizer \\
      --available-memory-proportion 0.15,0.25,0.25,0.25
  python -m ipu_sim bert-large --system bow-pod16 --seq 512 --micro-batch 2 --pipeline 3,7,7,7 \\
      --replicas 4 --grad-accum 2048 --recompute --offload-optimizer \\
      --available-memory-proportion 0.1,0.15,0.15,0.15 --json
  python -m ipu_sim gpt2-medium --system bow-pod64 --pipeline 8 --grad-accum 4096 --recompute
  python -m ipu_sim bert-base --system c600 --micro-batch 4 --precision fp8
  python -m ipu_sim my_model.json --system bow-m2000 --pipeline 4
  python -m ipu_sim --system list

MODEL is a preset (%(presets)s) or a JSON file with keys kind ("bert" or "gpt"), vocab, d_model,
depth, heads, ffn_ratio, seq, e.g. {"kind": "gpt", "vocab": 512, "d_model": 128, "depth": 4,
"heads": 4, "ffn_ratio": 4, "seq": 64}. Embeddings and the tied output head sit on IPU 0
(--head-ipu moves the head). Precision: fp32 (fp32 weights and matmuls), fp16.32 (fp16 weights,
fp16 matmul inputs, fp32 partials), fp16 (fp16 partials too), fp8 (fp16 weights, FP8 matmul inputs,
fp16 partials: the FP8 rate on chips with an FP8 AMP, e.g. c600; otherwise the FP16 rate, and the
output says so). The first two examples are Graphcore's published BERT-Large recipes
(graphcore/examples, nlp/bert/pytorch: pretrain_large_128 and pretrain_large_512). The step time
and samples/s come with the range the model's own calibration error allows. Exit status: 0 fits,
1 does not fit in tile memory, 2 bad input.
"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ipu_sim",
        description="Estimate samples/s, step time, per-IPU utilisation and memory of training a "
                    "transformer on a Graphcore IPU system (pipelining, replicas, gradient "
                    "accumulation, recomputation, streaming memory).",
        epilog=EXAMPLES % {"presets": ", ".join(PRESETS)},
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="preset name or JSON model config file")
    p.add_argument("--system", default="bow-ipu",
                   help="system name (default bow-ipu); 'list' prints all systems")
    p.add_argument("--seq", type=int, help="tokens per sample (default: the model's)")
    p.add_argument("--micro-batch", type=int, default=1, help="samples per micro-batch (default 1)")
    p.add_argument("--pipeline", default=None,
                   help="layers per IPU of a replica, e.g. 3,7,7,7; or N to balance over N IPUs "
                        "automatically (default: 1 IPU)")
    p.add_argument("--replicas", type=int, default=None,
                   help="data-parallel replicas (default: as many as the system holds)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per weight update")
    p.add_argument("--precision", choices=list(PRECISIONS), default="fp16")
    p.add_argument("--recompute", action="store_true", help="recompute each layer in the backward")
    p.add_argument("--offload-optimizer", action="store_true",
                   help="optimizer state and master weights in streaming memory")
    p.add_argument("--device-iterations", type=int, default=1, help="weight updates per host call")
    p.add_argument("--available-memory-proportion", default="0.6",
                   help="per-tile share of SRAM for matmul temporaries (Poplar's option): one "
                        "value, or one per IPU of a replica like 0.1,0.15,0.15,0.15 (default 0.6)")
    p.add_argument("--head-ipu", type=int, default=0, help="IPU holding the output head (default 0)")
    p.add_argument("--no-outline", action="store_true",
                   help="compile every layer's own code (default: identical layers share it, as "
                        "PopART's outlining does)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def list_systems() -> str:
    lines = [f"{'name':14s} {'chip':6s} {'IPUs':>4s} {'machines':>8s} {'FP16 PFLOP/s':>12s} "
             f"{'SRAM GB':>8s} {'streaming':>9s}  description"]
    for s in SYSTEMS.values():
        c = s.chip
        lines.append(f"{s.name:14s} {c.name:6s} {s.ipus:4d} {s.machines:8d} "
                     f"{s.ipus * c.peak_flops('fp16', 'fp16') / 1e15:12.3g} "
                     f"{s.ipus * c.total_sram_bytes / 1e9:8.3g} "
                     f"{'yes' if s.has_streaming_memory else 'no':>9s}  {s.description}")
    return "\n".join(lines)


def _pipeline(text: str | None):
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--pipeline must be layers per IPU like 3,7,7,7 or an IPU count, "
                         f"got {text!r}") from None
    if len(values) > 1 or "," in text:
        return values
    # A count is divided into the system's IPUs, so it must be positive (0 used to divide by zero).
    if values[0] < 1:
        raise ValueError(f"--pipeline N must be an IPU count >= 1, got {text!r}")
    return values[0]


def _proportions(text: str) -> float | list[float]:
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(f"--available-memory-proportion must be a number or one per IPU like "
                         f"0.1,0.15,0.15,0.15, got {text!r}") from None
    return values[0] if len(values) == 1 else values


def run(args: argparse.Namespace) -> tuple[SystemEstimate, ModelConfig]:
    config = get_config(args.model)
    system = get_system(args.system)
    pipeline = _pipeline(args.pipeline)
    ipus = pipeline if isinstance(pipeline, int) else len(pipeline) if pipeline else 1
    replicas = args.replicas
    if replicas is None:
        if ipus > system.ipus:
            raise ValueError(f"pipeline of {ipus} IPUs, but {system.name} has {system.ipus}")
        replicas = system.ipus // ipus
    dtype = "float32" if args.precision == "fp32" else "float16"
    work = build(config, micro_batch=args.micro_batch, seq=args.seq, dtype=dtype)
    place = {**work.place, "head": args.head_ipu}
    est = estimate_system(
        work.step, *work.args, system=system, pipeline=pipeline, place=place,
        micro_batch=work.micro_batch, seq=work.seq, replicas=replicas, grad_accum=args.grad_accum,
        recompute=args.recompute, offload_optimizer=args.offload_optimizer,
        precision=args.precision, device_iterations=args.device_iterations,
        batch_argnums=work.batch_argnums,
        available_memory_proportion=_proportions(args.available_memory_proportion),
        outline=not args.no_outline)
    # The model as run: --seq overrides the preset's default sequence length.
    return est, dataclasses.replace(work.config, seq=work.seq)


def describe(config: ModelConfig, seq: int) -> str:
    return (f"{config.name}: {config.kind.upper()}, {config.depth} layers, d_model {config.d_model}, "
            f"{config.heads} heads, MLP {config.ffn_ratio:g}x, vocab {config.vocab}, seq {seq}")


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.system == "list":
        print(list_systems())
        return 0
    if args.model is None:
        p.print_usage(sys.stderr)
        print(f"{p.prog}: error: MODEL is required (one of {', '.join(PRESETS)} or a JSON file)",
              file=sys.stderr)
        return 2
    try:
        est, config = run(args)
    except (ValueError, TypeError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": config.to_dict(), **est.to_dict()}, indent=1))
    else:
        print(describe(config, est.seq))
        print(est.summary())
    return 0 if est.fits else 1


if __name__ == "__main__":
    sys.exit(main())
