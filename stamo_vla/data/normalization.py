"""BOUNDS_Q99 normalization exactly as upstream OpenVLA, and its inverse.

``x' = clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)`` where ``mask`` is true (actions: all but the gripper,
which stays in {0, 1}); afterwards every dim with ``min == max`` is forced to 0 (upstream applies that rule to
all dims, masked or not). The inverse maps [-1, 1] back to [q01, q99] on masked dims and passes the rest through.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-8
ACTION_MASK = [True] * 6 + [False]  # EEF_POS actions: the gripper is absolute and not normalized


def _arr(stats: dict, key: str) -> np.ndarray:
    return np.asarray(stats[key], dtype=np.float32)


def _mask(stats: dict, dim: int) -> np.ndarray:
    return np.asarray(stats.get("mask", [True] * dim), dtype=bool)


def normalize(x: np.ndarray, stats: dict) -> np.ndarray:
    """Normalize `x` (..., D) with one statistics block (keys q01, q99, min, max and optional mask)."""
    x = np.asarray(x, dtype=np.float32)
    q01, q99 = _arr(stats, "q01"), _arr(stats, "q99")
    mask = _mask(stats, x.shape[-1])
    scaled = np.clip(2.0 * (x - q01) / (q99 - q01 + EPS) - 1.0, -1.0, 1.0)
    out = np.where(mask, scaled, x)
    return np.where(_arr(stats, "min") == _arr(stats, "max"), 0.0, out).astype(np.float32)


def unnormalize(y: np.ndarray, stats: dict) -> np.ndarray:
    """Inverse of `normalize` on masked dims: ``0.5 (y + 1) (q99 - q01 + 1e-8) + q01``; others unchanged."""
    y = np.asarray(y, dtype=np.float32)
    q01, q99 = _arr(stats, "q01"), _arr(stats, "q99")
    mask = _mask(stats, y.shape[-1])
    return np.where(mask, 0.5 * (y + 1.0) * (q99 - q01 + EPS) + q01, y).astype(np.float32)
