"""patches/: each patch applies cleanly to the pinned upstream file, and what it imports from stamo_vla exists.

The upstream file is reconstructed from a local clone (never committed here): ``STAMO_VLA_OPENVLA_GIT`` /
``STAMO_VLA_OPENVLA_OFT_GIT`` name its git directory (``<clone>/.git`` or a bare repository); without one the apply
check is skipped, saying which variable to set.
"""

from __future__ import annotations

import ast
import importlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

PATCHES = Path(__file__).resolve().parents[1] / "patches"
UPSTREAM_FILE = "vla-scripts/finetune.py"
# folder -> (variable naming a clone's git directory, mirror folder on the project's machines, pinned commit)
PINNED = {
    "openvla": ("STAMO_VLA_OPENVLA_GIT", "openvla+openvla", "c8f03f48af692657d3060c19588038c7220e9af9"),
    "openvla-oft": (
        "STAMO_VLA_OPENVLA_OFT_GIT",
        "moojink+openvla-oft",
        "213c5ff8d6e9673885d7e4dd6f2ce73b5d8a45db",
    ),
}
MIRRORS = Path("/work/.mirror")


def _upstream_file(folder: str, out: Path) -> Path:
    variable, mirror, commit = PINNED[folder]
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot reconstruct the upstream file")
    git_dir = os.environ.get(variable) or str(MIRRORS / mirror / "repo")
    shown = subprocess.run(
        ["git", "--git-dir", git_dir, "show", f"{commit}:{UPSTREAM_FILE}"], capture_output=True, text=True
    )
    if shown.returncode != 0:
        pytest.skip(
            f"no clone of the upstream repository holding commit {commit[:7]} at {git_dir}: set {variable} to a "
            f"clone's git directory to check patches/{folder} ({shown.stderr.strip()[:120]})"
        )
    path = out / UPSTREAM_FILE
    path.parent.mkdir(parents=True)
    path.write_text(shown.stdout)
    return path


@pytest.mark.parametrize("folder", sorted(PINNED))
def test_the_patch_applies_cleanly_to_the_pinned_file_and_compiles(tmp_path, folder):
    upstream = _upstream_file(folder, tmp_path)
    patch = PATCHES / folder / "finetune.patch"
    check = subprocess.run(
        ["git", "apply", "--check", str(patch)], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    subprocess.run(["git", "apply", str(patch)], cwd=tmp_path, check=True)
    patched = upstream.read_text()
    compile(patched, str(upstream), "exec")  # a syntax error in the patched script fails here
    assert "stamo_cache_root" in patched and "save_adapter(stamo" in patched


@pytest.mark.parametrize("folder", sorted(PINNED))
def test_each_patch_has_a_readme_naming_its_commit_and_imports_what_exists(folder):
    commit = PINNED[folder][2]
    readme = (PATCHES / folder / "README.md").read_text()
    assert (
        commit in readme and f"git apply --check /path/to/stamo_vla/patches/{folder}/finetune.patch" in readme
    )
    added = [
        line[1:] for line in (PATCHES / folder / "finetune.patch").read_text().splitlines() if line[:1] == "+"
    ]
    imports = [
        node
        for line in added
        if line.startswith("from stamo_vla")
        for node in ast.parse(line).body
        if isinstance(node, ast.ImportFrom)
    ]
    assert imports, f"patches/{folder} imports nothing from stamo_vla"
    for node in imports:
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
