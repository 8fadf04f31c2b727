"""LIBERO env throughput through ``EnvWorkerPool``: steps/s per worker and in total, 1 vs 2 workers.

Each worker runs libero_spatial task 0 from its own init state and steps a small fixed arm motion with the
gripper open (no policy, no scripted controller: simulator + rendering + IPC only). Envs are built and
reset before timing starts. Two observation settings are measured: the upstream two 256 px cameras
(agentview + wrist), and camera-free envs (what ``controller-report --cameras false`` uses).

    stamo-vla bench --only '[env]'            # full run (about two minutes on 2 cores)
    stamo-vla bench --only '[env]' --quick true    # under a minute
"""

from __future__ import annotations

import time

import numpy as np

from stamo_vla.libero.workers import EnvWorkerPool, EpisodeSpec

SUITE, TASK = "libero_spatial", 0
# a slow sideways drift: the arm moves (so the controller works), nothing hits anything in a few dozen steps
ACTION = np.array([0.0, 0.1, 0.0, 0.0, 0.0, 0.0, -1.0])


def _measure(pool, workers: int, steps: int) -> dict:
    slots = list(range(workers))
    pool.reset({s: EpisodeSpec(SUITE, TASK, s) for s in slots})
    pool.step(dict.fromkeys(slots, ACTION))  # first step after a reset warms caches; not timed
    start = time.perf_counter()
    for _ in range(steps):
        pool.step(dict.fromkeys(slots, ACTION))
    wall = time.perf_counter() - start
    return {
        "workers": workers,
        "steps_per_worker": steps,
        "wall_s": round(wall, 2),
        "steps_per_s_per_worker": round(steps / wall, 2),
        "steps_per_s_total": round(steps * workers / wall, 2),
        "ms_per_step_call": round(1000 * wall / steps, 1),
    }


def _setting(camera_obs: bool, steps: int) -> dict:
    with EnvWorkerPool(2, camera_obs=camera_obs) as pool:
        start = time.perf_counter()
        pool.reset({0: EpisodeSpec(SUITE, TASK, 0), 1: EpisodeSpec(SUITE, TASK, 1)})  # builds both envs
        build_s = time.perf_counter() - start
        one = _measure(pool, 1, steps)
        two = _measure(pool, 2, steps)
    return {
        "env_build_s_2_workers_parallel": round(build_s, 2),
        "1_worker": one,
        "2_workers": two,
        "speedup_2_vs_1": round(two["steps_per_s_total"] / one["steps_per_s_total"], 2),
    }


def run(quick: bool = False) -> dict:
    """Measure env steps/s with 1 and 2 workers, with and without cameras; prints a table.

    Args:
        quick: fewer steps (CI smoke runs).

    Returns:
        ``{"cameras_256": {...}, "no_cameras": {...}}``, each with ``1_worker``, ``2_workers`` and
        ``speedup_2_vs_1``.
    """
    cam_steps, free_steps = (10, 50) if quick else (40, 300)
    result = {
        "quick": quick,
        "suite": SUITE,
        "task_id": TASK,
        "cameras_256": _setting(True, cam_steps),
        "no_cameras": _setting(False, free_steps),
    }
    _print(result)
    return result


def _print(result: dict) -> None:
    print(
        "| observations | steps/s per worker (1 worker) | total (1) | per worker (2 workers) | total (2) | speed-up |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("cameras_256", "no_cameras"):
        r = result[name]
        one, two = r["1_worker"], r["2_workers"]
        print(
            f"| {name} | {one['steps_per_s_per_worker']} | {one['steps_per_s_total']} | "
            f"{two['steps_per_s_per_worker']} | {two['steps_per_s_total']} | {r['speedup_2_vs_1']}x |"
        )
