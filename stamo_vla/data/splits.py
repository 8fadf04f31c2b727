"""Deterministic episode-level splits (train / test episodes), shared by the probe and the action decoder."""

from __future__ import annotations

import numpy as np


def split_episodes(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic episode-level split; at least one episode on each side.

    Args:
        n: the number of episodes.
        test_fraction: the fraction of them held out.
        seed: the seed of the split.
    """
    if n < 2:
        raise ValueError(f"the probe needs at least 2 episodes (one to train, one to test); got {n}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_test = min(max(1, round(n * test_fraction)), n - 1)
    return sorted(order[n_test:]), sorted(order[:n_test])
