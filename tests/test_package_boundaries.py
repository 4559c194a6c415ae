"""The package layout DESIGN.md promises: explicit re-exports, and unitscale / ipu_sim independent."""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("package", ["unitscale", "ipu_sim"])
def test_every_reexported_name_resolves(package):
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert module.__all__ and not missing, missing


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize(("package", "forbidden"), [("unitscale", {"ipu_sim", "experiments"}),
                                                    ("ipu_sim", {"unitscale", "experiments"})])
def test_the_libraries_never_import_each_other_or_the_experiments(package, forbidden):
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_roots(p) & forbidden)
                 for p in sorted((ROOT / package).rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}


def _is_script(path: Path) -> bool:
    """A module that runs as ``python -m``: it has an ``if __name__ == "__main__":`` block."""
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               for node in ast.parse(path.read_text(encoding="utf-8")).body)


def _imported_experiments_modules(path: Path) -> set[str]:
    """The modules of the experiments package that ``path`` imports (``from experiments import x``,
    ``from experiments.x import y``, ``import experiments.x``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("experiments.")}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            parts = node.module.split(".")
            if parts[0] == "experiments":
                names |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
    return names


def test_experiment_scripts_are_found():
    scripts = {p.stem for p in (ROOT / "experiments").glob("*.py") if _is_script(p)}
    assert {"gpt", "charlm", "bert", "umup", "scales", "ipu", "shift", "sweep"} <= scripts, scripts


def test_no_module_of_experiments_imports_a_script():
    """Scripts share code through the library modules of experiments/, never through each other."""
    scripts = {p.stem for p in (ROOT / "experiments").glob("*.py") if _is_script(p)}
    offenders = {p.name: sorted(_imported_experiments_modules(p) & (scripts - {p.stem}))
                 for p in sorted((ROOT / "experiments").glob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}
