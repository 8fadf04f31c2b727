"""`OpenVLAPolicy`: images + instructions -> un-normalized actions, batched (the evaluation-facing API)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from stamo_vla.policy import Policy
from stamo_vla.vla.generation import check_unnorm_key
from stamo_vla.vla.loading import load_vla


class OpenVLAPolicy(Policy):
    """Wraps an OpenVLA model, its processor and the dataset key used to un-normalize actions.

    Args:
        model: an `OpenVLAForActionPrediction` (possibly quantized; it is never moved here).
        processor: the matching `OpenVLAProcessor`.
        unnorm_key: dataset key of `model.norm_stats`; None when the model has exactly one.
    """

    action_chunk: int = 1  # token policies predict one step per call

    def __init__(self, model: Any, processor: Any, unnorm_key: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.unnorm_key = check_unnorm_key(model.norm_stats, unnorm_key)
        self.image_size = tuple(processor.image_processor.size)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        unnorm_key: str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str = "sdpa",
        load_in_4bit: bool = False,
        load_in_8bit: bool = False,
        device: str | torch.device | None = None,
    ) -> OpenVLAPolicy:
        """Load model + processor from an upstream-layout checkpoint directory.

        Args:
            path: checkpoint directory.
            unnorm_key: see the class docstring.
            dtype: weight dtype (e.g. torch.bfloat16 on GPU); None keeps the checkpoint's.
            attn_implementation: "sdpa" (default), "eager" or "flash_attention_2" (falls back to sdpa).
            load_in_4bit: bitsandbytes 4-bit (placed with device_map; works on CPU in fp32 compute).
            load_in_8bit: bitsandbytes 8-bit.
            device: where to put a non-quantized model (default: CUDA if available, else CPU).
        """
        from stamo_vla.vla.modeling_openvla import OpenVLAForActionPrediction
        from stamo_vla.vla.processing_openvla import OpenVLAProcessor

        if load_in_4bit and load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive; pass one of them.")
        quantization = "4bit" if load_in_4bit else "8bit" if load_in_8bit else "none"
        if quantization == "none" and device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = load_vla(OpenVLAForActionPrediction, path, device, dtype, quantization, attn_implementation)
        return cls(model, OpenVLAProcessor.from_pretrained(path), unnorm_key=unnorm_key)

    @torch.no_grad()
    def predict_batch(self, images: list[np.ndarray], instructions: list[str], **obs: Any) -> np.ndarray:
        """Actions for a batch of observations.

        Args:
            images: B upright (224, 224, 3) uint8 RGB images.
            instructions: B task descriptions (lower-cased into the prompt).
            obs: other observation entries (unused by the token policy).

        Returns:
            (B, 1, 7) float actions in dataset convention (un-normalized; gripper ~1 open, ~0 closed).
        """
        actions = self.model.predict_action(
            *self.model_inputs(images, instructions), unnorm_key=self.unnorm_key
        )
        return actions[:, None, :].astype(np.float32)

    def model_inputs(
        self, images: list[np.ndarray], instructions: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validated images + prompts -> (pixel_values in the model's dtype, input_ids, attention_mask)."""
        from stamo_vla.vla.processing_openvla import build_prompt

        self.check_images(images, len(instructions), self.image_size)
        prompts = [build_prompt(text) for text in instructions]
        inputs = self.processor(prompts, list(images))
        dtype = next(p for p in self.model.parameters() if p.dtype.is_floating_point).dtype
        return inputs["pixel_values"].to(dtype), inputs["input_ids"], inputs["attention_mask"]
