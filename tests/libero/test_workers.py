"""EnvWorkerPool with a fake env backend (this module): spawn, TF-free workers, parallel steps, crashes."""

import contextlib
import os
import signal
import sys
import time

import numpy as np
import pytest

from stamo_vla.libero.workers import EnvWorkerPool, EpisodeSpec, WorkerCrashed, WorkerError

FAKE = "test_workers"  # this module, imported by the spawned workers as the env backend
STEP_SLEEP_S = 0.4


class FakeEnv:
    """Copies the attribute paths the worker uses: reset, set_init_state, step, close."""

    built = 0  # envs built in this process: ids that are never reused (unlike id())

    def __init__(self, suite, task_id):
        FakeEnv.built += 1
        self.serial = FakeEnv.built
        self.task = (suite, task_id)
        self.state = None
        self.t = 0
        self.rendering = True  # cameras_off() below turns it off for one step

    def reset(self):
        self.t = 0

    def set_init_state(self, state):
        self.state = np.asarray(state)
        return self._obs()

    def step(self, action):
        start = time.time()
        time.sleep(STEP_SLEEP_S)
        self.t += 1
        obs = self._obs()
        obs["window"] = np.array([start, time.time()])
        obs["action"] = np.asarray(action)
        return obs, 0.0, False, {"t": self.t}

    def close(self):
        pass

    def _obs(self):
        import multiprocessing

        return {
            "state": self.state,
            "pid": os.getpid(),
            "env_id": self.serial,
            "tf_loaded": "tensorflow" in sys.modules,
            "start_method": multiprocessing.get_start_method(allow_none=True),
            "agentview_image": np.full((2, 2, 3), 255 if self.rendering else 0, np.uint8),
        }


def make_env(suite, task_id, resolution=256, camera_obs=True):
    if suite == "libero_goal":  # lets a test plant a tensorflow import inside a worker
        import types

        sys.modules["tensorflow"] = types.ModuleType("tensorflow")
    return FakeEnv(suite, task_id)


@contextlib.contextmanager
def cameras_off(env):
    env.rendering = False
    try:
        yield
    finally:
        env.rendering = True


def init_states(suite, task_id):
    return np.arange(3 * 4, dtype=np.float64).reshape(3, 4) + 100 * task_id


@pytest.fixture
def pool():
    with EnvWorkerPool(2, env_module=FAKE, timeout_s=60) as p:
        yield p


def test_reset_returns_init_state_and_reuses_env_per_task(pool):
    obs = pool.reset({0: EpisodeSpec("libero_spatial", 1, 2), 1: EpisodeSpec("libero_spatial", 0, 0)})
    np.testing.assert_array_equal(obs[0]["state"], init_states("libero_spatial", 1)[2])
    np.testing.assert_array_equal(obs[1]["state"], init_states("libero_spatial", 0)[0])
    assert obs[0]["pid"] == pool.pid(0) and obs[1]["pid"] == pool.pid(1) and pool.pid(0) != pool.pid(1)
    again = pool.reset({0: EpisodeSpec("libero_spatial", 1, 0)})
    assert again[0]["env_id"] == obs[0]["env_id"]  # same task: env kept
    other = pool.reset({0: EpisodeSpec("libero_spatial", 2, 0)})
    assert other[0]["env_id"] != obs[0]["env_id"]  # task changed: env rebuilt
    assert pool.spec(0) == EpisodeSpec("libero_spatial", 2, 0)


@pytest.mark.slow
def test_workers_are_spawned_and_tensorflow_free_even_when_parent_has_tensorflow(pool):
    pytest.importorskip("tensorflow")
    import tensorflow  # noqa: F401  the parent has TF; the workers must not

    obs = pool.reset({0: EpisodeSpec("libero_spatial", 0, 0), 1: EpisodeSpec("libero_spatial", 0, 1)})
    for o in obs.values():
        assert o["start_method"] == "spawn"
        assert o["tf_loaded"] is False


def test_worker_refuses_to_run_with_tensorflow_imported(pool):
    with pytest.raises(WorkerError, match="tensorflow was imported"):
        pool.reset({0: EpisodeSpec("libero_goal", 0, 0)})


def test_steps_run_in_parallel_and_return_per_slot_results(pool):
    pool.reset({0: EpisodeSpec("libero_spatial", 0, 0), 1: EpisodeSpec("libero_spatial", 0, 1)})
    actions = {0: np.full(7, 0.5), 1: np.full(7, -0.25)}
    out = pool.step(actions)
    (o0, r0, d0, i0), (o1, *_) = out[0], out[1]
    np.testing.assert_array_equal(o0["action"], actions[0])
    np.testing.assert_array_equal(o1["action"], actions[1])
    assert (r0, d0, i0) == (0.0, False, {"t": 1})
    # both steps were in flight at the same time: each started before the other ended
    assert o0["window"][0] < o1["window"][1] and o1["window"][0] < o0["window"][1]


def test_a_step_can_skip_rendering_and_returns_no_blank_frames(pool):
    pool.reset({0: EpisodeSpec("libero_spatial", 0, 0), 1: EpisodeSpec("libero_spatial", 0, 1)})
    out = pool.step({0: np.zeros(7), 1: np.zeros(7)}, render={0: False})
    assert "agentview_image" not in out[0][0] and out[0][3] == {"t": 1}  # the step itself happened
    assert out[1][0]["agentview_image"].min() == 255  # slots not named render
    out = pool.step({0: np.zeros(7)})
    assert out[0][0]["agentview_image"].min() == 255  # rendering is back on the next step
    with pytest.raises(ValueError, match=r"render names slots \[1\] that take no step"):
        pool.step({0: np.zeros(7)}, render={1: False})


def test_killed_worker_raises_worker_crashed_and_is_replaced(pool):
    spec = EpisodeSpec("libero_spatial", 0, 1, noise_seed=3)
    pool.reset({0: EpisodeSpec("libero_spatial", 0, 0), 1: spec})
    old_pid = pool.pid(1)
    os.kill(old_pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed) as info:
        pool.step({0: np.zeros(7), 1: np.zeros(7)})
    err = info.value
    assert (err.slot, err.spec, err.exitcode) == (1, spec, -signal.SIGKILL)
    assert "SIGKILL" in str(err) and "slot 1" in str(err)
    assert 0 in err.completed  # the healthy slot's step is not lost
    assert pool.pid(1) != old_pid and pool.spec(1) is None
    obs = pool.reset({1: spec})  # the replacement works
    np.testing.assert_array_equal(obs[1]["state"], init_states("libero_spatial", 0)[1])


def test_bad_inputs_raise_value_errors(pool):
    with pytest.raises(ValueError, match=r"init_index=5 is out of range.*0\.\.2"):
        pool.reset({0: EpisodeSpec("libero_spatial", 0, 5)})
    with pytest.raises(ValueError, match=r"valid slots: 0\.\.1"):
        pool.reset({2: EpisodeSpec("libero_spatial", 0, 0)})
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        pool.step({0: np.zeros(6)})
    with pytest.raises(RuntimeError, match="scripted=True"):
        pool.scripted_actions([0])
    with pytest.raises(
        ValueError, match="EpisodeSpec.suite: suite='libero_nope' perturbs none of the base suites"
    ):
        EpisodeSpec("libero_nope", 0, 0)
    with pytest.raises(ValueError, match="non-negative"):
        EpisodeSpec("libero_spatial", -1, 0)
    with pytest.raises(ValueError, match="num_workers"):
        EnvWorkerPool(0)


@pytest.mark.sim
@pytest.mark.slow
def test_real_libero_worker_returns_raw_observations_and_scripted_actions():
    pytest.importorskip("libero")
    from stamo_vla.libero.env import DUMMY_ACTION

    spec = EpisodeSpec("libero_spatial", 0, 0, noise_seed=1)
    with EnvWorkerPool(1, scripted=True, camera_obs=False, timeout_s=300) as real:
        obs = real.reset({0: spec})[0]
        assert obs["robot0_eef_pos"].shape == (3,) and obs["robot0_eef_quat"].shape == (4,)
        assert obs["robot0_gripper_qpos"].shape == (2,) and obs["robot0_joint_pos"].shape == (7,)
        action = real.scripted_actions([0])[0]
        np.testing.assert_array_equal(action, DUMMY_ACTION)  # the controller starts with the wait steps
        out = real.scripted_step([0])[0]
        assert out[4]["phase"] == "settle" and out[3] is False
        with pytest.raises(ValueError, match=r"task_id=10 .*valid task ids: 0\.\.9"):
            real.reset({0: EpisodeSpec("libero_spatial", 10, 0)})


@pytest.mark.sim
@pytest.mark.slow
def test_fresh_placements_are_reproducible_new_and_not_benchmark_states():
    pytest.importorskip("libero")
    from stamo_vla.libero.env import SAME_STATE_TOLERANCE
    from stamo_vla.libero.workers import INIT_DISTANCE_KEY

    def fresh(seed):
        return EpisodeSpec("libero_spatial", 0, 0, placement_seed=seed)

    with EnvWorkerPool(1, camera_obs=False, timeout_s=300) as real:
        fixed = real.reset({0: EpisodeSpec("libero_spatial", 0, 0)})[0]
        assert INIT_DISTANCE_KEY not in fixed  # a benchmark state carries no distance
        a, b, a_again = (real.reset({0: fresh(s)})[0] for s in (11, 12, 11))
    assert a[INIT_DISTANCE_KEY] > SAME_STATE_TOLERANCE and b[INIT_DISTANCE_KEY] > SAME_STATE_TOLERANCE
    for key in ("akita_black_bowl_1_pos", "plate_1_pos", "robot0_joint_pos"):
        np.testing.assert_array_equal(a[key], a_again[key])  # a seed is one placement
        assert np.abs(a[key] - b[key]).max() > 1e-3  # another seed, another placement and arm noise
    # the same distribution as the benchmark's states: objects within centimetres, arm joints within noise
    np.testing.assert_allclose(a["plate_1_pos"], fixed["plate_1_pos"], atol=0.05)
    np.testing.assert_allclose(a["robot0_joint_pos"], fixed["robot0_joint_pos"], atol=0.1)
    with pytest.raises(ValueError, match="placement_seed=-1 must be a non-negative int"):
        EpisodeSpec("libero_spatial", 0, 0, placement_seed=-1)
