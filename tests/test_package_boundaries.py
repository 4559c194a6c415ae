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
