"""Run every benchmark under eval/bench/ and write JSON plus a markdown table.

    python -m eval.bench [--quick] [--only adapter,predict_action] [--out runs/bench]
    stamo-vla bench [--quick] ...

Each benchmark module ``eval/bench/bench_<name>.py`` exposes ``run(quick: bool) -> dict`` and measures its
comparisons side by side in one run (ratios are the numbers to read; absolute times depend on the machine,
which is described in the output).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import platform
import time
import traceback
from pathlib import Path

BENCHMARKS = ("predict_action", "adapter", "stamo", "rlds_loader", "env", "eval", "oft")


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(ValueError, OSError):
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    return info


def flatten(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        or isinstance(value, (str, bool))
        or value is None
    ):
        rows.append((prefix, value))


def markdown(results: dict, info: dict) -> str:
    lines = ["# Benchmarks", "", "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), ""]
    for name, res in results.items():
        lines += [f"## {name}", ""]
        if "error" in res:
            lines += [f"failed: `{res['error']}`", ""]
            continue
        rows: list = []
        flatten("", res, rows)
        lines += ["| metric | value |", "|---|---|"]
        for key, value in rows:
            shown = f"{value:.4g}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stamo-vla bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repeats (seconds per benchmark)"
    )
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--out", default="runs/bench", help="output folder for bench.json and bench.md")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; available: {list(BENCHMARKS)}")
    from stamo_vla.fileio import write_json_atomic, write_text_atomic

    info, results = machine(), {}
    for name in names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(f"eval.bench.bench_{name}")
            results[name] = module.run(quick=args.quick)
        except Exception as err:  # one failing benchmark must not hide the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        results[name]["wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(args.out)
    write_json_atomic(out / "bench.json", {"machine": info, "quick": args.quick, "results": results})
    write_text_atomic(out / "bench.md", markdown(results, info))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    failed = [n for n, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
