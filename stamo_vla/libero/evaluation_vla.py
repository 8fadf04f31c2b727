"""Loading our OpenVLA-compatible policy (optionally + StaMo/LoRA adapter) for LIBERO evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from stamo_vla.libero.evaluation_policies import load_adapter_into, resolve_unnorm_key
from stamo_vla.policy import Policy

if TYPE_CHECKING:
    from stamo_vla.libero.evaluation_config import EvalConfig


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
