"""Collect scripted LIBERO demonstrations into an RLDS dataset, and measure the scripted controller.

Commands (registered in ``stamo_vla.cli``)::

    stamo-vla collect --suite libero_spatial --task_ids '[0,1,2]' --episodes_per_task 10 --num_workers 2 \
        --data_root_dir DATA [--dataset_name NAME] [--action_free true]
    stamo-vla controller-report --suite libero_spatial --task_ids '[0,1,2]' --episodes_per_task 10 \
        --num_workers 2 [--cameras false]

Collection follows how ``modified_libero_rlds`` was made (docs/reference/openvla.md §4.1), with one deliberate
difference: by default (``init_states="fresh"``) episodes start from fresh object placements drawn from each
task's own reset distribution with seeds of our own, never from the benchmark's 50 fixed init states, which
are the evaluation's test set. Each episode's distance to the nearest benchmark state is recorded in the
manifest, and collection fails if one coincides (`check_disjoint`). ``init_states="benchmark"`` reproduces
upstream's recipe (states 0, 1, ... until ``episodes_per_task`` successes or the 50 run out). The 10 wait
steps are not recorded, no-op steps are dropped, and only successful episodes are kept. Each kept step stores the upright (180-degree rotated) 256 px agentview
and wrist frames, the 8-D state, the 7 joint positions and the action. Simulation runs in spawned
TF-free workers; episodes are staged by ``stamo_vla.data.rlds_writer`` and the tfds dataset is built in
this (parent) process at the end. A JSON manifest of finished (task, init index) attempts makes a rerun
resume where the last one stopped.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path

from stamo_vla.configs import check_positive_int, parse_config
from stamo_vla.data.rlds_writer import RLDSShardWriter
from stamo_vla.fileio import read_json, write_json_atomic, writes_directory
from stamo_vla.libero.env import SAME_STATE_TOLERANCE, check_suite, get_task, init_states, task_instruction
from stamo_vla.libero.scripted_rollout import (  # noqa: F401  (re-exported: the collection API in one place)
    NOOP_THRESHOLD,
    EpisodeRecorder,
    EpisodeResult,
    controller_report,
    format_report,
    is_noop,
    run_scripted_episodes,
    task_ids,
)
from stamo_vla.libero.suites import resolve_suite
from stamo_vla.libero.workers import EnvWorkerPool, EpisodeSpec

MANIFEST_NAME = "collect_manifest.json"
INIT_STATE_SOURCES = ("fresh", "benchmark")
# fresh placements: attempts per task are capped at this many times the wanted successes
MAX_ATTEMPTS_FACTOR = 3


# ------------------------------------------------------------------------------------------- configs
@dataclasses.dataclass
class CollectConfig:
    """Options of ``stamo-vla collect``."""

    # data root directory (read later as --data.data_root_dir); the dataset goes to <data_root_dir>/<dataset_name>/1.0.0
    data_root_dir: str = ""
    suite: str = "libero_spatial"  # LIBERO suite
    task_ids: list[int] | None = None  # task ids; None = every task of the suite
    episodes_per_task: int = 10  # successful episodes wanted per task
    num_workers: int = 2  # simulator processes
    dataset_name: str | None = None  # dataset name; default <suite>_no_noops (+ _actionfree)
    action_free: bool = False  # store NaN actions (same spec): an action-free "video" dataset
    max_steps: int | None = None  # env steps per episode after the wait; default the suite's eval budget
    noise_std: float = 0.05  # gaussian noise on the scripted arm commands (diversity between episodes)
    seed: int = 0  # base of every episode's noise seed (and placement seed, for fresh init states)
    # fresh: new placements from the task's reset distribution (never a test state) | benchmark: the fixed 50
    init_states: str = "fresh"
    # camera render size; frames are stored at the spec's 256 px (resized up when smaller: cheaper rendering,
    # 128 px of detail, for policies that see 128 px or less)
    render_resolution: int = 256
    finalize: bool = True  # build the tfds dataset at the end (tensorflow, in this process)

    def __post_init__(self):
        if not self.data_root_dir:
            raise ValueError(
                "data_root_dir is empty; give the folder the dataset goes to (--data_root_dir DATA)"
            )
        check_suite(self.suite)
        if self.init_states not in INIT_STATE_SOURCES:
            raise ValueError(
                f"init_states={self.init_states!r} is not valid; allowed: {list(INIT_STATE_SOURCES)}"
            )
        for field in ("episodes_per_task", "num_workers", "render_resolution"):
            check_positive_int(field, getattr(self, field))
        if self.max_steps is not None:
            check_positive_int("max_steps", self.max_steps)
        if self.dataset_name is None:
            self.dataset_name = f"{self.suite}_no_noops" + ("_actionfree" if self.action_free else "")

    @property
    def step_budget(self) -> int:
        return self.max_steps or resolve_suite(self.suite).max_steps


# ------------------------------------------------------------------------------------------- collect
def placement_seed(seed: int, task: int, attempt: int) -> int:
    """The placement seed of a fresh-init episode: distinct per (collection seed, task, attempt).

    Args:
        seed: the collection seed.
        task: the task id.
        attempt: the attempt at that task.
    """
    return 1_000_000 + seed * 100_000 + task * 1_000 + attempt


class _Scheduler:
    """Hands out (task, attempt) jobs until each task has enough successes or runs out of attempts.

    With benchmark init states, attempt k starts from fixed state k; with fresh ones, from a new placement.
    """

    def __init__(self, cfg: CollectConfig, tasks: list[int], done: dict, num_states: dict):
        self.suite, self.tasks, self.wanted, self.seed = cfg.suite, tasks, cfg.episodes_per_task, cfg.seed
        self.fresh = cfg.init_states == "fresh"
        self.done = done  # "task:attempt" -> manifest record
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

    def spec(self, task: int, attempt: int) -> EpisodeSpec:
        noise = self.seed * 100_000 + task * 100 + attempt
        if self.fresh:
            seed = placement_seed(self.seed, task, attempt)
            return EpisodeSpec(self.suite, task, 0, noise_seed=noise, placement_seed=seed)
        return EpisodeSpec(self.suite, task, attempt, noise_seed=noise)

    def attempt(self, spec: EpisodeSpec) -> int:
        """Which attempt of its task `spec` is (the inverse of `spec`)."""
        if spec.placement_seed is None:
            return spec.init_index
        return spec.placement_seed - placement_seed(self.seed, spec.task_id, 0)

    def __call__(self, last: tuple[str, int] | None) -> EpisodeSpec | None:
        order = self.tasks
        if last is not None and last[1] in self.tasks:  # keep a worker on its task: no env rebuild
            order = [last[1]] + [t for t in self.tasks if t != last[1]]
        for task in order:
            if self._has_work(task):
                attempt = self.next_init[task]
                self.next_init[task] += 1
                self.in_flight[task] += 1
                return self.spec(task, attempt)
        return None

    def finished(self, attempt: int, spec: EpisodeSpec, record: dict) -> None:
        self.in_flight[spec.task_id] -= 1
        self.done[f"{spec.task_id}:{attempt}"] = record


def check_disjoint(manifest: dict, tolerance: float = SAME_STATE_TOLERANCE) -> dict:
    """Prove that no recorded episode started from a benchmark init state; returns the evidence.

    Returns:
        ``{"init_states", "episodes", "fresh_episodes", "min_distance", "tolerance", "disjoint"}``;
        ``disjoint`` is False for a benchmark-state collection (its episodes *are* test states).

    Raises:
        ValueError: a fresh episode lies within `tolerance` of a benchmark state.
    """
    records = list(manifest.get("episodes", {}).values())
    distances = [r["init_distance"] for r in records if r.get("init_distance") is not None]
    close = [
        r["file_path"]
        for r in records
        if r.get("init_distance") is not None and r["init_distance"] < tolerance
    ]
    if close:
        raise ValueError(
            f"{len(close)} collected episodes start from a benchmark init state (e.g. {close[0]}); the 50 fixed "
            "states are the test set. Recollect with init_states='fresh' and a different seed."
        )
    fresh = manifest.get("init_states", "benchmark") == "fresh" and len(distances) == len(records)
    return {
        "init_states": manifest.get("init_states", "benchmark"),
        "episodes": len(records),
        "fresh_episodes": len(distances),
        "min_distance": min(distances) if distances else None,
        "tolerance": tolerance,
        "disjoint": bool(fresh),
    }


def check_resumable(manifest: dict, manifest_path: Path, cfg: CollectConfig) -> None:
    """Refuse to resume a collection whose manifest was made with another suite, init-state source or render size.

    Manifests written before the render size was recorded do not say it: those episodes are taken to have been
    rendered at ``cfg.render_resolution`` (the demo and the study always pass the same value), with a warning, and
    the value is recorded from then on.

    Args:
        manifest: the collection's manifest.
        manifest_path: where it was read from (named in errors).
        cfg: the collection configuration that resumes.
    """
    if not manifest:
        return
    if manifest.get("suite") != cfg.suite:
        raise ValueError(f"{manifest_path} belongs to suite {manifest.get('suite')!r}, not {cfg.suite!r}")
    if manifest.get("init_states", "benchmark") != cfg.init_states:
        raise ValueError(
            f"{manifest_path} was collected with init_states={manifest.get('init_states', 'benchmark')!r}, not "
            f"{cfg.init_states!r}; use another --data_root_dir or --dataset_name."
        )
    recorded = manifest.get("render_resolution")
    if recorded is None and manifest.get("episodes"):
        warnings.warn(
            f"{manifest_path} predates the recording of the render size; its {len(manifest['episodes'])} "
            f"attempts are taken to have been rendered at --render_resolution {cfg.render_resolution}, as this "
            "run is, and that is recorded from now on. If they were rendered at another size, stop now and "
            "rerun with that --render_resolution, or collect into another --dataset_name.",
            stacklevel=2,
        )
    elif recorded is not None and recorded != cfg.render_resolution:
        raise ValueError(
            f"{manifest_path} was rendered at {recorded} px, not {cfg.render_resolution}; "
            "use the same --render_resolution to resume, or another --data_root_dir or --dataset_name."
        )


def _write_manifest(path: Path, cfg: CollectConfig, done: dict) -> None:
    manifest = {"suite": cfg.suite, "name": cfg.dataset_name, "init_states": cfg.init_states}
    manifest.update(render_resolution=cfg.render_resolution, episodes=done)
    check_disjoint(manifest)
    write_json_atomic(path, manifest)


@writes_directory("collect", "data_root_dir", lambda cfg: Path(cfg.data_root_dir) / cfg.dataset_name)
def collect(cfg: CollectConfig) -> dict:
    """Run the collection described by `cfg`; returns a summary (successes and attempts per task)."""
    from tqdm import tqdm

    tasks = task_ids(cfg.suite, cfg.task_ids)
    writer = RLDSShardWriter(cfg.data_root_dir, cfg.dataset_name, order_seed=cfg.seed)
    manifest_path = Path(cfg.data_root_dir) / cfg.dataset_name / MANIFEST_NAME
    fix = "It records which episodes are done: restore it, or delete the dataset folder to collect again."
    manifest = read_json(manifest_path, fix) if manifest_path.exists() else {}
    check_resumable(manifest, manifest_path, cfg)
    done = manifest.get("episodes", {})
    _write_manifest(manifest_path, cfg, done)  # an older manifest gains the render size now
    if cfg.init_states == "fresh":
        num_states = dict.fromkeys(tasks, cfg.episodes_per_task * MAX_ATTEMPTS_FACTOR)
    else:
        num_states = {t: len(init_states(cfg.suite, t)) for t in tasks}
    sched = _Scheduler(cfg, tasks, done, num_states)
    bar = tqdm(total=cfg.episodes_per_task * len(tasks), desc=f"collect {cfg.dataset_name}", unit="ep")
    bar.update(sum(min(sched.successes(t), cfg.episodes_per_task) for t in tasks))
    controller = {"noise_std": cfg.noise_std}
    pool = EnvWorkerPool(
        cfg.num_workers,
        resolution=cfg.render_resolution,
        scripted=True,
        camera_obs=True,
        controller_config=controller,
    )
    with pool:
        for res in run_scripted_episodes(pool, sched, cfg.step_budget, record=True):
            spec = res.spec
            attempt = sched.attempt(spec)
            start = f"fresh_{attempt:03d}" if spec.placement_seed is not None else f"init_{attempt:02d}"
            file_path = f"{cfg.suite}/{get_task(cfg.suite, spec.task_id).name}/{start}"
            kept = len(res.recorder) if res.recorder is not None else 0
            if res.success and kept:
                instruction = task_instruction(cfg.suite, spec.task_id)
                writer.add_episode(res.recorder.episode(instruction, file_path, cfg.action_free))
                bar.update(1)
            record = {"success": res.success and kept > 0, "steps": res.steps, "kept_steps": kept}
            record.update({"retries": res.retries, "crashed": res.crashed, "file_path": file_path})
            record.update({"placement_seed": spec.placement_seed, "init_distance": res.init_distance})
            sched.finished(attempt, spec, record)
            _write_manifest(manifest_path, cfg, done)
            bar.set_postfix(attempts=len(done), failed=sum(not r["success"] for r in done.values()))
    bar.close()
    summary = {
        t: {"successes": sched.successes(t), "attempts": sum(k.startswith(f"{t}:") for k in done)}
        for t in tasks
    }
    summary["init_states"] = check_disjoint({"init_states": cfg.init_states, "episodes": done})
    if cfg.finalize and len(writer):
        summary["dataset_dir"] = str(writer.finalize())
    return summary


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla collect``: scripted demonstrations -> ``<data_root_dir>/<dataset_name>/1.0.0`` (RLDS)."""
    cfg = parse_config(CollectConfig, sys.argv[1:] if argv is None else argv)
    summary = collect(cfg)
    print(json.dumps(summary, indent=2))
    return 0


# ------------------------------------------------------------------------------------------- report
@dataclasses.dataclass
class ControllerReportConfig:
    """Options of ``stamo-vla controller-report`` (per-task success of the scripted controller; nothing written
    unless ``output_path`` is given)."""

    suite: str = "libero_spatial"  # LIBERO suite
    task_ids: list[int] | None = None  # task ids; None = every task of the suite
    episodes_per_task: int = 10  # episodes per task, from init states 0..N-1
    num_workers: int = 2  # simulator processes
    cameras: bool = True  # render cameras (false: camera-free envs, much faster, same physics)
    max_steps: int | None = None  # env steps per episode after the wait; default the suite's eval budget
    noise_std: float = 0.05  # gaussian noise on the scripted arm commands
    output_path: str | None = None  # also write the report to this JSON file

    def __post_init__(self):
        check_suite(self.suite)
        for field in ("episodes_per_task", "num_workers"):
            check_positive_int(field, getattr(self, field))


def main_controller_report(argv: list[str] | None = None) -> int:
    """``stamo-vla controller-report``: print per-task success rates and mean steps (``--output_path`` saves them).

    The numbers come from `controller_report`, which returns them for programmatic use.
    """
    cfg = parse_config(ControllerReportConfig, sys.argv[1:] if argv is None else argv)
    report = controller_report(
        cfg.suite,
        cfg.task_ids,
        cfg.episodes_per_task,
        cfg.num_workers,
        cameras=cfg.cameras,
        max_steps=cfg.max_steps,
        noise_std=cfg.noise_std,
    )
    print(format_report(cfg.suite, report))
    if cfg.output_path:
        write_json_atomic(
            cfg.output_path, {"suite": cfg.suite, "tasks": {str(t): r for t, r in report.items()}}
        )
    sys.stdout.flush()
    return 0
