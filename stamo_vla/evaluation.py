"""``stamo-vla eval``: policies on the LIBERO harness. The harness (`stamo_vla.libero.evaluation`) runs any
`stamo_vla.policy.Policy` and builds none itself; the evaluation config names a policy kind (``--policy.type``, a
registered choice); the kinds that load models, each with its own loading fields, live in `stamo_vla.policy_kinds`
and are registered when this module is imported:

    checkpoint  (default) our OpenVLA-compatible checkpoint: upstream, a full fine-tune, or merged (its action
                head, tokens or L1, acts through the action-head registry)
    adapter     a StaMo/LoRA adapter directory on its base checkpoint
    oft         a released OpenVLA-OFT directory (both cameras, proprio, the 8-step chunk open loop)
    scripted    the privileged-state oracle (registered by the harness: it needs no model)

The protocol is upstream OpenVLA's, batched over env workers.

    # one suite, 8 simulator workers, videos of failures
    stamo-vla eval --policy.checkpoint runs/openvla-libero-spatial --suites '[libero_spatial]' \\
        --num_workers 8 --output_dir runs/eval/spatial

    # base model + a StaMo/LoRA adapter, 4-bit, all four standard suites
    stamo-vla eval --policy.type adapter --policy.checkpoint /models/openvla-7b \\
        --policy.adapter_dir runs/stamo/adapter --policy.quantization 4bit \\
        --suites '[libero_spatial,libero_object,libero_goal,libero_10]'

    # a released OpenVLA-OFT directory
    stamo-vla eval --policy.type oft --policy.checkpoint /models/openvla-7b-oft-finetuned-libero-spatial

    # the scripted privileged-state oracle (checks the harness itself)
    stamo-vla eval --policy.type scripted --suites '[libero_object]' --num_trials_per_task 5

    # several GPUs: each rank takes a round-robin share of the episodes; rank 0 writes the summary
    torchrun --nproc-per-node 4 -m stamo_vla.cli eval --policy.checkpoint ... --num_workers 4

    # a YAML preset (stamo_vla/presets/eval_<name>.yaml), plus overrides
    stamo-vla eval --config tiny --output_dir /tmp/eval

Rerunning the same command with the same --output_dir resumes an interrupted evaluation (also one written before
the policy was a registered choice). Every option is documented by ``--help``.
"""

from __future__ import annotations

import sys
from typing import Any

from stamo_vla.configs import parse_config
from stamo_vla.libero import evaluation as harness
from stamo_vla.libero.evaluation_config import EvalConfig, check_moved_flags
from stamo_vla.libero.results import SUMMARY_JSON, summary_markdown
from stamo_vla.policy import Policy

# importing the kinds registers them as choices of --policy.type; they are re-exported for callers of this module
from stamo_vla.policy_kinds import (
    AdapterPolicyConfig,
    CheckpointPolicyConfig,
    ModelPolicyConfig,
    ReleasedOFTPolicyConfig,
    SuiteKeyedPolicy,
    load_adapter_into,
    released_oft_dir,
)

__all__ = [
    "AdapterPolicyConfig",
    "CheckpointPolicyConfig",
    "EvalConfig",
    "ModelPolicyConfig",
    "ReleasedOFTPolicyConfig",
    "SuiteKeyedPolicy",
    "build_policy",
    "evaluate",
    "load_adapter_into",
    "main",
    "parse",
    "released_oft_dir",
]


def build_policy(cfg: EvalConfig, device_index: int = 0) -> Policy:
    """The policy `cfg` names, on CUDA device `device_index` (a kind that reads the simulator needs the harness's
    worker pool: the harness builds it)."""
    return cfg.policy.build(cfg, device_index)


def evaluate(cfg: EvalConfig, **kwargs: Any) -> dict[str, Any] | None:
    """`stamo_vla.libero.evaluation.evaluate` with every policy kind registered; keyword arguments
    (``pool_factory``, ``policy``, ``catalog``) pass through."""
    return harness.evaluate(cfg, **kwargs)


def parse(argv: list[str]) -> EvalConfig:
    """The `EvalConfig` of a command line (``--config`` presets, overrides; an old flat flag is refused with its
    new spelling)."""
    check_moved_flags(argv)
    return parse_config(EvalConfig, argv, prefix="eval_")


def main(argv: list[str] | None = None) -> int:
    """Parse the config, run (or resume) the evaluation, print the summary table; returns an exit code."""
    cfg = parse(sys.argv[1:] if argv is None else argv)
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
