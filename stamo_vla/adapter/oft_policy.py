"""`OFTPolicy`: the evaluation-facing batch API for an OFT-variant adapter (K actions per call, one pass)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stamo_vla.adapter.modeling_adapter import base_model_of
from stamo_vla.data.normalization import normalize
from stamo_vla.data.statistics import check_block_dims
from stamo_vla.policy import Policy
from stamo_vla.vla.generation import check_unnorm_key


class OFTPolicy(Policy):
    """Images (+ wrist images, raw proprio) and instructions -> (B, K, 7) un-normalized action chunks.

    Observations are expected preprocessed exactly as training data (upright 224x224 uint8, JPEG round trip,
    optional center crop: `stamo_vla.libero.protocol.prepare_image`); the raw 8-D proprio is normalized here with
    the same BOUNDS_Q99 statistics (and clipping) the training data used.

    Args:
        model: anything with OFT modules (``model.oft``), a ``model.vla`` and OFT's ``predict_action``: a
            `StaMoOFTAdapterModel` (from `attach` / `load_adapter` with action_head='l1') or a released
            OpenVLA-OFT checkpoint (`stamo_vla.vla.OpenVLAOFTForActionPrediction`).
        processor: the base model's `OpenVLAProcessor`.
        unnorm_key: dataset key of the statistics; None when there is exactly one.
    """

    def __init__(self, model: Any, processor: Any, unnorm_key: str | None = None):
        oft = getattr(model, "oft", None)
        if oft is None:
            head = getattr(getattr(model, "config", None), "action_head", None)
            kind = getattr(head, "name", type(model).__name__)
            raise ValueError(
                f"OFTPolicy needs an OFT model (an adapter with action_head='l1' or a released OpenVLA-OFT "
                f"checkpoint); got {kind!r} (use OpenVLAPolicy for token models)."
            )
        self.adapter = model.eval()
        self.model = base_model_of(
            model.vla
        )  # norm_stats live on the base model (evaluation harness contract)
        self.processor = processor
        self.unnorm_key = check_unnorm_key(self.model.norm_stats, unnorm_key)
        self.action_chunk = int(oft.action_chunk)
        self.uses_wrist_image = oft.num_images == 2
        self.uses_proprio = oft.proprio_projector is not None
        self.proprio_dim = oft.proprio_projector.proprio_dim if self.uses_proprio else None
        self.image_size = tuple(processor.image_processor.size)

    def normalize_proprio(self, proprio: np.ndarray) -> np.ndarray:
        """Raw (B, P) proprio -> normalized with the dataset's proprio statistics, clipped to [-1, 1]."""
        want = self.proprio_dim
        stats = check_block_dims(
            self.model.norm_stats[self.unnorm_key],
            "proprio",
            want,
            f"dataset_statistics.json of the checkpoint, entry '{self.unnorm_key}'",
        )
        proprio = np.asarray(proprio, dtype=np.float32)
        if proprio.ndim != 2 or proprio.shape[1] != want:
            raise ValueError(f"predict_batch: proprio has shape {proprio.shape}, expected (B, {want}).")
        return normalize(proprio, stats)

    @torch.no_grad()
    def predict_batch(
        self,
        images: list[np.ndarray],
        instructions: list[str],
        wrist_images: list[np.ndarray] | None = None,
        proprio: np.ndarray | None = None,
        **obs: Any,
    ) -> np.ndarray:
        """Action chunks for a batch of observations.

        Args:
            images: B third-person images (224, 224, 3) uint8, upright.
            instructions: B task strings.
            wrist_images: B wrist images, preprocessed like `images` (required when the model takes 2 images).
            proprio: (B, 8) raw proprio (eef pos, axis-angle, gripper qpos); required with a proprio token.
            obs: other observation entries (ignored).

        Returns:
            (B, K, 7) float32 actions in dataset convention (un-normalized; gripper ~1 open, ~0 closed).
        """
        from stamo_vla.vla.processing_openvla import build_prompt

        self.check_images(images, len(instructions), self.image_size)
        pixel_values = self.processor([build_prompt(t) for t in instructions], list(images))
        pixels = pixel_values["pixel_values"]
        if self.uses_wrist_image:
            if wrist_images is None:
                raise ValueError(
                    "predict_batch: this OFT model takes two images (num_images=2) but no wrist_images were given; "
                    "pass wrist_images=[...] preprocessed like the third-person images."
                )
            self.check_images(wrist_images, len(instructions), self.image_size, "wrist_images")
            wrist = self.processor.image_processor(list(wrist_images))["pixel_values"]
            pixels = torch.cat([pixels, wrist], dim=1)
        proprio_t = None
        if self.uses_proprio:
            if proprio is None:
                raise ValueError(
                    "predict_batch: this OFT model uses a proprio token; pass proprio=(B, 8) raw."
                )
            proprio_t = torch.from_numpy(self.normalize_proprio(proprio))
        dtype = next(p for p in self.model.parameters() if p.dtype.is_floating_point).dtype
        actions = self.adapter.predict_action(
            pixel_values=pixels.to(dtype),
            input_ids=pixel_values["input_ids"],
            attention_mask=pixel_values["attention_mask"],
            unnorm_key=self.unnorm_key,
            proprio=proprio_t,
        )
        return np.asarray(actions, dtype=np.float32)
