"""Trajectory transforms on numpy episodes (TF-free): LIBERO standardization, future frames, action chunks.

Conventions (upstream OpenVLA / OFT, docs/reference/openvla.md §4.2 and §6):
- Gripper action: ``1 - clip(a, 0, 1)``: raw -1 (open) -> 1, raw +1 (close) -> 0.
- Proprio: ``concat(EEF_state = state[:, :6], gripper_state = state[:, -2:])`` (OFT's 8-D proprio).
- Action chunk at t: ``a[t], ..., a[t+K-1]``, never padded: only ``t <= T-K`` are chunk anchors (OFT's
  ``chunk_act_obs`` uses ``effective_traj_len = T - (K-1)``, so the last K-1 frames of an episode start no
  chunk); with K = 1 every step is an anchor and this is OpenVLA's single action.
- Future frame: ``t + h`` clamped to ``T-1`` (the last frame is its own future).
"""

from __future__ import annotations

import numpy as np

from stamo_vla.configs import check_positive_int
from stamo_vla.data.normalization import normalize


def standardize_gripper(action: np.ndarray) -> np.ndarray:
    """LIBERO action -> dataset convention: first 6 dims unchanged, gripper ``1 - clip(a, 0, 1)`` (1 open, 0 closed).

    NaN actions (action-free episodes) stay NaN.
    """
    action = np.asarray(action, dtype=np.float32)
    gripper = 1.0 - np.clip(action[..., -1:], 0.0, 1.0)
    return np.concatenate([action[..., :-1], gripper], axis=-1).astype(np.float32)


def split_state(state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LIBERO ``observation/state`` (…, 8) -> (EEF_state (…, 6), gripper_state (…, 2))."""
    state = np.asarray(state, dtype=np.float32)
    return state[..., :6], state[..., -2:]


def proprio_from_state(state: np.ndarray) -> np.ndarray:
    """The 8-D proprio ``concat(EEF_state, gripper_state)`` that OFT feeds its proprio projector."""
    eef, gripper = split_state(state)
    return np.concatenate([eef, gripper], axis=-1)


def future_indices(length: int, horizon: int) -> np.ndarray:
    """Index of the future frame for every step: ``min(t + horizon, length - 1)``."""
    if horizon < 0:
        raise ValueError(f"horizon={horizon} must be >= 0")
    return np.minimum(np.arange(length) + horizon, length - 1)


def num_chunk_anchors(length: int, chunk: int) -> int:
    """Steps of an episode of `length` that start a full chunk of `chunk` actions: ``max(0, length - chunk + 1)``."""
    check_positive_int("chunk", chunk)
    return max(0, length - chunk + 1)


def chunk_indices(length: int, chunk: int) -> np.ndarray:
    """(num_chunk_anchors, chunk) indices ``t .. t+chunk-1`` of every anchor t (no index past the episode end)."""
    anchors = num_chunk_anchors(length, chunk)
    return np.arange(anchors)[:, None] + np.arange(chunk)[None]


def action_chunk(actions: np.ndarray, t: int, chunk: int) -> np.ndarray:
    """(chunk, A) actions ``a[t] .. a[t+chunk-1]``; `t` must be an anchor (the chunk is never padded).

    Args:
        actions: the episode's actions (T, A).
        t: the anchor step.
        chunk: actions per chunk.
    """
    if not 0 <= t < num_chunk_anchors(len(actions), chunk):
        raise ValueError(
            f"step {t} of an episode of {len(actions)} steps starts no full chunk of {chunk} actions; "
            f"anchors are 0..{len(actions) - chunk} (the last chunk-1 steps start none, as upstream OFT)"
        )
    return np.asarray(actions)[t : t + chunk]


def normalized_actions(actions: np.ndarray, stats: dict) -> np.ndarray:
    """A labeled episode's raw actions (T, A) -> the training targets: gripper in the dataset convention
    (`standardize_gripper`), then normalized with the dataset's action statistics (q01/q99)."""
    return normalize(standardize_gripper(actions), stats)
