"""Action decoder (latent motion -> k-step actions) and the latent-action probe."""

import numpy as np
import pytest
import torch

from stamo_vla.stamo import StaMoEncoder, tiny_config
from stamo_vla.stamo.action_decoder import ActionDecoder, ActionDecoderConfig, fit
from stamo_vla.study.probe import (
    INPUTS,
    LOTO,
    RANDOM_SPLIT,
    EpisodeFeatures,
    FitConfig,
    Split,
    episode_features,
    evaluate_split,
    markdown_table,
    run_probe,
    split_episodes,
    standardizer,
)

FAST = FitConfig(hidden_size=32, max_steps=150, eval_steps=10, patience=60)


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


def test_action_decoder_normalization_has_a_safe_floor():
    dec = ActionDecoder(ActionDecoderConfig(num_state_tokens=1, state_dim=3, hidden_size=8, num_layers=1))
    motion = torch.randn(64, 1, 3)
    motion[:, 0, 2] = 0.5  # a feature that never changes in training
    dec.fit_normalization(motion)
    assert dec.input_std[2] >= 0.1 * dec.input_std[:2].mean() / 1.5
    x = (torch.tensor([[0.0, 0.0, 0.51]]) - dec.input_mean) / dec.input_std
    assert x.abs().max() < 10  # the old clamp(1e-6) made this 1e4


def test_probe_runs_deterministically_with_reference_rows_and_both_protocols(encoder):
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(6):
        frames, actions = moving_square_episode(rng)
        episodes.append(
            EpisodeFeatures(episode_features(encoder, frames), torch.from_numpy(actions), task=f"t{i % 2}")
        )
    fit = FitConfig(hidden_size=16, max_steps=20, eval_steps=10, patience=20)
    a = run_probe(episodes, horizons=(2,), test_fraction=0.34, seeds=(0, 1), fit=fit)
    assert (
        evaluate_split(episodes, Split("s", [0, 1, 2, 3], [4, 5], seed=1), 2, fit)[0]
        == evaluate_split(episodes, Split("s", [0, 1, 2, 3], [4, 5], seed=1), 2, fit)[0]
    )
    assert set(a["protocols"]) == {RANDOM_SPLIT, LOTO}
    assert "untrained_encoder" in a["inputs"] and set(INPUTS) == set(a["inputs"])
    for proto in a["protocols"].values():
        assert set(proto["mean"]["2"]) == set(INPUTS) | {"mean_predictor", "zero_action"}
        for split in proto["splits"]:
            assert set(split["train"]).isdisjoint(split["test"]) and split["test"]
    assert len(a["protocols"][RANDOM_SPLIT]["per_split"]["2"]["stamo_motion"]) == 2
    loto = a["protocols"][LOTO]["splits"]
    assert [s["task"] for s in loto] == ["t0", "t1"] and loto[0]["test"] == [0, 2, 4]
    table = markdown_table(a)
    assert "untrained_encoder" in table and "mean_predictor" in table and " ± " in table


def _episodes(rng, n, make_feature, length=30):
    out = []
    for i in range(n):
        actions = torch.from_numpy(rng.uniform(-1, 1, (length, 7)).astype(np.float32))
        out.append(EpisodeFeatures(make_feature(i, actions), actions, task=f"t{i % 3}"))
    return out


def test_a_truly_predictive_feature_beats_noise_features():
    rng = np.random.default_rng(1)

    def feats(i, actions):
        position = torch.cumsum(actions, 0)  # position[t+1] - position[t] = action t: fully predictive at k=1
        return {
            "signal": torch.cat([torch.zeros(1, 7), position[:-1]]),
            "noise": torch.randn(len(actions), 16),
        }

    fit = FitConfig(hidden_size=32, max_steps=300, lr=3e-3, eval_steps=20, patience=100)
    res = run_probe(_episodes(rng, 8, feats), horizons=(1,), seeds=(0, 1), fit=fit, leave_one_task=False)
    row = res["mse"]["1"]
    assert row["signal"] < 0.3 * row["noise"]
    assert row["noise"] <= 1.05 * row["mean_predictor"]  # noise neither beats "no input" by much nor blows up


def test_no_input_scores_worse_than_the_mean_predictor_where_the_old_fit_blew_up():
    rng = np.random.default_rng(2)
    test_eps = {6, 7}

    def feats(i, actions):
        # constant up to 1e-7 on the training episodes, varying by 1e-2 on the test episodes: the old
        # std.clamp(1e-6) standardization turned this into inputs of size ~1e4
        scale = 1e-2 if i in test_eps else 1e-7
        return {"near_constant": 3.0 + scale * torch.randn(len(actions), 24)}

    episodes = _episodes(rng, 8, feats)
    split = Split("fixed", [0, 1, 2, 3, 4, 5], sorted(test_eps))
    mse, _ = evaluate_split(episodes, split, 2, FAST)
    assert mse["near_constant"] <= mse["mean_predictor"] * (1 + 1e-6)
    train_x = torch.cat([episodes[i].features["near_constant"] for i in split.train])
    test_x = torch.cat([episodes[i].features["near_constant"] for i in split.test])
    old = (test_x - train_x.mean(0)) / train_x.std(0).clamp(min=1e-6)
    assert old.abs().max() > 1e3  # the data really is the case that blew up before
    assert standardizer(train_x, 0.1, 5.0)(test_x).abs().max() <= 5.0


def test_probe_bad_inputs(encoder):
    with pytest.raises(ValueError, match=r"images must be \(T, H, W, 3\) uint8"):
        episode_features(encoder, np.zeros((4, 32, 32), np.uint8))
    feats = EpisodeFeatures({n: torch.zeros(5, 3) for n in INPUTS}, torch.zeros(5, 7))
    with pytest.raises(ValueError, match="horizon k=8 is not shorter than the longest episode"):
        run_probe([feats, feats], horizons=(8,), fit=FAST)
    with pytest.raises(ValueError, match="at least 2 episodes"):
        split_episodes(1, 0.2, 0)
    with pytest.raises(ValueError, match="fit.val_fraction=1.5"):
        FitConfig(val_fraction=1.5)
