"""`Policy`: what the LIBERO evaluation harness runs, one small base class for every policy.

The harness (`stamo_vla.libero.evaluation_loop`) calls, once per step on the batch of live episodes,

    policy.predict_batch(images, instructions, proprio=..., slots=..., [wrist_images=...]) -> (B, K, 7)

``images`` are upright (H, W, 3) uint8 frames at the policy's ``image_size`` (flipped, JPEG round trip, resized,
optionally center cropped),
``instructions`` the task strings, ``proprio`` (B, 8) float32 raw proprio, ``slots`` the env worker of each row
(only the scripted oracle uses it), and ``wrist_images`` (the wrist camera, preprocessed like ``images``) only
for a policy with ``uses_wrist_image``. Actions are in the *dataset* convention (gripper 1 = open, 0 = closed)
unless ``actions_in_env_convention`` (then they go to the env unchanged). The policies: `OpenVLAPolicy`
(`stamo_vla.vla.policy`), `OFTPolicy` and `FutureFramePolicy` (`stamo_vla.adapter`), the scripted oracle
(`stamo_vla.libero`) and the suite-keyed wrapper (`stamo_vla.policy_kinds`). Light on purpose: importing it imports
numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class Policy:
    """Base class of the policies the harness runs; subclasses implement `predict_batch`."""

    # Actions per call K: the harness executes up to K of them open loop before asking again.
    action_chunk: int = 1
    # Also receives ``wrist_images`` (two-camera OFT policies).
    uses_wrist_image: bool = False
    # Actions are env actions already (gripper -1 open / +1 close), not the dataset convention.
    actions_in_env_convention: bool = False
    # `future_frames` returns decoded predicted frames (the rollout video gets a second panel).
    predicts_future_frames: bool = False
    # (H, W) of the images predict_batch takes; the harness makes its frames at this size (upstream: 224).
    image_size: tuple[int, int] = (224, 224)

    def predict_batch(self, images: list[np.ndarray], instructions: list[str], **obs: Any) -> np.ndarray:
        """(B, K, 7) float actions for B observations (see the module docstring).

        Args:
            images: one upright (H, W, 3) uint8 RGB image per observation.
            instructions: the task instruction of each observation.
            **obs: further observation fields a policy may use (``wrist_images``, ``proprio``, ...).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement predict_batch()")

    def future_frames(self) -> list[np.ndarray | None] | None:
        """For the rows of the last call, a decoded predicted future frame (H, W, 3) uint8 shown beside the
        rollout video; None when the policy predicts none."""
        return None

    def set_suite(self, suite: str) -> str | None:
        """Act for `suite` from now on (e.g. un-normalize with its statistics); returns the key used, or None.

        The harness calls it before each suite's episodes (a perturbed suite passes the suite it perturbs)."""
        return None

    @staticmethod
    def check_images(
        images: Sequence[np.ndarray], num_rows: int, size: tuple[int, int], name: str = "images"
    ) -> None:
        """The shared input check: one upright (H, W, 3) uint8 RGB image per row, at least one row.

        Args:
            images: the images received.
            num_rows: the number of instructions, which the images must match (one per row).
            size: the (H, W) each image must have.
            name: the argument's name in the message.

        Raises:
            ValueError: naming the count, or the first image with the wrong shape or dtype.
        """
        if not num_rows or len(images) != num_rows:
            raise ValueError(
                f"predict_batch: got {len(images)} {name} and {num_rows} instructions; need the same non-zero number."
            )
        h, w = size
        for i, img in enumerate(images):
            arr = np.asarray(img)
            if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
                raise ValueError(
                    f"predict_batch: {name}[{i}] has shape {arr.shape} dtype {arr.dtype}; expected ({h}, {w}, 3) "
                    "uint8 RGB, upright (use stamo_vla.libero.protocol.prepare_image for LIBERO frames)."
                )
