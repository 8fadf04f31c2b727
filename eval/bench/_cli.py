"""The command line every benchmark module shares: ``python -m eval.bench.bench_<name> [--quick] [--json FILE]``."""

from __future__ import annotations

import argparse
from collections.abc import Callable


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
