"""The evaluation policy kinds that load models, registered as choices of ``--policy.type``:

    checkpoint  (default) our OpenVLA-compatible checkpoint: upstream, a full fine-tune, or merged (its action
                head, tokens or L1, acts through the action-head registry)
    adapter     a StaMo/LoRA adapter directory on its base checkpoint
    oft         a released OpenVLA-OFT directory (both cameras, proprio, the 8-step chunk open loop)

Each kind owns its loading fields and builds a `stamo_vla.policy.Policy`, keyed by suite (`SuiteKeyedPolicy`).
The harness (`stamo_vla.libero`) may not import model code, so the kinds sit here, above it; importing
`stamo_vla.evaluation` registers them (model code itself is imported inside `build`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stamo_vla.configs import check_choice, check_positive_int
from stamo_vla.libero.evaluation_config import EvalConfig
from stamo_vla.libero.evaluation_policies import PolicyConfig, resolve_unnorm_key
from stamo_vla.policy import Policy

DTYPES = ("auto", "bfloat16", "float16", "float32")
QUANTIZATIONS = ("none", "8bit", "4bit")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
DEVICES = ("auto", "cpu", "cuda")


class SuiteKeyedPolicy(Policy):
    """A dataset-convention policy whose un-normalization key follows the suite being evaluated.

    Upstream evaluates one suite per process with ``unnorm_key = suite`` (or ``<suite>_no_noops``); a
    multi-suite run switches the key with `set_suite` before each suite's episodes.

    Args:
        policy: a `Policy` with an ``unnorm_key`` and ``model.norm_stats`` (`OpenVLAPolicy`, `OFTPolicy`,
            `FutureFramePolicy`).
        requested_key: ``policy.unnorm_key`` (None = per-suite default with the upstream fallback).
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
        """(B, K, 7) dataset-convention actions from the wrapped policy.

        Args:
            images: one observation image per row.
            instructions: one instruction per row.
            **obs: other observation fields (wrist image, proprio, slots) passed through.
        """
        return self.policy.predict_batch(images, instructions, **obs)


@dataclass
class ModelPolicyConfig(PolicyConfig):
    """The loading fields every model kind shares (not a kind itself)."""

    # model directory saved with save_pretrained (the kind says which: ours, the adapter's base, a released OFT)
    checkpoint: str = ""
    # key of the action statistics used to un-normalize; default: the suite, falling back to <suite>_no_noops
    unnorm_key: str | None = None
    # compute dtype of the model; "auto" = bfloat16 on CUDA, float32 on CPU
    dtype: str = "auto"
    # weight quantization through bitsandbytes: "none", "8bit" or "4bit" (NF4)
    quantization: str = "none"
    # attention kernel; "flash_attention_2" falls back to "sdpa" when flash-attn is not installed
    attn_implementation: str = "sdpa"
    # device for the policy; "auto" = cuda:<LOCAL_RANK> when CUDA is available, else cpu
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.checkpoint:
            raise ValueError(
                f"policy.checkpoint is empty; policy.type={self.name} needs --policy.checkpoint <model dir>"
            )
        check_choice("policy.dtype", self.dtype, DTYPES)
        check_choice("policy.quantization", self.quantization, QUANTIZATIONS)
        check_choice("policy.attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_choice("policy.device", self.device, DEVICES)

    def input_dirs(self) -> dict[str, str | None]:
        return {"policy.checkpoint": self.checkpoint}

    def provenance_dir(self) -> str | None:
        return self.checkpoint

    def check_paths(self) -> None:
        expected = {
            "policy.checkpoint": "a model directory saved with save_pretrained",
            "policy.adapter_dir": "an adapter directory written by save_adapter (stamo-vla finetune)",
        }
        for name, path in self.input_dirs().items():
            if not Path(path).is_dir():
                raise FileNotFoundError(f"{name}={path!r} is not a directory; pass {expected[name]}")

    def outcome_settings(self) -> dict[str, Any]:
        # every model kind loads an OpenVLA-family model ("openvla" in configs of earlier versions); which kind
        # follows from the directories, which a kind refuses when they are another kind's
        names = ("checkpoint", "unnorm_key", "dtype", "quantization", "attn_implementation")
        return {"policy": "openvla", **{n: getattr(self, n) for n in names}}

    def device_for(self, device_index: int) -> str:
        """The torch device of this rank."""
        import torch

        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                "policy.device='cuda' but CUDA is not available; use --policy.device auto or --policy.device cpu"
            )
        if self.device == "cpu" or not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{device_index % max(1, torch.cuda.device_count())}"

    def load(self, model_cls: Any, device: str) -> Any:
        """`checkpoint` as `model_cls` on `device`, with this kind's dtype, quantization and attention."""
        from stamo_vla.vla.loading import load_vla

        dtype = self.dtype
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        return load_vla(
            model_cls, self.checkpoint, device, dtype, self.quantization, self.attn_implementation
        )

    def suite_keyed(self, inner: Policy, suites: list[str]) -> SuiteKeyedPolicy:
        """`inner` keyed by suite, every suite's statistics key checked now (before any simulator starts, so a
        checkpoint without the statistics fails in seconds with the keys it does have)."""
        policy = SuiteKeyedPolicy(inner, self.unnorm_key)
        for suite in suites:
            policy.unnorm_key_for(suite)
        return policy

    def first_key(self, model: Any, cfg: EvalConfig) -> str:
        """The statistics key of the first suite (the policy starts with it)."""
        return resolve_unnorm_key(model.norm_stats, cfg.suites[0], self.unnorm_key)


@PolicyConfig.register_subclass("checkpoint")
@dataclass
class CheckpointPolicyConfig(ModelPolicyConfig):
    """Our OpenVLA-compatible checkpoint: upstream, a full fine-tune, or a merged adapter (tokens or L1 head)."""

    def build(self, cfg: EvalConfig, device_index: int = 0, pool: Any = None) -> Policy:
        """Our checkpoint (a merged adapter's head acts through the action-head registry) as a `Policy`.

        Args:
            cfg: the whole evaluation config (suites and crop).
            device_index: the CUDA device of this evaluation process.
            pool: unused (the model kinds are built before any env worker starts).
        """
        from stamo_vla.adapter.configuration_adapter import CONFIG_NAME
        from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction
        from stamo_vla.vla.policy import OpenVLAPolicy
        from stamo_vla.vla.processing_openvla import OpenVLAProcessor

        if released_oft_dir(self.checkpoint):
            raise ValueError(
                f"policy.checkpoint={self.checkpoint!r} is a released OpenVLA-OFT directory (an "
                "action_head--<step>_checkpoint.pt beside the weights); evaluate it with --policy.type oft"
            )
        processor = OpenVLAProcessor.from_pretrained(self.checkpoint)
        model = self.load(OpenVLAForActionPrediction, self.device_for(device_index))
        if not (Path(self.checkpoint) / CONFIG_NAME).is_file():  # upstream: its 7 action tokens, no adapter
            return self.suite_keyed(OpenVLAPolicy(model, processor, self.first_key(model, cfg)), cfg.suites)
        # merged by stamo_vla: the head (and an L1 head's modules) sit beside the merged weights
        adapter = load_adapter_into(model, self.checkpoint)
        head = adapter.config.action_head
        return self.suite_keyed(head.policy(adapter, processor, self.first_key(adapter.vla, cfg)), cfg.suites)


@PolicyConfig.register_subclass("adapter")
@dataclass
class AdapterPolicyConfig(ModelPolicyConfig):
    """A StaMo/LoRA adapter (`stamo_vla.adapter.load_adapter`) on its base checkpoint."""

    # the adapter directory written by save_adapter (its dataset_statistics.json replaces the base's statistics)
    adapter_dir: str = ""
    # StaMo autoencoder (with decoder) used to draw the head's predicted future state beside each rollout video
    # frame; needs the tokens action head, a StaMo head and video != "none" (costs one decode per step)
    future_video_stamo: str | None = None
    # flow-matching steps of those decodes (None: the checkpoint's default)
    future_video_sample_steps: int | None = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.adapter_dir:
            raise ValueError(
                "policy.adapter_dir is empty; policy.type=adapter needs --policy.adapter_dir <dir>"
            )
        if self.future_video_sample_steps is not None:
            check_positive_int("policy.future_video_sample_steps", self.future_video_sample_steps)

    def check_settings(self, cfg: EvalConfig) -> None:
        if self.future_video_stamo is not None and cfg.video == "none":
            raise ValueError(
                f"policy.future_video_stamo={self.future_video_stamo!r} draws the predicted future state into "
                "the rollout videos: it needs video 'all' or 'failures', got video='none'"
            )

    def input_dirs(self) -> dict[str, str | None]:
        return {**super().input_dirs(), "policy.adapter_dir": self.adapter_dir}

    def provenance_dir(self) -> str | None:
        return self.adapter_dir

    def outcome_settings(self) -> dict[str, Any]:
        return {**super().outcome_settings(), "adapter_dir": self.adapter_dir}

    def build(self, cfg: EvalConfig, device_index: int = 0, pool: Any = None) -> Policy:
        """The adapter on its base checkpoint as a `Policy` (optionally writing the future-state video).

        Args:
            cfg: the whole evaluation config (suites and crop).
            device_index: the CUDA device of this evaluation process.
            pool: unused (the model kinds are built before any env worker starts).
        """
        from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction
        from stamo_vla.vla.processing_openvla import OpenVLAProcessor

        device = self.device_for(device_index)
        processor = OpenVLAProcessor.from_pretrained(self.checkpoint)
        # the adapter's LoRA acts inside the base model's modules; its dataset_statistics.json replaces the base
        # model's statistics; the future-state head is not needed to act
        adapter = load_adapter_into(self.load(OpenVLAForActionPrediction, device), self.adapter_dir)
        first = self.first_key(adapter.vla, cfg)
        if self.future_video_stamo is None:
            inner = adapter.config.action_head.policy(adapter, processor, first)
        else:
            inner = self._future_frame_policy(adapter, processor, first, device)
        return self.suite_keyed(inner, cfg.suites)

    def _future_frame_policy(self, adapter: Any, processor: Any, unnorm_key: str, device: str) -> Policy:
        from stamo_vla.adapter.policy import FutureFramePolicy
        from stamo_vla.stamo import StaMoAutoencoder

        if adapter.config.action_head.name != "tokens":
            raise ValueError(
                f"policy.future_video_stamo={self.future_video_stamo!r} draws the future state of a tokens-head "
                f"adapter; {self.adapter_dir} has action_head.type={adapter.config.action_head.name!r}: drop "
                "--policy.future_video_stamo"
            )
        stamo = StaMoAutoencoder.from_pretrained(self.future_video_stamo).to(device).eval()
        adapter.set_stamo(stamo.encoder, stamo.decoder)
        return FutureFramePolicy(adapter, processor, unnorm_key, sample_steps=self.future_video_sample_steps)


@PolicyConfig.register_subclass("oft")
@dataclass
class ReleasedOFTPolicyConfig(ModelPolicyConfig):
    """A released OpenVLA-OFT directory: OFT's LIBERO protocol (both cameras, proprio, the whole 8-step chunk
    open loop unless open_loop_steps says otherwise)."""

    def build(self, cfg: EvalConfig, device_index: int = 0, pool: Any = None) -> Policy:
        """A released OpenVLA-OFT directory as a `Policy`.

        Args:
            cfg: the whole evaluation config (suites and crop).
            device_index: the CUDA device of this evaluation process.
            pool: unused (the model kinds are built before any env worker starts).
        """
        from stamo_vla.adapter.oft_policy import OFTPolicy
        from stamo_vla.vla.oft_model import OpenVLAOFTForActionPrediction
        from stamo_vla.vla.processing_openvla import OpenVLAProcessor

        if not released_oft_dir(self.checkpoint):
            raise ValueError(
                f"policy.checkpoint={self.checkpoint!r} is not a released OpenVLA-OFT directory (no "
                "action_head--<step>_checkpoint.pt beside the weights); evaluate our checkpoints with "
                "--policy.type checkpoint (merged) or adapter"
            )
        processor = OpenVLAProcessor.from_pretrained(self.checkpoint)
        model = self.load(OpenVLAOFTForActionPrediction, self.device_for(device_index))
        return self.suite_keyed(OFTPolicy(model, processor, self.first_key(model, cfg)), cfg.suites)


def released_oft_dir(checkpoint: str) -> bool:
    """True for a released OpenVLA-OFT directory (``action_head--<step>_checkpoint.pt`` beside the weights)."""
    from stamo_vla.vla.oft_loading import is_oft_directory

    return is_oft_directory(checkpoint)


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
