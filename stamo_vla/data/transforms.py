"""Trajectory transforms on numpy episodes (TF-free): LIBERO standardization, future frames, action chunks.

Conventions (upstream OpenVLA / OFT, reference/openvla.md §4.2 and §6):
- Gripper action: ``1 - clip(a, 0, 1)``: raw -1 (open) -> 1, raw +1 (close) -> 0.
- Proprio: ``concat(EEF_state = state[:, :6], gripper_state = state[:, -2:])`` (OFT's 8-D proprio).
- Action chunk at t: ``a[t], ..., a[t+K-1]`` with indices clamped to ``T-1``: past the episode end the last
  action is repeated (OFT's ``chunk_act_obs`` clamps the same way; with K = 1 this is OpenVLA's single action).
- Future frame: ``t + h`` clamped to ``T-1`` (the last frame is its own future).
"""

from __future__ import annotations

import numpy as np


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


def chunk_indices(length: int, chunk: int) -> np.ndarray:
    """(length, chunk) indices ``t .. t+chunk-1``, clamped to ``length - 1`` (repeat the last action)."""
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be >= 1")
    return np.minimum(np.arange(length)[:, None] + np.arange(chunk)[None], length - 1)


def action_chunk(actions: np.ndarray, t: int, chunk: int) -> np.ndarray:
    """(chunk, A) actions starting at step `t`, padded past the end by repeating the last action."""
    idx = np.minimum(np.arange(t, t + chunk), len(actions) - 1)
    return np.asarray(actions)[idx]
