"""The package installs and runs without the checkout: build a wheel, install it into a fresh venv (no network,
``--no-deps`` onto this environment's dependencies) and run ``stamo-vla`` from a directory outside the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DATASET = "toy_install_no_noops"


def _episode(i: int, length: int = 8) -> dict:
    rng = np.random.default_rng(i)
    action = rng.uniform(-1, 1, (length, 7)).astype(np.float32)
    action[:, 6] = -1.0
    return {
        "image": rng.integers(0, 255, (length, 256, 256, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 255, (length, 256, 256, 3), dtype=np.uint8),
        "state": rng.normal(size=(length, 8)).astype(np.float32),
        "joint_state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": action,
        "language_instruction": "push the block",
        "file_path": f"/toy/install_{i:03d}.hdf5",
    }


def _run(argv: list[str], cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, argv))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done


def _build_wheel(tmp_path: Path, env: dict) -> Path:
    """A wheel of a copy of the project (the build never writes into the checkout)."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "stamo_vla", src / "stamo_vla", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    dist = tmp_path / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    _run([*pip_wheel, "--quiet", "-w", str(dist), str(src)], tmp_path, env)
    (wheel,) = dist.glob("stamo_vla-*.whl")
    return wheel


def _venv(tmp_path: Path, wheel: Path, env: dict) -> Path:
    """A fresh venv holding only the wheel; this environment's site-packages supply the dependencies."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
    )
    # a plain path line: the dependencies become importable, but this environment's own .pth files (among them
    # an editable install of the checkout) are not processed
    (Path(purelib.stdout.strip()) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip_install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    _run([*pip_install, "--quiet", str(wheel)], tmp_path, env)
    return venv


@pytest.mark.slow
def test_wheel_installs_and_finetunes_outside_the_checkout(tmp_path):
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME"}}
    env.update(
        OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TF_CPP_MIN_LOG_LEVEL="3"
    )
    wheel = _build_wheel(tmp_path, env)
    names = zipfile.ZipFile(wheel).namelist()
    assert "stamo_vla/presets/finetune_tiny.yaml" in names and "stamo_vla/presets/eval_tiny.yaml" in names
    assert {n.split("/")[0] for n in names if "/" in n} <= {
        "stamo_vla",
        wheel.name.split("-py")[0] + ".dist-info",
    }
    venv = _venv(tmp_path, wheel, env)
    stamo_vla = str(venv / "bin" / "stamo-vla")

    work = tmp_path / "elsewhere"  # outside the repository: no recipes/, eval/ or presets on disk here
    work.mkdir()
    where = _run(
        [str(venv / "bin" / "python"), "-c", "import stamo_vla; print(stamo_vla.__file__)"], work, env
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)
    assert "finetune" in _run([stamo_vla, "--help"], work, env).stdout
    assert "--max_steps" in _run([stamo_vla, "eval", "--config", "tiny", "--help"], work, env).stdout
    assert "--quick" in _run([stamo_vla, "bench", "--help"], work, env).stdout
    typo = subprocess.run(
        [stamo_vla, "eval", "--config", "tinny"], cwd=work, env=env, capture_output=True, text=True
    )
    assert typo.returncode == 2 and "Did you mean 'tiny'?" in typo.stderr and "Traceback" not in typo.stderr

    write_rlds_dataset((_episode(i) for i in range(4)), work / "data", DATASET)
    run = ["finetune", "--config", "tiny", "--max_steps", "2", "--data.data_root_dir", "data"]
    run += ["--data.dataset_names", f"[{DATASET}]", "--data.shuffle_buffer_size", "16", "--batch_size", "2"]
    run += [
        "--adapter.target",
        "none",
    ]  # the run directory defaults to runs/<run id>, under the working directory
    _run([stamo_vla, *run], work, env)
    (adapter,) = (work / "runs").glob("*/adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "dataset_statistics.json"} <= {
        p.name for p in adapter.iterdir()
    }
    assert list(json.loads((adapter / "dataset_statistics.json").read_text())) == [DATASET]
