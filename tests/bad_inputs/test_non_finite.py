"""No NaN or inf passes a boundary: writer, statistics, normalization, policy inputs/outputs, the simulator."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest

from stamo_vla.data.normalization import normalize, unnormalize
from stamo_vla.data.rlds_writer import validate_episode
from stamo_vla.data.statistics import load_dataset_statistics, statistics_from_arrays
from stamo_vla.policy import Policy


# ------------------------------------------------------------------------------------------- writer
@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("action", np.inf, r"episode\['action'\] holds 1 non-finite"),
        ("state", np.nan, r"episode\['state'\] holds 1 non-finite"),
        ("joint_state", -np.inf, r"episode\['joint_state'\] holds 1 non-finite"),
    ],
)
def test_writer_refuses_non_finite_values(make_episode, key, value, message):
    ep = make_episode(0, length=3)
    ep[key] = ep[key].copy()
    ep[key][1, 2] = value
    with pytest.raises(ValueError, match=message):
        validate_episode(ep)


def test_writer_still_takes_an_all_nan_action_free_episode(make_episode):
    ep = make_episode(0, length=3)
    ep["action"] = np.full_like(ep["action"], np.nan)
    assert validate_episode(ep) == 3


# --------------------------------------------------------------------------------------- statistics
def test_statistics_refuse_non_finite_data():
    states = [np.zeros((4, 8), np.float32)]
    bad_action = np.zeros((4, 7), np.float32)
    bad_action[0, 0] = np.inf
    with pytest.raises(ValueError, match="episode 0 has non-finite actions"):
        statistics_from_arrays([bad_action], states)
    bad_state = np.zeros((4, 8), np.float32)
    bad_state[2, 1] = np.nan
    with pytest.raises(ValueError, match="episode 0 has non-finite states"):
        statistics_from_arrays([np.zeros((4, 7), np.float32)], [bad_state])


def _stats_file(tmp_path, q99_0):
    block = {
        "q01": [-1.0] * 7,
        "q99": [q99_0] + [1.0] * 6,
        "min": [-2.0] * 7,
        "max": [2.0] * 7,
        "mask": [True] * 6 + [False],
    }
    path = tmp_path / "dataset_statistics.json"
    path.write_text(json.dumps({"toy": {"action": block}}))  # json writes nan as NaN
    return path


def test_loading_statistics_with_nan_is_refused_with_the_file_name(tmp_path):
    path = _stats_file(tmp_path, float("nan"))
    with pytest.raises(ValueError, match=r"dataset_statistics\.json.*'action\.q99'.*NaN/inf"):
        load_dataset_statistics(path)


def test_degenerate_statistics_warn_when_computed_and_when_loaded(tmp_path):
    actions = np.zeros((200, 7), np.float32)
    actions[:, 1] = np.linspace(-1, 1, 200)
    actions[0, 0] = 5.0  # dim 0 moves once: q01 == q99 == 0 but min < max
    with pytest.warns(UserWarning, match=r"dims \[0\] have q01 == q99"):
        statistics_from_arrays([actions], [np.zeros((200, 8), np.float32)])
    with pytest.warns(UserWarning, match=r"dims \[0\] have q01 == q99"):
        load_dataset_statistics(_stats_file(tmp_path, -1.0))


# ------------------------------------------------------------------------------------ normalization
def test_normalization_refuses_non_finite_statistics_and_values():
    good = {"q01": [-1.0] * 7, "q99": [1.0] * 7, "min": [-1.0] * 7, "max": [1.0] * 7}
    with pytest.raises(ValueError, match="'q99'.*NaN/inf"):
        unnormalize(np.zeros(7), {**good, "q99": [float("nan")] * 7})
    with pytest.raises(ValueError, match="normalize input holds NaN/inf"):
        normalize(np.full(7, np.inf), good)
    with pytest.raises(ValueError, match="unnormalize input holds NaN/inf"):
        unnormalize(np.full(7, np.nan), good)
    assert np.array_equal(unnormalize(normalize(np.zeros(7), good), good), np.zeros(7, np.float32))


# ----------------------------------------------------------------------------------- policy in/out
def test_predict_action_refuses_nan_pixels_and_non_finite_actions(tiny_base_dir):
    from stamo_vla.vla import OpenVLAForActionPrediction, OpenVLAProcessor

    model = OpenVLAForActionPrediction.from_pretrained(tiny_base_dir).eval()
    processor = OpenVLAProcessor.from_pretrained(tiny_base_dir)
    key = next(iter(model.norm_stats))
    batch = processor(
        "In: What action should the robot take to push?\nOut:", np.zeros((224, 224, 3), np.uint8)
    )
    pixels = batch["pixel_values"].clone()
    pixels[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="pixel_values contain NaN"):
        model.predict_action(pixels, batch["input_ids"], batch["attention_mask"], unnorm_key=key)
    stats = model.norm_stats[key]["action"]
    stats["q99"] = [float("inf")] * len(stats["q99"])
    with pytest.raises(ValueError, match="NaN/inf"):
        model.predict_action(
            batch["pixel_values"], batch["input_ids"], batch["attention_mask"], unnorm_key=key
        )


# ---------------------------------------------------------------------------------------- simulator
class _Pool:
    """One-slot env stand-in that records every action it is sent."""

    num_workers = 1

    def __init__(self):
        self.sent = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def reset(self, specs):
        return {slot: self._obs() for slot in specs}

    @staticmethod
    def _obs():
        return {
            "agentview_image": np.full((256, 256, 3), 90, np.uint8),
            "robot0_eye_in_hand_image": np.zeros((256, 256, 3), np.uint8),
            "robot0_eef_pos": np.zeros(3),
            "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
            "robot0_gripper_qpos": np.array([0.04, -0.04]),
        }

    def step(self, actions):
        self.sent += [np.asarray(a) for a in actions.values()]
        return {slot: (self._obs(), 0.0, False, {}) for slot in actions}


class _NaNPolicy(Policy):
    action_chunk = 1

    def predict_batch(self, images, instructions, **obs):
        out = np.zeros((len(images), 1, 7))
        out[:, :, 0] = np.nan
        return out


def test_a_non_finite_action_never_reaches_the_simulator_and_is_counted_as_an_error(tmp_path):
    from stamo_vla.evaluation import CheckpointPolicyConfig, EvalConfig
    from stamo_vla.libero.evaluation import evaluate
    from stamo_vla.libero.results import ResultsStore

    cfg = EvalConfig(
        policy=CheckpointPolicyConfig(checkpoint=str(tmp_path)),
        suites=["libero_spatial"],
        num_trials_per_task=2,
        max_steps=5,
        num_steps_wait=2,
        video="none",
        num_workers=1,
        center_crop=False,
        progress=False,
        output_dir=str(tmp_path / "eval"),
    )
    catalog = types.SimpleNamespace(task_count=lambda suite: 1, task_instruction=lambda suite, t: "push it")
    pool = _Pool()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = evaluate(cfg, pool_factory=lambda n: pool, policy=_NaNPolicy(), catalog=catalog)
    assert all(np.all(np.isfinite(a)) for a in pool.sent)  # only the wait steps' dummy actions were sent
    records = ResultsStore(cfg.output_dir).load()
    assert len(records) == 2 and all("non-finite action" in r.error for r in records)
    overall = summary["overall"]
    assert overall["errors"] == 2 and overall["episodes"] == 0 and overall["successes"] == 0
