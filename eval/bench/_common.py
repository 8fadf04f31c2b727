"""Pieces every benchmark shares: interleaved timing and the ``python -m eval.bench.bench_<name> [--quick] [--json]`` CLI."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable


def timed_rounds(
    fns: dict[str, Callable[[], object]], repeats: int, reduce: str = "median"
) -> dict[str, float]:
    """Seconds per call of each function: one warm-up call each, then `repeats` rounds in which the variants
    alternate, so load changes on a shared machine hit all of them alike; reduced by "median" or "min"."""
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


def bench_main(
    run: Callable[..., dict], doc: str | None, quick_help: str, argv: list[str] | None = None
) -> int:
    """Parse ``--quick`` / ``--json``, call ``run(quick=...)`` (which prints its table) and optionally save the numbers."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)
    result = run(quick=args.quick)
    if args.json:
        from stamo_vla.fileio import write_json_atomic

        write_json_atomic(args.json, result)
    return 0
