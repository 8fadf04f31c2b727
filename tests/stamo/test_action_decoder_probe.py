"""Action decoder (latent motion -> k-step actions) and the latent-action probe."""

import numpy as np
import pytest
import torch

from stamo_vla.stamo import StaMoEncoder, tiny_config
from stamo_vla.stamo.action_decoder import ActionDecoder, ActionDecoderConfig, fit
from stamo_vla.stamo.probe import (
    INPUTS,
    EpisodeFeatures,
    episode_features,
    markdown_table,
    run_probe,
    split_episodes,
)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return StaMoEncoder(tiny_config()).eval()


def moving_square_episode(rng, length=12, size=32):
    """A square that moves by the (x, y) part of each action: the actions are visible in the frames."""
    actions = np.zeros((length, 7), np.float32)
    actions[:, :2] = rng.uniform(-1, 1, (length, 2))
    actions[:, 6] = rng.integers(0, 2)
    pos = np.array([size / 2, size / 2])
    frames = []
    for t in range(length):
        img = np.zeros((size, size, 3), np.uint8)
        x, y = np.clip(pos, 4, size - 5).astype(int)
        img[y - 3 : y + 3, x - 3 : x + 3] = (255, 128, 0)
        frames.append(img)
        pos = pos + 2 * actions[t, :2]
    return np.stack(frames), actions


def test_action_decoder_shapes_and_round_trip(tmp_path, encoder):
    cfg = ActionDecoderConfig(num_state_tokens=2, state_dim=64, horizon=4, hidden_size=32, num_layers=2)
    dec = ActionDecoder(cfg).eval()
    motion = torch.randn(5, 2, 64)
    out = dec(motion)
    assert out.shape == (5, 4, 7) and out.dtype == torch.float32
    dec.save_pretrained(tmp_path / "dec")
    again = ActionDecoder.from_pretrained(tmp_path / "dec")
    assert torch.equal(again(motion), out)
    current, goal = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    chunk = dec.decode(encoder, current, goal)
    assert chunk.shape == (3, 4, 7)
    expected = dec(encoder.encode(goal) - encoder.encode(current))
    assert torch.allclose(chunk, expected)


def test_action_decoder_learns_a_linear_map():
    torch.manual_seed(0)
    cfg = ActionDecoderConfig(num_state_tokens=2, state_dim=8, horizon=2, hidden_size=64, num_layers=2)
    dec = ActionDecoder(cfg)
    motion = torch.randn(256, 2, 8)
    w = torch.randn(16, 14)
    actions = (motion.flatten(1) @ w).view(256, 2, 7) * 0.1
    dec.fit_normalization(motion)
    curve = fit(dec, (motion,), actions, steps=300, lr=3e-3)
    assert curve[-1] < 0.1 * curve[0]


def test_action_decoder_bad_inputs():
    dec = ActionDecoder(ActionDecoderConfig(num_state_tokens=2, state_dim=8, condition_on_state=True))
    with pytest.raises(ValueError, match=r"motion must be \(B, 2, 8\)"):
        dec(torch.randn(3, 16))
    with pytest.raises(ValueError, match="condition_on_state=True needs state"):
        dec(torch.randn(3, 2, 8))
    with pytest.raises(ValueError, match="horizon=0 must be a positive integer"):
        ActionDecoderConfig(horizon=0)


def test_probe_runs_deterministically_and_reports_every_cell(encoder):
    rng = np.random.default_rng(0)
    episodes = []
    for _ in range(5):
        frames, actions = moving_square_episode(rng)
        episodes.append(EpisodeFeatures(episode_features(encoder, frames), torch.from_numpy(actions)))
    a = run_probe(episodes, horizons=(1, 2), steps=60, hidden_size=32)
    b = run_probe(episodes, horizons=(1, 2), steps=60, hidden_size=32)
    assert a == b
    assert set(a["mse"]) == {"1", "2"} and all(set(row) == set(INPUTS) for row in a["mse"].values())
    assert a["samples"]["1"]["train"] == 4 * 11 and a["samples"]["2"]["test"] == 10
    assert set(a["split"]["train_episodes"]).isdisjoint(a["split"]["test_episodes"])
    table = markdown_table(a)
    assert table.count("\n") == 3 and "stamo_motion" in table


def test_probe_bad_inputs(encoder):
    with pytest.raises(ValueError, match=r"images must be \(T, H, W, 3\) uint8"):
        episode_features(encoder, np.zeros((4, 32, 32), np.uint8))
    feats = EpisodeFeatures({n: torch.zeros(5, 3) for n in INPUTS}, torch.zeros(5, 7))
    with pytest.raises(ValueError, match="horizon k=8 is not shorter than the longest episode"):
        run_probe([feats, feats], horizons=(8,), steps=1)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        split_episodes(1, 0.2, 0)
