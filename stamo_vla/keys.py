"""Batch and sample keys, with shapes documented once.

Samples (one timestep, produced by `stamo_vla.data`, consumed by the policy's batch transform):
    IMAGE            (H, W, 3) uint8     primary (third-person) camera, upright RGB
    WRIST_IMAGE      (H, W, 3) uint8     wrist camera, upright RGB (optional)
    FUTURE_IMAGE     (H, W, 3) uint8     primary camera at t + h (horizon clamped at episode end)
    INSTRUCTION      str                 language instruction, as stored in the dataset
    ACTION           (K, A) float32      normalized actions a_t .. a_{t+K-1} (BOUNDS_Q99; gripper in {0, 1})
    PROPRIO          (P,) float32        normalized proprioception (optional)
    HAS_ACTION       bool                False for action-free ("video") samples
    DATASET_NAME     str
    EPISODE_ID       str                 episode identity (file_path#content digest)
    STEP             int                 index of t inside the episode
    FUTURE_STEP      int                 index of t + h inside the episode (clamped)

Batches (what `model.forward(batch)` consumes; B = batch, T = text length, N x D = StaMo state):
    PIXEL_VALUES     (B, 6 * n_images, 224, 224) float   per image: 3 DINOv2 + 3 SigLIP channels
    INPUT_IDS        (B, T) long                          right-padded
    ATTENTION_MASK   (B, T) bool
    LABELS           (B, T) long                          -100 where not supervised
    PROMPT_LENGTH    (B,) long                            text tokens before the first action token (the
                                                          readout position of the StaMo head is this - 1)
    ACTIONS          (B, K, A) float                      normalized continuous actions
    PROPRIO          (B, P) float
    HAS_ACTION       (B,) bool
    STAMO_PIXELS     (B, 3, S, S) float in [0, 1]         frames for on-the-fly StaMo encoding (t and t+h
    FUTURE_STAMO_PIXELS (B, 3, S, S) float in [0, 1]      are encoded by the frozen encoder in the step)
    STATE            (B, N, D) float                      cached StaMo state of frame t
    FUTURE_STATE     (B, N, D) float                      cached StaMo state of frame t + h
"""

# sample keys
IMAGE = "image"
WRIST_IMAGE = "wrist_image"
FUTURE_IMAGE = "future_image"
INSTRUCTION = "instruction"
ACTION = "action"
PROPRIO = "proprio"
HAS_ACTION = "has_action"
DATASET_NAME = "dataset_name"
EPISODE_ID = "episode_id"
STEP = "step"
FUTURE_STEP = "future_step"

# batch keys
PIXEL_VALUES = "pixel_values"
INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LABELS = "labels"
PROMPT_LENGTH = "prompt_length"
ACTIONS = "actions"
STAMO_PIXELS = "stamo_pixels"
FUTURE_STAMO_PIXELS = "future_stamo_pixels"
STATE = "state"
FUTURE_STATE = "future_state"

IGNORE_INDEX = -100
