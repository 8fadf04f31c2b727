"""RLDS -> LeRobot -> RLDS keeps every episode; the LeRobot writer's layout, statistics and codec error bound."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from data_helpers import make_episode

from stamo_vla.data.convert import ConvertConfig, convert, main
from stamo_vla.data.lerobot import iter_lerobot_episodes
from stamo_vla.data.lerobot_writer import QUANTILES, write_lerobot_dataset
from stamo_vla.data.rlds import iter_episodes
from stamo_vla.data.rlds_writer import write_rlds_dataset

NAME = "toy_convert"
# AV1 at LeRobot's defaults (crf 30, g=2) on our synthetic frames: flat blocks and sharp edges are the worst case
# for a lossy codec (ringing at the edges, chroma subsampling of the colored blocks), so the bound is on the mean
# absolute error per frame, against the frames the RLDS side decodes (JPEG q95, itself within ~1 level).
AV1_MEAN_ABS_BOUND = 2.5


def episodes() -> list[dict]:
    eps = [make_episode(i) for i in range(3)]
    eps.append(make_episode(50, action_free=True, tag="video"))  # an action-free (all-NaN action) episode
    return eps


@pytest.fixture(scope="module")
def rlds_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_rlds")
    write_rlds_dataset(episodes(), root, NAME)
    return root


def _same_text_and_numbers(a: dict, b: dict) -> None:
    assert a["language_instruction"] == b["language_instruction"]
    for key in ("state", "joint_state"):
        np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a["action"], b["action"])  # NaN == NaN for the action-free episode


def test_round_trip_keeps_episodes_exactly_and_frames_within_the_codec_bound(rlds_root, tmp_path):
    lerobot_dir = tmp_path / "lerobot"
    main(["--to", "lerobot", "--data_root_dir", str(rlds_root), "--dataset_name", NAME,
          "--output_dir", str(lerobot_dir)])  # fmt: skip
    main(["--to", "rlds", "--data_root_dir", str(lerobot_dir), "--dataset_name", "any",
          "--output_dir", str(tmp_path / "back"), "--output_name", "toy_back"])  # fmt: skip
    source = list(iter_episodes(rlds_root, NAME))
    middle = list(iter_lerobot_episodes(lerobot_dir, "any"))
    # the RLDS writer stores episodes in its seeded interleaved order: match them by name
    back = sorted(iter_episodes(tmp_path / "back", "toy_back"), key=lambda e: e["file_path"])
    assert len(source) == len(middle) == len(back) == 4
    for i, (a, m, b) in enumerate(zip(source, middle, back)):
        _same_text_and_numbers(a, m)
        _same_text_and_numbers(a, b)
        assert m["file_path"] == b["file_path"] == f"episode_{i:06d}"
        for key in ("image", "wrist_image"):
            assert m[key].shape == a[key].shape
            err = np.abs(a[key].astype(np.int16) - m[key]).reshape(len(a[key]), -1).mean(1)
            assert err.max() < AV1_MEAN_ABS_BOUND, (key, err)
            # the top marker stays at the top: no flip anywhere on the way
            assert (m[key][:, :8].mean() > 200) == (a[key][:, :8].mean() > 200)
            back_err = np.abs(b[key].astype(np.int16) - m[key]).reshape(len(m[key]), -1).mean(1)
            assert back_err.max() < 1.5  # JPEG q95 of the AV1 frames


def test_png_layout_is_lossless_and_statistics_have_lerobot_quantiles(tmp_path):
    eps = episodes()
    root = write_lerobot_dataset(eps, tmp_path / "png", video=False)
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 4 and info["video_path"] is None
    assert info["features"]["observation.images.image"]["dtype"] == "image"
    assert not (root / "videos").exists()
    for a, b in zip(eps, iter_lerobot_episodes(root, "png")):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["wrist_image"], b["wrist_image"])
    stats = json.loads((root / "meta/stats.json").read_text())
    labeled = np.concatenate([e["action"] for e in eps[:3]]).astype(np.float64)
    quantiles = {f"q{round(q * 100):02d}": q for q in QUANTILES}
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", *quantiles}
    for key, q in quantiles.items():
        np.testing.assert_allclose(stats["action"][key], np.quantile(labeled, q, axis=0))
    np.testing.assert_allclose(stats["action"]["mean"], labeled.mean(0))
    states = np.concatenate([e["state"] for e in eps]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["max"], states.max(0))
    pixels = np.concatenate([e["wrist_image"] for e in eps]).reshape(-1, 3) / 255.0  # exact, over every pixel
    image = {k: np.asarray(v) for k, v in stats["observation.images.image2"].items()}
    assert image["mean"].shape == image["q50"].shape == (3, 1, 1) and image["count"].tolist() == [len(states)]
    np.testing.assert_allclose(image["mean"].ravel(), pixels.mean(0))
    for key, q in quantiles.items():
        np.testing.assert_allclose(image[key].ravel(), np.quantile(pixels, q, axis=0), atol=1e-12)
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pylist()
    assert [t["task"] for t in tasks] == list(dict.fromkeys(e["language_instruction"] for e in eps))


def test_convert_refuses_the_wrong_direction_and_foreign_directories(rlds_root, tmp_path):
    with pytest.raises(ValueError, match="--to rlds converts a lerobot dataset.*Pass --to lerobot"):
        convert(
            ConvertConfig(
                to="rlds", data_root_dir=str(rlds_root), dataset_name=NAME, output_dir=str(tmp_path)
            )
        )
    with pytest.raises(
        ValueError, match=r"to='parquet' is not an output format; allowed: \['lerobot', 'rlds'\]"
    ):
        ConvertConfig(to="parquet", data_root_dir="d", dataset_name="n", output_dir="o")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing to replace"):
        write_lerobot_dataset(episodes()[:1], foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
