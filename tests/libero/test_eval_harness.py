"""The evaluation harness on a fake env pool: protocol, batching, determinism, resume, crashes, videos.

The fake pool has the EnvWorkerPool interface; each episode's only state is a position x that the
policy's first action dim pushes forward, and ``done`` fires once x >= 0.3. The fake policy reads its
speed from the image brightness, which the fake env sets per (task, init state), so outcomes differ per
episode but are fully deterministic.
"""

import dataclasses
import json
import types

import numpy as np
import pytest
import yaml

from stamo_vla.evaluation import CheckpointPolicyConfig, EvalConfig
from stamo_vla.libero.env import DUMMY_ACTION
from stamo_vla.libero.evaluation import evaluate, plan_episodes, shard
from stamo_vla.libero.evaluation_policies import PolicyConfig, ScriptedPolicyConfig
from stamo_vla.libero.results import ResultsStore
from stamo_vla.libero.workers import WorkerCrashed
from stamo_vla.policy import Policy

SUITE = "libero_spatial"
GOAL = 0.3


def brightness(task_id, init_index):
    return 40 + 20 * ((task_id + 2 * init_index) % 4)


def speed_from_image(img):
    # 40 -> 0.0 (never succeeds), 60 -> 0.02 (15 steps), 80 -> 0.04 (8 steps), 100 -> 0.06 (5 steps)
    return 0.02 * round((float(img.mean()) - 40) / 20)


class FakePool:
    """EnvWorkerPool stand-in; `kill_at_step` raises like a SIGKILL, `crash` = (step call, slot)."""

    def __init__(self, num_workers, kill_at_step=None, crash=None):
        self.num_workers = num_workers
        self.kill_at_step, self.crash = kill_at_step, crash
        self.specs, self.x, self.t = {}, {}, {}
        self.step_calls, self.received, self.batch_sizes = 0, [], []
        self.rendered = 0  # steps that returned camera frames

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _obs(self, slot):
        spec = self.specs[slot]
        img = np.full((256, 256, 3), brightness(spec.task_id, spec.init_index), dtype=np.uint8)
        return {
            "agentview_image": img,
            "robot0_eye_in_hand_image": 255 - img,  # distinct from the agentview frame
            "robot0_eef_pos": np.array([self.x[slot], 0.0, 1.0]),
            "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
            "robot0_gripper_qpos": np.array([0.04, -0.04]),
        }

    def reset(self, specs):
        for slot, spec in specs.items():
            self.specs[slot], self.x[slot], self.t[slot] = spec, 0.0, 0
        return {slot: self._obs(slot) for slot in specs}

    def step(self, actions, render=None):
        self.step_calls += 1
        if self.kill_at_step == self.step_calls:
            raise KeyboardInterrupt("simulated kill")
        self.batch_sizes.append(len(actions))
        out = {}
        for slot, action in actions.items():
            action = np.asarray(action)
            self.received.append((self.specs[slot], self.t[slot], action.copy()))
            self.x[slot] += float(action[0])
            self.t[slot] += 1
            obs = self._obs(slot)
            if render is not None and not render.get(slot, True):  # as EnvWorkerPool: no camera entries
                obs = {k: v for k, v in obs.items() if not k.endswith("_image")}
            else:
                self.rendered += 1
            out[slot] = (obs, 0.0, self.x[slot] >= GOAL, {})
        if self.crash is not None and self.crash[0] == self.step_calls:
            slot = self.crash[1]
            spec = self.specs[slot]
            del out[slot]
            raise WorkerCrashed(slot, spec, -11, completed=out)
        return out

    def scripted_actions(self, slots):
        # privileged "controller": knows the episode; its gripper command is fractional (pre-shaping)
        return {s: np.array([0.05, 0, 0, 0, 0, 0, 0.5]) for s in slots}


class FakePolicy(Policy):
    """Deterministic VLA stand-in in dataset convention (gripper 1 = open)."""

    def __init__(self, chunk=1):
        self.action_chunk = chunk
        self.calls = 0
        self.rows = 0  # queries, one per episode in each batched call

    def predict_batch(self, images, instructions, **obs):
        self.calls += 1
        self.rows += len(images)
        assert all(img.shape == (224, 224, 3) and img.dtype == np.uint8 for img in images)
        assert obs["proprio"].shape == (len(images), 8)
        out = np.zeros((len(images), self.action_chunk, 7))
        out[:, :, 0] = [[speed_from_image(img)] for img in images]
        out[:, :, 6] = 1.0
        return out


CATALOG = types.SimpleNamespace(
    task_count=lambda suite: 3, task_instruction=lambda suite, t: f"put object {t} away"
)


def _cfg(tmp_path, name="run", **kw):
    base = dict(
        policy=CheckpointPolicyConfig(checkpoint=str(tmp_path)),
        suites=[SUITE],
        num_trials_per_task=4,
        max_steps=12,
        num_steps_wait=3,
        video="none",
        num_workers=2,
        center_crop=False,  # the crop costs ~10 ms a frame here; the protocol test keeps it on
        progress=False,
        output_dir=str(tmp_path / name),
    )
    base.update(kw)
    return EvalConfig(**base)


def _run(cfg, pool=None, policy=None):
    pool = pool or FakePool(cfg.num_workers)
    summary = evaluate(cfg, pool_factory=lambda n: pool, policy=policy or FakePolicy(), catalog=CATALOG)
    return summary, pool


def _outcomes(output_dir):
    return sorted((r.key, r.success, r.steps, r.error) for r in ResultsStore(output_dir).load())


def _strip_times(summary):
    return {k: v for k, v in summary.items() if k != "episode_wall_time_s"}


def _expected_outcome(task_id, init_index, max_steps=12):
    speed = 0.02 * round((brightness(task_id, init_index) - 40) / 20)
    needed = int(np.ceil(GOAL / speed - 1e-9)) if speed > 0 else None
    if needed is not None and needed <= max_steps:
        return True, needed
    return False, max_steps


def test_protocol_outcomes_and_summary(tmp_path):
    summary, pool = _run(_cfg(tmp_path, center_crop=True))
    expected = sorted(((SUITE, t, i), *_expected_outcome(t, i), None) for t in range(3) for i in range(4))
    assert _outcomes(tmp_path / "run") == expected
    assert summary["overall"]["episodes"] == 12
    assert summary["overall"]["successes"] == sum(e[1] for e in expected)
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    # wait steps send the dummy action; policy steps arrive binarized and sign-flipped (1 = open -> -1)
    for _spec, t, action in pool.received:
        if t < 3:
            np.testing.assert_array_equal(action, DUMMY_ACTION)
        else:
            assert action[6] == -1.0
    # episodes were batched across both workers
    assert max(pool.batch_sizes) == 2
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "max_steps: 12" in saved
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert {"torch", "transformers", "peft", "timm", "mujoco", "stamo-vla"} <= set(env["packages"])


def test_same_outcomes_for_any_worker_count(tmp_path):
    outcomes = []
    for i, workers in enumerate([1, 2, 3]):
        _run(_cfg(tmp_path, name=f"w{i}", num_workers=workers))
        outcomes.append(_outcomes(tmp_path / f"w{i}"))
    assert all(o == outcomes[0] for o in outcomes)


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    reference, _ = _run(_cfg(tmp_path, name="reference"))
    cfg = _cfg(tmp_path, name="killed")
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, pool=FakePool(2, kill_at_step=40))
    store = ResultsStore(cfg.output_dir, rank=0)
    done_before = store.completed()
    assert 0 < len(done_before) < 12
    with open(store.path, "a") as f:  # a record torn by the kill
        f.write('{"suite": "libero_spatial", "task_id": 2, "in')
    policy = FakePolicy()
    resumed, pool = _run(cfg, policy=policy)
    assert _strip_times(resumed) == _strip_times(reference)
    assert _outcomes(cfg.output_dir) == _outcomes(tmp_path / "reference")
    # nothing was run twice: the resumed run only reset the missing episodes, every line is one episode
    started = {(s.suite, s.task_id, s.init_index) for s, _, _ in pool.received}
    assert started.isdisjoint(done_before) and len(started) == 12 - len(done_before)
    lines = store.path.read_text().splitlines()
    assert len(lines) == 12 and all(json.loads(line) for line in lines)


def test_ranks_shard_and_merge(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, name="dist")
    planned = plan_episodes(cfg.suites, None, cfg.num_trials_per_task, CATALOG)
    parts = [shard(planned, r, 3) for r in range(3)]
    assert sorted(e.key for p in parts for e in p) == sorted(e.key for e in planned)
    assert [len(p) for p in parts] == [4, 4, 4]
    monkeypatch.setattr("stamo_vla.libero.evaluation._barrier", lambda world: None)
    for rank in (2, 1, 0):  # rank 0 last: it merges every rank's file
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "3")
        summary, _ = _run(cfg)
        assert (summary is None) == (rank != 0)
    assert sorted(p.name for p in (tmp_path / "dist" / "results").iterdir()) == [
        f"rank{r}.jsonl" for r in range(3)
    ]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    reference, _ = _run(_cfg(tmp_path, name="single"))
    assert _strip_times(summary) == _strip_times(reference)


def test_worker_crash_fails_only_that_episode(tmp_path):
    cfg = _cfg(tmp_path, name="crash")
    _run(cfg, pool=FakePool(2, crash=(6, 1)))
    crashed = [o for o in _outcomes(cfg.output_dir) if o[3] is not None]
    assert len(crashed) == 1 and crashed[0][1] is False and "WorkerCrashed" in crashed[0][3]
    _run(_cfg(tmp_path, name="clean"))
    clean = {o[0]: o for o in _outcomes(tmp_path / "clean")}
    assert all(clean[o[0]] == o for o in _outcomes(cfg.output_dir) if o[3] is None)


def test_chunked_policy_open_loop_steps(tmp_path):
    policy = FakePolicy(chunk=4)
    _run(_cfg(tmp_path, name="chunk", open_loop_steps=2, num_workers=1), policy=policy)
    outcomes = _outcomes(tmp_path / "chunk")
    # one call per 2 executed actions; the outcome does not change because the chunk repeats one action
    assert policy.calls == sum((steps + 1) // 2 for _, _, steps, _ in outcomes)
    _run(_cfg(tmp_path, name="chunk_all", num_workers=1), policy=(full := FakePolicy(chunk=4)))
    assert full.calls == sum((steps + 3) // 4 for _, _, steps, _ in outcomes)
    assert _outcomes(tmp_path / "chunk_all") == outcomes


def test_rendering_only_what_the_policy_reads_changes_no_outcome(tmp_path):
    import imageio.v2 as imageio

    from stamo_vla.libero.videos import read_video

    runs = {}
    for render in ("all", "policy"):
        cfg = _cfg(tmp_path, name=render, render=render, video="failures", open_loop_steps=3)
        pool, policy = FakePool(2), WristPolicy(chunk=4)
        _run(cfg, pool=pool, policy=policy)
        runs[render] = (_outcomes(cfg.output_dir), pool, policy, ResultsStore(cfg.output_dir).load())
    (outcomes, pool, policy, _), (lean_outcomes, lean_pool, lean_policy, lean_records) = runs.values()
    assert lean_outcomes == outcomes and lean_policy.rows == policy.rows
    assert pool.rendered == sum(pool.batch_sizes) > 0  # upstream: every env step renders
    # the wait is 3 steps, so every query reads the observation of a step: exactly those steps rendered
    assert lean_pool.rendered == lean_policy.rows < pool.rendered / 2
    failed = [r for r in lean_records if not r.success]
    assert failed
    for r in failed:  # one frame per policy query (3 steps each), played at 30 // 3 fps
        video = tmp_path / "policy" / r.video
        assert read_video(video).shape[0] == -(-r.steps // 3)
        with imageio.get_reader(video, format="ffmpeg") as reader:
            assert reader.get_meta_data()["fps"] == 10


def test_scripted_oracle_actions_reach_env_unchanged(tmp_path):
    cfg = _cfg(tmp_path, name="oracle", policy=ScriptedPolicyConfig(), num_trials_per_task=1)
    pool = FakePool(2)
    summary = evaluate(cfg, pool_factory=lambda n: pool, catalog=CATALOG)
    assert summary["overall"]["successes"] == 3  # 0.05 per step reaches 0.3 in 6 steps
    policy_actions = [a for _, t, a in pool.received if t >= 3]
    assert policy_actions and all(a[6] == 0.5 for a in policy_actions)  # not binarized, not flipped


def test_resume_refuses_a_different_protocol(tmp_path):
    _run(_cfg(tmp_path, name="r", num_trials_per_task=1))
    with pytest.raises(ValueError, match="max_steps: recorded 12 vs now 20"):
        _run(_cfg(tmp_path, name="r", num_trials_per_task=1, max_steps=20))
    with pytest.raises(ValueError, match="resume=False"):
        _run(_cfg(tmp_path, name="r", num_trials_per_task=1, resume=False))
    # more trials with the same protocol extends the run
    summary, _ = _run(_cfg(tmp_path, name="r", num_trials_per_task=2, num_workers=1))
    assert summary["overall"]["episodes"] == 6


def _flat_layout(config_yaml):
    """Rewrite a saved config.yaml as evaluations wrote it before the policy was a registered choice."""
    data = yaml.safe_load(config_yaml.read_text())
    policy = data.pop("policy")
    kind = policy.pop("type")
    flat = {"policy": "scripted" if kind == "scripted" else "openvla", "checkpoint": "", "adapter_dir": None}
    flat |= {"unnorm_key": None, "dtype": "auto", "quantization": "none", "attn_implementation": "sdpa"}
    flat |= {"device": "auto", "future_video_stamo": None, "future_video_sample_steps": 4}
    config_yaml.write_text(yaml.safe_dump({**flat, **policy, **data}, sort_keys=False))


def test_a_results_directory_of_the_flat_layout_resumes(tmp_path):
    cfg = _cfg(tmp_path, name="flat")
    reference, _ = _run(cfg)
    _flat_layout(tmp_path / "flat" / "config.yaml")
    store = ResultsStore(cfg.output_dir, rank=0)
    lines = store.path.read_text().splitlines()
    store.path.write_text("\n".join(lines[:-3]) + "\n")  # three episodes left to run
    resumed, pool = _run(_cfg(tmp_path, name="flat"), policy=(policy := FakePolicy()))
    assert _strip_times(resumed) == _strip_times(reference)
    assert len({(s.suite, s.task_id, s.init_index) for s, _, _ in pool.received}) == 3 and policy.calls
    _flat_layout(tmp_path / "flat" / "config.yaml")
    other = _cfg(tmp_path, name="flat", policy=CheckpointPolicyConfig(checkpoint=str(tmp_path / "other")))
    with pytest.raises(ValueError, match=f"checkpoint: recorded '{tmp_path}' vs now '{tmp_path / 'other'}'"):
        _run(other)
    with pytest.raises(ValueError, match="policy: recorded 'openvla' vs now 'scripted'"):
        _run(_cfg(tmp_path, name="flat", policy=ScriptedPolicyConfig()))


BUILT = []


@PolicyConfig.register_subclass("test_fake")
@dataclasses.dataclass
class FakePolicyConfig(PolicyConfig):
    """A policy kind of the tests: the harness builds it from the config alone."""

    # actions per call of the fake policy
    chunk: int = 1

    def build(self, cfg, device_index=0, pool=None):
        BUILT.append((self.chunk, device_index, pool))
        return FakePolicy(chunk=self.chunk)


def test_the_harness_builds_the_registered_kind_once_and_not_on_a_finished_run(tmp_path):
    BUILT.clear()
    cfg = _cfg(tmp_path, name="kind", policy=FakePolicyConfig(chunk=2), num_trials_per_task=1)
    first = evaluate(cfg, pool_factory=lambda n: FakePool(n), catalog=CATALOG)
    assert BUILT == [(2, 0, None)] and first["overall"]["episodes"] == 3
    saved = yaml.safe_load((tmp_path / "kind" / "config.yaml").read_text())
    assert saved["policy"] == {"type": "test_fake", "chunk": 2}
    again = evaluate(cfg, pool_factory=lambda n: FakePool(n), catalog=CATALOG)
    assert BUILT == [(2, 0, None)] and _strip_times(again) == _strip_times(first)  # nothing left: not built


class FuturePolicy(FakePolicy):
    """Exposes the optional `future_frames` hook (a decoded predicted future state per row)."""

    predicts_future_frames = True

    def future_frames(self):
        return [np.full((64, 64, 3), 0.5, dtype=np.float32)] * self._last

    def predict_batch(self, images, instructions, **obs):
        self._last = len(images)
        return super().predict_batch(images, instructions, **obs)


def test_videos_failures_only_and_with_future_frames(tmp_path):
    from stamo_vla.libero.videos import read_video

    cfg = _cfg(tmp_path, name="vid", task_ids=[0], video="failures")
    _run(cfg)
    records = ResultsStore(cfg.output_dir).load()
    failed = [r for r in records if not r.success]
    assert len(failed) == 2 and all(r.video is None for r in records if r.success)
    for r in failed:
        frames = read_video(tmp_path / "vid" / r.video)
        assert frames.shape == (r.steps, 224, 224, 3)  # one preprocessed frame per policy step
        assert abs(float(frames.mean()) - 40) < 3  # the (flipped, resized) camera frame of that episode
    assert sorted(p.name for p in (tmp_path / "vid" / "videos").iterdir()) == [SUITE]  # no temporaries left

    cfg = _cfg(tmp_path, name="vid_all", task_ids=[0], video="all", num_trials_per_task=2)
    _run(cfg, policy=FuturePolicy())
    records = ResultsStore(cfg.output_dir).load()
    assert len(records) == 2 and all(r.video and f"success={r.success}" in r.video for r in records)
    frames = read_video(tmp_path / "vid_all" / records[0].video)
    assert frames.shape[1:] == (224, 448, 3)
    assert abs(float(frames[:, :, 224:].mean()) - 128) < 3  # the decoded future frame on the right


class WristPolicy(FakePolicy):
    """A two-camera policy: asks for the wrist frame too."""

    uses_wrist_image = True

    def predict_batch(self, images, instructions, **obs):
        wrist = obs["wrist_images"]
        assert len(wrist) == len(images)
        for img, w in zip(images, wrist):
            assert w.shape == (224, 224, 3) and w.dtype == np.uint8
            assert (
                abs(float(w.mean()) - (255 - float(img.mean()))) < 2
            )  # the wrist camera, same preprocessing
        self.wrist_calls = getattr(self, "wrist_calls", 0) + 1
        return super().predict_batch(images, instructions, **obs)


def test_wrist_images_reach_two_camera_policies(tmp_path):
    policy = WristPolicy()
    _run(_cfg(tmp_path, name="wrist", num_trials_per_task=1), policy=policy)
    assert policy.wrist_calls == policy.calls > 0
    assert _outcomes(tmp_path / "wrist") == _outcomes_single_trial(tmp_path)


class SmallImagePolicy(FakePolicy):
    """A 112 px policy (the study's small preset): the harness makes its frames at its own input size."""

    image_size = (112, 112)
    uses_wrist_image = True

    def predict_batch(self, images, instructions, wrist_images=None, **obs):
        self.calls += 1
        self.shapes = {img.shape for img in images} | {img.shape for img in wrist_images}
        return super().predict_batch(
            [np.full((224, 224, 3), img.mean(), np.uint8) for img in images], instructions, **obs
        )


def test_frames_are_made_at_the_policys_input_size(tmp_path):
    from stamo_vla.libero.evaluation_loop import _policy_frames
    from stamo_vla.libero.protocol import center_crop, flip_image, resize_like_rlds

    policy = SmallImagePolicy()
    _run(_cfg(tmp_path, name="small", num_trials_per_task=1), policy=policy)
    assert policy.calls > 0 and policy.shapes == {(112, 112, 3)}
    raw = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    frame, image = _policy_frames(raw, center_crop=True, size=(112, 112))
    assert np.array_equal(frame, resize_like_rlds(flip_image(raw), 224))  # the video keeps upstream's 224 px
    assert np.array_equal(image, center_crop(resize_like_rlds(flip_image(raw), 112)))
    assert np.array_equal(_policy_frames(raw, False)[1], frame)  # 224 px policies: exactly upstream's frame
    policy.image_size = (112, 96)
    with pytest.raises(ValueError, match=r"SmallImagePolicy.image_size=\(112, 96\) must be square"):
        _run(_cfg(tmp_path, name="oblong", num_trials_per_task=1), policy=policy)


def _outcomes_single_trial(tmp_path):
    _run(_cfg(tmp_path, name="plain", num_trials_per_task=1))
    return _outcomes(tmp_path / "plain")


def test_summarize_run_rebuilds_the_merge_from_disk(tmp_path):
    from stamo_vla.libero.evaluation import summarize_run

    cfg = _cfg(tmp_path, name="s")
    summary, _ = _run(cfg)
    (tmp_path / "s" / "summary.json").unlink()
    assert summarize_run(cfg.output_dir, catalog=CATALOG) == summary
    assert json.loads((tmp_path / "s" / "summary.json").read_text()) == summary


class SuiteAwarePolicy(FakePolicy):
    def __init__(self):
        super().__init__()
        self.suites = []

    def set_suite(self, suite):
        self.suites.append(suite)
        return f"{suite}_no_noops"


def test_perturbed_suites_run_on_their_base_suites_budget_and_statistics(tmp_path):
    pytest.importorskip("libero")  # the LIBERO-PRO suite names come from the installed benchmark
    checked = []
    catalog = types.SimpleNamespace(
        task_count=lambda suite: 3,
        task_instruction=lambda suite, t: f"{suite} task {t}",
        base_task_id=lambda suite, t: 2 - t if suite.endswith("_with_milk") else t,
        check_task_ready=lambda suite, t, n: checked.append((suite, t, n)),
    )
    cfg = _cfg(
        tmp_path,
        suites=["libero_spatial_swap", "libero_spatial_with_milk"],
        task_ids=[0, 1],
    )
    cfg.max_steps = None  # each suite's own budget: the 220 steps of libero_spatial
    policy = SuiteAwarePolicy()
    summary = evaluate(cfg, pool_factory=lambda n: FakePool(n), policy=policy, catalog=catalog)
    assert policy.suites == [
        "libero_spatial",
        "libero_spatial",
    ]  # un-normalized with the base suite's statistics
    assert checked == [(s, t, 4) for s in cfg.suites for t in (0, 1)]
    lines = [json.loads(x) for x in (tmp_path / "run" / "results" / "rank0.jsonl").read_text().splitlines()]
    assert len(lines) == 16
    for rec in lines:
        family = "swap" if rec["suite"] == "libero_spatial_swap" else "distractor"
        assert (rec["base_suite"], rec["family"]) == ("libero_spatial", family)
        assert rec["base_task_id"] == (rec["task_id"] if family == "swap" else 2 - rec["task_id"])
        assert rec["instruction"] == f"{rec['suite']} task {rec['task_id']}"
    # task 0 init 0 never succeeds (speed 0): it runs the full 220-step budget of libero_spatial
    assert max(r["steps"] for r in lines) == 220
    assert set(summary["families"]) == {"swap", "distractor"}
    assert summary["suites"]["libero_spatial_with_milk"]["tasks"]["1"]["base_task_id"] == 1
