"""Importing the data package stays light: tensorflow only loads inside functions that read or write records."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_data_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import stamo_vla.data, stamo_vla.data.config, stamo_vla.data.dataset, stamo_vla.data.rlds\n"
        "import stamo_vla.data.rlds_writer, stamo_vla.data.statistics, stamo_vla.data.target_cache\n"
        "import stamo_vla.data.augment, stamo_vla.data.transforms, stamo_vla.data.normalization\n"
        "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'stamo_vla.vla') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_cli_registry_resolves_data_commands():
    import importlib

    from stamo_vla.cli import COMMANDS

    for name, entry in (("stats", "main_stats"), ("cache-targets", "main_cache_targets")):
        module = importlib.import_module(COMMANDS[name][0])
        assert callable(getattr(module, entry))


def test_staging_is_tensorflow_free(tmp_path):
    """Collection adds episodes in a process that may not load TF; only finalize() needs it."""
    here = str(Path(__file__).parent)
    code = (
        "import sys\n"
        f"sys.path.insert(0, {here!r})\n"
        "from data_helpers import make_episode\n"
        "from stamo_vla.data.rlds_writer import RLDSShardWriter\n"
        f"w = RLDSShardWriter({str(tmp_path)!r}, 'staged')\n"
        "print(w.add_episode(make_episode(0, length=2)), len(w), 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True 1 False"
