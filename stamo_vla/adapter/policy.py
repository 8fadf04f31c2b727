"""`FutureFramePolicy`: the adapted VLA as an evaluation policy that also shows what its StaMo head predicts.

Each call returns the actions (exactly those of the plain policy) and keeps, per row, the predicted future state
decoded to an image by the StaMo DiT decoder; the LIBERO harness puts that image beside the rollout frame.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from stamo_vla.policy import Policy
from stamo_vla.stamo.pixels import uint8_to_pixels
from stamo_vla.viz.sheets import to_uint8
from stamo_vla.vla.policy import OpenVLAPolicy


class FutureFramePolicy(Policy):
    """Batch policy over a `StaMoAdapterModel` with a head and an attached StaMo encoder + decoder.

    Args:
        adapter: the adapter model (``set_stamo(encoder, decoder)`` done).
        processor: the base model's `OpenVLAProcessor`.
        unnorm_key: action statistics key.
        sample_steps: flow-matching steps per decoded frame (video only; the actions never wait on more).
    """

    action_chunk = 1
    predicts_future_frames = True

    def __init__(
        self, adapter: Any, processor: Any, unnorm_key: str | None = None, sample_steps: int | None = 4
    ):
        if adapter.head is None or adapter.decoder is None:
            raise ValueError(
                "FutureFramePolicy needs an adapter with a StaMo head and a StaMo decoder attached"
            )
        self.adapter = adapter
        self.inner = OpenVLAPolicy(adapter.vla, processor, unnorm_key=unnorm_key)
        self.sample_steps = sample_steps
        self._frames: list[np.ndarray | None] = []

    @property
    def model(self) -> Any:
        return self.inner.model

    @property
    def unnorm_key(self) -> str | None:
        return self.inner.unnorm_key

    @unnorm_key.setter
    def unnorm_key(self, value: str) -> None:
        self.inner.unnorm_key = value

    @torch.no_grad()
    def predict_batch(self, images: list[np.ndarray], instructions: list[str], **obs: Any) -> np.ndarray:
        """(B, 1, 7) dataset-convention actions; the decoded future frames are kept for `future_frames`.

        Args:
            images: one upright (H, W, 3) uint8 RGB image per observation.
            instructions: the task instruction of each observation.
            **obs: further observation fields (wrist images, proprio), unused by this policy.
        """
        from PIL import Image

        inputs = self.inner.model_inputs(images, instructions)
        pixels = uint8_to_pixels(np.stack(images))
        actions, future = self.adapter.predict_action(
            *inputs, unnorm_key=self.unnorm_key, return_future_state=True, stamo_pixels=pixels
        )
        decoded = to_uint8(self.adapter.decode_future(future, steps=self.sample_steps))
        h, w = images[0].shape[:2]
        self._frames = [np.asarray(Image.fromarray(f).resize((w, h), Image.BICUBIC)) for f in decoded]
        return actions[:, None, :].astype(np.float32)

    def future_frames(self) -> list[np.ndarray | None]:
        """Decoded predicted future frames of the last call's rows, (H, W, 3) uint8 each."""
        return self._frames
