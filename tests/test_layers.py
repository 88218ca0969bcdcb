"""The library's layers: the floors of the data flow (docs/architecture.md, "Layers"), no import cycles;
``fastfc`` does not import the one-time converters, which do not import the demo."""

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


# The floors of the data flow, lowest first (docs/architecture.md, "Layers"): a module imports its
# own floor and the ones below, never one above. Longest prefix wins; every module must be placed.
FLOORS = (
    ("base", ("fastfc", "fastfc.atomic", "fastfc.cpus", "fastfc.config", "fastfc.train_config", "fastfc.encoders",
              "fastfc.safe_load", "fastfc.toy_config", "fastfc.fixtures")),  # torch-free settings, registries, fixtures
    ("data", ("fastfc.data",)),
    ("convert", ("data_prep",)),
    ("models", ("fastfc.models", "fastfc.runtime", "fastfc.zeroshot")),
    ("train/distill", ("fastfc.train", "fastfc.checkpoint", "fastfc.distill", "fastfc.distill_config", "fastfc.toy",
                       "fastfc.cifar")),
    ("features", ("fastfc.features", "fastfc.stage_config")),
    ("probe", ("fastfc.probe", "fastfc.probe_files")),
    ("evaluate", ("fastfc.evaluate", "fastfc.result_files")),
    ("report", ("fastfc.report",)),
    ("cli", ("fastfc.cli", "fastfc.__main__", "fastfc.demo")),
)


def modules() -> dict[str, Path]:
    """Every module of ``fastfc`` and ``data_prep`` by dotted name (a package by its own name)."""
    found = {}
    for base in ("fastfc", "data_prep"):
        for path in sorted((ROOT / base).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (lazy ones included; ``from a import b`` names ``a``
    and, where it is a module, ``a.b``)."""
    mods = modules()

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    return {m: {owner(n) for n in imported(p) if owner(n)} - {m} for m, p in mods.items()}


def floor(module: str) -> int:
    matches = [(len(prefix), i) for i, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes
               if module == prefix or module.startswith(prefix + ".")]
    assert matches, f"{module}: on no floor; place it in FLOORS here and in docs/architecture.md"
    return max(matches)[1]


def test_no_module_imports_a_higher_floor():
    upward = [f"{m} ({FLOORS[floor(m)][0]}) imports {d} ({FLOORS[floor(d)][0]})"
              for m, deps in graph().items() for d in sorted(deps) if floor(d) > floor(m)]
    assert upward == []
    assert floor("fastfc.data.shifts") < floor("data_prep.shifts") < floor("fastfc.models") < floor("fastfc.evaluate")
    assert floor("fastfc.evaluate") < floor("fastfc.report") < floor("fastfc.cli")  # scoring never imports the report


def test_no_import_cycles():
    edges, state, cycles = graph(), {}, []

    def visit(module: str, path: list[str]) -> None:  # depth first; grey (1) on the path, black (2) done
        state[module] = 1
        for dep in sorted(edges[module]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []
    assert "fastfc.probe" not in edges["fastfc.evaluate"]  # evaluate reads probe files through probe_files
