"""A small RLDS dataset whose actions are visible in the frames (the tiny StaMo checkpoint is tests/conftest.py's
`tiny_stamo_dir`)."""

from __future__ import annotations

import numpy as np
import pytest

DATASET = "toy_push_no_noops"
INSTRUCTIONS = ("push the red block left", "push the red block right")


def push_episode(i: int, length: int = 12) -> dict:
    """A red block that moves by the first action dims each step; the direction depends on the instruction."""
    rng = np.random.default_rng(i)
    direction = -1.0 if i % 2 == 0 else 1.0
    action = np.zeros((length, 7), np.float32)
    action[:, 0] = direction * rng.uniform(0.5, 1.0, length)
    action[:, 1] = rng.uniform(-0.3, 0.3, length)
    action[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
    frames = np.full((length, 256, 256, 3), 200, np.uint8)
    x, y = 128.0, 100.0 + 5 * (i % 5)
    for t in range(length):
        xi, yi = int(np.clip(x, 20, 235)), int(y)
        frames[t, yi - 16 : yi + 16, xi - 16 : xi + 16] = (220, 30, 30)
        x += 8 * action[t, 0]
        y += 8 * action[t, 1]
    return {
        "image": frames,
        "wrist_image": frames[:, ::-1].copy(),
        "state": rng.normal(size=(length, 8)).astype(np.float32),
        "joint_state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": action,
        "language_instruction": INSTRUCTIONS[i % 2],
        "file_path": f"/toy/push_demo_{i:03d}.hdf5",
    }


@pytest.fixture(scope="session")
def toy_data_root(tmp_path_factory):
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    root = tmp_path_factory.mktemp("finetune_data")
    write_rlds_dataset((push_episode(i) for i in range(8)), root, DATASET)
    return root


ACTION_FREE = "toy_push_video"


@pytest.fixture(scope="session")
def toy_cotrain_root(tmp_path_factory):
    """A labeled dataset (4 episodes) and an action-free one (8 episodes, NaN actions): "1 Real + 2 StaMo"."""
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    root = tmp_path_factory.mktemp("cotrain_data")
    write_rlds_dataset((push_episode(i) for i in range(4)), root, DATASET)
    video = []
    for i in range(100, 108):
        ep = push_episode(i)
        ep["action"] = np.full_like(ep["action"], np.nan)
        ep["file_path"] = f"/toy/video_{i:03d}.hdf5"
        video.append(ep)
    write_rlds_dataset(video, root, ACTION_FREE)
    return root


LEROBOT_DATASET = "toy_push_lerobot"


@pytest.fixture(scope="session")
def toy_lerobot_root(tmp_path_factory):
    """The first 4 push episodes as a LeRobotDataset v3.0 (our writer; no tensorflow): ``<root>/toy_push_lerobot``."""
    from stamo_vla.data.lerobot_writer import write_lerobot_dataset

    root = tmp_path_factory.mktemp("lerobot_data")
    write_lerobot_dataset((push_episode(i) for i in range(4)), root / LEROBOT_DATASET)
    return root


@pytest.fixture
def tiny_finetune_cfg(toy_data_root):
    """``build(run_dir, *overrides)``: a `FinetuneConfig` of the tiny preset on the toy dataset (batch 2, a 16-frame
    shuffle buffer), with draccus overrides appended."""
    from stamo_vla.configs import parse_config
    from stamo_vla.training.finetune_config import FinetuneConfig

    def build(run_dir, *overrides: str):
        args = [
            "--config",
            "tiny",
            "--data.data_root_dir",
            str(toy_data_root),
            "--data.dataset_names",
            f"[{DATASET}]",
        ]
        args += [
            "--data.shuffle_buffer_size",
            "16",
            "--batch_size",
            "2",
            "--run_dir",
            str(run_dir),
            *overrides,
        ]
        return parse_config(FinetuneConfig, args, prefix="finetune_")

    return build
