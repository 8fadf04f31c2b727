"""The `modified_libero_rlds` feature spec (docs/reference/openvla.md §4.1), in one place.

The TF-free part (names, shapes, dtypes) is used for validation; `tfds_features()` builds the tfds
`FeaturesDict` and imports tensorflow_datasets lazily.
"""

from __future__ import annotations

import numpy as np

from stamo_vla.optional import require

IMAGE_SIZE = 256
STATE_DIM = 8  # eef pos (3) + axis-angle (3) + gripper finger qpos (2)
JOINT_DIM = 7
ACTION_DIM = 7  # delta eef pos (3) + delta rot (3) + gripper (-1 open / +1 close)
DEFAULT_VERSION = "1.0.0"
JPEG_QUALITY = 95  # tf.io.encode_jpeg's default, which the upstream builders used

# per-step array fields of an episode dict: name -> (shape after T, dtype)
EPISODE_ARRAYS: dict[str, tuple[tuple[int, ...], type]] = {
    "image": ((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
    "wrist_image": ((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
    "state": ((STATE_DIM,), np.float32),
    "joint_state": ((JOINT_DIM,), np.float32),
    "action": ((ACTION_DIM,), np.float32),
}
EPISODE_TEXT = ("language_instruction", "file_path")

# flattened feature paths of a written dataset (what a reader requires), with their per-step shapes
REQUIRED_FEATURES: dict[str, tuple[int, ...]] = {
    "steps/observation/image": (IMAGE_SIZE, IMAGE_SIZE, 3),
    "steps/observation/wrist_image": (IMAGE_SIZE, IMAGE_SIZE, 3),
    "steps/observation/state": (STATE_DIM,),
    "steps/observation/joint_state": (JOINT_DIM,),
    "steps/action": (ACTION_DIM,),
    "steps/discount": (),
    "steps/reward": (),
    "steps/is_first": (),
    "steps/is_last": (),
    "steps/is_terminal": (),
    "steps/language_instruction": (),
    "episode_metadata/file_path": (),
}


def tfds_features():
    """The tfds `FeaturesDict` of one episode, identical to the upstream LIBERO RLDS builders."""
    tfds = require("tensorflow_datasets", "building the RLDS feature spec")
    f = tfds.features
    img = (IMAGE_SIZE, IMAGE_SIZE, 3)
    return f.FeaturesDict(
        {
            "steps": f.Dataset(
                {
                    "observation": f.FeaturesDict(
                        {
                            "image": f.Image(
                                shape=img,
                                dtype=np.uint8,
                                encoding_format="jpeg",
                                doc="Main camera RGB observation.",
                            ),
                            "wrist_image": f.Image(
                                shape=img,
                                dtype=np.uint8,
                                encoding_format="jpeg",
                                doc="Wrist camera RGB observation.",
                            ),
                            "state": f.Tensor(
                                shape=(STATE_DIM,),
                                dtype=np.float32,
                                doc="Robot EEF state (6D pose, 2D gripper).",
                            ),
                            "joint_state": f.Tensor(
                                shape=(JOINT_DIM,), dtype=np.float32, doc="Robot joint angles."
                            ),
                        }
                    ),
                    "action": f.Tensor(shape=(ACTION_DIM,), dtype=np.float32, doc="Robot EEF action."),
                    "discount": f.Scalar(dtype=np.float32, doc="Discount if provided, default to 1."),
                    "reward": f.Scalar(
                        dtype=np.float32, doc="Reward if provided, 1 on final step for demos."
                    ),
                    "is_first": f.Scalar(dtype=np.bool_, doc="True on first step of the episode."),
                    "is_last": f.Scalar(dtype=np.bool_, doc="True on last step of the episode."),
                    "is_terminal": f.Scalar(
                        dtype=np.bool_,
                        doc="True on last step of the episode if it is a terminal step, True for demos.",
                    ),
                    "language_instruction": f.Text(doc="Language Instruction."),
                }
            ),
            "episode_metadata": f.FeaturesDict({"file_path": f.Text(doc="Path to the original data file.")}),
        }
    )
