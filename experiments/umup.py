"""u-muP vs the standard parametrisation: does the optimal learning rate move with width?

    python -m experiments.umup --quick                      # a smoke test: a tiny sweep, about a minute
    python -m experiments.umup --out results/umup           # the full sweep of experiments/sweeps/umup.toml
    python -m experiments.umup summarise --out results/umup # tables and plots from finished runs

Character-level GPTs on Shakespeare, one learning-rate sweep per width at fixed depth, for
  SP:    the standard model (weights N(0, 0.02^2), 1/sqrt(d_head) attention) + plain AdamW (optax);
  u-muP: the unit-scaled model + u-muP AdamW (:func:`unitscale.optim.umup_adamw`: per-parameter
         learning-rate multipliers, independent weight decay).
Both use the same data order, warm-up + cosine schedule and no gradient clipping (clipping at a
global norm is not width-neutral). Each run's final validation loss is one point; the optimum per
width is the best grid point, refined by a parabola in log2(lr) through it and its neighbours.
A run's ``precision`` is ``fp32``, ``bf16`` or ``fp8``: u-muP's FP8 recipe (``umup_fp8`` of
:mod:`unitscale.precision`, no scaling of any kind) on bfloat16 arithmetic, to set against ``bf16``.

Writes to ``--out``: ``runs.csv`` (one row per run), ``summary.json`` (optimum per width, how far it
moves, the loss lost by transferring the smallest width's optimum), ``lr_sweep.png`` (loss vs log2
lr, one curve per width, one panel per parametrisation), ``precision.png`` (u-muP FP8 vs BF16,
when the spec has such runs) and ``README.md`` (the command and the tables). Runs live under
``--runs`` (checkpoints deleted once a run completes; a diverged run keeps its last good one);
interrupt at any time and run the same command again: finished runs are skipped
(:mod:`experiments.runner`) and a run in flight resumes from its last checkpoint; ``--fresh`` runs
them all again. ``--quick`` is a smoke test whose results go to a temporary directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optax
from flax import nnx

from experiments import data
from experiments.char_gpt import load_char_corpus
from experiments.cli import SMOKE_TEST, quick_out, run_main
from experiments.figures import figure
from experiments.inputs import InputError, ScriptParser, check_data, check_out_dir
from experiments.optimizers import OptimizerConfig, decay_mask, learning_rate_schedule
from experiments.results import read_json, write_csv, write_json, write_text
from experiments.runner import RESULT_FILE, expand_grid, load_spec, name_runs, remove_runs, run_sweep
from experiments.train import NonFiniteLossError, TrainConfig, train
from unitscale.models.gpt import GPT, GPTConfig, lm_loss
from unitscale.optim import umup_adamw
from unitscale.precision.loss_scale import NoOpLossScale
from unitscale.precision.recipe import value_and_grad_with_recipe

PARAMETRISATIONS = {"sp": "standard (SP) + AdamW", "umup": "u-μP + u-μP AdamW"}
# precision -> (policy preset of unitscale.precision, activation dtype). "fp8" is u-muP's FP8 recipe
# (E4M3 matmul inputs, E5M2 output-gradients, the FFN down and attention output projections in BF16,
# no tensor scaling) on bfloat16 arithmetic, so it differs from "bf16" only in the quantised matmuls.
PRECISIONS = {"fp32": ("fp32", "float32"), "bf16": ("bf16", "bfloat16"), "fp8": ("umup_fp8", "bfloat16")}
SPEC = Path(__file__).parent / "sweeps" / "umup.toml"
RUN_FN = "experiments.umup:run"
QUICK_OUT = quick_out("umup")

# A sweep small enough for --quick: two widths, two learning rates each, a few steps.
QUICK_FIXED = dict(depth=1, head_dim=8, steps=20, batch_size=8, seq_len=32, warmup=4, eval_every=10,
                   eval_batches=2, final_eval_batches=4, log_every=5, precision="fp32")
QUICK_SPEC = [
    dict(QUICK_FIXED, parametrisation="sp", weight_decay=0.1, width=[16, 32], log2_lr=[-8, -5]),
    dict(QUICK_FIXED, parametrisation="umup", weight_decay=2**-13, width=[16, 32], log2_lr=[-3, 0]),
]


# The training options a spec may set, with their u-muP defaults, by the names every script's options
# have (experiments.cli): TrainConfig's, and OptimizerConfig's for the optimiser (``warmup``: its warm-up
# steps). Both parametrisations: AdamW, linear warm-up then cosine decay, no gradient clipping.
TRAIN_DEFAULTS: Mapping[str, Any] = dict(steps=800, batch_size=16, seq_len=64, log_every=50, eval_every=200,
                                         eval_batches=8, final_eval_batches=64, checkpoint_every=200)
OPTIMIZER_DEFAULTS: Mapping[str, Any] = dict(warmup=80, weight_decay=0.0, b1=0.9, b2=0.99, eps=1e-8,
                                             final_lr_fraction=0.1)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """One run of the sweep: the model and learning rate of its point in the grid, and ``training``, the
    options of :data:`TRAIN_DEFAULTS` and :data:`OPTIMIZER_DEFAULTS` the spec sets. ``weight_decay`` is
    AdamW's lambda: SP removes ``lr_t * lambda * w`` per step (optax AdamW), u-muP
    ``(lr_t / lr) * lambda * w`` (independent of the learning rate)."""

    parametrisation: str
    width: int
    log2_lr: float
    depth: int = 2
    head_dim: int = 32
    precision: str = "fp32"
    seed: int = 0
    data: str = "shakespeare"
    cache_dir: str | None = None
    training: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.parametrisation not in PARAMETRISATIONS:
            raise ValueError(f"parametrisation must be one of {sorted(PARAMETRISATIONS)}, got {self.parametrisation!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if not isinstance(self.width, int) or not isinstance(self.head_dim, int) or self.width % self.head_dim:
            raise ValueError(f"width ({self.width!r}) must be a multiple of head_dim ({self.head_dim!r})")
        if not isinstance(self.log2_lr, (int, float)) or not math.isfinite(self.log2_lr):
            raise ValueError(f"log2_lr must be a finite number, got {self.log2_lr!r}")
        unknown = sorted(set(self.training) - set(TRAIN_DEFAULTS) - set(OPTIMIZER_DEFAULTS))
        if unknown:
            raise ValueError(f"training: unknown options {unknown}")
        self.train_config(".")  # TrainConfig and OptimizerConfig check every value

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """The settings of a sweep config: its keys are the fields and the training options."""
        fields = {f.name for f in dataclasses.fields(cls)} - {"training"}
        options = set(TRAIN_DEFAULTS) | set(OPTIMIZER_DEFAULTS)
        unknown = sorted(set(config) - fields - options)
        if unknown:
            raise ValueError(f"config: unknown settings {unknown}; known: {sorted(fields | options)}")
        return cls(**{k: v for k, v in config.items() if k in fields},
                   training={k: v for k, v in config.items() if k in options})

    def setting(self, name: str) -> Any:
        """Training option ``name`` of this run: the spec's, else its default."""
        return {**TRAIN_DEFAULTS, **OPTIMIZER_DEFAULTS, **self.training}[name]

    @property
    def lr(self) -> float:
        return 2.0**self.log2_lr

    @property
    def unit_scaled(self) -> bool:
        return self.parametrisation == "umup"

    def optimizer_config(self) -> OptimizerConfig:
        """AdamW at the peak rate ``2^log2_lr``, warm-up then cosine decay, no clipping."""
        o = {k: self.setting(k) for k in OPTIMIZER_DEFAULTS}
        return OptimizerConfig(name="adamw", lr=self.lr, b1=o["b1"], b2=o["b2"], eps=o["eps"],
                               weight_decay=o["weight_decay"], warmup_steps=o["warmup"], schedule="cosine",
                               final_lr_fraction=o["final_lr_fraction"], grad_clip=0.0)

    def train_config(self, out_dir: str | Path) -> TrainConfig:
        """The loop's settings: one checkpoint kept, no progress bar and no IPU estimate."""
        return TrainConfig(**{k: self.setting(k) for k in TRAIN_DEFAULTS}, optimizer=self.optimizer_config(),
                           keep_checkpoints=1, seed=self.seed, out_dir=str(out_dir), progress=False,
                           ipu_estimate=False)


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------

def model_config(s: RunSettings, vocab_size: int) -> GPTConfig:
    """The GPT of run ``s`` (heads of ``head_dim`` channels, context ``seq_len``, its precision)."""
    policy, dtype = PRECISIONS[s.precision]
    return GPTConfig(vocab_size=vocab_size, d_model=s.width, depth=s.depth, heads=s.width // s.head_dim,
                     max_len=s.setting("seq_len"), unit_scaled=s.unit_scaled, precision=policy, dtype=dtype)


def make_optimizer(s: RunSettings, model: GPT) -> optax.GradientTransformation:
    """SP: optax AdamW (decay on matrices and embeddings); u-muP: :func:`unitscale.optim.umup_adamw`
    with the same schedule, betas and decay mask, the decay independent of the learning rate."""
    config = s.optimizer_config()
    schedule = learning_rate_schedule(config, s.setting("steps"))
    if not s.unit_scaled:
        return optax.adamw(schedule, config.b1, config.b2, config.eps, weight_decay=config.weight_decay,
                           mask=decay_mask)
    return umup_adamw(schedule, model, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                      peak_lr=s.lr, mask=decay_mask)


def run(config: Mapping[str, Any], run_dir: str | Path) -> dict:
    """Sweep entry point: train one :class:`RunSettings` in ``run_dir/train``; returns the final
    validation loss (NaN and ``diverged`` if the loss went non-finite)."""
    s = RunSettings.from_config(config)
    corpus = load_char_corpus(s.data, s.cache_dir)
    model = GPT(model_config(s, corpus.vocab.size), rngs=nnx.Rngs(params=s.seed, dropout=s.seed + 1))
    train_config = s.train_config(Path(run_dir) / "train")
    shape = dict(batch_size=train_config.batch_size, seq_len=train_config.seq_len)
    # Quantised matmuls carry recipe state (range counts) that only the recipe's gradient updates.
    recipe = (dict(value_and_grad=value_and_grad_with_recipe, recipe_state=NoOpLossScale())
              if model.config.precision.quantized else {})
    try:
        result = train(model, lm_loss, train_config, optimizer=make_optimizer(s, model), **recipe,
                       batches=lambda start: data.lm_batches(corpus.train, seed=s.seed, start_step=start, **shape),
                       eval_data={"val": lambda: data.lm_eval_batches(corpus.validation, **shape)},
                       describe={"model": model.config.to_dict(), "settings": dataclasses.asdict(s),
                                 "data": corpus.source})
    except NonFiniteLossError as err:
        # The last good step's checkpoint stays, as the error says; an interrupted run keeps its
        # checkpoints too, to resume. Only a completed run no longer needs them.
        return {"val_loss": math.nan, "train_loss": math.nan, "diverged": True, "diverged_at": err.step}
    shutil.rmtree(Path(run_dir) / "train" / "checkpoints", ignore_errors=True)
    val = result.final["val"]
    return {"val_loss": val["loss"], "val_bpc": val["bits_per_token"], "train_loss": result.final["train"]["loss"],
            "diverged": False, "tokens_per_s": result.record["tokens_per_s"]}


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Point:
    """A finished run: where it sits in the sweep and its final validation loss (NaN: diverged)."""

    parametrisation: str
    precision: str
    width: int
    log2_lr: float
    val_loss: float
    train_loss: float
    seconds: float

    @property
    def group(self) -> tuple[str, str]:
        return self.parametrisation, self.precision


def collect(spec: Any, runs_dir: str | Path) -> list[Point]:
    """The finished runs of ``spec`` under ``runs_dir`` (runs without ``result.json`` are left out)."""
    points = []
    for r in name_runs(expand_grid(spec)):
        path = Path(runs_dir) / r.name / RESULT_FILE
        if not path.is_file():
            continue
        record, s = read_json(path), RunSettings.from_config(r.config)
        res = record["result"]
        points.append(Point(s.parametrisation, s.precision, s.width, float(s.log2_lr), float(res["val_loss"]),
                            float(res["train_loss"]), float(record.get("seconds", math.nan))))
    return points


def refine_minimum(x: Sequence[float], y: Sequence[float]) -> tuple[float, int, bool]:
    """``(x_opt, i_best, interior)``: the best point ``i_best`` of ``y(x)`` (NaN counts as worst) and
    the vertex of the parabola through it and its two neighbours when it has finite ones on both
    sides (``interior``), clamped to them; otherwise ``x[i_best]``."""
    y = np.where(np.isfinite(y), y, np.inf)
    i = int(np.argmin(y))
    if not np.isfinite(y[i]):
        return math.nan, i, False
    if i == 0 or i == len(x) - 1 or not np.isfinite(y[i - 1]) or not np.isfinite(y[i + 1]):
        return float(x[i]), i, False
    (x0, x1, x2), (f0, f1, f2) = x[i - 1:i + 2], y[i - 1:i + 2]
    num = (x1 - x0) ** 2 * (f1 - f2) - (x1 - x2) ** 2 * (f1 - f0)
    den = (x1 - x0) * (f1 - f2) - (x1 - x2) * (f1 - f0)
    vertex = x1 - 0.5 * num / den if den else x1
    return float(np.clip(vertex, x0, x2)), i, True


def _curves(points: Sequence[Point], group: tuple[str, str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    curves: dict[int, list[Point]] = {}
    for p in points:
        if p.group == group:
            curves.setdefault(p.width, []).append(p)
    return {w: (np.array([p.log2_lr for p in ps]), np.array([p.val_loss for p in ps]))
            for w, ps in sorted(curves.items()) for ps in [sorted(ps, key=lambda p: p.log2_lr)]}


def optima(points: Sequence[Point], group: tuple[str, str]) -> list[dict]:
    """One row per width of ``group``: best grid log2 lr and loss, refined optimum, whether it is
    bracketed by the grid, and the number of diverged runs."""
    rows = []
    for width, (x, y) in _curves(points, group).items():
        refined, i, interior = refine_minimum(x, y)
        rows.append({"width": width, "best_log2_lr": float(x[i]), "best_val_loss": float(y[i]),
                     "refined_log2_lr": refined, "bracketed": interior, "runs": len(x),
                     "diverged": int(np.sum(~np.isfinite(y)))})
    return rows


def transfer(points: Sequence[Point], group: tuple[str, str]) -> dict:
    """How far the optimum moves with width: its spread (binades) and slope against log2 width
    (least squares on the refined optima), and the *transfer regret*: the validation loss at the
    widest model trained with the narrowest model's best learning rate, minus its own best loss."""
    rows, curves = optima(points, group), _curves(points, group)
    if len(rows) < 2:
        return {"widths": [r["width"] for r in rows]}
    widths = np.array([r["width"] for r in rows], float)
    opt = np.array([r["refined_log2_lr"] for r in rows])
    ok = np.isfinite(opt)
    slope = float(np.polyfit(np.log2(widths[ok]), opt[ok], 1)[0]) if ok.sum() >= 2 else math.nan
    x_wide, y_wide = curves[int(widths[-1])]
    at = np.flatnonzero(x_wide == rows[0]["best_log2_lr"])
    regret = float(y_wide[at[0]] - rows[-1]["best_val_loss"]) if at.size else math.nan
    return {"widths": [int(w) for w in widths], "spread_binades": float(np.nanmax(opt) - np.nanmin(opt)),
            "slope_per_doubling": slope, "transfer_regret": regret}


def summarise(points: Sequence[Point]) -> dict:
    """``{"<parametrisation>/<precision>": {"optima": [...], "transfer": {...}}}`` over the groups present."""
    groups = sorted({p.group for p in points}, key=lambda g: (g[1] != "fp32", g))
    return {f"{g[0]}/{g[1]}": {"optima": optima(points, g), "transfer": transfer(points, g)} for g in groups}


# ----------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------

def _figure(ncols: int):
    fig = figure(5.2 * ncols, 4.2)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _plot_group(ax, points: Sequence[Point], group: tuple[str, str], colours) -> None:
    curves = _curves(points, group)
    finite = [y[np.isfinite(y)] for _, y in curves.values()]
    low = min((float(f.min()) for f in finite if f.size), default=0.0)
    top = low + 1.2
    for k, (width, (x, y)) in enumerate(curves.items()):
        colour = colours(0.85 * k / max(len(curves) - 1, 1))  # viridis' last 15% is too pale on white
        ax.plot(x, np.minimum(y, top), "o-", color=colour, ms=3.5, label=f"width {width}")
        refined, i, _ = refine_minimum(x, y)
        if np.isfinite(refined):
            ax.plot([x[i]], [y[i]], "*", color=colour, ms=13, mec="black", mew=0.6)
        gone = ~np.isfinite(y)
        ax.plot(x[gone], np.full(gone.sum(), top), "x", color=colour, ms=8)
    ax.set_ylim(low - 0.05, top + 0.05)
    ax.set_xlabel("log2 learning rate")
    ax.set_ylabel("final validation loss (nats/char)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_lr_sweep(points: Sequence[Point], path: str | Path) -> Path:
    """Loss vs log2 lr at fp32, one panel per parametrisation, one curve per width (star: best
    point; x at the top: diverged; losses above best + 1.2 drawn at that cap)."""
    import matplotlib

    groups = [(p, "fp32") for p in PARAMETRISATIONS if any(q.group == (p, "fp32") for q in points)]
    fig, axes = _figure(max(len(groups), 1))
    for ax, group in zip(axes, groups):
        _plot_group(ax, points, group, matplotlib.colormaps["viridis"])
        t = transfer(points, group)
        moved = (f"\noptimum moves {t['spread_binades']:.1f} binades over widths {t['widths'][0]}-{t['widths'][-1]}"
                 if "spread_binades" in t else "")
        ax.set_title(f"{PARAMETRISATIONS[group[0]]}{moved}", fontsize=10)
    fig.savefig(path, dpi=130)
    return Path(path)


def plot_precision(points: Sequence[Point], path: str | Path) -> Path | None:
    """u-muP loss vs log2 lr per precision at the width(s) that have bf16/fp8 runs; None if none."""
    import matplotlib

    others = {p.width for p in points if p.parametrisation == "umup" and p.precision != "fp32"}
    if not others:
        return None
    fig, axes = _figure(1)
    ax, colours = axes[0], matplotlib.colormaps["tab10"]
    for k, precision in enumerate(sorted({p.precision for p in points if p.width in others})):
        for width, (x, y) in _curves([p for p in points if p.width in others], ("umup", precision)).items():
            ax.plot(x, y, "o-", color=colours(k), label=f"{precision}, width {width}")
    ax.set_xlabel("log2 learning rate")
    ax.set_ylabel("final validation loss (nats/char)")
    ax.set_title("u-μP: number formats of the matmuls", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=130)
    return Path(path)


def write_runs_csv(points: Sequence[Point], path: str | Path) -> Path:
    """One row per run: the fields of :class:`Point`."""
    return write_csv(path, [dataclasses.asdict(p) for p in points], [f.name for f in dataclasses.fields(Point)])


def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown_tables(summary: Mapping[str, Any]) -> str:
    """The optimum per width of every group, and one line per group on how far it moves."""
    lines = ["| group | width | best log2 lr | refined log2 lr | best val loss | diverged |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, group in summary.items():
        for r in group["optima"]:
            mark = "" if r["bracketed"] else " (grid edge)"
            lines.append(f"| {name} | {r['width']} | {r['best_log2_lr']:g} | {_fmt(r['refined_log2_lr'], 2)}{mark} | "
                         f"{_fmt(r['best_val_loss'])} | {r['diverged']}/{r['runs']} |")
    lines += ["", "| group | optimum spread (binades) | slope per width doubling | transfer regret (nats) |",
              "|---|---:|---:|---:|"]
    for name, group in summary.items():
        t = group["transfer"]
        if "spread_binades" in t:
            lines.append(f"| {name} | {_fmt(t['spread_binades'], 2)} | {_fmt(t['slope_per_doubling'], 2)} | "
                         f"{_fmt(t['transfer_regret'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(points: Sequence[Point], out: str | Path, command: str) -> dict:
    """``runs.csv``, ``summary.json``, ``lr_sweep.png``, ``precision.png`` (if any) and ``README.md``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(points)
    write_runs_csv(points, out / "runs.csv")
    write_json(out / "summary.json", {"command": command, "groups": summary})
    plot_lr_sweep(points, out / "lr_sweep.png")
    figures = ["lr_sweep.png"] + (["precision.png"] if plot_precision(points, out / "precision.png") else [])
    hours = sum(p.seconds for p in points if math.isfinite(p.seconds)) / 3600
    readme = [f"# u-μP vs SP learning-rate sweep\n", f"Made by\n\n    {command}\n",
              f"{len(points)} runs, {hours:.2f} h of training. Figures: {', '.join(figures)}. "
              f"Per-run rows: runs.csv; everything below: summary.json.\n", markdown_tables(summary)]
    write_text(out / "README.md", "\n".join(readme))
    return summary


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------

COMMANDS = ("run", "summarise")


def make_parser() -> argparse.ArgumentParser:
    """The options of ``run`` and ``summarise``, both commands in the usage line."""
    doc = __doc__.split("\n\n", 1)
    p = ScriptParser(prog="python -m experiments.umup", description=doc[0], epilog=doc[1],
                     usage="python -m experiments.umup [run | summarise] [options]",
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"a smoke test: the built-in tiny sweep (about a minute on "
                   f"2 CPU cores), results in {QUICK_OUT} unless --out is given")
    p.add_argument("--spec", type=Path, default=None, help=f"sweep spec, .toml or .json (default: {SPEC}; "
                   "--quick: a built-in two-width sweep)")
    p.add_argument("--out", type=Path, default=None,
                   help=f"tables, plots and README (default: results/umup; --quick: {QUICK_OUT})")
    p.add_argument("--runs", type=Path, default=None,
                   help=f"one directory per run (default: runs/umup; --quick: {QUICK_OUT / 'runs'})")
    p.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process (default 1)")
    p.add_argument("--fresh", action="store_true", help="delete the spec's run directories first and run them "
                   "again from the start (default: keep finished runs, resume unfinished ones)")
    p.add_argument("--data", default=None, help="corpus for every run (default: the spec's, shakespeare)")
    p.add_argument("--cache-dir", default=None,
                   help="corpus cache (default: $UNITSCALE_CACHE_DIR or ~/.cache/unitscale)")
    p.add_argument("--analyse-only", action="store_true", help="the same as the command summarise (older spelling)")
    return p


def _spec(args: argparse.Namespace) -> list[dict]:
    """The runs of ``--spec`` (or the built-in quick sweep) with ``--data`` / ``--cache-dir``, every run's
    settings checked; InputError naming what is wrong."""
    try:
        spec = load_spec(args.spec) if args.spec else (QUICK_SPEC if args.quick else load_spec(SPEC))
        spec = [spec] if isinstance(spec, Mapping) else list(spec)
        overrides = {k: v for k, v in (("data", args.data), ("cache_dir", args.cache_dir)) if v is not None}
        spec = [{**grid, **overrides} for grid in spec]
        for r in name_runs(expand_grid(spec)):
            RunSettings.from_config(r.config)  # reject a bad spec before hours of training
    except (ValueError, TypeError) as err:
        raise InputError(str(err)) from None
    return spec


def main(argv: Sequence[str] | None = None) -> dict:
    """``run`` (the default: the sweep, then its summary) or ``summarise`` (the summary of finished runs)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv[:1] and argv[0] in COMMANDS else "run"
    args = make_parser().parse_args(argv[1:] if argv[:1] == [command] else argv)
    if args.analyse_only:
        command = "summarise"
    if args.workers < 1:
        raise InputError(f"--workers must be a positive integer, got {args.workers}")
    if args.data is not None:
        check_data(args.data, "--data")
    out = check_out_dir(args.out or (QUICK_OUT if args.quick else Path("results/umup")), "--out")
    runs = check_out_dir(args.runs or (QUICK_OUT / "runs" if args.quick else Path("runs/umup")), "--runs")
    spec = _spec(args)
    if args.quick:
        print(SMOKE_TEST, flush=True)
    if command == "run":
        if args.fresh:
            print(f"--fresh: deleted {len(remove_runs(runs, expand_grid(spec)))} run directories under {runs}")
        report = run_sweep(spec, RUN_FN, runs, workers=args.workers, log=lambda line: print(line, flush=True))
        if report.failed:
            print(f"{len(report.failed)} runs failed (error.txt in their directories): {', '.join(report.failed)}")
    command_line = "python -m experiments.umup " + shlex.join(argv)
    summary = write_outputs(collect(spec, runs), out, command_line)
    print(markdown_tables(summary), end="")
    print(f"wrote {out}/README.md, summary.json, runs.csv, lr_sweep.png")
    if args.quick:
        print(SMOKE_TEST)
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
