"""docs/design.md's layering, checked on the source: dependencies point downward only, libero stays TF-free and builds
no models, heavy optional packages are imported lazily.

Every ``import`` statement counts, at module level or inside a function (a lazy import is still a dependency).
The check reads the source with `ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "stamo_vla"
HEAVY = ("tensorflow", "tensorflow_datasets", "libero", "diffusers", "peft", "bitsandbytes", "matplotlib")

# What each part of stamo_vla may import (docs/design.md "Packages, from the bottom up"): the floor modules, then
# each package with the parts below it that it may use. Every import of another part of stamo_vla that is not
# listed here is a violation; there are no exceptions.
FLOOR = ("fileio", "configs", "keys", "optional", "policy", "provenance")
ALLOWED = {
    "fileio": (),
    "configs": ("fileio",),
    "keys": (),
    "optional": (),
    "policy": (),
    "provenance": ("fileio",),
    "compat": ("fileio",),
    # the StaMo model only: whatever trains, fits, probes or labels with it lives above it
    "stamo": FLOOR,
    "vla": (*FLOOR, "data"),
    "data": (*FLOOR, "stamo"),
    "viz": (*FLOOR, "stamo"),
    "adapter": (*FLOOR, "stamo", "vla", "data", "viz"),
    # the simulator side: TF-free, and it runs policies without building them
    "libero": (*FLOOR, "compat", "data"),
    "training": (*FLOOR, "stamo", "vla", "data", "viz", "adapter"),
    # the policy kinds that load models (checkpoint, adapter, oft), above the harness that runs them
    "policy_kinds": (*FLOOR, "stamo", "vla", "adapter", "libero"),
    "evaluation": (*FLOOR, "libero", "policy_kinds"),
    "study": (
        *FLOOR,
        "stamo",
        "vla",
        "data",
        "viz",
        "adapter",
        "libero",
        "training",
        "evaluation",
        "demo_report",
    ),
    "demo_report": (*FLOOR, "libero", "viz"),
    "demo": (*FLOOR, "vla", "study", "demo_report"),
    "bench": (*FLOOR, "stamo", "vla", "data", "viz", "adapter", "libero", "training", "evaluation"),
    "cli": (*FLOOR,),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) of every import in `path` (absolute and package-relative alike)."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.append((module, node.lineno))
            found += [(f"{module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _subpackage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "stamo_vla" else None


def _package_edges() -> dict[str, set[tuple[str, str]]]:
    """part of stamo_vla -> {(imported part, "file:line")} over every import statement, lazy ones included."""
    modules = _modules()
    edges: dict[str, set[tuple[str, str]]] = {}
    for name, path in modules.items():
        source = _subpackage(name)
        for target, line in _imports(path):
            part = _subpackage(target)
            if part and part != source and (target in modules or target.rsplit(".", 1)[0] in modules):
                edges.setdefault(source, set()).add((part, f"{path.relative_to(ROOT)}:{line}"))
    return edges


def test_every_part_has_a_layer():
    parts = {_subpackage(name) for name in _modules()} - {None}
    assert not parts - set(ALLOWED), f"add these to ALLOWED with what they may import: {parts - set(ALLOWED)}"


def test_dependencies_point_downward():
    violations = [
        f"{where} imports stamo_vla.{part}"
        for source, targets in _package_edges().items()
        for part, where in targets
        if part not in ALLOWED.get(source, ())
    ]
    assert not violations, "imports against docs/design.md's layering:\n" + "\n".join(sorted(violations))


def test_no_import_cycle_between_packages():
    graph = {source: {part for part, _ in targets} for source, targets in _package_edges().items()}
    state: dict[str, str] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles between parts of stamo_vla:\n" + "\n".join(cycles)


def test_libero_never_imports_tensorflow():
    hits = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in _modules().items()
        if _subpackage(name) == "libero"
        for target, line in _imports(path)
        if target.split(".")[0] in ("tensorflow", "tensorflow_datasets")
    ]
    assert not hits, "\n".join(hits)


def test_heavy_optional_packages_are_imported_lazily():
    """At module level only under ``if TYPE_CHECKING``; so ``import stamo_vla.<anything>`` stays light."""
    hits = [
        f"{path.relative_to(ROOT)}:{line} imports {target} at module level"
        for path in _modules().values()
        for target, line in _imports(path, top_level_only=True)
        if target.split(".")[0] in HEAVY
    ]
    assert not hits, "\n".join(hits)


def test_the_library_never_imports_the_entry_point_folders():
    hits = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in _modules().values()
        for target, line in _imports(path)
        if target.split(".")[0] in ("recipes", "eval", "tests", "patches")
    ]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("folder", ["recipes", "eval"])
def test_entry_points_use_only_the_library(folder):
    """Thin entry points: no sys.path tricks, no imports of each other; everything comes from stamo_vla."""
    hits = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        if "sys.path" in path.read_text():
            hits.append(f"{path.relative_to(ROOT)} edits sys.path")
        hits += [
            f"{path.relative_to(ROOT)}:{line} imports {target}"
            for target, line in _imports(path)
            if target.split(".")[0] in ("recipes", "eval", "tests")
        ]
    assert not hits, "\n".join(hits)
