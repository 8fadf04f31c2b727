"""Opt-in: the real ``lerobot`` package, in its own environment, against our reader and writer.

    STAMO_LEROBOT_PYTHON=/work/venvs/lerobot/bin/python pytest tests/data/test_lerobot_library.py

(``pip install 'lerobot[dataset]==0.6.1'`` in a Python 3.12 venv; the version that wrote the committed fixtures
is in tests/data/fixtures/lerobot_version.txt). Skipped unless the variable names that interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from data_helpers import make_episode
from fixtures import make_lerobot_fixture as fx

from stamo_vla.data.lerobot import iter_lerobot_episodes
from stamo_vla.data.lerobot_writer import write_lerobot_dataset

FIXTURES = Path(__file__).parent / "fixtures"
LEROBOT_PYTHON = os.environ.get("STAMO_LEROBOT_PYTHON")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not LEROBOT_PYTHON, reason="set STAMO_LEROBOT_PYTHON to a python with lerobot installed"
    ),
]


def run_lerobot(script: str, *args: str) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run([LEROBOT_PYTHON, str(FIXTURES / script), *args], check=True, env=env, capture_output=True)


def test_regenerated_fixture_matches_the_committed_one(tmp_path):
    run_lerobot("make_lerobot_fixture.py", str(tmp_path))
    for name in ("lerobot_libero_video", "lerobot_libero_image"):
        fresh = list(iter_lerobot_episodes(tmp_path, name))
        committed = list(iter_lerobot_episodes(FIXTURES, name))
        assert len(fresh) == len(committed) == len(fx.EPISODES)
        for a, b in zip(fresh, committed):
            assert a["language_instruction"] == b["language_instruction"]
            for key in ("state", "action"):
                np.testing.assert_array_equal(a[key], b[key])
            for key in ("image", "wrist_image"):
                diff = np.abs(a[key].astype(np.int16) - b[key])
                assert (
                    diff.reshape(len(diff), -1).mean(1).max() < 3.0
                )  # both within the AV1 bound of the source
        info = json.loads((tmp_path / name / "meta/info.json").read_text())
        assert info["codebase_version"] == "v3.0"


@pytest.mark.parametrize("video", [True, False])
def test_lerobot_loads_what_we_write(tmp_path, video):
    episodes = [make_episode(i) for i in range(2)] + [make_episode(50, action_free=True, tag="video")]
    root = write_lerobot_dataset(episodes, tmp_path / "ours", video=video)
    run_lerobot("read_with_lerobot.py", str(root), str(tmp_path / "dump.npz"))
    dump = np.load(tmp_path / "dump.npz")
    ours = list(iter_lerobot_episodes(root, "ours"))
    assert int(dump["num_episodes"]) == 3
    np.testing.assert_array_equal(dump["state"], np.concatenate([ep["state"] for ep in episodes]))
    np.testing.assert_array_equal(dump["action"], np.concatenate([ep["action"] for ep in episodes]))
    tasks = [ep["language_instruction"] for ep in episodes for _ in range(len(ep["action"]))]
    assert [str(t) for t in dump["task"]] == tasks
    # the library decodes our frames to exactly what our reader decodes
    np.testing.assert_array_equal(dump["image"], np.concatenate([ep["image"] for ep in ours]))
    np.testing.assert_array_equal(dump["image2"], np.concatenate([ep["wrist_image"] for ep in ours]))
    stats = json.loads(str(dump["stats_json"]))
    assert {"q01", "q10", "q50", "q90", "q99"} <= set(stats["action"])
    assert np.asarray(stats["observation.images.image"]["mean"]).shape == (3, 1, 1)
