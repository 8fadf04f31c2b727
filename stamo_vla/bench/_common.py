"""What every benchmark shares: interleaved timing of the variants it compares."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed_rounds(
    fns: dict[str, Callable[[], object]], repeats: int, reduce: str = "median"
) -> dict[str, float]:
    """Seconds per call of each function: one warm-up call each, then `repeats` rounds in which the variants
    alternate, so load changes on a shared machine hit all of them alike; reduced by "median" or "min".

    Args:
        fns: the variants to time, by name (each called with no argument).
        repeats: timed rounds.
        reduce: how the rounds are reduced: "median" or "min".
    """
    for fn in fns.values():
        fn()  # warm-up (allocator, kernels, caches)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    pick = {"median": statistics.median, "min": min}[reduce]
    return {name: float(pick(values)) for name, values in times.items()}
