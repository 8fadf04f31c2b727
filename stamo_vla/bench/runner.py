"""``stamo-vla bench``: run the benchmarks and write JSON plus a markdown table.

    stamo-vla bench [--quick true] [--only '[adapter,predict_action]'] [--output_dir runs/bench]
    stamo-vla bench --device cuda [--output_dir runs/bench_cuda]   # the GPU benchmarks (skipped without a GPU)
    stamo-vla bench --only '[big]'      # on demand: the openvla-7b-shaped load / attach / predict / merge
    python -m eval.bench ...            # the same, from a checkout

Each benchmark module ``stamo_vla/bench/bench_<name>.py`` exposes ``run(quick: bool) -> dict`` and measures its
comparisons side by side in one run (ratios are the numbers to read; absolute times depend on the machine,
which is described in the output).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from stamo_vla.configs import check_choice, parse_config
from stamo_vla.fileio import write_json_atomic, write_text_atomic

BENCHMARKS = (
    "predict_action",
    "adapter",
    "stamo",
    "rlds_loader",
    "env",
    "eval",
    "oft",
    "train",
    "big",
    "cuda",
)
# run only when named (--only) or, for cuda, by --device cuda: minutes of disk I/O, or a GPU
ON_DEMAND = ("big", "cuda")
DEVICES = {"cpu": tuple(b for b in BENCHMARKS if b not in ON_DEMAND), "cuda": ("cuda",)}


@dataclasses.dataclass
class BenchConfig:
    """Options of ``stamo-vla bench``."""

    # Small sizes and few repeats (seconds per benchmark).
    quick: bool = False
    # Benchmarks to run (empty: every CPU benchmark, or with --device cuda the GPU ones). On demand only:
    # big (openvla-7b-shaped load/attach/predict/merge, ~31 GB of disk) and cuda.
    only: list[str] = dataclasses.field(default_factory=list)
    # cpu: the CPU benchmarks; cuda: the GPU benchmarks at the openvla-7b shape (skipped without a GPU).
    device: str = "cpu"
    # Output folder of bench.json and bench.md.
    output_dir: str = "runs/bench"

    def __post_init__(self) -> None:
        for name in self.only:
            check_choice("only entry", name, BENCHMARKS)
        check_choice("device", self.device, tuple(DEVICES))

    @property
    def names(self) -> list[str]:
        return list(self.only) or list(DEVICES[self.device])


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
    """Append a (dotted name, value) row to `rows` for every number, string, bool or None inside `value`.

    Args:
        prefix: the dotted name of `value` ("" at the top).
        value: a result: a dict (walked) or a leaf.
        rows: the rows appended to.
    """
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


def run_benchmarks(cfg: BenchConfig) -> dict:
    """Run the selected benchmarks (one failing does not stop the others); write bench.json and bench.md."""
    info, results = machine(), {}
    for name in cfg.names:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            module = importlib.import_module(f"stamo_vla.bench.bench_{name}")
            results[name] = module.run(quick=cfg.quick)
        except Exception as err:  # one failing benchmark must not hide the others' numbers
            traceback.print_exc()
            results[name] = {"error": f"{type(err).__name__}: {err}"}
        results[name]["wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(cfg.output_dir)
    write_json_atomic(out / "bench.json", {"machine": info, "quick": cfg.quick, "results": results})
    write_text_atomic(out / "bench.md", markdown(results, info))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")
    return results


def main(argv: list[str] | None = None) -> int:
    """``stamo-vla bench``; exits 1 when a benchmark failed."""
    results = run_benchmarks(parse_config(BenchConfig, sys.argv[1:] if argv is None else argv))
    return 1 if any("error" in r for r in results.values()) else 0
