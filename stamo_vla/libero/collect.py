"""Collect scripted LIBERO demonstrations into an RLDS dataset, and measure the scripted controller.

Commands (registered in ``stamo_vla.cli``)::

    stamo-vla collect --suite libero_spatial --tasks 0,1,2 --episodes-per-task 10 --workers 2 --out DATA \
        [--name NAME] [--action-free]
    stamo-vla controller-report --suite libero_spatial --tasks 0,1,2 --episodes 10 --workers 2 [--no-cameras]

Collection follows how ``modified_libero_rlds`` was made (reference/openvla.md §4.1): episodes start from
the task's fixed init states (index 0, 1, ... and further ones when some fail, until ``episodes_per_task``
successes or the 50 states run out), the 10 wait steps are not recorded, no-op steps are dropped, and
only successful episodes are kept. Each kept step stores the upright (180-degree rotated) 256 px agentview
and wrist frames, the 8-D state, the 7 joint positions and the action. Simulation runs in spawned
TF-free workers; episodes are staged by ``stamo_vla.data.rlds_writer`` and the tfds dataset is built in
this (parent) process at the end. A JSON manifest of finished (task, init index) attempts makes a rerun
resume where the last one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from stamo_vla.libero.env import NUM_STEPS_WAIT, SUITE_MAX_STEPS
from stamo_vla.libero.protocol import flip_image, proprio_from_obs
from stamo_vla.libero.workers import EnvWorkerPool, EpisodeSpec, WorkerCrashed

# upstream regenerate_libero_dataset.py: an action is a no-op below this arm-command norm
NOOP_THRESHOLD = 1e-4
MANIFEST_NAME = "collect_manifest.json"


def is_noop(action: np.ndarray, prev_kept: np.ndarray | None, threshold: float = NOOP_THRESHOLD) -> bool:
    """Upstream no-op test: tiny arm command and (if a step was kept before) an unchanged gripper."""
    small = float(np.linalg.norm(np.asarray(action)[:-1])) < threshold
    if prev_kept is None:
        return small
    return small and bool(action[-1] == prev_kept[-1])


class EpisodeRecorder:
    """Accumulates the kept steps of one episode in the interfaces.md Episode format."""

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
        self.steps["image"].append(flip_image(obs["agentview_image"]))
        self.steps["wrist_image"].append(flip_image(obs["robot0_eye_in_hand_image"]))
        self.steps["state"].append(proprio_from_obs(obs))
        self.steps["joint_state"].append(np.asarray(obs["robot0_joint_pos"], dtype=np.float32))
        self.steps["action"].append(action)
        return True

    def __len__(self) -> int:
        return len(self.steps["action"])

    def episode(self, instruction: str, file_path: str, action_free: bool = False) -> dict:
        """The episode dict (``action`` all-NaN when `action_free`)."""
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
    active: dict[int, dict] = {}
    while True:
        free = [s for s in range(pool.num_workers) if s not in active]
        starts = {}
        for slot in free:
            spec = next_spec(last_task[slot])
            if spec is not None:
                starts[slot] = spec
                last_task[slot] = (spec.suite, spec.task_id)
        if starts:
            try:
                obs = pool.reset(starts)
            except WorkerCrashed as err:  # slots that did not reset lost their worker
                obs = err.completed
            for slot, spec in starts.items():
                if slot in obs:
                    rec = EpisodeRecorder() if record else None
                    active[slot] = {"spec": spec, "obs": obs[slot], "t": 0, "rec": rec}
                else:
                    last_task[slot] = None
                    yield EpisodeResult(spec, False, 0, 0, crashed=True)
        if not active:
            return
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
                yield EpisodeResult(
                    ep["spec"], bool(done), max(steps, 0), int(info.get("retries", 0)), recorder=ep["rec"]
                )


# ------------------------------------------------------------------------------------------- configs
@dataclasses.dataclass
class CollectConfig:
    """Options of ``stamo-vla collect``."""

    out: str  # data root directory (the upstream --data_root_dir); the dataset goes to <out>/<name>/1.0.0
    suite: str = "libero_spatial"  # LIBERO suite
    tasks: tuple[int, ...] | None = None  # task ids; None = every task of the suite
    episodes_per_task: int = 10  # successful episodes wanted per task
    workers: int = 2  # simulator processes
    name: str | None = None  # dataset name; default <suite>_no_noops (+ _actionfree)
    action_free: bool = False  # store NaN actions (same spec): an action-free "video" dataset
    max_steps: int | None = None  # env steps per episode after the wait; default the suite's eval budget
    noise_std: float = 0.05  # gaussian noise on the scripted arm commands (diversity between episodes)
    seed: int = 0  # base of every episode's noise seed
    finalize: bool = True  # build the tfds dataset at the end (tensorflow, in this process)

    def __post_init__(self):
        if self.suite not in SUITE_MAX_STEPS:
            raise ValueError(f"suite={self.suite!r} is not valid; allowed: {list(SUITE_MAX_STEPS)}")
        for field in ("episodes_per_task", "workers"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field}={getattr(self, field)!r} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps!r} must be >= 1 or None")
        if self.name is None:
            self.name = f"{self.suite}_no_noops" + ("_actionfree" if self.action_free else "")

    @property
    def step_budget(self) -> int:
        return self.max_steps or SUITE_MAX_STEPS[self.suite]


def _task_list(suite: str, tasks: tuple[int, ...] | None) -> list[int]:
    from stamo_vla.libero.env import check_task, task_count

    ids = list(range(task_count(suite))) if tasks is None else list(tasks)
    for t in ids:
        check_task(suite, t)
    return ids


def _parse_ids(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated task ids like 0,1,2; got {text!r}"
        ) from err


# ------------------------------------------------------------------------------------------- collect
class _Scheduler:
    """Hands out (task, init index) jobs until each task has enough successes or runs out of states."""

    def __init__(self, suite: str, tasks: list[int], wanted: int, done: dict, seed: int, num_states: dict):
        self.suite, self.tasks, self.wanted, self.seed = suite, tasks, wanted, seed
        self.done = done  # "task:init" -> manifest record
        self.num_states = num_states
        self.in_flight: dict[int, int] = dict.fromkeys(tasks, 0)
        self.next_init: dict[int, int] = dict.fromkeys(tasks, 0)

    def successes(self, task: int) -> int:
        return sum(1 for k, r in self.done.items() if r["success"] and int(k.split(":")[0]) == task)

    def _has_work(self, task: int) -> bool:
        self._skip_done(task)
        enough = self.successes(task) + self.in_flight[task] >= self.wanted
        return not enough and self.next_init[task] < self.num_states[task]

    def _skip_done(self, task: int) -> None:
        while f"{task}:{self.next_init[task]}" in self.done:
            self.next_init[task] += 1

    def __call__(self, last: tuple[str, int] | None) -> EpisodeSpec | None:
        order = self.tasks
        if last is not None and last[1] in self.tasks:  # keep a worker on its task: no env rebuild
            order = [last[1]] + [t for t in self.tasks if t != last[1]]
        for task in order:
            if self._has_work(task):
                init = self.next_init[task]
                self.next_init[task] += 1
                self.in_flight[task] += 1
                return EpisodeSpec(self.suite, task, init, noise_seed=self.seed * 100_000 + task * 100 + init)
        return None

    def finished(self, spec: EpisodeSpec, record: dict) -> None:
        self.in_flight[spec.task_id] -= 1
        self.done[f"{spec.task_id}:{spec.init_index}"] = record


def collect(cfg: CollectConfig) -> dict:
    """Run the collection described by `cfg`; returns a summary (successes and attempts per task)."""
    from tqdm import tqdm

    from stamo_vla.data.rlds_writer import RLDSShardWriter
    from stamo_vla.fileio import write_json_atomic
    from stamo_vla.libero.env import get_task, init_states

    tasks = _task_list(cfg.suite, cfg.tasks)
    writer = RLDSShardWriter(cfg.out, cfg.name)
    manifest_path = Path(cfg.out) / cfg.name / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if manifest and manifest.get("suite") != cfg.suite:
        raise ValueError(f"{manifest_path} belongs to suite {manifest.get('suite')!r}, not {cfg.suite!r}")
    done = manifest.get("episodes", {})
    num_states = {t: len(init_states(cfg.suite, t)) for t in tasks}
    sched = _Scheduler(cfg.suite, tasks, cfg.episodes_per_task, done, cfg.seed, num_states)
    bar = tqdm(total=cfg.episodes_per_task * len(tasks), desc=f"collect {cfg.name}", unit="ep")
    bar.update(sum(min(sched.successes(t), cfg.episodes_per_task) for t in tasks))
    controller = {"noise_std": cfg.noise_std}
    with EnvWorkerPool(cfg.workers, scripted=True, camera_obs=True, controller_config=controller) as pool:
        for res in run_scripted_episodes(pool, sched, cfg.step_budget, record=True):
            spec = res.spec
            file_path = f"{cfg.suite}/{get_task(cfg.suite, spec.task_id).name}/init_{spec.init_index:02d}"
            kept = len(res.recorder) if res.recorder is not None else 0
            if res.success and kept:
                instruction = get_task(cfg.suite, spec.task_id).language
                writer.add_episode(res.recorder.episode(instruction, file_path, cfg.action_free))
                bar.update(1)
            record = {"success": res.success and kept > 0, "steps": res.steps, "kept_steps": kept}
            record.update({"retries": res.retries, "crashed": res.crashed, "file_path": file_path})
            sched.finished(spec, record)
            write_json_atomic(manifest_path, {"suite": cfg.suite, "name": cfg.name, "episodes": done})
            bar.set_postfix(attempts=len(done), failed=sum(not r["success"] for r in done.values()))
    bar.close()
    summary = {
        t: {"successes": sched.successes(t), "attempts": sum(k.startswith(f"{t}:") for k in done)}
        for t in tasks
    }
    if cfg.finalize and len(writer):
        summary["dataset_dir"] = str(writer.finalize())
    return summary


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla collect``: scripted demonstrations -> ``<out>/<name>/1.0.0`` (RLDS)."""
    p = argparse.ArgumentParser(prog="stamo-vla collect", description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", default="libero_spatial", help="LIBERO suite")
    p.add_argument("--tasks", type=_parse_ids, default=None, help="comma-separated task ids (default: all)")
    p.add_argument("--episodes-per-task", type=int, default=10, help="successful episodes per task")
    p.add_argument("--workers", type=int, default=2, help="simulator processes")
    p.add_argument("--out", required=True, help="data root dir; the dataset goes to OUT/NAME/1.0.0")
    p.add_argument("--name", default=None, help="dataset name (default <suite>_no_noops[_actionfree])")
    p.add_argument("--action-free", action="store_true", help="store NaN actions (action-free dataset)")
    p.add_argument("--max-steps", type=int, default=None, help="steps per episode after the wait")
    p.add_argument("--noise-std", type=float, default=0.05, help="noise on scripted arm commands")
    p.add_argument("--seed", type=int, default=0, help="base noise seed")
    p.add_argument("--no-finalize", action="store_true", help="only stage episodes; build the dataset later")
    a = p.parse_args(argv)
    cfg = CollectConfig(
        out=a.out, suite=a.suite, tasks=a.tasks, episodes_per_task=a.episodes_per_task, workers=a.workers,
        name=a.name, action_free=a.action_free, max_steps=a.max_steps, noise_std=a.noise_std, seed=a.seed,
        finalize=not a.no_finalize,
    )  # fmt: skip
    summary = collect(cfg)
    print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------------- report
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

    Returns:
        ``{task_id: {"successes", "episodes", "success_rate", "mean_steps", "mean_steps_success",
        "retries"}}``; steps exclude the wait steps; ``max_steps`` defaults to the suite's eval budget.
    """
    from tqdm import tqdm

    from stamo_vla.libero.env import init_states

    if episodes < 1:
        raise ValueError(f"episodes={episodes!r} must be >= 1")
    ids = _task_list(suite, tasks)
    jobs = [
        EpisodeSpec(suite, t, i, noise_seed=t * 100 + i)
        for t in ids
        for i in range(min(episodes, len(init_states(suite, t))))
    ]
    queue = iter(jobs)
    results: dict[int, list[EpisodeResult]] = {t: [] for t in ids}
    budget = max_steps or SUITE_MAX_STEPS[suite]
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


def main_controller_report(argv: list[str] | None = None) -> int:
    """``stamo-vla controller-report``: print per-task success rates and mean steps (``--json`` saves them).

    The numbers come from `controller_report`, which returns them for programmatic use.
    """
    p = argparse.ArgumentParser(prog="stamo-vla controller-report", description=controller_report.__doc__)
    p.add_argument("--suite", default="libero_spatial", help="LIBERO suite")
    p.add_argument("--tasks", type=_parse_ids, default=None, help="comma-separated task ids (default: all)")
    p.add_argument("--episodes", type=int, default=10, help="init states per task (0..N-1)")
    p.add_argument("--workers", type=int, default=2, help="simulator processes")
    p.add_argument("--no-cameras", action="store_true", help="camera-free envs (much faster; same physics)")
    p.add_argument("--max-steps", type=int, default=None, help="steps per episode after the wait")
    p.add_argument("--noise-std", type=float, default=0.05, help="noise on scripted arm commands")
    p.add_argument("--json", default=None, help="also write the report to this JSON file")
    a = p.parse_args(argv)
    report = controller_report(
        a.suite,
        a.tasks,
        a.episodes,
        a.workers,
        cameras=not a.no_cameras,
        max_steps=a.max_steps,
        noise_std=a.noise_std,
    )
    print(format_report(a.suite, report))
    if a.json:
        from stamo_vla.fileio import write_json_atomic

        write_json_atomic(a.json, {"suite": a.suite, "tasks": {str(t): r for t, r in report.items()}})
    sys.stdout.flush()
    return 0
