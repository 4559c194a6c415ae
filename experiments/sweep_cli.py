"""The command line of the sweep scripts (``experiments.charlm``, ``experiments.bert``, ``experiments.shift``):

    python -m experiments.SCRIPT [run] [options]     # run (or resume) the sweep's stages, then summarise
    python -m experiments.SCRIPT summarise [options] # collect the finished runs into --out, training nothing
    python -m experiments.SCRIPT train [options]     # one run (python -m experiments.SCRIPT train --help)

The options are the same in every sweep script: ``--quick`` (the spec's quick profile, a smoke test
whose results go to a temporary directory unless ``--out`` is given), ``--out``, ``--runs``,
``--spec``, ``--profile``, ``--workers``, ``--fresh`` (run the selected runs again from the start),
``--data`` and ``--cache-dir`` (for every run), ``--variants`` and, where a script has several
stages, ``--stage``. Bad input -- an unreadable spec, an ``--out`` that is a file, an unknown variant
-- ends in one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from experiments.cli import SMOKE_TEST, quick_out, run_main
from experiments.inputs import InputError, ScriptParser, check_data, check_out_dir, print_error
from experiments.variants import VARIANTS, check_variants

COMMANDS = ("run", "summarise", "train")


@dataclasses.dataclass(frozen=True)
class SweepScript:
    """What a sweep script brings to the shared command line: its name (``experiments.<name>``), its
    docstring (description and epilog), spec file, stages (beyond ``all``), default results directory,
    profile loader, and the minutes its quick profile takes."""

    name: str
    doc: str
    spec: Path
    stages: tuple[str, ...]
    default_out: Path
    load_profile: Callable[[Path, str], Any]
    quick_minutes: str = "2-3"

    @property
    def prog(self) -> str:
        return f"python -m experiments.{self.name}"

    @property
    def run_fn(self) -> str:
        """The sweep's run function, as the runner records it in every stage's ``sweep.json``."""
        return f"experiments.{self.name}:run"


def sweep_parser(script: SweepScript) -> argparse.ArgumentParser:
    """The options of ``run`` and ``summarise`` of ``script``, every command in the usage line."""
    doc = script.doc.split("\n\n", 1)
    parser = ScriptParser(prog=script.prog, description=doc[0], epilog=doc[1],
                          usage=f"{script.prog} [{' | '.join(COMMANDS)}] [options]",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    quick = quick_out(script.name)
    parser.add_argument("--quick", action="store_true", help=f"the spec's quick profile: a smoke test of about "
                        f"{script.quick_minutes} minutes on 2 CPU cores, results in {quick} unless --out is given")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"results directory (default: {script.default_out}; --quick: {quick})")
    parser.add_argument("--runs", type=Path, default=None, help="run directories (default: OUT/runs)")
    parser.add_argument("--spec", type=Path, default=script.spec, help=f"spec file (default: {script.spec})")
    parser.add_argument("--profile", default=None, help="profile of the spec (default: full; --quick: quick)")
    parser.add_argument("--workers", type=int, default=1, help="runs at once, each in its own process (default 1)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the selected runs' directories first and run them again from the start "
                             "(default: keep finished runs, resume unfinished ones)")
    if script.stages:
        parser.add_argument("--stage", choices=(*script.stages, "all"), default="all",
                            help="stages to run (default all)")
    parser.add_argument("--variants", default=None,
                        help=f"comma-separated variants to run (default: all of the profile); known: "
                             f"{', '.join(VARIANTS)}")
    parser.add_argument("--data", default=None, help="corpus of every run: shakespeare, gcide, a WikiText "
                                                     "directory or a text file (default: the spec's, shakespeare)")
    parser.add_argument("--cache-dir", default=None, help="corpus cache of every run (default: the spec's, "
                                                          "$UNITSCALE_CACHE_DIR or ~/.cache/unitscale)")
    return parser


@dataclasses.dataclass(frozen=True)
class SweepPaths:
    """The profile of a sweep (with ``--data`` / ``--cache-dir`` in its shared ``train`` options), where it
    writes its results and runs, and the variants selected (None: all)."""

    profile: Any
    out: Path
    runs: Path
    variants: tuple[str, ...] | None


def sweep_paths(script: SweepScript, args: argparse.Namespace) -> SweepPaths:
    """The :class:`SweepPaths` of parsed ``args``; InputError for an unknown variant, a bad ``--workers``,
    ``--data``, ``--out`` or ``--runs``, or a spec that cannot be read."""
    if not isinstance(args.workers, int) or args.workers < 1:
        raise InputError(f"--workers must be a positive integer, got {args.workers!r}")
    variants = None
    if args.variants:
        variants = tuple(v.strip() for v in args.variants.split(",") if v.strip())
        check_variants(list(variants), "--variants")
    overrides = {k: v for k, v in (("data", args.data), ("cache_dir", args.cache_dir)) if v is not None}
    if args.data is not None:
        check_data(args.data, "--data")
    profile = script.load_profile(args.spec, args.profile or ("quick" if args.quick else "full"))
    if overrides:
        profile = dataclasses.replace(profile, train={**profile.train, **overrides})
    out = check_out_dir(args.out or (quick_out(script.name) if args.quick else script.default_out), "--out")
    runs = check_out_dir(args.runs or out / "runs", "--runs")
    return SweepPaths(profile, out, runs, variants)


def report(results: dict, out: Path, *, heading: str, finished: str, ok: bool, ran: bool) -> int:
    """Print ``heading``, the summary's ``table.md``, every problem (missing, failed, malformed runs), how
    many ``finished`` runs finished and where the results are; the exit status: 0 unless a run failed
    now (``ok`` False) or, summarising only (``ran`` False), a run has a problem."""
    print(heading)
    print((out / "table.md").read_text(encoding="utf-8"))
    for p in results["problems"]:
        print(f"  {p['status']}: {p['run']}: {p['problem']}")
    done = sum(r["status"] in ("completed", "diverged") for r in results["runs"])
    print(f"{done}/{len(results['runs'])} {finished} finished; results in {out}")
    return 0 if ok and (ran or not results["problems"]) else 1


def sweep_script_main(argv: Sequence[str] | None, *, script: SweepScript,
                      train_main: Callable[[Sequence[str] | None], Any],
                      sweep_main: Callable[[argparse.Namespace, SweepPaths, bool], int]) -> int:
    """The command line of a sweep script: ``train ...`` runs one run through :func:`run_main`,
    ``summarise ...`` collects finished runs without training, ``run ...`` (or no command) runs the
    sweep: ``sweep_main(args, paths, run_stages)``. Bad input prints one line; exit status 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv[:1] and argv[0] in COMMANDS else "run"
    rest = argv[1:] if argv[:1] == [command] else argv
    if command == "train":
        return run_main(train_main, rest)
    args = sweep_parser(script).parse_args(rest)
    try:
        paths = sweep_paths(script, args)
        if args.quick:
            print(SMOKE_TEST, flush=True)
        code = sweep_main(args, paths, command == "run")
    except ValueError as err:  # InputError, or a summary that cannot be made yet (no learning rate chosen)
        return print_error(err)
    if args.quick:
        print(SMOKE_TEST)
    return code
