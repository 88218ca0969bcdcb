"""The library's layers: ``fastfc`` does not import the one-time converters, which do not import the demo."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported(path: Path) -> set[str]:
    """Every module name an ``import`` or ``from ... import`` in ``path`` names, lazy ones included."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def importers(folder: Path, prefix: str, skip=()) -> list[str]:
    """The files under ``folder`` (recursively, minus ``skip``) importing ``prefix`` or a submodule of it."""
    files = [p for p in sorted(folder.rglob("*.py")) if not any(p.is_relative_to(s) for s in skip)]
    return [str(p.relative_to(ROOT)) for p in files
            if any(n == prefix or n.startswith(prefix + ".") for n in imported(p))]


def test_library_does_not_import_data_prep():
    lib = ROOT / "fastfc"
    assert (lib / "demo").is_dir() and (lib / "cli.py").is_file()
    assert importers(lib, "data_prep", skip=(lib / "demo", lib / "cli.py")) == []


def test_data_prep_does_not_import_the_demo():
    assert importers(ROOT / "data_prep", "fastfc.demo") == []
