"""Transforms, statistics (vs numpy), BOUNDS_Q99 normalization round trips, the stats command and its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import ACTION_FREE, LABELED, NUM_EPISODES, make_episode

from stamo_vla import cli
from stamo_vla.data import statistics, transforms
from stamo_vla.data.normalization import normalize, unnormalize


def test_gripper_standardization_and_state_split():
    a = np.array([[0.1] * 6 + [-1.0], [0.2] * 6 + [1.0], [0.0] * 6 + [0.3]], np.float32)
    out = transforms.standardize_gripper(a)
    np.testing.assert_allclose(out[:, -1], [1.0, 0.0, 0.7], rtol=1e-6)  # -1 open -> 1, +1 close -> 0
    np.testing.assert_array_equal(out[:, :6], a[:, :6])
    eef, grip = transforms.split_state(np.arange(16, dtype=np.float32).reshape(2, 8))
    assert eef.shape == (2, 6) and grip.shape == (2, 2) and grip[0].tolist() == [6.0, 7.0]
    assert np.isnan(transforms.standardize_gripper(np.full((2, 7), np.nan))).all()


def test_future_clamp_and_chunk_anchors():
    np.testing.assert_array_equal(transforms.future_indices(5, 3), [3, 4, 4, 4, 4])
    np.testing.assert_array_equal(transforms.future_indices(3, 0), [0, 1, 2])
    actions = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 7), np.float32)
    np.testing.assert_array_equal(transforms.action_chunk(actions, 1, 4)[:, 0], [1, 2, 3, 4])
    with pytest.raises(ValueError, match="starts no full chunk"):
        transforms.action_chunk(actions, 3, 4)  # would need padding: not an anchor
    np.testing.assert_array_equal(transforms.chunk_indices(3, 2), [[0, 1], [1, 2]])
    assert transforms.num_chunk_anchors(5, 8) == 0 and transforms.num_chunk_anchors(5, 1) == 5
    with pytest.raises(ValueError, match="chunk=0"):
        transforms.chunk_indices(3, 0)


def _numpy_reference() -> dict:
    eps = [make_episode(i) for i in range(NUM_EPISODES)]
    act = np.concatenate([e["action"] for e in eps]).astype(np.float64)
    act[:, -1] = 1.0 - np.clip(act[:, -1], 0, 1)
    prop = np.concatenate([e["state"] for e in eps]).astype(np.float64)
    ref = {}
    for key, x in (("action", act), ("proprio", prop)):
        ref[key] = {
            "mean": x.mean(0),
            "std": x.std(0),
            "min": x.min(0),
            "max": x.max(0),
            "q01": np.quantile(x, 0.01, axis=0),
            "q99": np.quantile(x, 0.99, axis=0),
        }
    ref["num_transitions"] = len(prop)
    return ref


@pytest.fixture(scope="module")
def stats(data_root):
    return statistics.compute_statistics(data_root, LABELED, use_cache=False)


def test_statistics_match_numpy(stats):
    ref = _numpy_reference()
    for key in ("action", "proprio"):
        for stat, value in ref[key].items():
            np.testing.assert_allclose(stats[key][stat], value, rtol=1e-6, atol=1e-7, err_msg=f"{key}.{stat}")
    assert stats["action"]["mask"] == [True] * 6 + [False]
    assert stats["num_transitions"] == ref["num_transitions"] and stats["num_trajectories"] == NUM_EPISODES


def test_action_free_episodes_are_excluded_from_action_stats(data_root):
    s = statistics.compute_statistics(data_root, ACTION_FREE, use_cache=False)
    assert s["num_trajectories"] == 3 and s["num_transitions"] > 0
    assert s["action"]["min"] == s["action"]["max"] == [0.0] * 7  # no labeled step: neutral block
    assert np.isfinite(s["proprio"]["mean"]).all()
    mixed = statistics.statistics_from_arrays(
        [np.full((2, 7), np.nan, np.float32), np.ones((3, 7), np.float32)],
        [np.zeros((2, 8)), np.zeros((3, 8))],
    )
    assert mixed["action"]["mean"] == [1.0] * 6 + [0.0] and mixed["num_transitions"] == 5


def test_normalize_round_trip_and_gripper_untouched(stats):
    block = stats["action"]
    rng = np.random.default_rng(0)
    q01, q99 = np.array(block["q01"]), np.array(block["q99"])
    x = (q01 + rng.random((100, 7)) * (q99 - q01)).astype(np.float32)
    x[:, -1] = rng.integers(0, 2, 100)
    y = normalize(x, block)
    assert y[:, :6].min() >= -1 and y[:, :6].max() <= 1
    np.testing.assert_array_equal(y[:, -1], x[:, -1])  # gripper stays in {0, 1}
    np.testing.assert_allclose(unnormalize(y, block), x, atol=1e-5)
    # outside [q01, q99] values clip to the bounds
    far = np.array(q99 + 10.0, np.float32)[None]
    np.testing.assert_array_equal(normalize(far, block)[0, :6], np.ones(6))
    # upstream formula, literally
    expected = np.clip(2 * (x[:, :6] - q01[:6]) / (q99[:6] - q01[:6] + 1e-8) - 1, -1, 1)
    np.testing.assert_allclose(y[:, :6], expected, atol=1e-6)


def test_constant_dims_are_forced_to_zero():
    block = {"q01": [0.0, 2.0], "q99": [1.0, 2.0], "min": [0.0, 2.0], "max": [1.0, 2.0]}
    np.testing.assert_array_equal(normalize(np.array([[0.5, 2.0]]), block), [[0.0, 0.0]])


def test_cache_is_used_and_keyed_by_fingerprint(data_root, stats, monkeypatch):
    first = statistics.compute_statistics(data_root, LABELED)
    dataset_dir = data_root / LABELED / "1.0.0"
    cached = list(dataset_dir.glob("dataset_statistics_*.json"))
    assert len(cached) == 1
    payload = json.loads(cached[0].read_text())
    assert payload["fingerprint"] == statistics.statistics_fingerprint(dataset_dir)
    np.testing.assert_allclose(first["action"]["q99"], stats["action"]["q99"])

    def boom(*a, **k):
        raise AssertionError("recomputed although a valid cache exists")

    monkeypatch.setattr(statistics, "iter_episodes", boom)
    assert statistics.compute_statistics(data_root, LABELED) == first
    monkeypatch.setattr(statistics, "TRANSFORM_VERSION", "changed")  # transform settings change -> new key
    with pytest.raises(AssertionError, match="recomputed"):
        statistics.compute_statistics(data_root, LABELED)


def test_stats_command_writes_upstream_format(data_root, tmp_path, capsys):
    out = tmp_path / "dataset_statistics.json"
    assert (
        statistics.main_stats(
            ["--data_root_dir", str(data_root), "--dataset_names", f"[{LABELED}]", "--output_path", str(out)]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert list(data) == [LABELED]
    block = data[LABELED]
    assert set(block) == {"action", "proprio", "num_transitions", "num_trajectories"}
    assert set(block["action"]) == {"mean", "std", "max", "min", "q01", "q99", "mask"}
    assert block["action"]["mask"] == [True] * 6 + [False] and len(block["proprio"]["q01"]) == 8
    assert statistics.load_dataset_statistics(out) == data
    with pytest.raises(FileNotFoundError, match="stamo-vla stats"):
        statistics.load_dataset_statistics(tmp_path / "none.json")


def test_stats_command_reports_bad_names_without_a_traceback(data_root, capsys):
    code = cli.main(["stats", "--data_root_dir", str(data_root), "--dataset_names", "[nope]"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no RLDS dataset 'nope'" in err and LABELED in err and "Traceback" not in err
