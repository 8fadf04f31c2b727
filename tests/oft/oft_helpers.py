"""Helpers of the OFT-variant tests: a tiny OFT adapter, OFT batches, toy episodes with wrist + proprio."""

from __future__ import annotations

import numpy as np

from stamo_vla import keys as K

CHUNK = 4  # small K keeps the tiny tests fast; the presets use K = 8


STATE_SHAPE = (2, 8)  # (num_state_tokens, state_dim) of the head, attached without an encoder


def oft_config(**overrides):
    """An l1-head adapter config; `overrides` may name fields of the adapter or of its action head."""
    import dataclasses

    from stamo_vla.adapter import StaMoAdapterConfig
    from stamo_vla.adapter.action_heads import L1ActionHead

    head_fields = {f.name for f in dataclasses.fields(L1ActionHead)}
    head = dict(action_chunk=CHUNK, num_images=2, use_proprio=True, width=32)
    head.update({k: v for k, v in overrides.items() if k in head_fields})
    kwargs = dict(target="state", head_width=16, lora_rank=4, lora_init="default")
    kwargs.update({k: v for k, v in overrides.items() if k not in head_fields})
    return StaMoAdapterConfig(**kwargs, action_head=L1ActionHead(**head))


def make_oft(seed: int = 0, **overrides):
    """(adapter model, processor) on a fresh tiny base, with non-zero LoRA B so LoRA changes the outputs."""
    import torch

    from stamo_vla.adapter import attach
    from stamo_vla.vla import build_tiny

    base, processor = build_tiny(seed=seed)
    model = attach(base, oft_config(**overrides), target_shape=STATE_SHAPE)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if "lora_B" in name or "film" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval(), processor


def oft_sample(
    rng: np.random.Generator, instruction: str = "pick up the black bowl", chunk: int = CHUNK
) -> dict:
    return {
        K.IMAGE: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
        K.WRIST_IMAGE: rng.integers(0, 255, (224, 224, 3), dtype=np.uint8),
        K.INSTRUCTION: instruction,
        K.ACTION: rng.uniform(-1, 1, (chunk, 7)).astype(np.float32),
        K.PROPRIO: rng.uniform(-1, 1, 8).astype(np.float32),
        K.FUTURE_STATE: rng.normal(size=(2, 8)).astype(np.float32),
    }


def oft_batch(model, processor, instructions, seed: int = 0) -> dict:
    from stamo_vla.vla import ActionTokenizer
    from stamo_vla.vla.oft_batch_transform import OFTBatchTransform

    cfg = model.config.action_head
    transform = OFTBatchTransform(
        processor, ActionTokenizer(512), cfg.action_chunk, cfg.num_images, cfg.use_proprio, cfg.proprio_dim
    )
    rng = np.random.default_rng(seed)
    return transform.collate([transform(oft_sample(rng, text, cfg.action_chunk)) for text in instructions])


def toy_episode(i: int, length: int = 14) -> dict:
    """A red block pushed left or right (by instruction); the wrist view is the mirrored frame."""
    rng = np.random.default_rng(i)
    direction = -1.0 if i % 2 == 0 else 1.0
    action = np.zeros((length, 7), np.float32)
    action[:, 0] = direction * rng.uniform(0.5, 1.0, length)
    action[:, 1] = rng.uniform(-0.3, 0.3, length)
    action[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
    frames = np.full((length, 256, 256, 3), 200, np.uint8)
    x, y = 128.0, 100.0 + 5 * (i % 5)
    state = np.zeros((length, 8), np.float32)
    for t in range(length):
        xi, yi = int(np.clip(x, 20, 235)), int(y)
        frames[t, yi - 16 : yi + 16, xi - 16 : xi + 16] = (220, 30, 30)
        state[t, :3] = (x / 100.0, y / 100.0, 1.0)
        state[t, 6:] = (0.04, -0.04) if t < length // 2 else (0.01, -0.01)
        x += 8 * action[t, 0]
        y += 8 * action[t, 1]
    return {
        "image": frames,
        "wrist_image": frames[:, ::-1].copy(),
        "state": state,
        "joint_state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": action,
        "language_instruction": ("push the red block left", "push the red block right")[i % 2],
        "file_path": f"/toy/oft_push_{i:03d}.hdf5",
    }


OFT_DATASET = "toy_oft_push_no_noops"


class RecordingPool:
    """Env pool stand-in: distinct agentview / wrist frames per episode, records every action it steps."""

    def __init__(self):
        self.specs, self.t, self.received = {}, {}, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def _obs(self, slot):
        level = 60 + 40 * self.specs[slot].task_id + 3 * self.t[slot]
        rng = np.random.default_rng(level)
        return {
            "agentview_image": np.full((256, 256, 3), level, np.uint8),
            "robot0_eye_in_hand_image": rng.integers(0, 255, (256, 256, 3), dtype=np.uint8),
            "robot0_eef_pos": np.array([0.1 * self.t[slot], 0.0, 5.0]),  # z beyond q99: clipped to 1
            "robot0_eef_quat": np.array([0.0, 0.0, 0.0, 1.0]),
            "robot0_gripper_qpos": np.array([0.04, -0.04]),
        }

    def reset(self, specs):
        for slot, spec in specs.items():
            self.specs[slot], self.t[slot] = spec, 0
        return {slot: self._obs(slot) for slot in specs}

    def step(self, actions):
        out = {}
        for slot, action in actions.items():
            self.received.append((self.specs[slot].task_id, self.t[slot], np.asarray(action).copy()))
            self.t[slot] += 1
            out[slot] = (self._obs(slot), 0.0, False, {})
        return out
