"""Where every tensor of a GPT or BERT sits against the FP16 / FP8 ranges at initialisation, standard
vs unit-scaled (the unit scaling paper's per-op scale figure).

    python -m experiments.scales --quick                                  # a smoke test: tiny models, seconds
    python -m experiments.scales --model gpt --size small --out results/scales
    python -m experiments.scales --model bert --precision fp16 --tensor layers.1/mlp/mlp/ffn_down/dot_general

Both models get the same batch and seed. Every op output and weight of one forward and backward
pass is tracked (unitscale.analysis.track_model_scales). Writes to --out: ``scales.png`` (one row
per tensor in program order, its scale and its gradient's scale on a log2 axis, the formats'
min subnormal / min normal / max as vertical lines; standard and unit-scaled side by side),
``histogram.png`` (log2 |x| of one tensor in both models, with each format's underflow / subnormal /
normal / overflow shares), ``standard.csv|json``, ``unit_scaled.csv|json`` (every record) and
``summary.json`` (its ``options`` name the size ``preset``, as every summary has); prints one summary
line per model. ``--quick`` is a smoke test whose files go to a temporary directory unless ``--out``
is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from experiments import data
from experiments.char_gpt import SIZES, sizes_help
from experiments.cli import SMOKE_TEST, fill_quick_defaults, quick_help, quick_out, run_main
from experiments.inputs import InputError, ScriptParser, check_data, check_out_dir, check_split_length
from experiments.results import run_metadata, write_json
from experiments.variants import PRECISIONS
from unitscale.analysis import STAT_NAMES, ScaleRecord, ScaleReport, plot_histogram, plot_scales, track_model_scales
from unitscale.formats import FPFormat, format_from_name
from unitscale.models.bert import BERT, BERTConfig, mlm_loss
from unitscale.models.gpt import GPT, GPTConfig, lm_loss

MODELS = ("gpt", "bert")
PANELS = {"standard": False, "unit-scaled": True}
RANDOM_DATA = "random"
# option dest -> (default, --quick value or None)
DEFAULTS: Mapping[str, tuple[Any, Any]] = {
    "model": ("gpt", None), "size": ("small", "tiny"), "batch_size": (8, 4), "seq_len": (128, 32),
    "data": ("shakespeare", None), "precision": ("fp32", None), "seed": (0, None),
    "formats": ("fp16,e4m3,e5m2", None), "stat": ("rms", None),
    "tensor": ("layers.0/mlp/mlp/ffn_up/dot_general", None), "phase": ("backward", None),
    "out": ("results/scales", str(quick_out("scales"))),
}  # fmt: skip


def _help(text: str, dest: str) -> str:
    return quick_help(DEFAULTS, text, dest)


def make_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n", 1)
    p = ScriptParser(prog="python -m experiments.scales", description=doc[0],
                     epilog=doc[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke test: tiny models and a small batch (seconds on "
                   "2 CPU cores)")
    p.add_argument("--model", choices=MODELS, help=_help("model family", "model"))
    p.add_argument("--size", "--preset", dest="size", choices=sorted(SIZES),
                   help=_help(f"model size: {sizes_help()}", "size"))
    p.add_argument("--batch-size", type=int, help=_help("sequences in the batch", "batch_size"))
    p.add_argument("--seq-len", type=int, help=_help("tokens per sequence", "seq_len"))
    p.add_argument("--data", help=_help("corpus: shakespeare, gcide, a WikiText directory, a text file, "
                                        f"or '{RANDOM_DATA}' (uniform random bytes)", "data"))
    p.add_argument("--cache-dir", default=None,
                   help="corpus cache (default: $UNITSCALE_CACHE_DIR or ~/.cache/unitscale)")
    p.add_argument("--precision", choices=sorted(PRECISIONS),
                   help=_help("precision preset of unitscale.precision for both models", "precision"))
    p.add_argument("--seed", type=int, help=_help("seed of the initialisation and the batch", "seed"))
    p.add_argument("--formats", help=_help("comma-separated formats to draw and measure coverage in", "formats"))
    p.add_argument("--stat", choices=STAT_NAMES, help=_help("statistic on the x axis of scales.png", "stat"))
    p.add_argument("--tensor", help=_help("label (or part of it) of the tensor in histogram.png", "tensor"))
    p.add_argument("--phase", choices=("forward", "backward"), help=_help(
        "histogram of that tensor's values (forward) or of its gradient (backward)", "phase"))
    p.add_argument("--out", help=_help("output directory", "out"))
    return p


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; unset options take their ``--quick`` value under ``--quick``, else the default."""
    parser = make_parser()
    args = parser.parse_args(argv)
    fill_quick_defaults(args, DEFAULTS)
    if args.batch_size < 1 or args.seq_len < 8:
        parser.error(f"--batch-size must be >= 1 and --seq-len >= 8, got {args.batch_size} and {args.seq_len}")
    try:
        args.formats = tuple(format_from_name(n) for n in args.formats.split(",") if n.strip())
        check_data(args.data, "--data", also=(RANDOM_DATA,))
        check_out_dir(args.out, "--out")
    except ValueError as err:
        parser.error(str(err) if isinstance(err, InputError) else f"--formats: {err}")
    return args


def load_tokens(args: argparse.Namespace) -> tuple[np.ndarray, data.Vocab, str]:
    """Training-split token ids, their vocabulary (with BERT's specials for --model bert) and a name."""
    specials = data.MLM_SPECIALS if args.model == "bert" else data.CHAR_SPECIALS
    if args.data == RANDOM_DATA:
        rng = np.random.default_rng(args.seed)
        n = 4 * args.batch_size * args.seq_len
        return rng.integers(0, 256, n, dtype=np.int32), data.ByteVocab(specials), "uniform random bytes"
    splits = data.load_corpus(args.data, cache_dir=args.cache_dir)
    vocab = data.build_char_vocab(splits.train, specials)
    tokens = vocab.encode(splits.train)
    # The batch is training batch 0 of experiments.data: windows of seq_len (+ 1) from slots seq_len apart.
    check_split_length(len(tokens), 2 * args.seq_len, split="training", seq_len=args.seq_len, source=splits.source)
    return tokens, vocab, splits.source


def build(args: argparse.Namespace, unit_scaled: bool, tokens: np.ndarray, vocab: data.Vocab):
    """``(model, loss_fn, batch)`` of the options for one parametrisation."""
    common = dict(vocab_size=vocab.size, max_len=args.seq_len, unit_scaled=unit_scaled,
                  precision=args.precision, **SIZES[args.size])
    shape = dict(batch_size=args.batch_size, seq_len=args.seq_len, seed=args.seed)
    rngs = nnx.Rngs(params=args.seed, dropout=args.seed + 1)
    if args.model == "bert":
        model = BERT(BERTConfig(**common), rngs=rngs)
        return model, mlm_loss, data.mlm_batch(tokens, 0, vocab=vocab, **shape)
    return GPT(GPTConfig(**common), rngs=rngs), lm_loss, data.lm_batch(tokens, 0, **shape)


def scale_spread(report: ScaleReport) -> dict[str, float]:
    """median |log2 std| over forward activations and backward gradients (and each alone)."""
    forward = report.select(phase="forward", kind="activation")
    backward = report.select(phase="backward")
    both = ScaleReport(forward.records + backward.records)
    return {"all": both.median_abs_log2("std"), "forward": forward.median_abs_log2("std"),
            "backward": backward.median_abs_log2("std")}


LOSS_THRESHOLD = 0.01  # a tensor "loses values" when more than 1% of them under- or overflow


def _worst(report: ScaleReport, fmt: FPFormat, cls: str) -> dict[str, Any]:
    shares = [(r.coverage_in(fmt).get(cls), r) for r in report]
    share, record = max(shares, key=lambda s: s[0])
    return {"tensors_over_1pct": sum(s > LOSS_THRESHOLD for s, _ in shares), "worst_share": share,
            "worst": f"{'gradient of ' if record.phase == 'backward' else ''}{record.label}"}


def summarise(report: ScaleReport, formats: Sequence[FPFormat]) -> dict[str, Any]:
    """Loss, record count, scale spread and, per format, how many tensors lose more than 1% of their
    values to underflow / overflow, and the worst one."""
    return {
        "loss": report.output, "records": len(report), "median_abs_log2_std": scale_spread(report),
        "coverage": {f.name: {cls: _worst(report, f, cls) for cls in ("underflow", "overflow")} for f in formats},
    }  # fmt: skip


def summary_line(name: str, summary: Mapping[str, Any]) -> str:
    """One printed line per model."""
    spread = summary["median_abs_log2_std"]
    parts = [f"{name:<11} loss {summary['loss']:.3f}", f"{summary['records']} records",
             f"median |log2 std| {spread['all']:.2f} (forward {spread['forward']:.2f}, "
             f"backward {spread['backward']:.2f})"]
    for fmt, cov in summary["coverage"].items():
        under, over = cov["underflow"], cov["overflow"]
        parts.append(f"{fmt}: {under['tensors_over_1pct']} tensors lose >1% to underflow "
                     f"(worst {under['worst_share']:.0%}), {over['tensors_over_1pct']} to overflow")
    return " | ".join(parts)


def find_record(report: ScaleReport, label: str, phase: str) -> ScaleRecord:
    """The first record of ``phase`` whose label contains ``label``."""
    for record in report:
        if record.phase == phase and label in record.label:
            return record
    examples = ", ".join(sorted({r.label for r in report.select(phase=phase)})[:8])
    raise SystemExit(f"--tensor: no {phase} record's label contains {label!r}; e.g. {examples}")


def write_outputs(args: argparse.Namespace, reports: Mapping[str, ScaleReport], summary: dict) -> list[Path]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, report in reports.items():
        stem = name.replace("-", "_")
        report.to_csv(out / f"{stem}.csv")
        report.to_json(out / f"{stem}.json")
        written += [out / f"{stem}.csv", out / f"{stem}.json"]
    what = (f"{args.model.upper()} {args.size} at initialisation, {args.precision}, "
            f"batch {args.batch_size}x{args.seq_len}")
    plot_scales(reports, stat=args.stat, formats=args.formats, path=out / "scales.png", title=what)
    chosen = {name: find_record(rep, args.tensor, args.phase) for name, rep in reports.items()}
    plot_histogram(chosen, formats=args.formats, path=out / "histogram.png", title=what)
    write_json(out / "summary.json", summary)
    return written + [out / "scales.png", out / "histogram.png", out / "summary.json"]


def summary_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options as ``summary.json`` records them: the size under ``preset``, the name it has had in
    every summary (``paper/`` reads it), the formats by name."""
    options = {("preset" if k == "size" else k): v for k, v in vars(args).items() if k != "formats"}
    return {**options, "formats": [f.name for f in args.formats]}


def measure(args: argparse.Namespace) -> tuple[dict[str, ScaleReport], dict[str, Any]]:
    """Both models' scale reports, and the summary ``summary.json`` holds (options, data, per-model numbers)."""
    tokens, vocab, source = load_tokens(args)
    reports = {}
    for name, unit_scaled in PANELS.items():
        model, loss_fn, batch = build(args, unit_scaled, tokens, vocab)
        reports[name] = track_model_scales(model, batch, loss_fn, formats=args.formats)
    summary = {"options": summary_options(args), "data": source,
               "models": {name: summarise(rep, args.formats) for name, rep in reports.items()},
               "run": run_metadata()}
    return reports, summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Track both models' scales, write the files of the module docstring and print one line per model."""
    args = parse(argv)
    if args.quick:
        print(SMOKE_TEST, flush=True)
    reports, summary = measure(args)
    written = write_outputs(args, reports, summary)
    for name, s in summary["models"].items():
        print(summary_line(name, s))
    print("wrote " + ", ".join(str(p) for p in written))
    if args.quick:
        print(SMOKE_TEST)
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
