"""DESIGN.md's layering, checked on the source: dependencies point downward only, libero stays TF-free and builds
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

# subpackage -> stamo_vla subpackages it must never import (DESIGN.md "Dependencies point downward only")
FORBIDDEN = {
    # the simulator side: TF-free, and it runs policies without building them (stamo_vla.evaluation, at the top
    # with the CLI, loads our checkpoints as policies and hands them to the harness)
    "libero": ("vla", "adapter", "stamo", "training", "study", "bench", "viz", "demo", "cli", "evaluation"),
    "adapter": ("training", "study", "libero", "bench", "demo", "cli", "evaluation"),
    "vla": ("adapter", "stamo", "training", "study", "libero", "bench", "demo", "cli", "evaluation"),
    "stamo": ("vla", "adapter", "libero", "study", "bench", "demo", "cli", "evaluation"),
    "data": ("vla", "adapter", "training", "study", "libero", "bench", "demo", "cli", "evaluation"),
    "training": ("study", "libero", "bench", "demo", "cli", "evaluation"),
    "compat": (
        "vla",
        "adapter",
        "stamo",
        "training",
        "study",
        "libero",
        "data",
        "bench",
        "demo",
        "cli",
        "evaluation",
    ),
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


def test_dependencies_point_downward():
    modules = _modules()
    violations = []
    for name, path in modules.items():
        layer = _subpackage(name)
        if layer not in FORBIDDEN:
            continue
        for target, line in _imports(path):
            if _subpackage(target) in FORBIDDEN[layer] and (
                target in modules or target.rsplit(".", 1)[0] in modules
            ):
                violations.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not violations, "imports against DESIGN.md's layering:\n" + "\n".join(sorted(set(violations)))


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
