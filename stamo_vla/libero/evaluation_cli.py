"""``stamo-vla eval``: evaluate a policy on LIBERO with the upstream OpenVLA protocol, batched over env workers.

    # one suite, 8 simulator workers, videos of failures
    stamo-vla eval --checkpoint runs/openvla-libero-spatial --suites '[libero_spatial]' \\
        --num_workers 8 --output_dir runs/eval/spatial

    # base model + a StaMo/LoRA adapter, 4-bit, all four standard suites
    stamo-vla eval --checkpoint /models/openvla-7b --adapter_dir runs/stamo/adapter \\
        --quantization 4bit --suites '[libero_spatial,libero_object,libero_goal,libero_10]'

    # the scripted privileged-state oracle (checks the harness itself)
    stamo-vla eval --policy scripted --suites '[libero_object]' --num_trials_per_task 5

    # several GPUs: each rank takes a round-robin share of the episodes; rank 0 writes the summary
    torchrun --nproc-per-node 4 -m stamo_vla.cli eval --checkpoint ... --num_workers 4

    # a YAML preset (stamo_vla/presets/eval_<name>.yaml), plus overrides
    stamo-vla eval --config tiny --output_dir /tmp/eval

Rerunning the same command with the same --output_dir resumes an interrupted evaluation. Every option is
documented by ``--help``; the harness itself is `stamo_vla.libero.evaluation.evaluate`.
"""

from __future__ import annotations

import sys

from stamo_vla.configs import parse_config
from stamo_vla.libero.evaluation import evaluate
from stamo_vla.libero.evaluation_config import EvalConfig
from stamo_vla.libero.results import SUMMARY_JSON, summary_markdown


def main(argv: list[str] | None = None) -> int:
    """Parse the config, run (or resume) the evaluation, print the summary table; returns an exit code."""
    cfg = parse_config(EvalConfig, sys.argv[1:] if argv is None else argv, prefix="eval_")
    try:
        summary = evaluate(cfg)
    except KeyboardInterrupt:
        # finished episodes are already on disk; the same command picks up where this one stopped
        print(
            f"stamo-vla eval: interrupted; rerun with --output_dir {cfg.output_dir} to resume",
            file=sys.stderr,
        )
        return 130
    if summary is not None:
        print(summary_markdown(summary))
        print(f"summary written to {cfg.output_dir}/{SUMMARY_JSON}")
    return 0
