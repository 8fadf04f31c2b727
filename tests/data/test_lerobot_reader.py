"""Our LeRobot reader on datasets written by the real ``lerobot`` package (tests/data/fixtures, see its script)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures import make_lerobot_fixture as fx

from stamo_vla import keys
from stamo_vla.data.config import DataConfig
from stamo_vla.data.lerobot import (
    LeRobotReader,
    iter_lerobot_episodes,
    resize_frame,
    resolve_lerobot_dir,
    shard_range,
    split_range,
)
from stamo_vla.data.sources import detect_format, iter_episodes

FIXTURES = Path(__file__).parent / "fixtures"
VIDEO, IMAGE = "lerobot_libero_video", "lerobot_libero_image"
# AV1 (LeRobot's defaults: crf 30, yuv420p) on the fixture's 64 px frames with sharp-edged blocks: mean absolute
# error per frame, measured 2.0-2.2 levels; the lossless PNG layout is exact.
AV1_FRAME_MEAN_ABS = 3.0


def expected_frames(episode: int, length: int, camera: int) -> np.ndarray:
    return np.stack([fx.frame(episode, t, camera) for t in range(length)])


@pytest.mark.parametrize("name", [VIDEO, IMAGE])
def test_library_written_fixture_loads_with_keys_shapes_tasks_and_values(name):
    assert (FIXTURES / "lerobot_version.txt").read_text().startswith("lerobot==")
    episodes = list(iter_lerobot_episodes(FIXTURES, name))
    assert [len(ep["action"]) for ep in episodes] == [length for _, length in fx.EPISODES]
    for e, ep in enumerate(episodes):
        task, length = fx.EPISODES[e]
        assert ep["language_instruction"] == task and ep["file_path"] == f"episode_{e:06d}"
        assert ep["has_action"] and ep["joint_state"].shape == (length, 7)
        np.testing.assert_array_equal(ep["state"], np.stack([fx.state(e, t) for t in range(length)]))
        np.testing.assert_array_equal(ep["action"], np.stack([fx.action(e, t) for t in range(length)]))
        for key, camera in (("image", 0), ("wrist_image", 1)):
            assert ep[key].shape == (length, fx.SIZE, fx.SIZE, 3) and ep[key].dtype == np.uint8
            diff = np.abs(ep[key].astype(np.int16) - expected_frames(e, length, camera))
            if name == IMAGE:
                assert diff.max() == 0
            else:
                assert diff.reshape(length, -1).mean(1).max() < AV1_FRAME_MEAN_ABS
            assert ep[key][:, :8].mean() > 200  # upright: the top marker is still on top


@pytest.mark.parametrize("name", [VIDEO, IMAGE])
def test_lazy_frames_decode_to_the_same_pixels(name):
    eager = list(iter_lerobot_episodes(FIXTURES, name))
    lazy = list(iter_lerobot_episodes(FIXTURES, name, decode_images=False))
    for a, b in zip(eager, lazy):
        for key in ("image", "wrist_image"):
            assert len(b[key]) == len(a[key]) and not isinstance(b[key], np.ndarray)
            np.testing.assert_array_equal(b[key][:], a[key])
            for t in (len(a[key]) - 1, 0, 3, -1):  # random access, each its own seek
                np.testing.assert_array_equal(b[key][t], a[key][t])
            with pytest.raises(IndexError, match="frame 99 of an episode"):
                b[key][99]


def test_library_statistics_agree_with_the_episodes():
    stats = json.loads((FIXTURES / VIDEO / "meta/stats.json").read_text())
    episodes = list(iter_lerobot_episodes(FIXTURES, VIDEO, load_images=False))
    for key, field in (("observation.state", "state"), ("action", "action")):
        values = np.concatenate([ep[field] for ep in episodes]).astype(np.float64)
        block = stats[key]
        assert {"q01", "q10", "q50", "q90", "q99", "count"} <= set(block)
        assert block["count"] == [len(values)]
        np.testing.assert_allclose(block["min"], values.min(0), rtol=1e-6)
        np.testing.assert_allclose(block["max"], values.max(0), rtol=1e-6)
        np.testing.assert_allclose(block["mean"], values.mean(0), rtol=1e-5, atol=1e-6)
        span = values.max(0) - values.min(0)
        for q in (10, 50, 90):  # LeRobot estimates quantiles from histograms: within one data step of exact
            gap = np.abs(np.asarray(block[f"q{q}"]) - np.quantile(values, q / 100, axis=0))
            assert np.all(gap <= 0.5 * span + 1e-6), (key, q, gap)


def test_split_and_shard_follow_tfds_and_cover_every_episode():
    assert split_range("train", 20) == (0, 20)
    assert split_range("train[:95%]", 20) == (0, 19) and split_range("train[95%:]", 20) == (19, 20)
    assert split_range("train[2:5]", 20) == (2, 5) and split_range("train[-3:]", 20) == (17, 20)
    blocks = [shard_range(0, 19, (i, 4)) for i in range(4)]
    assert blocks[0][0] == 0 and blocks[-1][1] == 19
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    with pytest.raises(ValueError, match=r"split='test' is not supported for LeRobot datasets"):
        split_range("test", 3)
    shuffled = [
        ep["episode_index"] for ep in iter_lerobot_episodes(FIXTURES, IMAGE, shuffle_episodes=2, seed=3)
    ]
    assert sorted(shuffled) == [0, 1, 2]


def test_resize_matches_the_rlds_path_within_one_level():
    from PIL import Image

    from stamo_vla.data.dataset import decode_frame  # the RLDS path: TF decode + lanczos3 antialias resize

    rng = np.random.default_rng(0)
    for src in (fx.frame(1, 3, 0), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)):
        buf = io.BytesIO()
        Image.fromarray(src).save(buf, format="PNG")
        for size in (224, 256, 32):
            ours, tf_path = resize_frame(src, size), decode_frame(buf.getvalue(), size)
            assert ours.shape == (size, size, 3)
            assert np.abs(ours.astype(np.int16) - tf_path).max() <= 1


def test_layout_detection_and_errors_name_what_to_do(tmp_path):
    assert detect_format(FIXTURES, VIDEO) == "lerobot" and detect_format(FIXTURES / VIDEO, "x") == "lerobot"
    assert detect_format(tmp_path, "missing") == "rlds"
    assert resolve_lerobot_dir(FIXTURES / VIDEO, "anything") == FIXTURES / VIDEO
    with pytest.raises(ValueError, match="is a LeRobot dataset.*pass --data.format lerobot"):
        iter_episodes(FIXTURES, VIDEO, fmt="rlds")
    with pytest.raises(FileNotFoundError, match=r"no LeRobot dataset.*Did you mean 'lerobot_libero_video'"):
        resolve_lerobot_dir(FIXTURES, "lerobot_libero_vide")
    old = tmp_path / "old"
    shutil.copytree(FIXTURES / IMAGE, old)
    info = json.loads((old / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(ValueError, match="codebase_version 'v2.1'.*convert_dataset_v21_to_v30"):
        LeRobotReader(old)
    (old / "meta/info.json").write_text(json.dumps({**info, "features": {"action": {}}}))
    with pytest.raises(ValueError, match=r"none of the camera keys \['observation.images.image'"):
        LeRobotReader(old)
    with pytest.raises(
        ValueError, match=r"format='hdf5' is not a data format; allowed: \['rlds', 'lerobot'\]"
    ):
        DataConfig(format="hdf5")


def test_truncated_video_is_named(tmp_path):
    root = tmp_path / VIDEO
    shutil.copytree(FIXTURES / VIDEO, root)
    video = root / "videos/observation.images.image/chunk-000/file-000.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])
    with pytest.raises((ValueError, OSError), match="file-000.mp4"):
        list(iter_lerobot_episodes(root, VIDEO))


def test_sample_stream_reads_lerobot_without_tensorflow(tmp_path):
    """`--data.format lerobot` end to end in a fresh process: samples as the RLDS path makes them, no TF."""
    shutil.copytree(FIXTURES / VIDEO, tmp_path / VIDEO)  # statistics are cached beside the data
    code = f"""
import sys, json
from stamo_vla.data.config import DataConfig
cfg = DataConfig(format="lerobot", data_root_dir={str(tmp_path)!r}, dataset_names=[{VIDEO!r}], image_size=32,
                 load_wrist=True, load_proprio=True, repeat=False, shuffle_buffer_size=4, action_chunk=2)
ds = cfg.build(rank=0, world_size=1)
samples = list(ds)
print(json.dumps({{"n": len(samples), "tf": "tensorflow" in sys.modules,
    "shapes": sorted({{(k, tuple(v.shape)) for s in samples for k, v in s.items() if hasattr(v, "shape")}}),
    "ids": sorted({{s["{keys.EPISODE_ID}"] for s in samples}}), "tasks": sorted({{s["{keys.INSTRUCTION}"] for s in samples}}),
    "stats": ds.dataset_statistics[{VIDEO!r}]["num_trajectories"]}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["tf"] is False
    assert got["n"] == sum(length - 1 for _, length in fx.EPISODES)  # chunk 2: the last step starts no chunk
    shapes = dict(map(tuple, got["shapes"]))
    assert shapes[keys.IMAGE] == shapes[keys.WRIST_IMAGE] == shapes[keys.FUTURE_IMAGE] == [32, 32, 3]
    assert shapes[keys.ACTION] == [2, 7] and shapes[keys.PROPRIO] == [8]
    # a sample names its episode by its identity: the file path (episode_<index>) plus a content digest
    assert [i.split("#")[0] for i in got["ids"]] == [f"episode_{i:06d}" for i in range(3)]
    assert got["tasks"] == sorted({task for task, _ in fx.EPISODES}) and got["stats"] == 3
