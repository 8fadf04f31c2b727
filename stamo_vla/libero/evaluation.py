"""LIBERO evaluation: plan, shard over ranks, resume, run batched rollouts, summarize.

Entry point: `evaluate(cfg)`; ``stamo-vla eval`` (`stamo_vla.evaluation`) is the CLI around it. Under torchrun every
rank runs a deterministic round-robin share of the (suite, task, trial) list and appends its own JSONL;
rank 0 merges all rank files into the summary at the end. A rerun with the same output directory skips
every episode already recorded (by any rank), so an interrupted evaluation resumes without losing or
repeating episodes.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from stamo_vla import fileio
from stamo_vla.configs import load_config, save_config
from stamo_vla.libero.evaluation_config import EvalConfig
from stamo_vla.libero.evaluation_loop import PlannedEpisode, RolloutSettings, run_episodes
from stamo_vla.libero.results import (
    CONFIG_YAML,
    ENVIRONMENT_JSON,
    EpisodeRecord,
    ResultsStore,
    environment_info,
    write_summary,
)
from stamo_vla.libero.suites import resolve_suite
from stamo_vla.libero.workers import EnvWorkerPool
from stamo_vla.policy import Policy

# fields that change per-episode outcomes: a resumed run must match the run that wrote the records (with the
# policy's own, `PolicyConfig.outcome_settings`)
OUTCOME_FIELDS = (
    "open_loop_steps",
    "seed",
    "num_steps_wait",
    "max_steps",
    "center_crop",
    "env_resolution",
)

RENDERING_HELP = """\
The simulator could not create an offscreen rendering context ({error}).
LIBERO renders headless through EGL or OSMesa:
  * EGL (default here):   export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
      - CPU machines need Mesa's EGL (Debian/Ubuntu: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri);
      - NVIDIA machines need the driver's libEGL_nvidia; pick the GPU with MUJOCO_EGL_DEVICE_ID=<id>;
      - inside Docker, expose the GPU with --gpus all and NVIDIA_DRIVER_CAPABILITIES=all (graphics included).
  * OSMesa (software):    apt-get install libosmesa6 && export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa
Never import tensorflow in a process that renders MuJoCo (it segfaults on Mesa); the evaluation keeps the
simulator in spawned, TensorFlow-free workers. Currently MUJOCO_GL={mujoco_gl!r}, PYOPENGL_PLATFORM={pyopengl!r}."""

_RENDERING_MARKERS = ("egl", "osmesa", "opengl", "glfw", "mujoco_gl", "gladloadgl", "render context")


class RenderingError(RuntimeError):
    """The simulator workers could not render headless; the message says how to fix the setup."""

    # `stamo_vla.cli` prints the message alone (no traceback) and exits with this code
    user_error = True
    exit_code = 3


def set_seed_everywhere(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random, make cuDNN deterministic, set PYTHONHASHSEED (as upstream)."""
    import numpy as np
    import torch

    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    np.random.seed(seed)
    random.seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    os.environ["PYTHONHASHSEED"] = str(seed)


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from the torchrun environment; (0, 1, 0) when not launched by it."""
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun or unset both")
    return rank, world, local


def plan_episodes(
    suites: Sequence[str], task_ids: Sequence[int] | None, trials: int, catalog: Any
) -> list[PlannedEpisode]:
    """The full, ordered episode list: suite-major, then task, then trial (= init-state index).

    Args:
        suites: suite names, in order.
        task_ids: task subset applied to every suite, or None for all tasks.
        trials: trials per task.
        catalog: provides ``task_count(suite)`` and ``task_instruction(suite, task_id)``, and optionally
            ``check_task_ready(suite, task_id, trials)`` (raises when the installed benchmark lacks the task's
            files) and ``base_task_id(suite, task_id)`` (``stamo_vla.libero.env`` by default, which has all four).
    """
    check_ready = getattr(catalog, "check_task_ready", None)
    base_task_of = getattr(catalog, "base_task_id", None)
    episodes = []
    for suite in suites:
        count = catalog.task_count(suite)
        ids = list(range(count)) if task_ids is None else list(task_ids)
        bad = [t for t in ids if t >= count]
        if bad:
            raise ValueError(f"task_ids={list(task_ids)}: {suite} has tasks 0..{count - 1}, got {bad}")
        for task_id in ids:
            if check_ready is not None:
                check_ready(suite, task_id, trials)
            instruction = catalog.task_instruction(suite, task_id)
            base = base_task_of(suite, task_id) if base_task_of is not None else None
            episodes += [PlannedEpisode(suite, task_id, i, instruction, base) for i in range(trials)]
    return episodes


def shard(episodes: Sequence[PlannedEpisode], rank: int, world_size: int) -> list[PlannedEpisode]:
    """Deterministic round-robin share of `episodes` for `rank` (balances long and short suites).

    Args:
        episodes: every planned episode.
        rank: this worker's rank.
        world_size: the number of ranks.
    """
    return list(episodes[rank::world_size])


def check_resume_compatible(cfg: EvalConfig, output_dir: Path) -> None:
    """Refuse to mix results of runs whose outcome-relevant settings differ (or any, if resume=False)."""
    saved_path = output_dir / CONFIG_YAML
    if not saved_path.exists():
        return
    if not cfg.resume and ResultsStore(output_dir).files():
        raise ValueError(
            f"output_dir={str(output_dir)!r} already holds results and resume=False; choose a new output_dir "
            "or pass --resume true to continue it"
        )

    recorded, now = outcome_settings(load_config(EvalConfig, saved_path)), outcome_settings(cfg)
    diff = {f: (recorded.get(f), now.get(f)) for f in {**recorded, **now} if recorded.get(f) != now.get(f)}
    if diff:
        listed = ", ".join(f"{k}: recorded {a!r} vs now {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"output_dir={str(output_dir)!r} holds results of a different evaluation ({listed}). Use a new "
            "output_dir, or rerun with the recorded settings to resume."
        )


def outcome_settings(cfg: EvalConfig) -> dict[str, Any]:
    """The settings of `cfg` that change episode outcomes, by the names evaluation configs have recorded."""
    return {**cfg.policy.outcome_settings(), **{f: getattr(cfg, f) for f in OUTCOME_FIELDS}}


def rendering_guard(err: BaseException) -> BaseException:
    """Turn a headless-rendering failure into a `RenderingError` with setup guidance; other errors unchanged."""
    text = f"{type(err).__name__}: {err}".lower()
    if not any(marker in text for marker in _RENDERING_MARKERS):
        return err
    message = RENDERING_HELP.format(
        error=f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}",
        mujoco_gl=os.environ.get("MUJOCO_GL"),
        pyopengl=os.environ.get("PYOPENGL_PLATFORM"),
    )
    return RenderingError(message)


def _default_pool_factory(cfg: EvalConfig) -> Callable[[int], Any]:
    def factory(num_workers: int) -> Any:
        return EnvWorkerPool(
            num_workers, resolution=cfg.env_resolution, scripted=cfg.policy.reads_simulator_state
        )

    return factory


def _progress(cfg: EvalConfig, total: int, rank: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=f"LIBERO eval (rank {rank})", disable=not cfg.progress or total == 0, position=rank
    )


def _barrier(world_size: int) -> None:
    """Wait until every rank has finished its share (rank 0 then merges all rank files)."""
    if world_size <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        return
    # gloo works on every machine; only this barrier is needed, the policy stays rank-local
    dist.init_process_group(backend="gloo")
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def evaluate(
    cfg: EvalConfig,
    *,
    pool_factory: Callable[[int], Any] | None = None,
    policy: Policy | None = None,
    catalog: Any | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) the evaluation described by `cfg`.

    Args:
        cfg: the evaluation config.
        pool_factory: ``num_workers -> pool``; defaults to ``EnvWorkerPool`` (tests pass a fake).
        policy: a ready `stamo_vla.policy.Policy`; default: ``cfg.policy.build(cfg, local_rank)``, called only
            when this rank has episodes left (a kind that reads the simulator is built with the started pool).
        catalog: task catalog (``task_count``, ``task_instruction``); default ``stamo_vla.libero.env``.

    Returns:
        The summary dict on rank 0 (also written as summary.json / summary.md); None on other ranks.
    """
    rank, world, local_rank = dist_info()
    set_seed_everywhere(cfg.seed)
    if catalog is None:
        from stamo_vla.libero import env as catalog
    out = Path(cfg.output_dir)
    cfg.resolve_center_crop()  # from the checkpoint's record; part of the protocol a resume must match
    check_resume_compatible(cfg, out)
    planned = plan_episodes(cfg.suites, cfg.task_ids, cfg.num_trials_per_task, catalog)
    store = ResultsStore(out, rank)
    done_keys = store.completed()
    share = shard(planned, rank, world)
    todo = [e for e in share if e.key not in done_keys]
    print(
        f"[LIBERO eval] rank {rank}/{world}: {len(todo)} of {len(share)} episodes to run "
        f"({len(share) - len(todo)} already recorded in {out})",
        file=sys.stderr,
    )

    if policy is None and not cfg.policy.reads_simulator_state and todo:
        # load (and validate the checkpoint, statistics keys, adapter) before paying for env workers;
        # a finished shard (resume) skips loading the model altogether
        cfg.policy.check_paths()
        policy = cfg.policy.build(cfg, local_rank)
    if rank == 0:
        save_config(cfg, out / CONFIG_YAML)
        fileio.write_json_atomic(out / ENVIRONMENT_JSON, environment_info(world))

    _run_shard(cfg, todo, store, (rank, local_rank), pool_factory or _default_pool_factory(cfg), policy)
    _barrier(world)
    if rank != 0:
        return None
    return write_summary(out, store.load(), [e.key for e in planned])


def _run_shard(
    cfg: EvalConfig,
    todo: list[PlannedEpisode],
    store: ResultsStore,
    ranks: tuple[int, int],
    pool_factory: Callable[[int], Any],
    policy: Policy | None,
) -> None:
    if not todo:
        return
    rank, local_rank = ranks
    video_dir = store.output_dir / "videos"
    for stale in video_dir.glob(f".rank{rank}-slot*.tmp.mp4"):
        stale.unlink()  # partial videos of episodes that were in flight when a previous run died
    bar = _progress(cfg, len(todo), rank)
    tally = {"n": 0, "ok": 0}

    def record(r: EpisodeRecord) -> None:
        store.append(r)
        tally["n"] += 1
        tally["ok"] += int(r.success)
        bar.update(1)
        bar.set_postfix(success=f"{tally['ok']}/{tally['n']} ({100 * tally['ok'] / tally['n']:.1f}%)")

    num_workers = min(cfg.num_workers, len(todo))
    try:
        with pool_factory(num_workers) as pool:
            if policy is None:  # a kind that reads the simulator acts through the started workers
                policy = cfg.policy.build(cfg, local_rank, pool)
            for suite in dict.fromkeys(e.suite for e in todo):
                # per-suite action statistics (unnorm_key), for policies that have them; a perturbed suite
                # (LIBERO-PRO) is acted on with the statistics of the suite it perturbs
                base = resolve_suite(suite).base_suite
                key = policy.set_suite(base)
                if key is not None:
                    print(f"[LIBERO eval] {suite}: unnorm_key={key!r}", file=sys.stderr)
                settings = RolloutSettings(
                    max_steps=cfg.max_steps_for(suite),
                    num_steps_wait=cfg.num_steps_wait,
                    center_crop=cfg.resolve_center_crop(),
                    open_loop_steps=cfg.open_loop_steps,
                    video=cfg.video,
                    render=cfg.render,
                    video_dir=video_dir,
                    video_fps=cfg.video_fps,
                    rank=rank,
                )
                episodes = [e for e in todo if e.suite == suite]
                run_episodes(pool, policy, episodes, settings, num_workers, on_episode_end=record)
    except RenderingError:
        raise
    except Exception as err:
        guarded = rendering_guard(err)
        if guarded is err:
            raise
        raise guarded from err
    finally:
        bar.close()


def summarize_run(output_dir: str | os.PathLike, catalog: Any | None = None) -> dict[str, Any]:
    """Rebuild summary.json / summary.md of an output directory from its records and saved config.

    Useful when a multi-rank run lost a rank before the merge: the finished episodes of every rank are
    on disk, and this merges them without running anything. The saved config names its policy kind: import
    `stamo_vla.evaluation` first, which registers the kinds that load models.
    """
    if catalog is None:
        from stamo_vla.libero import env as catalog
    out = Path(output_dir)
    config_path = out / CONFIG_YAML
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found; is {str(out)!r} an evaluation output_dir?")
    cfg = load_config(EvalConfig, config_path)
    planned = plan_episodes(cfg.suites, cfg.task_ids, cfg.num_trials_per_task, catalog)
    return write_summary(out, ResultsStore(out).load(), [e.key for e in planned])
