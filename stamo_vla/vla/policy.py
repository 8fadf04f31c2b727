"""`OpenVLAPolicy`: images + instructions -> un-normalized actions, batched (the evaluation-facing API)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch


class OpenVLAPolicy:
    """Wraps an OpenVLA model, its processor and the dataset key used to un-normalize actions.

    Args:
        model: an `OpenVLAForActionPrediction` (possibly quantized; it is never moved here).
        processor: the matching `OpenVLAProcessor`.
        unnorm_key: dataset key of `model.norm_stats`; None when the model has exactly one.
    """

    action_chunk: int = 1  # token policies predict one step per call

    def __init__(self, model: Any, processor: Any, unnorm_key: str | None = None):
        from stamo_vla.vla.generation import check_unnorm_key

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

        quantized = load_in_4bit or load_in_8bit
        kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
        if dtype is not None:
            kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if quantized:
            kwargs.update(load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit)
            if device is not None:
                kwargs["device_map"] = {"": str(device)}
        model = OpenVLAForActionPrediction.from_pretrained(path, **kwargs)
        if not quantized:  # quantized models are placed by device_map; `.to()` is refused for them
            model = model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(model, OpenVLAProcessor.from_pretrained(path), unnorm_key=unnorm_key)

    def _check_images(self, images: list[np.ndarray], instructions: list[str]) -> None:
        if len(images) != len(instructions) or not images:
            raise ValueError(
                f"predict_batch: got {len(images)} images and {len(instructions)} instructions; "
                f"need the same non-zero number."
            )
        h, w = self.image_size
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
                raise ValueError(
                    f"predict_batch: image {i} has shape {arr.shape} dtype {arr.dtype}; expected ({h}, {w}, 3) "
                    f"uint8 RGB, upright (use stamo_vla.libero.protocol.prepare_image for LIBERO frames)."
                )

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

        self._check_images(images, instructions)
        prompts = [build_prompt(text) for text in instructions]
        inputs = self.processor(prompts, list(images))
        dtype = next(p for p in self.model.parameters() if p.dtype.is_floating_point).dtype
        return inputs["pixel_values"].to(dtype), inputs["input_ids"], inputs["attention_mask"]
