"""Training samples -> OpenVLA-OFT sequences: prompt + "▁" + K*A action placeholders + EOS, stacked images, proprio."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stamo_vla.keys import (
    ACTION,
    ACTIONS,
    HAS_ACTION,
    IGNORE_INDEX,
    IMAGE,
    INPUT_IDS,
    INSTRUCTION,
    LABELS,
    PIXEL_VALUES,
    PROMPT_LENGTH,
    PROPRIO,
    WRIST_IMAGE,
)
from stamo_vla.vla.batch_transform import OpenVLABatchTransform

_CONSUMED = {IMAGE, WRIST_IMAGE, INSTRUCTION, ACTION}


class OFTBatchTransform(OpenVLABatchTransform):
    """One sample -> OFT tensors; `collate` (inherited) right-pads ids and stacks the rest.

    Args:
        processor: an `OpenVLAProcessor`.
        action_tokenizer: an `ActionTokenizer` (the action ids fill the placeholders and the labels, as upstream;
            the model zeroes their embeddings and regresses the continuous ACTIONS).
        action_chunk: K, the number of actions per sample.
        num_images: 1 (IMAGE) or 2 (IMAGE + WRIST_IMAGE, channel-stacked).
        use_proprio: require PROPRIO (P,) in every sample.
        proprio_dim: P.
    """

    def __init__(
        self,
        processor: Any,
        action_tokenizer: Any,
        action_chunk: int,
        num_images: int = 1,
        use_proprio: bool = False,
        proprio_dim: int = 8,
    ):
        super().__init__(processor, action_tokenizer, predict_stop_token=True)
        self.action_chunk, self.num_images = action_chunk, num_images
        self.use_proprio, self.proprio_dim = use_proprio, proprio_dim

    def __call__(self, sample: dict) -> dict:
        """Sample -> PIXEL_VALUES (6 * num_images, 224, 224), INPUT_IDS (T,), LABELS (T,), PROMPT_LENGTH (index of
        the first action position), ACTIONS (K, A), HAS_ACTION, PROPRIO (P,) when used, other keys unchanged."""
        required = [IMAGE, INSTRUCTION, ACTION] + ([WRIST_IMAGE] if self.num_images == 2 else [])
        required += [PROPRIO] if self.use_proprio else []
        missing = [k for k in required if k not in sample]
        if missing:
            raise KeyError(
                f"OFTBatchTransform: sample lacks {missing} (num_images={self.num_images}, use_proprio="
                f"{self.use_proprio}); got keys {sorted(sample)}. Set data.load_wrist / data.load_proprio."
            )
        actions = np.asarray(sample[ACTION], dtype=np.float32)
        actions = actions[None] if actions.ndim == 1 else actions
        if actions.shape[0] != self.action_chunk:
            raise ValueError(
                f"OFTBatchTransform: ACTION has {actions.shape[0]} steps but action_chunk={self.action_chunk}; "
                "set data.action_chunk to the adapter's action_chunk."
            )
        has_action = bool(sample.get(HAS_ACTION, True)) and bool(np.isfinite(actions).all())
        chunk = actions if has_action else np.zeros_like(actions)
        action_ids = self.action_tokenizer.encode_to_ids(chunk.astype(np.float64).reshape(-1)).tolist()
        prompt = self.processor.prompt_ids(sample[INSTRUCTION]) + [self.processor.empty_token_id]
        ids = torch.tensor(prompt + action_ids + [self.eos_token_id], dtype=torch.long)
        labels = torch.full_like(ids, IGNORE_INDEX)
        if has_action:
            labels[len(prompt) :] = ids[len(prompt) :]
        out = {k: v for k, v in sample.items() if k not in _CONSUMED}
        out.update(
            {
                PIXEL_VALUES: self._pixels(sample),
                INPUT_IDS: ids,
                LABELS: labels,
                PROMPT_LENGTH: len(prompt),
                ACTIONS: torch.from_numpy(np.nan_to_num(actions)),
                HAS_ACTION: has_action,
            }
        )
        if self.use_proprio:
            proprio = np.asarray(sample[PROPRIO], dtype=np.float32)
            if proprio.shape != (self.proprio_dim,):
                raise ValueError(
                    f"OFTBatchTransform: PROPRIO has shape {proprio.shape}, expected ({self.proprio_dim},)."
                )
            out[PROPRIO] = torch.from_numpy(proprio)
        return out

    def _pixels(self, sample: dict) -> torch.Tensor:
        images = [sample[IMAGE]] + ([sample[WRIST_IMAGE]] if self.num_images == 2 else [])
        return torch.cat([self.processor.image_processor(img)["pixel_values"][0] for img in images], dim=0)
