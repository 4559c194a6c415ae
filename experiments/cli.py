"""The command line shared by every experiment script: training, optimiser, data, precision and run options.

A script builds an :class:`ExperimentCLI` with its own defaults and ``--quick`` values, adds its own
options with :meth:`ExperimentCLI.add`, and gets a :class:`~experiments.train.TrainConfig` back::

    cli = ExperimentCLI("python -m experiments.gpt", "Train a GPT ...", defaults={"steps": 5000},
                        quick={"steps": 300, "eval_every": 50})
    cli.add("--width", type=int, default=256, quick=64, help="model width")
    args = cli.parse(argv)
    config = cli.train_config(args)

An option the user gives always wins; otherwise ``--quick`` picks the quick value where the script set
one, else the default. ``--help`` shows both. A ``--quick`` run is a smoke test: its default output
directory lies outside the repository (:func:`quick_out`) and it says so (:data:`SMOKE_TEST`).
:func:`run_train` is a script's one-run command line (parse, resolve, train, print a summary);
:func:`run_main` turns the loop's expected stops (interrupt, divergence, missing data, unusable
checkpoint, a bad input) into one line and an exit code instead of a traceback.

Every script names the same things the same way: ``--out``, ``--data``, ``--fresh``, ``--quick``,
``--size``, ``--precision``, ``--scaling`` and ``--system`` (the IPU system; ``ipu_sim``'s own flag).
Older spellings stay as aliases: ``--loss-scale``, ``--ipu-system`` / ``--ipu-chip`` and, in option
dicts such as sweep configs, the keys in :data:`DICT_ALIASES`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from experiments.checkpoint import CheckpointError
from experiments.data import DataUnavailableError
from experiments.inputs import InputError, ScriptParser, check_data, check_out_dir
from experiments.optimizers import OPTIMIZERS, SCHEDULES, OptimizerConfig
from experiments.parallel import initialize_distributed
from experiments.train import NonFiniteLossError, ResumeError, TrainConfig, TrainingInterrupted, TrainResult
from ipu_sim.hardware import SYSTEMS, get_system

_UNSET = object()
_TRAIN, _OPT = TrainConfig(), OptimizerConfig()


def _help_table(text: str) -> dict[str, str]:
    """``name -> help`` from lines ``name   help text``; an indented line continues the help above."""
    table: dict[str, str] = {}
    for line in text.strip("\n").splitlines():
        if line[:1].isspace():
            last = next(reversed(table))
            table[last] += " " + line.strip()
        else:
            name, help = line.split(None, 1)
            table[name] = help
    return table


SMOKE_TEST = "--quick is a smoke test of the pipeline at a small size: its numbers are not results."
# Option-dict keys of earlier versions (sweep specs, saved configs) -> today's option names.
DICT_ALIASES = {"loss_scale": "scaling", "ipu_system": "system"}


def quick_out(script: str) -> Path:
    """The default output directory of ``script``'s ``--quick`` run: outside the repository, in the
    system's temporary directory, so that a smoke test never writes into ``results/``."""
    return Path(tempfile.gettempdir()) / f"{script}-quick"


# The training and optimiser options: name and help. The flag is the name with dashes (so a flag and
# its key in an options dict never differ), the default comes from TrainConfig / OptimizerConfig (the
# field of :data:`_OPT_FIELDS` where the names differ) and the type is the default's (int if None).
_TRAIN_OPTIONS = _help_table("""
steps                 optimiser steps
batch_size            sequences per step (global, over all devices)
seq_len               tokens per sequence
log_every             steps between train records in metrics.jsonl
eval_every            steps between validation evaluations
eval_batches          validation batches per periodic evaluation
final_eval_batches    batches per split in the final evaluation (default: the whole split)
checkpoint_every      steps between checkpoints
keep_checkpoints      checkpoints kept on disk
steps_per_call        steps per call of the compiled step, run in one device loop (records, evaluations and
                      checkpoints still fall on their steps; the result is the same)
""")
_OPT_OPTIONS = _help_table("""
optimizer             optimiser
lr                    peak learning rate
b1                    Adam/LAMB beta1
b2                    Adam/LAMB beta2
eps                   Adam/LAMB epsilon
weight_decay          weight decay (matrices and embeddings only)
momentum              SGD momentum
warmup                linear warm-up steps
schedule              learning-rate decay after warm-up
final_lr_fraction     final learning rate / peak
grad_clip             clip gradients to this global norm (0: off)
""")
_CHOICES = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES}
_OPT_FIELDS = {"optimizer": "name", "warmup": "warmup_steps"}


class ExperimentCLI:
    """An argparse parser holding the shared options, with per-script defaults and ``--quick`` values."""

    def __init__(self, prog: str, description: str, *, defaults: Mapping[str, Any] | None = None,
                 quick: Mapping[str, Any] | None = None, epilog: str | None = None):
        self.parser = ScriptParser(prog=prog, description=description, epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
        self._defaults: dict[str, Any] = {}
        self._quick: dict[str, Any] = {}
        self._script_defaults, self._script_quick = dict(defaults or {}), dict(quick or {})
        self._add_shared()
        unknown = (set(self._script_defaults) | set(self._script_quick)) - set(self._defaults)
        if unknown:
            raise ValueError(f"defaults/quick name unknown shared options {sorted(unknown)}; add script "
                             f"options with ExperimentCLI.add")

    def add(self, *flags: str, default: Any, quick: Any = _UNSET, help: str, group=None, **kwargs) -> None:
        """Add an option whose default is ``default`` and, under ``--quick``, ``quick`` (if given)."""
        target = group or self.parser
        action = target.add_argument(*flags, default=None, help=_help_text(help, default, quick), **kwargs)
        self._defaults[action.dest] = default
        if quick is not _UNSET:
            self._quick[action.dest] = quick

    def _shared(self, group, dest: str, flag: str | tuple[str, ...], kwargs: dict, help: str,
                default: Any) -> None:
        default = self._script_defaults.get(dest, default)
        quick = self._script_quick.get(dest, _UNSET)
        flags = (flag,) if isinstance(flag, str) else flag
        self.add(*flags, default=default, quick=quick, help=help, group=group, dest=dest, **kwargs)

    def _add_shared(self) -> None:
        run = self.parser.add_argument_group("run")
        run.add_argument("--quick", action="store_true", help="a smoke test: a short run of a small model (about a "
                         "minute on 2 CPU cores) whose numbers are not results")
        self._shared(run, "out", "--out", {}, "output directory (metrics, checkpoints, result.json)",
                     _TRAIN.out_dir)
        run.add_argument("--fresh", action="store_true",
                         help="start afresh, deleting this directory's checkpoints and metrics (default: "
                              "resume from its newest checkpoint)")
        self._shared(run, "seed", "--seed", {"type": int}, "seed of initialisation and data order", _TRAIN.seed)
        self._shared(run, "data", "--data", {}, "corpus: shakespeare, gcide, a WikiText directory or a text file",
                     "shakespeare")
        self._shared(run, "cache_dir", "--cache-dir", {}, "corpus cache (default: $UNITSCALE_CACHE_DIR or "
                     "~/.cache/unitscale)", None)
        run.add_argument("--no-progress", action="store_true", help="no progress bar")
        self._shared(run, "devices", "--devices", {"type": int},
                     "data-parallel devices (default: all JAX devices)", None)
        run.add_argument("--distributed", action="store_true",
                         help="call jax.distributed.initialize() first (multi-host runs)")
        run.add_argument("--no-ipu-estimate", action="store_true", help="skip the IPU estimate of the step")
        self._shared(run, "system", ("--system", "--ipu-system", "--ipu-chip"),
                     {"type": _system_name, "choices": list(SYSTEMS), "metavar": "SYSTEM"},
                     f"IPU system of the step's estimate: {', '.join(SYSTEMS)} (a chip name means one IPU of "
                     f"it; the batch is split data-parallel over the system's IPUs)", _TRAIN.ipu_system)
        train = self.parser.add_argument_group("training")
        for dest, help in _TRAIN_OPTIONS.items():
            self._config_option(train, dest, help, getattr(_TRAIN, dest))
        opt = self.parser.add_argument_group("optimiser")
        for dest, help in _OPT_OPTIONS.items():
            self._config_option(opt, dest, help, getattr(_OPT, _OPT_FIELDS.get(dest, dest)))

    def _config_option(self, group, dest: str, help: str, default: Any) -> None:
        """Option ``--dest`` of a TrainConfig / OptimizerConfig field whose default is ``default``."""
        kind = int if default is None else type(default)
        kwargs = {"choices": _CHOICES[dest]} if dest in _CHOICES else {"type": kind}
        self._shared(group, dest, "--" + dest.replace("_", "-"), kwargs, help, default)

    def add_model_options(self, *, precision: str = "fp32", precisions: Sequence[str] | None = None,
                          scaling: str = "none", scalings: Sequence[str] | None = None,
                          unit_scaled: bool = True) -> None:
        """``--precision``, ``--scaling`` (alias ``--loss-scale``) and ``--standard`` / ``--unit-scaled``,
        shared by model scripts."""
        group = self.parser.add_argument_group("model numerics")
        self.add("--precision", default=precision, group=group, choices=precisions,
                 help="number formats of the model's matmul inputs and gradients")
        self.add("--scaling", "--loss-scale", dest="scaling", default=scaling, group=group,
                 choices=scalings, help="scaling recipe: loss scaling (static, dynamic) or FP8 tensor scaling "
                                           "(delayed, current, mx)")
        scaled = group.add_mutually_exclusive_group()
        scaled.add_argument("--unit-scaled", dest="unit_scaled", action="store_true", default=None,
                            help=f"unit-scaled model{' (default)' if unit_scaled else ''}")
        scaled.add_argument("--standard", dest="unit_scaled", action="store_false",
                            help=f"standard (unscaled) model{'' if unit_scaled else ' (default)'}")
        self._defaults["unit_scaled"] = unit_scaled
        # Post-norm unit-scaled attention collapses at 1 (unitscale.models.config.TransformerConfig).
        self.add("--attn-softmax-mult", type=float, default=1.0, group=group,
                 help="u-muP's alpha_attn-softmax: attention logits mult/d_head (unit-scaled models only; "
                      "post-norm models need ~32 at d_head 32)")

    def parse(self, argv: Sequence[str] | None = None) -> argparse.Namespace:
        """Parse ``argv``, fill unset options from the quick values or defaults, and join a cluster if asked."""
        args = self.parser.parse_args(argv)
        for dest, default in self._defaults.items():
            if getattr(args, dest, None) is None:
                setattr(args, dest, self._quick.get(dest, default) if args.quick and dest in self._quick
                        else default)
        if args.distributed:
            initialize_distributed()
        return args

    def parse_dict(self, values: Mapping[str, Any]) -> argparse.Namespace:
        """Options from a dict keyed by option name (``{"lr": 1e-3, "quick": True}``), e.g. a sweep config;
        ``quick`` picks the quick values for the keys not given; the keys of :data:`DICT_ALIASES` name
        their options."""
        values = {DICT_ALIASES.get(k, k): v for k, v in values.items()}
        args = self.parse(["--quick"] if values.pop("quick", False) else [])
        unknown = sorted(k for k in values if not hasattr(args, k))
        if unknown:
            raise ValueError(f"values: unknown options {unknown}; known: {sorted(vars(args))}")
        for key, value in values.items():
            setattr(args, key, value)
        return args

    def train_config(self, args: argparse.Namespace) -> TrainConfig:
        """The :class:`TrainConfig` of parsed ``args``; InputError naming the option for a bad value, an
        ``--out`` that is a file or a ``--data`` that does not exist."""
        check_out_dir(args.out, "--out")
        check_data(args.data, "--data")
        try:
            optimizer = OptimizerConfig(**{_OPT_FIELDS.get(d, d): getattr(args, d) for d in _OPT_OPTIONS})
            return TrainConfig(**{d: getattr(args, d) for d in _TRAIN_OPTIONS}, optimizer=optimizer,
                               seed=args.seed, out_dir=str(args.out), resume=not args.fresh,
                               progress=not args.no_progress, data_parallel=args.devices,
                               ipu_estimate=not args.no_ipu_estimate, ipu_system=args.system)
        except ValueError as err:
            raise InputError(str(err)) from None


def _system_name(name: str) -> str:
    """The canonical name of an IPU system or alias (``bow`` -> ``bow-ipu``); unknown names pass through
    for argparse to reject with the list of choices."""
    try:
        return get_system(name).name
    except ValueError:
        return name


def _help_text(help: str, default: Any, quick: Any) -> str:
    shown = "" if default is None else f"default: {default}"
    if quick is not _UNSET:
        shown += f"{'; ' if shown else ''}--quick: {quick}"
    return f"{help} ({shown})" if shown else help


def quick_help(defaults: Mapping[str, tuple[Any, Any]], text: str, dest: str) -> str:
    """``text`` followed by option ``dest``'s default and ``--quick`` value from ``defaults``
    (``dest -> (default, quick)``; a quick value of None means the default), for plain argparse scripts."""
    default, quick = defaults[dest]
    return _help_text(text, default, _UNSET if quick is None else quick)


def fill_quick_defaults(args: argparse.Namespace, defaults: Mapping[str, tuple[Any, Any]]) -> argparse.Namespace:
    """Set every option of ``defaults`` left unset (None) to its ``--quick`` value when ``args.quick``
    and it has one, else to its default; returns ``args``."""
    for dest, (default, quick) in defaults.items():
        if getattr(args, dest) is None:
            setattr(args, dest, quick if args.quick and quick is not None else default)
    return args


def run_train(cli: ExperimentCLI, argv: Sequence[str] | None, *,
              resolve: Callable[[ExperimentCLI, argparse.Namespace], tuple[argparse.Namespace, TrainConfig]],
              fit: Callable[[argparse.Namespace, TrainConfig], TrainResult],
              summary: Callable[[TrainResult], str]) -> TrainResult:
    """One run from the command line: parse ``argv`` with ``cli``, ``resolve`` the options into the run's
    :class:`TrainConfig`, ``fit`` and print ``summary(result)``. A ValueError from ``resolve`` is a usage
    error (usage and message on stderr, exit status 2), as argparse treats a bad option."""
    try:
        args, config = resolve(cli, cli.parse(argv))
    except ValueError as err:
        cli.parser.error(str(err))
    if args.quick:
        print(SMOKE_TEST, flush=True)
    result = fit(args, config)
    print(summary(result))
    if args.quick:
        print(f"{SMOKE_TEST} Output in {config.out_dir}.")
    return result


EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}
EXIT_DIVERGED, EXIT_UNUSABLE = 3, 2


def run_main(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; expected stops print one message to stderr and give an exit code:
    0 done, 130/143 interrupted (checkpoint saved), 3 diverged (last good checkpoint kept),
    2 data, checkpoint or another input unusable (argparse also exits with 2 on a bad option)."""
    try:
        main(argv)
    except TrainingInterrupted as stop:
        print(f"\n{stop}", file=sys.stderr)
        return EXIT_INTERRUPTED.get(stop.signal_name, 130)
    except NonFiniteLossError as err:
        print(f"\ndiverged: {err}", file=sys.stderr)
        return EXIT_DIVERGED
    except (DataUnavailableError, CheckpointError, ResumeError, InputError) as err:
        print(f"\nerror: {err}", file=sys.stderr)
        return EXIT_UNUSABLE
    return 0
