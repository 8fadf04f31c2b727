"""The episodes of the data tests' small RLDS datasets (tests/data/conftest.py writes them once per session);
synthetic images carry readable markers. Imported as ``data_helpers`` (a name no other test folder uses, unlike
``conftest``, which another folder's conftest shadows when folders run together).

Image layout (256x256, upright): rows 0-15 white (the "top marker"), everything else dark except a block at
rows 96-159 / cols 32-95 whose value encodes the step (``STEP_BASE + STEP_SCALE * t``) and a block at
cols 160-223 encoding the episode index. Big flat blocks survive JPEG and resizing within a few levels.
"""

from __future__ import annotations

import numpy as np

LABELED = "toy_libero_no_noops"
ACTION_FREE = "toy_libero_video"
NUM_EPISODES = 20
STEP_BASE, STEP_SCALE = 30, 10


def episode_length(i: int) -> int:
    return 10 + (i % 7)  # 10..16 steps


def make_episode(i: int, length: int | None = None, action_free: bool = False, tag: str = "") -> dict:
    """A deterministic synthetic episode in the writer's input format."""
    length = episode_length(i) if length is None else length
    rng = np.random.default_rng(1000 + i)
    img = np.full((length, 256, 256, 3), 20, dtype=np.uint8)
    img[:, :16] = 255
    for t in range(length):
        img[t, 96:160, 32:96] = STEP_BASE + STEP_SCALE * t
        img[t, 96:160, 160:224] = 10 * (i % 20) + 40
    wrist = img.copy()
    wrist[:, :16] = 0  # wrist marker: dark top, bright bottom rows
    wrist[:, -16:] = 255
    t = np.arange(length, dtype=np.float32)[:, None]
    action = np.concatenate(
        [0.01 * i + 0.05 * t * np.linspace(-1, 1, 6, dtype=np.float32)[None], np.where(t % 4 < 2, -1.0, 1.0)],
        axis=1,
    ).astype(np.float32)
    if action_free:
        action = np.full_like(action, np.nan)
    state = np.concatenate(
        [rng.normal(size=(length, 6)), np.abs(rng.normal(0.02, 0.01, size=(length, 2)))], axis=1
    ).astype(np.float32)
    return {
        "image": img,
        "wrist_image": wrist,
        "state": state,
        "joint_state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": action,
        "language_instruction": f"pick up the {['bowl', 'plate', 'cup'][i % 3]} {tag}".strip(),
        "file_path": f"/demos/{tag or 'task'}_demo_{i:03d}.hdf5",
    }


def written_order(count: int = NUM_EPISODES, tag: str = "") -> list[int]:
    """Indices of `make_episode` episodes in the order the writer stores them (seeded, interleaved)."""
    from stamo_vla.data.rlds_writer import write_order_key

    return sorted(range(count), key=lambda i: write_order_key(make_episode(i, tag=tag)["file_path"]))
