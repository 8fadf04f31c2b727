"""Demonstration collection: no-op filter, recorder, scheduler, runner (fake pool), and one real episode."""

import json

import numpy as np
import pytest

from stamo_vla import cli
from stamo_vla.configs import parse_config
from stamo_vla.libero import collect as C
from stamo_vla.libero.env import DUMMY_ACTION, NUM_STEPS_WAIT
from stamo_vla.libero.workers import EpisodeSpec, WorkerCrashed

ARM = [0.1, 0, 0, 0, 0, 0]


@pytest.mark.parametrize(
    ("action", "prev", "noop"),
    [
        (DUMMY_ACTION, None, True),  # first step: norm test only
        ([*ARM, -1], None, False),
        (DUMMY_ACTION, [*ARM, -1], True),  # zero arm, same gripper as the last kept step
        ([0, 0, 0, 0, 0, 0, 1], [*ARM, -1], False),  # zero arm but the gripper changes: kept
        ([5e-5, 0, 0, 0, 0, 0, -1], [*ARM, -1], True),
    ],
)
def test_noop_rule_matches_upstream(action, prev, noop):
    assert C.is_noop(np.array(action, float), None if prev is None else np.array(prev, float)) is noop


def _obs(i):
    img = np.zeros((256, 256, 3), np.uint8)
    img[0, 0] = i  # raw frames are upside down: the top-left pixel ends bottom-right
    return {
        "agentview_image": img,
        "robot0_eye_in_hand_image": img + 1,
        "robot0_eef_pos": np.array([0.1, 0.2, 1.0 + i]),
        "robot0_eef_quat": np.array([1.0, 0, 0, 0]),
        "robot0_gripper_qpos": np.array([0.04, -0.04]),
        "robot0_joint_pos": np.arange(7) + i,
    }


def test_recorder_builds_a_valid_upright_episode_and_action_free_variant():
    from stamo_vla.data.rlds_writer import validate_episode

    rec = C.EpisodeRecorder()
    steps = [
        (_obs(1), DUMMY_ACTION),
        (_obs(2), [*ARM, -1]),
        (_obs(3), DUMMY_ACTION),
        (_obs(4), [0] * 6 + [1]),
    ]
    kept = [rec.add(o, np.array(a, float)) for o, a in steps]
    assert kept == [False, True, False, True]
    ep = rec.episode("pick it", "suite/task/init_00")
    assert validate_episode(ep) == 2
    assert ep["image"][0][-1, -1, 0] == 2 and ep["wrist_image"][1][-1, -1, 0] == 5  # flipped [::-1, ::-1]
    np.testing.assert_allclose(ep["state"][1], [0.1, 0.2, 5.0, np.pi, 0, 0, 0.04, -0.04], atol=1e-6)
    np.testing.assert_array_equal(ep["joint_state"][0], np.arange(7) + 2)
    np.testing.assert_array_equal(ep["action"][:, 6], [-1, 1])
    free = rec.episode("pick it", "suite/task/init_00", action_free=True)
    assert np.isnan(free["action"]).all() and free["action"].shape == (2, 7)


def test_scheduler_uses_more_init_states_when_episodes_fail_and_resumes():
    done = {"0:0": {"success": True}}  # a resumed run: task 0 init 0 already succeeded
    cfg = C.CollectConfig(data_root_dir="x", episodes_per_task=2, init_states="benchmark")
    sched = C._Scheduler(cfg, [0, 1], done=done, num_states={0: 3, 1: 2})
    a = sched(None)
    assert (a.task_id, a.init_index, a.placement_seed) == (0, 1, None)
    b = sched((a.suite, a.task_id))  # task 0 has 1 success + 1 in flight = enough: move on
    assert (b.task_id, b.init_index) == (1, 0)
    sched.finished(sched.attempt(a), a, {"success": False})
    c = sched(("libero_spatial", 0))
    assert (c.task_id, c.init_index) == (0, 2)  # failure: next init state
    sched.finished(sched.attempt(c), c, {"success": False})
    assert sched(("libero_spatial", 0)).task_id == 1  # task 0's 3 states are exhausted
    assert sched(("libero_spatial", 1)) is None and sched.successes(0) == 1


class _FakePool:
    """In-process stand-in for EnvWorkerPool: episode e succeeds after 3 + e policy steps."""

    num_workers = 2

    def __init__(self, crash_slot_at_step=None):
        self.t, self.specs, self.crash = {}, {}, crash_slot_at_step

    def reset(self, specs):
        self.specs.update(specs)
        self.t.update(dict.fromkeys(specs, 0))
        return {s: _obs(0) for s in specs}

    def spec(self, slot):
        return self.specs.get(slot)

    def scripted_step(self, slots):
        out = {}
        for s in slots:
            self.t[s] += 1
            spec = self.specs[s]
            done = self.t[s] >= NUM_STEPS_WAIT + 3 + spec.init_index
            action = np.array(DUMMY_ACTION if self.t[s] <= NUM_STEPS_WAIT else [*ARM, -1], float)
            out[s] = (action, _obs(self.t[s]), float(done), done, {"retries": 0, "gave_up": False})
        if self.crash and any(self.t[s] == self.crash[1] for s in slots if s == self.crash[0]):
            slot = self.crash[0]
            spec = self.specs.pop(slot)
            del out[slot]
            raise WorkerCrashed(slot, spec, -9, completed=out)
        return out


def test_runner_records_kept_steps_only_after_the_wait_and_reports_crashes():
    jobs = iter([EpisodeSpec("libero_spatial", 0, i) for i in range(3)])
    results = list(
        C.run_scripted_episodes(_FakePool(), lambda _: next(jobs, None), max_steps=50, record=True)
    )
    assert sorted(r.spec.init_index for r in results) == [0, 1, 2]
    for r in results:
        assert r.success and r.steps == 3 + r.spec.init_index
        assert len(r.recorder) == r.steps  # wait steps never recorded
    jobs = iter([EpisodeSpec("libero_spatial", 0, i) for i in range(2)])
    pool = _FakePool(crash_slot_at_step=(1, 5))
    results = list(C.run_scripted_episodes(pool, lambda _: next(jobs, None), max_steps=50, record=False))
    crashed = [r for r in results if r.crashed]
    assert len(crashed) == 1 and crashed[0].spec.init_index == 1 and not crashed[0].success
    assert [r.success for r in results if not r.crashed] == [True]


def test_fresh_scheduler_hands_out_distinct_placement_seeds_and_inverts_them():
    cfg = C.CollectConfig(data_root_dir="x", episodes_per_task=2, seed=3)
    assert cfg.init_states == "fresh"  # the default never starts from a benchmark test state
    sched = C._Scheduler(cfg, [0, 1], done={}, num_states={0: 6, 1: 6})
    specs = [sched(None) for _ in range(4)]
    seeds = [s.placement_seed for s in specs]
    assert None not in seeds and len(set(seeds)) == 4
    assert [(s.task_id, sched.attempt(s)) for s in specs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    other = C._Scheduler(C.CollectConfig(data_root_dir="x", seed=4), [0], done={}, num_states={0: 2})
    assert other(None).placement_seed not in seeds  # another collection seed, other placements


def test_disjointness_check_reports_evidence_and_refuses_test_states():
    manifest = {"init_states": "fresh", "episodes": {}}
    manifest["episodes"]["0:0"] = {"file_path": "a", "init_distance": 0.02}
    manifest["episodes"]["0:1"] = {"file_path": "b", "init_distance": 0.05}
    report = C.check_disjoint(manifest)
    assert report["disjoint"] and report["min_distance"] == 0.02 and report["fresh_episodes"] == 2
    manifest["episodes"]["1:0"] = {"file_path": "libero_spatial/t/fresh_000", "init_distance": 0.0}
    with pytest.raises(
        ValueError, match=r"1 collected episodes start from a benchmark init state.*fresh_000"
    ):
        C.check_disjoint(manifest)
    benchmark = {"init_states": "benchmark", "episodes": {"0:0": {"file_path": "a"}}}
    assert C.check_disjoint(benchmark)["disjoint"] is False  # benchmark states are the test set


def test_distance_to_states_ignores_sim_time():
    from stamo_vla.libero.env import distance_to_states

    states = np.array([[0.0, 1.0, 2.0], [5.0, 1.5, 2.0]])
    assert distance_to_states(np.array([9.0, 1.0, 2.0]), states) == 0.0
    assert distance_to_states(np.array([0.0, 1.2, 2.1]), states) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="cannot be compared"):
        distance_to_states(np.zeros(4), states)


def test_collect_config_defaults_and_validation():
    assert C.CollectConfig(data_root_dir="x").dataset_name == "libero_spatial_no_noops"
    with pytest.raises(ValueError, match=r"init_states='test'.*allowed: \['fresh', 'benchmark'\]"):
        C.CollectConfig(data_root_dir="x", init_states="test")
    assert (
        C.CollectConfig(data_root_dir="x", suite="libero_object", action_free=True).dataset_name
        == "libero_object_no_noops_actionfree"
    )
    with pytest.raises(ValueError, match="allowed"):
        C.CollectConfig(data_root_dir="x", suite="spatial")
    with pytest.raises(ValueError, match="workers"):
        C.CollectConfig(data_root_dir="x", num_workers=0)


def test_collect_config_takes_libero_pro_suites_with_their_base_budget():
    pytest.importorskip("libero")
    cfg = C.CollectConfig(data_root_dir="x", suite="libero_spatial_swap")
    assert (cfg.dataset_name, cfg.step_budget) == ("libero_spatial_swap_no_noops", 220)
    assert C.CollectConfig(data_root_dir="x", suite="libero_10_lan").step_budget == 520
    with pytest.raises(
        ValueError, match=r"suite='libero_spatial_swapp' is not valid; .*Did you mean 'libero_spatial_swap'"
    ):
        C.CollectConfig(data_root_dir="x", suite="libero_spatial_swapp")
    with pytest.raises(ValueError, match=r"suite='libero_goal_lang' is not valid"):
        C.ControllerReportConfig(suite="libero_goal_lang")


@pytest.mark.sim
@pytest.mark.slow
def test_collect_one_episode_writes_the_modified_libero_rlds_spec(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    from stamo_vla.libero.env import task_instruction

    cfg = C.CollectConfig(data_root_dir=str(tmp_path), task_ids=[0], episodes_per_task=1, num_workers=1)
    summary = C.collect(cfg)
    assert summary[0] == {"successes": 1, "attempts": 1}
    manifest = json.loads((tmp_path / cfg.dataset_name / C.MANIFEST_NAME).read_text())
    record = manifest["episodes"]["0:0"]
    assert record["success"] and record["kept_steps"] > 20
    # a fresh placement, measurably away from every one of the 50 benchmark states
    assert record["placement_seed"] is not None and record["init_distance"] > 1e-3
    assert record["file_path"].endswith("/fresh_000") and summary["init_states"]["disjoint"]
    resumed = C.CollectConfig(
        data_root_dir=str(tmp_path), task_ids=[0], episodes_per_task=1, num_workers=1, finalize=False
    )
    assert C.collect(resumed)[0] == {"successes": 1, "attempts": 1}  # resumed: nothing re-run

    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(summary["dataset_dir"])
    steps_spec = builder.info.features["steps"]
    obs_spec = steps_spec["observation"]
    for key in ("image", "wrist_image"):
        assert obs_spec[key].shape == (256, 256, 3) and obs_spec[key].encoding_format == "jpeg"
    assert obs_spec["state"].shape == (8,) and obs_spec["joint_state"].shape == (7,)
    assert steps_spec["action"].shape == (7,)
    (episode,) = list(tfds.as_numpy(builder.as_dataset(split="train")))
    steps = list(episode["steps"])
    n = record["kept_steps"]
    assert len(steps) == n
    assert episode["episode_metadata"]["file_path"].decode() == record["file_path"]
    assert [bool(s["is_first"]) for s in steps] == [True] + [False] * (n - 1)
    assert [bool(s["is_last"]) for s in steps] == [False] * (n - 1) + [True]
    assert bool(steps[-1]["is_terminal"])
    assert [float(s["reward"]) for s in steps] == [0.0] * (n - 1) + [1.0]
    assert all(float(s["discount"]) == 1.0 for s in steps)
    assert {s["language_instruction"].decode() for s in steps} == {task_instruction("libero_spatial", 0)}
    actions = np.stack([s["action"] for s in steps])
    assert actions.dtype == np.float32 and np.isfinite(actions).all()
    assert set(np.unique(actions[:, 6])) == {-1.0, 1.0}
    assert not any(C.is_noop(actions[i], actions[i - 1] if i else None) for i in range(n))  # no-ops dropped
    state = np.stack([s["observation"]["state"] for s in steps])
    assert state.dtype == np.float32 and abs(state[0, 3]) > 2.5  # axis-angle x near pi: gripper pointing down
    assert 0 < state[0, 6] <= 0.04 and -0.04 <= state[0, 7] < 0  # finger qpos (+q, -q)
    assert np.stack([s["observation"]["joint_state"] for s in steps]).shape == (n, 7)
    image = steps[0]["observation"]["image"]
    assert image.shape == (256, 256, 3) and image.dtype == np.uint8
    # upright: the table (bright, bottom of the frame) is below the dark background wall (top)
    assert image[-40:].mean() > image[:20].mean()


def test_report_table_and_cli_argument_errors(capsys):
    report = {
        0: {
            "successes": 9,
            "episodes": 10,
            "success_rate": 0.9,
            "mean_steps": 101.0,
            "mean_steps_success": 95.5,
        },
        4: {
            "successes": 0,
            "episodes": 1,
            "success_rate": 0.0,
            "mean_steps": 220.0,
            "mean_steps_success": float("nan"),
        },
    }
    text = C.format_report("libero_spatial", report)
    assert text.splitlines()[2].split() == ["0", "9/10", "0.90", "101.0", "95.5"]
    assert text.splitlines()[-1] == "total 9/11 = 0.82"
    assert parse_config(C.ControllerReportConfig, ["--task_ids", "[0,2, 5]"]).task_ids == [0, 2, 5]
    assert cli.main(["controller-report", "--task_ids", "[a,b]"]) == 2
    assert "task_ids" in capsys.readouterr().err
    with pytest.raises(ValueError, match="episodes=0"):
        C.controller_report("libero_spatial", (0,), episodes=0)
