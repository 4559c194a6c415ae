"""Run any function over a grid of configs from the command line (the runner is :mod:`experiments.runner`).

    python -m experiments.sweep run spec.toml --fn my_experiment:run --out runs/lr_width --workers 2
    python -m experiments.sweep list spec.toml
    python -m experiments.sweep summarise runs/lr_width

A spec is a TOML or JSON file whose list values are grid axes (see :mod:`experiments.runner`). Kill a
sweep at any time and run the same command again: finished runs are kept and skipped; ``--fresh``
deletes the spec's run directories first and runs every run again. A spec that cannot be read, a
``--fn`` that names no function or an ``--out`` that is a file ends with one line on stderr (exit 2).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from experiments.inputs import InputError, ScriptParser, check_out_dir, print_error
from experiments.results import dumps
from experiments.runner import (Spec, expand_grid, load_spec, name_runs, remove_runs, resolve_run_fn, run_sweep,
                                summarise)

_EPILOG = """example spec.toml (lists are grid axes, other values fixed):
    lr = [1e-3, 3e-4]
    width = [128, 256]
    steps = 1000

  python -m experiments.sweep run spec.toml --fn my_experiment:run --out runs/lr_width --workers 2
  python -m experiments.sweep summarise runs/lr_width
Kill it at any time and run the same command again: finished runs are kept and skipped."""


def make_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m experiments.sweep {run,list,summarise}``."""
    parser = ScriptParser(prog="python -m experiments.sweep", description=__doc__.split("\n")[0],
                          epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,list,summarise}")
    run = sub.add_parser("run", help="run (or resume) a sweep")
    run.add_argument("spec", type=Path, help="spec file (.toml or .json)")
    run.add_argument("--fn", required=True, help="run function as module:function, called as fn(config, run_dir)")
    run.add_argument("--out", required=True, type=Path, help="sweep directory, one subdirectory per run")
    run.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process (default 1)")
    run.add_argument("--no-retry-failed", action="store_true", help="skip runs that failed before")
    run.add_argument("--fresh", action="store_true", help="delete the spec's run directories first and run them all")
    names = sub.add_parser("list", help="print the run names and configs of a spec without running")
    names.add_argument("spec", type=Path, help="spec file (.toml or .json)")
    summary = sub.add_parser("summarise", help="collect result.json files into a CSV table")
    summary.add_argument("out", type=Path, help="sweep directory")
    summary.add_argument("--csv", type=Path, default=None, help="output CSV (default OUT/summary.csv)")
    return parser


def _checked_spec(args: argparse.Namespace) -> tuple[Spec, list[dict]]:
    """The spec at ``args.spec`` and its configs, after checking every input of ``run``; ValueError or
    TypeError naming what is wrong."""
    spec = load_spec(args.spec)
    configs = expand_grid(spec)
    if args.command == "run":
        check_out_dir(args.out, "--out")
        if args.workers < 1:
            raise InputError(f"--workers must be a positive integer, got {args.workers}")
        try:
            resolve_run_fn(args.fn)
        except (ImportError, ValueError, TypeError) as err:
            raise InputError(f"--fn {args.fn}: {err}") from None
    return spec, configs


def _run(args: argparse.Namespace, spec: Spec, configs: list[dict]) -> int:
    if args.fresh:
        print(f"--fresh: deleted {len(remove_runs(args.out, configs))} run directories under {args.out}")
    report = run_sweep(spec, args.fn, args.out, workers=args.workers, retry_failed=not args.no_retry_failed,
                       log=lambda s: print(s, flush=True))
    print(f"{len(report.completed)} finished, {len(report.skipped)} skipped, {len(report.failed)} failed "
          f"of {report.total}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``run``, ``list`` or ``summarise``; a bad spec, option or directory prints one line and returns 2."""
    args = make_parser().parse_args(argv)
    try:  # InputError is a ValueError; a malformed spec raises ValueError or TypeError
        spec, configs = _checked_spec(args) if args.command in ("run", "list") else (None, None)
        rows = summarise(args.out, args.csv) if args.command == "summarise" else None
    except (ValueError, TypeError) as err:
        return print_error(err)
    if args.command == "run":
        return _run(args, spec, configs)
    if args.command == "list":
        for run in name_runs(configs):
            print(f"{run.name}\t{dumps(run.config)}")
        return 0
    print(f"{len(rows)} runs -> {args.csv or args.out / 'summary.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
