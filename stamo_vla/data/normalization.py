"""BOUNDS_Q99 normalization exactly as upstream OpenVLA, and its inverse.

``x' = clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)`` where ``mask`` is true (actions: all but the gripper,
which stays in {0, 1}); afterwards every dim with ``min == max`` is forced to 0 (upstream applies that rule to
all dims, masked or not). The inverse maps [-1, 1] back to [q01, q99] on masked dims and passes the rest through.
"""

from __future__ import annotations

import warnings

import numpy as np

EPS = 1e-8
ACTION_MASK = [True] * 6 + [False]  # EEF_POS actions: the gripper is absolute and not normalized


def _arr(stats: dict, key: str) -> np.ndarray:
    values = np.asarray(stats[key], dtype=np.float32)
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"dataset statistics '{key}' = {values.tolist()} hold NaN/inf, which would turn every action into "
            "NaN. Recompute dataset_statistics.json with `stamo-vla stats` (the data must be finite)."
        )
    return values


def _finite(x: np.ndarray, what: str) -> np.ndarray:
    if not np.all(np.isfinite(x)):
        raise ValueError(
            f"{what} holds NaN/inf ({np.asarray(x).tolist()[:8]}); only finite values are allowed."
        )
    return x


def degenerate_dims(stats: dict) -> list[int]:
    """Normalized dims whose q01 == q99 while min < max: they map to one constant (-1/+1 after clipping)."""
    q01, q99 = np.asarray(stats["q01"], np.float64), np.asarray(stats["q99"], np.float64)
    spread = np.asarray(stats.get("max", q99), np.float64) - np.asarray(stats.get("min", q01), np.float64)
    mask = np.asarray(stats.get("mask", [True] * len(q01)), dtype=bool)
    return [int(i) for i in np.nonzero(mask & (q99 - q01 <= 0) & (spread > 0))[0]]


def warn_degenerate(stats: dict, where: str) -> list[int]:
    """Warn naming the degenerate dims of one statistics block (see `degenerate_dims`); returns them."""
    dims = degenerate_dims(stats)
    if dims:
        warnings.warn(
            f"{where}: dims {dims} have q01 == q99 but differ between min and max, so normalization maps "
            "almost every value of them to one constant and the policy outputs a constant there. Check the data "
            "(a rarely moving dim needs more episodes), or its statistics.",
            stacklevel=3,
        )
    return dims


def _mask(stats: dict, dim: int) -> np.ndarray:
    return np.asarray(stats.get("mask", [True] * dim), dtype=bool)


def _check_dims(q01: np.ndarray, x: np.ndarray, what: str) -> None:
    if q01.shape != x.shape[-1:]:
        raise ValueError(
            f"{what}: the statistics have shape {q01.shape}, the values (..., {x.shape[-1]}): they describe other "
            "data (upstream OpenVLA's dataset_statistics.json holds a 7-D zero proprio block). Use the statistics "
            "of this data (`stamo-vla stats`)."
        )


def normalize(x: np.ndarray, stats: dict) -> np.ndarray:
    """Normalize `x` (..., D) with one statistics block (keys q01, q99, min, max and optional mask)."""
    x = _finite(np.asarray(x, dtype=np.float32), "normalize input")
    q01, q99 = _arr(stats, "q01"), _arr(stats, "q99")
    _check_dims(q01, x, "normalize")
    mask = _mask(stats, x.shape[-1])
    scaled = np.clip(2.0 * (x - q01) / (q99 - q01 + EPS) - 1.0, -1.0, 1.0)
    out = np.where(mask, scaled, x)
    return np.where(_arr(stats, "min") == _arr(stats, "max"), 0.0, out).astype(np.float32)


def unnormalize(y: np.ndarray, stats: dict) -> np.ndarray:
    """Inverse of `normalize` on masked dims: ``0.5 (y + 1) (q99 - q01 + 1e-8) + q01``; others unchanged."""
    y = _finite(np.asarray(y, dtype=np.float32), "unnormalize input")
    q01, q99 = _arr(stats, "q01"), _arr(stats, "q99")
    _check_dims(q01, y, "unnormalize")
    mask = _mask(stats, y.shape[-1])
    return np.where(mask, 0.5 * (y + 1.0) * (q99 - q01 + EPS) + q01, y).astype(np.float32)
