"""Pseudo-labels: latent motions of action-free episodes equal encoder differences exactly; resumable; refused on mismatch."""

import numpy as np
import pytest
import torch
from PIL import Image

from stamo_vla.data.pseudo_labels import (
    frame_folder_episodes,
    label_latent_actions,
    latent_actions,
    load_latent_actions,
    main,
)
from stamo_vla.stamo import StaMoEncoder, tiny_config


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "stamo"
    StaMoEncoder(tiny_config()).save_pretrained(path)
    return path


@pytest.fixture()
def frames_dir(tmp_path):
    rng = np.random.default_rng(0)
    for e, length in enumerate((5, 3)):
        folder = tmp_path / "frames" / f"episode_{e}"
        folder.mkdir(parents=True)
        for t in range(length):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{t:04d}.png")
    return tmp_path / "frames"


def test_latent_actions_clamp_at_the_episode_end():
    states = np.arange(4, dtype=np.float32).reshape(4, 1, 1)
    assert latent_actions(states, 2)[:, 0, 0].tolist() == [2, 2, 1, 0]
    with pytest.raises(ValueError, match="horizon=0 must be a positive integer"):
        latent_actions(states, 0)


def test_labels_equal_encoder_differences_exactly(tmp_path, encoder_dir, frames_dir):
    assert (
        main(
            [
                "--frames_dir",
                str(frames_dir),
                "--stamo_path",
                str(encoder_dir),
                "--output_dir",
                str(tmp_path / "out"),
                "--horizon",
                "2",
            ]
        )
        == 0
    )
    labels = load_latent_actions(tmp_path / "out")
    encoder = StaMoEncoder.from_pretrained(encoder_dir).eval()
    for episode_id, frames in frame_folder_episodes(frames_dir):
        with torch.no_grad():
            s = encoder.encode(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0).numpy()
        expected = s[np.minimum(np.arange(len(s)) + 2, len(s) - 1)] - s
        np.testing.assert_array_equal(labels[episode_id], expected)
    assert sorted(labels) == ["episode_0", "episode_1"]


def test_resumes_and_refuses_a_different_checkpoint(tmp_path, encoder_dir, frames_dir):
    encoder = StaMoEncoder.from_pretrained(encoder_dir)
    out = label_latent_actions(frame_folder_episodes(frames_dir), encoder, tmp_path / "out", source="s")
    first = {p.name: p.stat().st_mtime_ns for p in (out / "episodes").iterdir()}
    label_latent_actions(frame_folder_episodes(frames_dir), encoder, out, source="s")
    assert {p.name: p.stat().st_mtime_ns for p in (out / "episodes").iterdir()} == first  # nothing redone
    torch.manual_seed(1)
    other = StaMoEncoder(tiny_config())
    with pytest.raises(ValueError, match="stamo_fingerprint"):
        label_latent_actions(frame_folder_episodes(frames_dir), other, out, source="s")


def test_bad_inputs(tmp_path, encoder_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(frame_folder_episodes(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no episode sub-folders"):
        list(frame_folder_episodes(tmp_path / "empty"))
    (tmp_path / "noimg" / "ep0").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no images"):
        list(frame_folder_episodes(tmp_path / "noimg"))
