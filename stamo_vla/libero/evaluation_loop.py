"""The batched rollout loop: many episodes in flight across env workers, one policy call per step.

Per episode it follows the upstream OpenVLA LIBERO protocol (reference: openvla.md §3): reset + fixed
init state, ``num_steps_wait`` dummy actions, then up to ``max_steps`` policy steps on the 180°-flipped,
JPEG-round-tripped 224 px image (optionally center cropped); success is the env's ``done``.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from stamo_vla.libero.env import DUMMY_ACTION
from stamo_vla.libero.protocol import center_crop as crop
from stamo_vla.libero.protocol import flip_image, postprocess_action, proprio_from_obs, resize_like_rlds
from stamo_vla.libero.results import EpisodeRecord
from stamo_vla.libero.videos import VideoRecorder, video_name
from stamo_vla.libero.workers import EpisodeSpec, WorkerCrashed, WorkerError
from stamo_vla.policy import Policy

# the third-person camera's observation: the policy image and the video frames
CAMERA_KEY = "agentview_image"


@dataclasses.dataclass(frozen=True)
class PlannedEpisode:
    """One episode to run: the benchmark key plus its instruction (and the base task it perturbs, if known)."""

    suite: str
    task_id: int
    init_index: int
    instruction: str
    base_task_id: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.suite, self.task_id, self.init_index)


@dataclasses.dataclass
class RolloutSettings:
    """Protocol and output settings of `run_episodes` (built from `EvalConfig`)."""

    max_steps: int  # policy steps per episode (after the wait)
    num_steps_wait: int = 10  # dummy-action steps after reset
    center_crop: bool = True  # 90%-area center crop of the policy image
    open_loop_steps: int | None = None  # execute the first n of K actions per call (None = all K)
    video: str = "none"  # "all" | "failures" | "none"
    # "all": every step renders the cameras (upstream); "policy": only steps whose observation the policy reads
    # (chunked policies: one in K), and videos then hold those frames
    render: str = "all"
    video_dir: Path | None = None  # where videos go
    video_fps: int = 30
    rank: int = 0


@dataclasses.dataclass
class _Live:
    episode: PlannedEpisode
    obs: dict
    start: float
    t: int = 0  # env steps since reset, wait steps included (as upstream's `t`)
    queue: deque = dataclasses.field(default_factory=deque)
    recorder: VideoRecorder | None = None


class EpisodeError(RuntimeError):
    """An env worker failed while no episode result could be recorded (e.g. env creation failed)."""


def _policy_frames(
    raw: np.ndarray, center_crop: bool, size: tuple[int, int] = (224, 224)
) -> tuple[np.ndarray, np.ndarray]:
    """(video frame, policy image): the video shows the 224 px frame before the crop, as upstream. The policy
    image is made at the policy's own input size (``Policy.image_size``) the way its training frames were made
    from the stored 256 px JPEGs: JPEG round trip + lanczos3 resize to that size, then the optional crop."""
    upright = flip_image(raw)
    frame = resize_like_rlds(upright, 224)
    image = frame if size[0] == 224 else resize_like_rlds(upright, size[0])
    return frame, (crop(image) if center_crop else image)


def _query_policy(
    policy: Policy,
    live: dict[int, _Live],
    slots: list[int],
    images: dict,
    settings: RolloutSettings,
    size: tuple[int, int],
):
    extra = {}
    if policy.uses_wrist_image:  # two-image (OFT) policies: wrist frame, same preprocessing
        extra["wrist_images"] = [
            _policy_frames(live[s].obs["robot0_eye_in_hand_image"], settings.center_crop, size)[1]
            for s in slots
        ]
    out = policy.predict_batch(
        [images[s] for s in slots],
        [live[s].episode.instruction for s in slots],
        proprio=np.stack([proprio_from_obs(live[s].obs) for s in slots]).astype(np.float32),
        slots=list(slots),
        **extra,
    )
    actions = np.asarray(out, dtype=np.float64)
    if actions.ndim == 2:  # tolerate (B, 7) from single-step policies
        actions = actions[:, None, :]
    if actions.ndim != 3 or actions.shape[0] != len(slots) or actions.shape[2] != 7:
        raise ValueError(
            f"policy.predict_batch returned shape {tuple(np.shape(out))}; expected ({len(slots)}, K, 7)"
        )
    n = (
        actions.shape[1]
        if settings.open_loop_steps is None
        else min(settings.open_loop_steps, actions.shape[1])
    )
    futures = policy.future_frames()
    for i, s in enumerate(slots):
        live[s].queue.extend(actions[i, :n])
        if futures is not None and live[s].recorder is not None:
            live[s].recorder.set_future(futures[i])


def _finish(
    state: _Live, success: bool, settings: RolloutSettings, error: str | None = None
) -> EpisodeRecord:
    ep = state.episode
    video = None
    if state.recorder is not None:
        keep = settings.video == "all" or (settings.video == "failures" and not success)
        name = video_name(ep.suite, ep.task_id, ep.init_index, success, ep.instruction)
        final = settings.video_dir / ep.suite / name if keep and settings.video_dir is not None else None
        kept = state.recorder.close(final)
        if kept is not None and settings.video_dir is not None:
            video = str(kept.relative_to(settings.video_dir.parent))
    return EpisodeRecord(
        suite=ep.suite,
        task_id=ep.task_id,
        init_index=ep.init_index,
        instruction=ep.instruction,
        success=bool(success),
        steps=max(0, state.t - settings.num_steps_wait),
        wall_time_s=round(time.perf_counter() - state.start, 3),
        rank=settings.rank,
        error=error,
        video=video,
        base_task_id=ep.base_task_id,
    )


def _new_recorder(
    slot: int, settings: RolloutSettings, with_future: bool, frames_per_query: int
) -> VideoRecorder | None:
    if settings.video == "none" or settings.video_dir is None:
        return None
    tmp = settings.video_dir / f".rank{settings.rank}-slot{slot}.tmp.mp4"
    # rendering only what the policy reads leaves one frame per query: slow the video down to real time
    fps = settings.video_fps if settings.render == "all" else max(1, settings.video_fps // frames_per_query)
    return VideoRecorder(tmp, fps=fps, with_future=with_future)


def _error_text(err: BaseException) -> str:
    head = str(err).strip().splitlines()
    return f"{type(err).__name__}: {head[0] if head else ''}"[:500]


def run_episodes(
    pool: Any,
    policy: Policy,
    episodes: Sequence[PlannedEpisode],
    settings: RolloutSettings,
    num_slots: int,
    on_episode_end: Callable[[EpisodeRecord], None] = lambda record: None,
) -> list[EpisodeRecord]:
    """Run `episodes` on the pool's `num_slots` workers, batching the policy across live episodes.

    Free workers pick the next episode in order, so with a fixed episode list the assignment (and, for a
    deterministic policy, every outcome) does not depend on timing. `on_episode_end` runs as soon as an
    episode finishes (the caller appends it to the durable results), so a kill loses at most the
    episodes in flight.

    Worker failures follow upstream, where any exception ends the episode as a failure: the episode of a
    crashed worker (``WorkerCrashed``) or of a worker whose env raised (``WorkerError``) is recorded as a
    failure with its ``error``. Episodes whose step reply was lost with another worker's error restart
    from their init state. A worker that keeps crashing while resetting aborts the run.

    Args:
        pool: ``EnvWorkerPool``-like: ``reset({slot: spec})``, ``step({slot: action})``.
        policy: a `stamo_vla.policy.Policy` (the protocol is documented there).
        episodes: the episodes to run, in order.
        settings: protocol (max steps, wait, crop, open-loop) and video settings.
        num_slots: number of env workers in the pool.
        on_episode_end: callback for each finished episode.

    Returns:
        The records of the finished episodes, in completion order.
    """
    runner = _Runner(pool, policy, episodes, settings, num_slots, on_episode_end)
    while runner.pending or runner.live:
        runner.fill()
        actions = runner.actions()
        if actions is not None:
            runner.step(actions)
    return runner.records


# resets of one episode that may crash its worker before the run is aborted (a crash while building the
# env is nearly always a rendering / driver problem that retrying will not fix)
MAX_RESET_CRASHES = 2


class _Runner:
    """State of `run_episodes`: pending queue, live episodes per slot, finished records."""

    def __init__(self, pool, policy, episodes, settings: RolloutSettings, num_slots: int, on_episode_end):
        self.pool, self.policy, self.settings, self.num_slots = pool, policy, settings, num_slots
        self.on_episode_end = on_episode_end
        self.dummy = np.asarray(DUMMY_ACTION, dtype=np.float64)
        if not isinstance(policy, Policy):
            raise TypeError(
                f"the harness runs a stamo_vla.policy.Policy; got {type(policy).__name__}. Subclass Policy and "
                "implement predict_batch."
            )
        self.image_size = tuple(int(v) for v in policy.image_size)
        if self.image_size[0] != self.image_size[1]:
            raise ValueError(
                f"{type(policy).__name__}.image_size={self.image_size} must be square, as the LIBERO training "
                "frames are"
            )
        self.to_env = (lambda a: a) if policy.actions_in_env_convention else postprocess_action
        self.with_future = policy.predicts_future_frames
        # env steps per policy query (open loop), for the video frame rate when only those steps render
        self.frames_per_query = min(
            int(policy.action_chunk), settings.open_loop_steps or int(policy.action_chunk)
        )
        self.pending: deque[PlannedEpisode] = deque(episodes)
        self.live: dict[int, _Live] = {}
        self.records: list[EpisodeRecord] = []
        self.reset_crashes: dict[tuple, int] = {}

    def finish(self, slot: int, success: bool, error: str | None = None) -> None:
        record = _finish(self.live.pop(slot), success, self.settings, error)
        self.records.append(record)
        self.on_episode_end(record)

    def restart(self, slots: list[int]) -> None:
        """Put live episodes back at the front of the queue (their env state is unknown)."""
        for s in sorted(slots, reverse=True):
            state = self.live.pop(s)
            if state.recorder is not None:
                state.recorder.close(None)
            self.pending.appendleft(state.episode)

    def fill(self) -> None:
        free = [s for s in range(self.num_slots) if s not in self.live][: len(self.pending)]
        if not free:
            return
        chosen = [self.pending.popleft() for _ in free]
        try:
            obs = self.pool.reset(
                {s: EpisodeSpec(e.suite, e.task_id, e.init_index) for s, e in zip(free, chosen)}
            )
        except WorkerCrashed as crash:
            episode = chosen[free.index(crash.slot)]
            self.reset_crashes[episode.key] = self.reset_crashes.get(episode.key, 0) + 1
            if self.reset_crashes[episode.key] > MAX_RESET_CRASHES:
                raise EpisodeError(
                    f"the env worker crashed {self.reset_crashes[episode.key]} times while resetting {episode}: "
                    f"{crash}. A crash while building a LIBERO env usually means the offscreen renderer "
                    "(EGL/OSMesa) or the graphics driver is broken."
                ) from crash
            self.pending.extendleft(reversed(chosen))
            return
        now = time.perf_counter()
        for s, e in zip(free, chosen):
            recorder = _new_recorder(s, self.settings, self.with_future, self.frames_per_query)
            self.live[s] = _Live(episode=e, obs=obs[s], start=now, recorder=recorder)

    def actions(self) -> dict[int, np.ndarray] | None:
        """Env actions for every live slot, querying the policy for slots with an empty action queue."""
        wait = self.settings.num_steps_wait
        actions = {s: self.dummy for s, state in self.live.items() if state.t < wait}
        acting = sorted(s for s, state in self.live.items() if state.t >= wait)
        if not acting:
            return actions
        needs = [s for s in acting if not self.live[s].queue]
        for s in needs:
            if CAMERA_KEY not in self.live[s].obs:
                raise RuntimeError(
                    f"slot {s}: the policy is queried at step {self.live[s].t} but that step was not rendered"
                )
        # preprocess only what is used: the policy's inputs and the video frames of rendered steps
        frames = {
            s: _policy_frames(self.live[s].obs[CAMERA_KEY], self.settings.center_crop, self.image_size)
            for s in acting
            if s in needs or (self.live[s].recorder is not None and CAMERA_KEY in self.live[s].obs)
        }
        if needs:
            try:
                _query_policy(
                    self.policy,
                    self.live,
                    needs,
                    {s: frames[s][1] for s in needs},
                    self.settings,
                    self.image_size,
                )
            except (WorkerCrashed, WorkerError) as err:  # the oracle asks the workers for its actions
                self.finish(err.slot, False, error=_error_text(err))
                return None  # nothing was stepped; the other slots are asked again
        for s in acting:
            state = self.live[s]
            if state.recorder is not None and s in frames:
                state.recorder.append(frames[s][0])
            action = self.to_env(state.queue.popleft())
            if not np.all(np.isfinite(np.asarray(action, dtype=np.float64))):
                # never sent to MuJoCo: the episode ends as an error, counted apart from failures
                self.finish(
                    s, False, error=f"policy returned a non-finite action {np.asarray(action).tolist()}"
                )
                continue
            actions[s] = action
        return actions

    def reads_next_obs(self, slot: int) -> bool:
        """Whether the policy will read the observation that the slot's coming step returns."""
        state = self.live[slot]
        policy_steps = state.t + 1 - self.settings.num_steps_wait  # after the coming step
        return 0 <= policy_steps < self.settings.max_steps and not state.queue

    def step(self, actions: dict[int, np.ndarray]) -> None:
        """Step all live slots in parallel and finish the episodes that succeeded or ran out of steps."""
        try:
            if self.settings.render == "all":
                results = self.pool.step(actions)
            else:
                results = self.pool.step(actions, render={s: self.reads_next_obs(s) for s in actions})
        except WorkerCrashed as crash:
            self.finish(crash.slot, False, error=_error_text(crash))
            results = crash.completed
        except WorkerError as err:
            self.finish(err.slot, False, error=_error_text(err))
            self.restart(list(self.live))  # their step happened but its reply was lost with the error
            return
        for s, (obs, _reward, env_done, _info) in results.items():
            state = self.live[s]
            state.obs = obs
            state.t += 1
            policy_steps = state.t - self.settings.num_steps_wait
            # as upstream, `done` counts only after the wait steps
            if policy_steps > 0 and env_done:
                self.finish(s, True)
            elif policy_steps >= self.settings.max_steps:
                self.finish(s, False)
