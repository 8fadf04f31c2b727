"""LIBERO evaluation throughput: env steps/s per worker, episodes/hour with 1 vs 2 workers, policy share.

Runs the real harness loop (`stamo_vla.libero.evaluation_loop.run_episodes`) on libero_spatial task 0 with
short episodes (the upstream 10 wait steps plus a few policy steps), on one pool of two spawned workers
whose envs are built before timing starts:

- a "hold" policy (zero motion, gripper open) costs nothing, so its rate is the simulator + IPC +
  preprocessing throughput, first on one slot, then on both;
- the tiny random-init VLA then runs on both slots, and the time spent inside ``predict_batch`` gives the
  policy's share of the loop (a 7B model on a GPU has a far larger share; this measures the harness);
- a hold policy returning chunks of 8 actions run open loop (OFT's setting) runs twice on both slots: every
  step rendered (upstream) and ``--render policy`` (only the steps whose observation it reads), side by side.

Episodes/hour are reported for the measured short episodes and projected for a full-length
libero_spatial episode (220 policy + 10 wait steps) from the measured step and reset times.

    stamo-vla bench --only '[eval]'            # full run (a few minutes on 2 cores)
    stamo-vla bench --only '[eval]' --quick true    # about a minute
"""

from __future__ import annotations

import time

import numpy as np

from stamo_vla.libero.env import task_instruction
from stamo_vla.libero.evaluation_loop import PlannedEpisode, RolloutSettings, run_episodes
from stamo_vla.libero.workers import EnvWorkerPool, EpisodeSpec
from stamo_vla.policy import Policy
from stamo_vla.vla.tiny import TINY_DATASET, build_tiny

SUITE, TASK = "libero_spatial", 0
WAIT = 10
FULL_EPISODE_STEPS = 220 + WAIT


class HoldPolicy(Policy):
    """Zero arm motion, gripper open (dataset convention): measures everything but the policy."""

    action_chunk = 1

    def predict_batch(self, images, instructions, **obs):
        """Zero arm motion and an open gripper for every row.

        Args:
            images: one image per observation (only counted).
            instructions: the task instructions (unused).
            **obs: further observation fields (unused).
        """
        out = np.zeros((len(images), 1, 7))
        out[:, :, 6] = 1.0
        return out


class ChunkHoldPolicy(HoldPolicy):
    """The hold policy returning chunks of 8 actions run open loop (OFT's LIBERO setting)."""

    action_chunk = 8

    def predict_batch(self, images, instructions, **obs):
        """The hold action repeated `action_chunk` times per row.

        Args:
            images: one image per observation (only counted).
            instructions: the task instructions (unused).
            **obs: further observation fields (unused).
        """
        return np.repeat(super().predict_batch(images, instructions, **obs), self.action_chunk, axis=1)


class TimedPolicy(Policy):
    """Wraps a policy and accumulates the wall time spent in ``predict_batch``."""

    def __init__(self, policy):
        self.policy, self.seconds, self.calls = policy, 0.0, 0
        self.action_chunk, self.uses_wrist_image = policy.action_chunk, policy.uses_wrist_image

    def predict_batch(self, images, instructions, **obs):
        """The wrapped policy's actions; its wall time is added to ``seconds``.

        Args:
            images: one image per observation.
            instructions: the task instruction of each observation.
            **obs: further observation fields, passed on.
        """
        start = time.perf_counter()
        out = self.policy.predict_batch(images, instructions, **obs)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        return out


def _episodes(n: int, instruction: str):
    return [PlannedEpisode(SUITE, TASK, i % 50, instruction) for i in range(n)]


def _measure(
    pool, policy, workers: int, episodes: int, policy_steps: int, instruction: str, render: str = "all"
) -> dict:
    settings = RolloutSettings(
        max_steps=policy_steps, num_steps_wait=WAIT, center_crop=True, video="none", render=render
    )
    start = time.perf_counter()
    records = run_episodes(pool, policy, _episodes(episodes, instruction), settings, num_slots=workers)
    wall = time.perf_counter() - start
    env_steps = sum(r.steps + WAIT for r in records)
    # per-worker seconds per step and per reset, for the full-length projection
    step_s = wall * workers / env_steps
    return {
        "workers": workers,
        "episodes": len(records),
        "env_steps": env_steps,
        "wall_s": round(wall, 2),
        "env_steps_per_s_per_worker": round(env_steps / wall / workers, 2),
        "env_steps_per_s_total": round(env_steps / wall, 2),
        "episodes_per_hour_short": round(3600 * len(records) / wall, 1),
        "episodes_per_hour_full_spatial_projected": round(3600 * workers / (step_s * FULL_EPISODE_STEPS), 1),
    }


def run(quick: bool = False) -> dict:
    """Measure harness throughput on the simulator; prints a table and returns the numbers.

    Args:
        quick: fewer and shorter episodes (for CI smoke runs).

    Returns:
        ``{"hold_1_worker": {...}, "hold_2_workers": {...}, "speedup_2_vs_1": float, "tiny_vla": {...}}``.
    """
    from stamo_vla.vla.policy import OpenVLAPolicy

    policy_steps = 5 if quick else 30
    per_worker = 1 if quick else 3
    instruction = task_instruction(SUITE, TASK)
    model, processor = build_tiny()
    tiny = TimedPolicy(OpenVLAPolicy(model, processor, unnorm_key=TINY_DATASET))
    with EnvWorkerPool(2) as pool:
        start = time.perf_counter()
        pool.reset({0: EpisodeSpec(SUITE, TASK, 0), 1: EpisodeSpec(SUITE, TASK, 1)})  # builds both envs
        build_s = time.perf_counter() - start
        one = _measure(pool, HoldPolicy(), 1, per_worker, policy_steps, instruction)
        two = _measure(pool, HoldPolicy(), 2, 2 * per_worker, policy_steps, instruction)
        vla = _measure(pool, tiny, 2, 2 * per_worker, policy_steps, instruction)
        # a chunked policy, every step rendered (upstream) vs only the steps it reads (--render policy)
        chunk_steps = 2 * policy_steps
        chunk_all = _measure(pool, ChunkHoldPolicy(), 2, 2 * per_worker, chunk_steps, instruction)
        chunk_lean = _measure(pool, ChunkHoldPolicy(), 2, 2 * per_worker, chunk_steps, instruction, "policy")
    vla["policy_share_of_loop"] = round(tiny.seconds / vla["wall_s"], 3)
    vla["policy_ms_per_call"] = round(1000 * tiny.seconds / max(1, tiny.calls), 1)
    result = {
        "quick": quick,
        "policy_steps_per_episode": policy_steps,
        "wait_steps": WAIT,
        "env_build_s_2_workers_parallel": round(build_s, 2),
        "hold_1_worker": one,
        "hold_2_workers": two,
        "speedup_2_vs_1": round(two["env_steps_per_s_total"] / one["env_steps_per_s_total"], 2),
        "tiny_vla_2_workers": vla,
        "chunk8_render_all_2_workers": chunk_all,
        "chunk8_render_policy_2_workers": chunk_lean,
        "render_policy_speedup": round(
            chunk_lean["env_steps_per_s_total"] / chunk_all["env_steps_per_s_total"], 2
        ),
    }
    _print(result)
    return result


def _print(result: dict) -> None:
    rows = [("hold, 1 worker", result["hold_1_worker"]), ("hold, 2 workers", result["hold_2_workers"])]
    rows.append(("tiny VLA, 2 workers", result["tiny_vla_2_workers"]))
    rows.append(("hold, chunks of 8, 2 workers, render all", result["chunk8_render_all_2_workers"]))
    rows.append(("hold, chunks of 8, 2 workers, render policy", result["chunk8_render_policy_2_workers"]))
    print(
        "| run | env steps/s per worker | env steps/s total | episodes/h (short) | episodes/h (full spatial, proj.) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(
            f"| {name} | {r['env_steps_per_s_per_worker']} | {r['env_steps_per_s_total']} | "
            f"{r['episodes_per_hour_short']} | {r['episodes_per_hour_full_spatial_projected']} |"
        )
    vla = result["tiny_vla_2_workers"]
    print(
        f"2 vs 1 worker speed-up: {result['speedup_2_vs_1']}x; tiny VLA share of the loop: "
        f"{100 * vla['policy_share_of_loop']:.1f}% ({vla['policy_ms_per_call']} ms per batched call); "
        f"--render policy vs all for chunks of 8: {result['render_policy_speedup']}x"
    )
