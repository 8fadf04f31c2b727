"""Scripted rollouts through an ``EnvWorkerPool``: the lockstep episode runner, step recording with the
upstream no-op filter, and the controller success report.

Used by ``stamo_vla.libero.collect`` (datasets) and ``stamo-vla controller-report`` (success rates).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

from stamo_vla.configs import check_positive_int
from stamo_vla.data.spec import IMAGE_SIZE
from stamo_vla.libero.env import NUM_STEPS_WAIT, check_task, init_states, task_count
from stamo_vla.libero.protocol import flip_image, lanczos_resize, proprio_from_obs
from stamo_vla.libero.suites import resolve_suite
from stamo_vla.libero.workers import INIT_DISTANCE_KEY, EnvWorkerPool, EpisodeSpec, WorkerCrashed

# upstream regenerate_libero_dataset.py: an action is a no-op below this arm-command norm
NOOP_THRESHOLD = 1e-4


def is_noop(action: np.ndarray, prev_kept: np.ndarray | None, threshold: float = NOOP_THRESHOLD) -> bool:
    """Upstream no-op test: tiny arm command and (if a step was kept before) an unchanged gripper.

    Args:
        action: the 7-D env action.
        prev_kept: the last action kept in the episode (None: none kept yet).
        threshold: the largest arm-command norm that counts as no motion.
    """
    small = float(np.linalg.norm(np.asarray(action)[:-1])) < threshold
    if prev_kept is None:
        return small
    return small and bool(action[-1] == prev_kept[-1])


def _spec_size(frame: np.ndarray) -> np.ndarray:
    if frame.shape[:2] == (IMAGE_SIZE, IMAGE_SIZE):
        return frame
    return lanczos_resize(frame, IMAGE_SIZE)


class EpisodeRecorder:
    """Accumulates the kept steps of one episode in the interfaces.md Episode format.

    Frames rendered below the dataset spec's 256 px (a cheaper collection) are resized up to it with lanczos,
    so every dataset has the same feature spec; they then hold only the detail of their render size.
    """

    def __init__(self):
        self.steps: dict[str, list] = {
            k: [] for k in ("image", "wrist_image", "state", "joint_state", "action")
        }
        self.prev_kept: np.ndarray | None = None

    def add(self, obs: dict, action: np.ndarray) -> bool:
        """Record (observation before the action, action) unless it is a no-op; returns whether kept."""
        action = np.asarray(action, dtype=np.float32)
        if is_noop(action, self.prev_kept):
            return False
        self.prev_kept = action
        self.steps["image"].append(_spec_size(flip_image(obs["agentview_image"])))
        self.steps["wrist_image"].append(_spec_size(flip_image(obs["robot0_eye_in_hand_image"])))
        self.steps["state"].append(proprio_from_obs(obs))
        self.steps["joint_state"].append(np.asarray(obs["robot0_joint_pos"], dtype=np.float32))
        self.steps["action"].append(action)
        return True

    def __len__(self) -> int:
        return len(self.steps["action"])

    def episode(self, instruction: str, file_path: str, action_free: bool = False) -> dict:
        """The episode dict (``action`` all-NaN when `action_free`).

        Args:
            instruction: the task's language instruction.
            file_path: the episode's ``file_path`` (its name in the dataset).
            action_free: write NaN actions (a video-only episode).
        """
        ep = {k: np.stack(v) for k, v in self.steps.items()}
        if action_free:
            ep["action"] = np.full_like(ep["action"], np.nan)
        ep["language_instruction"], ep["file_path"] = instruction, file_path
        return ep


@dataclasses.dataclass
class EpisodeResult:
    """Outcome of one scripted episode."""

    spec: EpisodeSpec  # which episode ran
    success: bool  # the task's goal fired (``done``) within the step budget
    steps: int  # env steps after the wait steps
    retries: int  # controller re-plans
    crashed: bool = False  # the worker died; the episode is counted as failed
    recorder: EpisodeRecorder | None = None  # kept steps (collection only)
    init_distance: float | None = None  # fresh placements: distance to the nearest benchmark init state


def run_scripted_episodes(
    pool: EnvWorkerPool,
    next_spec: Callable[[tuple[str, int] | None], EpisodeSpec | None],
    max_steps: int,
    record: bool,
) -> Iterator[EpisodeResult]:
    """Run scripted episodes on every slot of `pool` in lockstep; yield each result as it finishes.

    Args:
        pool: a ``scripted=True`` pool.
        next_spec: called with a free slot's last (suite, task_id) (or None); returns the episode to run
            there next or None when there is no work left. Called again after every finished episode,
            so it may depend on the results seen so far.
        max_steps: env steps allowed after the ``NUM_STEPS_WAIT`` wait steps.
        record: keep observations and actions of each step (needs camera observations).
    """
    last_task: dict[int, tuple[str, int] | None] = dict.fromkeys(range(pool.num_workers))
    active: dict[int, dict] = {}  # slot -> the episode running there: spec, obs, t, rec, dist
    while True:
        yield from _start_episodes(pool, next_spec, last_task, active, record)
        if not active:
            return
        yield from _step_episodes(pool, active, last_task, max_steps)


def _start_episodes(
    pool: EnvWorkerPool,
    next_spec: Callable[[tuple[str, int] | None], EpisodeSpec | None],
    last_task: dict[int, tuple[str, int] | None],
    active: dict[int, dict],
    record: bool,
) -> Iterator[EpisodeResult]:
    """Reset every free slot that `next_spec` gives work into `active`; yield a crashed result for each slot
    whose worker died in the reset.

    Args:
        pool: the scripted pool.
        next_spec: as in `run_scripted_episodes`.
        last_task: slot -> its last (suite, task_id), updated here.
        active: slot -> running episode, filled here.
        record: keep observations and actions of each step.
    """
    starts = {}
    for slot in [s for s in range(pool.num_workers) if s not in active]:
        spec = next_spec(last_task[slot])
        if spec is not None:
            starts[slot] = spec
            last_task[slot] = (spec.suite, spec.task_id)
    if not starts:
        return
    try:
        obs = pool.reset(starts)
    except WorkerCrashed as err:  # slots that did not reset lost their worker
        obs = err.completed
    for slot, spec in starts.items():
        if slot in obs:
            rec = EpisodeRecorder() if record else None
            dist = obs[slot].get(INIT_DISTANCE_KEY)
            active[slot] = {"spec": spec, "obs": obs[slot], "t": 0, "rec": rec, "dist": dist}
        else:
            last_task[slot] = None
            yield EpisodeResult(spec, False, 0, 0, crashed=True)


def _step_episodes(
    pool: EnvWorkerPool, active: dict[int, dict], last_task: dict[int, tuple[str, int] | None], max_steps: int
) -> Iterator[EpisodeResult]:
    """One scripted step of every active episode; yield (and drop from `active`) each one that finished or
    whose worker was replaced.

    Args:
        pool: the scripted pool.
        active: slot -> running episode, updated here.
        last_task: slot -> its last (suite, task_id); cleared for a replaced worker.
        max_steps: env steps allowed after the wait steps.
    """
    try:
        out = pool.scripted_step(list(active))
    except WorkerCrashed as err:
        out = err.completed
        for slot in [s for s in active if pool.spec(s) is None]:  # replaced workers
            ep = active.pop(slot)
            last_task[slot] = None
            yield EpisodeResult(ep["spec"], False, max(0, ep["t"] - NUM_STEPS_WAIT), 0, crashed=True)
    for slot, (action, obs, _reward, done, info) in out.items():
        ep = active[slot]
        ep["t"] += 1
        if ep["rec"] is not None and ep["t"] > NUM_STEPS_WAIT:
            ep["rec"].add(ep["obs"], action)
        ep["obs"] = obs
        steps = ep["t"] - NUM_STEPS_WAIT
        if done or info.get("gave_up") or steps >= max_steps:
            del active[slot]
            retries = int(info.get("retries", 0))
            yield EpisodeResult(
                ep["spec"],
                bool(done),
                max(steps, 0),
                retries,
                recorder=ep["rec"],
                init_distance=ep["dist"],
            )


def task_ids(suite: str, tasks: tuple[int, ...] | None) -> list[int]:
    """Validated task ids of `suite` (all of them when `tasks` is None)."""
    ids = list(range(task_count(suite))) if tasks is None else list(tasks)
    for t in ids:
        check_task(suite, t)
    return ids


def controller_report(
    suite: str,
    tasks: tuple[int, ...] | None = None,
    episodes: int = 10,
    workers: int = 2,
    cameras: bool = True,
    max_steps: int | None = None,
    noise_std: float = 0.05,
) -> dict[int, dict]:
    """Run the scripted controller from init states 0..episodes-1 of each task; nothing is written.

    Args:
        suite: the LIBERO suite.
        tasks: task ids (None: every task of the suite).
        episodes: initial states per task (the first ones of the suite's fixed states).
        workers: simulator worker processes.
        cameras: render camera observations (off is faster; the controller reads simulator state only).
        max_steps: step budget per episode (None: the suite's).
        noise_std: standard deviation of the controller's action noise.

    Returns:
        ``{task_id: {"successes", "episodes", "success_rate", "mean_steps", "mean_steps_success",
        "retries"}}``; steps exclude the wait steps; ``max_steps`` defaults to the suite's eval budget.
    """
    from tqdm import tqdm

    check_positive_int("episodes", episodes)
    ids = task_ids(suite, tasks)
    jobs = [
        EpisodeSpec(suite, t, i, noise_seed=t * 100 + i)
        for t in ids
        for i in range(min(episodes, len(init_states(suite, t))))
    ]
    queue = iter(jobs)
    results: dict[int, list[EpisodeResult]] = {t: [] for t in ids}
    budget = max_steps or resolve_suite(suite).max_steps
    with (
        EnvWorkerPool(
            workers, scripted=True, camera_obs=cameras, controller_config={"noise_std": noise_std}
        ) as pool,
        tqdm(total=len(jobs), desc=f"controller-report {suite}", unit="ep") as bar,
    ):
        for res in run_scripted_episodes(pool, lambda _last: next(queue, None), budget, record=False):
            results[res.spec.task_id].append(res)
            bar.update(1)
    report = {}
    for t, rs in results.items():
        wins = [r for r in rs if r.success]
        report[t] = {
            "successes": len(wins),
            "episodes": len(rs),
            "success_rate": len(wins) / len(rs) if rs else 0.0,
            "mean_steps": float(np.mean([r.steps for r in rs])) if rs else 0.0,
            "mean_steps_success": float(np.mean([r.steps for r in wins])) if wins else float("nan"),
            "retries": int(sum(r.retries for r in rs)),
        }
    return report


def format_report(suite: str, report: dict[int, dict]) -> str:
    """A plain-text table of a controller report."""
    lines = [
        f"{suite}: scripted controller",
        f"{'task':>4}  {'success':>9}  {'rate':>5}  {'steps':>6}  {'steps ok':>8}",
    ]
    for t, r in report.items():
        lines.append(
            f"{t:>4}  {r['successes']:>4}/{r['episodes']:<4}  {r['success_rate']:>5.2f}  "
            f"{r['mean_steps']:>6.1f}  {r['mean_steps_success']:>8.1f}"
        )
    wins, total = sum(r["successes"] for r in report.values()), sum(r["episodes"] for r in report.values())
    lines.append(f"total {wins}/{total} = {wins / max(total, 1):.2f}")
    return "\n".join(lines)
