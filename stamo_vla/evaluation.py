"""``stamo-vla eval``: our policies on the LIBERO harness. The harness (`stamo_vla.libero.evaluation`) runs any
`stamo_vla.policy.Policy` and builds none itself; this module loads our OpenVLA-compatible checkpoints (optionally
+ a StaMo/LoRA adapter, or a released OpenVLA-OFT directory) as policies and hands them to it. The protocol is upstream OpenVLA's, batched over env workers.

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
documented by ``--help``.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from stamo_vla.configs import parse_config
from stamo_vla.libero import evaluation as harness
from stamo_vla.libero.evaluation_config import EvalConfig
from stamo_vla.libero.evaluation_policies import resolve_unnorm_key
from stamo_vla.libero.results import SUMMARY_JSON, summary_markdown
from stamo_vla.policy import Policy


class SuiteKeyedPolicy(Policy):
    """A dataset-convention policy whose un-normalization key follows the suite being evaluated.

    Upstream evaluates one suite per process with ``unnorm_key = suite`` (or ``<suite>_no_noops``); a
    multi-suite run switches the key with `set_suite` before each suite's episodes.

    Args:
        policy: a `Policy` with an ``unnorm_key`` and ``model.norm_stats`` (`OpenVLAPolicy`, `OFTPolicy`,
            `FutureFramePolicy`).
        requested_key: ``EvalConfig.unnorm_key`` (None = per-suite default with the upstream fallback).
    """

    def __init__(self, policy: Policy, requested_key: str | None = None) -> None:
        self.policy = policy
        self.requested_key = requested_key
        self.action_chunk = int(policy.action_chunk)
        self.uses_wrist_image = policy.uses_wrist_image
        self.predicts_future_frames = policy.predicts_future_frames
        self.image_size = tuple(policy.image_size)

    def future_frames(self) -> list[np.ndarray | None] | None:
        return self.policy.future_frames()

    def unnorm_key_for(self, suite: str) -> str:
        """The statistics key used for `suite` (raises with the available keys when there is none)."""
        return resolve_unnorm_key(self.policy.model.norm_stats, suite, self.requested_key)

    def set_suite(self, suite: str) -> str:
        """Un-normalize with `suite`'s statistics from now on; returns the key used."""
        self.policy.unnorm_key = self.unnorm_key_for(suite)
        return self.policy.unnorm_key

    def predict_batch(self, images: list[np.ndarray], instructions: list[str], **obs: Any) -> np.ndarray:
        """(B, K, 7) dataset-convention actions from the wrapped policy."""
        return self.policy.predict_batch(images, instructions, **obs)


def _device(cfg: EvalConfig, device_index: int) -> str:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but CUDA is not available; use --device auto or --device cpu")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{device_index % max(1, torch.cuda.device_count())}"


def _dtype(cfg: EvalConfig, device: str) -> str:
    if cfg.dtype != "auto":
        return cfg.dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _merged_oft_dir(checkpoint: str) -> str | None:
    """`checkpoint` itself when it is a merged OFT checkpoint: its L1 head / proprio projector sit beside the
    weights and it cannot act through token decoding."""
    from pathlib import Path

    from stamo_vla.adapter.configuration_adapter import CONFIG_NAME, StaMoAdapterConfig

    if (Path(checkpoint) / CONFIG_NAME).is_file() and StaMoAdapterConfig.load(
        checkpoint
    ).action_head.name != "tokens":
        return checkpoint
    return None


def released_oft_dir(checkpoint: str) -> bool:
    """True for a released OpenVLA-OFT directory (``action_head--<step>_checkpoint.pt`` beside the weights)."""
    from stamo_vla.vla.oft_loading import is_oft_directory

    return is_oft_directory(checkpoint)


def _load(model_cls: Any, cfg: EvalConfig, device: str) -> Any:
    from stamo_vla.vla.loading import load_vla

    return load_vla(
        model_cls, cfg.checkpoint, device, _dtype(cfg, device), cfg.quantization, cfg.attn_implementation
    )


def _released_oft_policy(cfg: EvalConfig, device: str, processor: Any) -> SuiteKeyedPolicy:
    """OFT's LIBERO protocol: both cameras, proprio, the whole 8-step chunk open loop (cfg.open_loop_steps)."""
    from stamo_vla.adapter.oft_policy import OFTPolicy
    from stamo_vla.vla.oft_model import OpenVLAOFTForActionPrediction

    model = _load(OpenVLAOFTForActionPrediction, cfg, device)
    first = resolve_unnorm_key(model.norm_stats, cfg.suites[0], cfg.unnorm_key)
    policy = SuiteKeyedPolicy(OFTPolicy(model, processor, unnorm_key=first), cfg.unnorm_key)
    for suite in cfg.suites:
        policy.unnorm_key_for(suite)
    return policy


def build_openvla_policy(cfg: EvalConfig, device_index: int = 0) -> SuiteKeyedPolicy:
    """Load ``cfg.checkpoint`` (+ ``cfg.adapter_dir``) as a batched policy and validate its statistics keys.

    Every suite's ``unnorm_key`` is resolved here, before any simulator starts, so a checkpoint without
    the statistics fails in seconds with the list of keys it does have.

    Args:
        cfg: evaluation config (checkpoint, adapter_dir, dtype, quantization, attention, device, unnorm_key).
        device_index: CUDA device of this rank (``LOCAL_RANK`` under torchrun).
    """
    from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction
    from stamo_vla.vla.policy import OpenVLAPolicy
    from stamo_vla.vla.processing_openvla import OpenVLAProcessor

    device = _device(cfg, device_index)
    processor = OpenVLAProcessor.from_pretrained(cfg.checkpoint)
    if cfg.adapter_dir is None and released_oft_dir(cfg.checkpoint):
        return _released_oft_policy(cfg, device, processor)
    model = _load(OpenVLAForActionPrediction, cfg, device)
    adapter = None
    adapter_dir = cfg.adapter_dir or _merged_oft_dir(cfg.checkpoint)
    if adapter_dir is not None:
        # the adapter's LoRA acts inside the base model's modules; its dataset_statistics.json replaces
        # the base model's statistics; the future-state head is not needed to act
        adapter = load_adapter_into(model, adapter_dir)
        model = adapter.vla
    first = resolve_unnorm_key(model.norm_stats, cfg.suites[0], cfg.unnorm_key)
    if adapter is not None and adapter.config.action_head.name != "tokens":
        inner = adapter.config.action_head.policy(adapter, processor, first)
    elif cfg.future_video_stamo is not None:
        from stamo_vla.adapter.policy import FutureFramePolicy
        from stamo_vla.stamo import StaMoAutoencoder

        stamo = StaMoAutoencoder.from_pretrained(cfg.future_video_stamo).to(device).eval()
        adapter.set_stamo(stamo.encoder, stamo.decoder)
        inner = FutureFramePolicy(
            adapter, processor, unnorm_key=first, sample_steps=cfg.future_video_sample_steps
        )
    else:
        inner = OpenVLAPolicy(model, processor, unnorm_key=first)
    policy = SuiteKeyedPolicy(inner, cfg.unnorm_key)
    for suite in cfg.suites:
        policy.unnorm_key_for(suite)
    return policy


def load_adapter_into(model: Any, adapter_dir: str) -> Any:
    """Attach a saved StaMo/LoRA adapter with ``stamo_vla.adapter.load_adapter`` (peft is imported only here)."""
    try:
        from stamo_vla.adapter import load_adapter
    except ImportError as err:
        raise RuntimeError(
            f"adapter_dir={adapter_dir!r} was given, but stamo_vla.adapter.load_adapter is not available "
            f"({err}). Evaluate a merged checkpoint instead (stamo-vla merge), or install a stamo_vla "
            "version that ships the adapter package."
        ) from err
    return load_adapter(model, adapter_dir)


def evaluate(cfg: EvalConfig, **kwargs: Any) -> dict[str, Any] | None:
    """`stamo_vla.libero.evaluation.evaluate` with our checkpoints as the policy of ``cfg.policy='openvla'``;
    keyword arguments (``pool_factory``, ``policy``, ``catalog``) pass through."""
    return harness.evaluate(cfg, policy_factory=build_openvla_policy, **kwargs)


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
