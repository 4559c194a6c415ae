"""Build the reproduction write-up, ``paper/paper.md``, from the result files under ``results/``.

    python -m paper.build                                  # results/ -> paper/paper.md (+ figures/)
    python -m paper.build --results other/results --out /tmp/paper/paper.md
    python -m paper.build --allow-missing bert --allow-missing umup   # those sections may be absent
    python -m paper.build --quick                          # rerun every experiment's --quick mode into
                                                           # a temporary directory and build from it

Every number, table and figure comes from a result file; the discussion's wording is computed from
the numbers. A missing or malformed result file stops the build (exit status 1) with a message
naming the file and the problem, and leaves any previous paper untouched -- unless its section is
named with ``--allow-missing``, which renders a visible "missing" box in its place. With pandoc and
a TeX engine on the PATH a PDF is made beside the Markdown.

``--quick`` runs ``python -m experiments.<name> --quick`` for charlm, shift, bert, umup, scales and ipu as
subprocesses (a few minutes in all), writes to ``paper/quick/`` by default and marks the paper as
quick at the top and in every caption. A script that does not exist is an error, or a missing box
for a section named with ``--allow-missing``; a script that fails has its section read anyway
(flagged with the failure) if it left readable results, and is an error (or a box) if not.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from paper.files import ResultError
from paper.markdown import QUICK_BANNER, missing_box
from paper.section import Context, Section
from paper.sections import EXPERIMENTS, bert, charlm, discussion, ipu, method, scales, setup, shift, umup

REPO = Path(__file__).resolve().parents[1]
INTRO = Path(__file__).resolve().parent / "text" / "intro.md"
TITLE = "Unit scaling in JAX: a reproduction"
KEYS = tuple(m.KEY for m in EXPERIMENTS)
# Section -> the command that regenerates its results at CI size ({out}: its results directory,
# {tmp}: scratch space for run directories).
QUICK_COMMANDS = {
    charlm.KEY: ["experiments.charlm", "--quick", "--out", "{out}"],
    shift.KEY: ["experiments.shift", "--quick", "--out", "{out}", "--runs", "{tmp}/shift-runs"],
    bert.KEY: ["experiments.bert", "--quick", "--out", "{out}"],
    umup.KEY: ["experiments.umup", "--quick", "--out", "{out}", "--runs", "{tmp}/umup-runs"],
    scales.KEY: ["experiments.scales", "--quick", "--out", "{out}"],
    ipu.KEY: ["experiments.ipu", "--quick", "--out", "{out}"],
}
QUICK_RESULTS_NOTE = ("> **QUICK RESULTS.** The result files of this section were made by the "
                      "script's `--quick` mode (CI-sized), not by a full run.")


class BuildError(RuntimeError):
    """The paper cannot be built as asked (a missing / malformed result, a failed script)."""


def load_all(ctx: Context, allow_missing: set[str], unavailable: dict[str, str],
             failed: dict[str, str]) -> dict[str, object]:
    """Every experiment section's checked data, or the reason it has none (with the failure of its
    quick script, if any). All sections are read before any is drawn, and every problem is reported
    at once."""
    loaded: dict[str, object] = {}
    for module in EXPERIMENTS:
        if module.KEY in unavailable:
            loaded[module.KEY] = ResultError(ctx.results / module.KEY, unavailable[module.KEY])
            continue
        try:
            loaded[module.KEY] = module.load(ctx)
        except ResultError as err:
            why = f"{err.problem}\n(its quick script failed: {failed[module.KEY]})" if module.KEY in failed \
                else err.problem
            loaded[module.KEY] = ResultError(err.path, why)
    problems = [f"section {key!r}: {err}" for key, err in loaded.items()
                if isinstance(err, ResultError) and key not in allow_missing]
    if problems:
        keys = " ".join(f"--allow-missing {k}" for k, e in loaded.items()
                        if isinstance(e, ResultError) and k not in allow_missing)
        raise BuildError("\n".join(problems) + f"\n(pass {keys} to build without them, with a "
                         "visible 'missing' box in their place)")
    return loaded


def experiment_section(module, ctx: Context, data, failure: str | None) -> Section:
    """The rendered section; a missing box for a :class:`ResultError`; with a note when its results
    came from a script's ``--quick`` mode in a full build, or when its quick script failed."""
    if isinstance(data, ResultError):
        reason = str(data)
        return Section(module.KEY, module.TITLE, missing_box(module.KEY, reason), missing=reason)
    section = module.render(ctx, data)
    notes = []
    if failure is not None:
        notes.append(f"> **SCRIPT FAILED.** The results below are what the script left after it failed; "
                     f"read them with that in mind.\n>\n> " + failure.replace("\n", "\n> "))
    if section.facts.get("quick") and not ctx.quick:
        notes.append(QUICK_RESULTS_NOTE)
    if not notes:
        return section
    return Section(section.key, section.title, "\n\n".join(notes + [section.body]), section.setup,
                   section.facts)


def render(ctx: Context, allow_missing: set[str], command: str, unavailable: dict[str, str] | None = None,
           failed: dict[str, str] | None = None) -> str:
    """The whole paper as Markdown (figures written to ``ctx.figures`` on the way)."""
    failed = failed or {}
    loaded = load_all(ctx, allow_missing, unavailable or {}, failed)
    experiments = [experiment_section(m, ctx, loaded[m.KEY], failed.get(m.KEY)) for m in EXPERIMENTS]
    body = [Section("intro", "Introduction", INTRO.read_text(encoding="utf-8")), method.build(ctx),
            setup.build(ctx, experiments), *experiments, discussion.build(ctx, experiments)]
    head = [f"# {TITLE}", ""]
    if ctx.quick:
        head += [QUICK_BANNER, ""]
    missing = [s.key for s in experiments if s.missing is not None]
    if missing:
        head += [f"> **INCOMPLETE: results missing for {', '.join(missing)}** (built with "
                 "`--allow-missing`); those sections hold a box instead of results.", ""]
    head += [f"*Generated by `{command}` from `{_shown(ctx.results)}`; do not edit by hand.*", ""]
    numbered = [s.markdown().replace("## ", f"## {i}. ", 1) for i, s in enumerate(body, start=1)]
    return "\n".join(head) + "\n" + "\n".join(numbered) + "\n## References\n\n" + REFERENCES


def _shown(path: Path) -> str:
    """``path`` relative to the repository when inside it, else as it is."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


REFERENCES = """\
- Blake, Orr & Luschi. *Unit Scaling: Out-of-the-Box Low-Precision Training.* ICML 2023, arXiv:2303.11257.
- Blake et al. *u-μP: The Unit-Scaled Maximal Update Parametrization.* 2024, arXiv:2407.17465.
- Jia, Tillman, Maggioni & Scarpazza. *Dissecting the Graphcore IPU Architecture via
  Microbenchmarking.* arXiv:1912.03413 (calibration data of the IPU model).
- graphcore/examples: published IPU pre-training configurations (via docs/reference/ipu_hardware.md).
"""


# ---------------------------------------------------------------------------------------------------
# Quick mode: regenerate the results with the scripts' --quick modes.

def run_quick(results: Path, allow_missing: set[str], log=print) -> tuple[dict[str, str], dict[str, str]]:
    """Run every quick command into ``results/<section>``. Returns ``(unavailable, failed)``: the
    sections whose script does not exist (an error unless the section may be missing), and those
    whose script exited with an error, with its message (their sections are still read: a script
    that records its failed runs and exits 1 leaves usable results, which are then flagged)."""
    unavailable, failed = {}, {}
    for key, template in QUICK_COMMANDS.items():
        module = template[0]
        args = [a.format(out=results / key, tmp=results / ".runs") for a in template[1:]]
        if importlib.util.find_spec(module) is None:
            reason = f"the script {module} does not exist (yet): python -m {module} cannot run"
            if key not in allow_missing:
                raise BuildError(f"--quick: {reason}\n(pass --allow-missing {key} to build without it)")
            unavailable[key] = reason
            continue
        message = _run_script(module, args, log)
        if message is not None:
            log(f"warning: {message}")
            failed[key] = message
    return unavailable, failed


def _run_script(module: str, args: list[str], log) -> str | None:
    """Run ``python -m module *args`` from the repository root; None, or what went wrong."""
    log(f"running {shlex.join(['python', '-m', module, *args])}")
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    tail = "\n".join((proc.stderr.strip() or proc.stdout.strip()).splitlines()[-12:])
    return f"python -m {module} {shlex.join(args)} exited with status {proc.returncode}:\n{tail}"


# ---------------------------------------------------------------------------------------------------
# Writing.

def write(markdown: str, staged_figures: Path, out: Path) -> None:
    """Put ``markdown`` at ``out`` and the staged figures at ``out.parent / "figures"``."""
    figures = out.parent / "figures"
    out.parent.mkdir(parents=True, exist_ok=True)
    if figures.exists():
        shutil.rmtree(figures)
    if staged_figures.exists():
        shutil.copytree(staged_figures, figures)
    else:
        figures.mkdir()
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(markdown, encoding="utf-8")
    os.replace(tmp, out)


def make_pdf(out: Path) -> str:
    """``out`` as PDF via pandoc and a TeX engine when both are installed; a line saying what happened."""
    pandoc = shutil.which("pandoc")
    engine = next((e for e in ("xelatex", "lualatex", "pdflatex", "tectonic") if shutil.which(e)), None)
    if pandoc is None or engine is None:
        return f"no PDF: {'pandoc' if pandoc is None else 'a TeX engine'} is not installed"
    pdf = out.with_suffix(".pdf")
    proc = subprocess.run([pandoc, out.name, "-o", pdf.name, f"--pdf-engine={engine}"],
                          cwd=out.parent, capture_output=True, text=True)
    if proc.returncode != 0:
        return f"no PDF: pandoc failed: {proc.stderr.strip()[-500:]}"
    return f"wrote {pdf}"


# ---------------------------------------------------------------------------------------------------
# Command line.

def make_parser() -> argparse.ArgumentParser:
    doc = __doc__.split("\n\n", 1)
    p = argparse.ArgumentParser(prog="python -m paper.build", description=doc[0], epilog=doc[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="regenerate every result with the scripts' --quick modes into a temporary "
                        "directory (or --results) and build a paper marked as quick")
    p.add_argument("--results", type=Path, default=None,
                   help="results directory to read (default: results/; with --quick: where the quick "
                        "results are written, default a temporary directory)")
    p.add_argument("--out", type=Path, default=None,
                   help="output Markdown file; figures go to figures/ beside it "
                        "(default: paper/paper.md; --quick: paper/quick/paper.md)")
    p.add_argument("--allow-missing", action="append", default=[], choices=KEYS, metavar="SECTION",
                   help=f"build even if this section's results are missing or its quick script fails, "
                        f"with a visible box in its place; repeatable; one of {', '.join(KEYS)}")
    return p


def build(results: Path, out: Path, *, quick: bool, allow_missing: set[str], command: str,
          unavailable: dict[str, str] | None = None, failed: dict[str, str] | None = None) -> Path:
    """Render the paper from ``results`` and write it to ``out`` (nothing is written on error)."""
    with tempfile.TemporaryDirectory(prefix="paper-build-") as staging:
        ctx = Context(results=results.resolve(), figures=Path(staging) / "figures",
                      figure_link="figures", quick=quick)
        markdown = render(ctx, allow_missing, command, unavailable, failed)
        write(markdown, ctx.figures, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    command = "python -m paper.build " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    out = args.out or REPO / "paper" / ("quick" if args.quick else "") / "paper.md"
    allow = set(args.allow_missing)
    try:
        if not args.quick:
            build(args.results or REPO / "results", out, quick=False, allow_missing=allow, command=command)
        else:
            with tempfile.TemporaryDirectory(prefix="paper-quick-results-") as tmp:
                results = args.results or Path(tmp) / "results"
                unavailable, failed = run_quick(results, allow)
                build(results, out, quick=True, allow_missing=allow, command=command,
                      unavailable=unavailable, failed=failed)
    except BuildError as err:
        print(f"python -m paper.build: error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} and {out.parent / 'figures'}/")
    print(make_pdf(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
