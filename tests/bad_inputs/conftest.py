"""Shared fixtures of the bad-input catalogue: a tiny base checkpoint, an adapter on it, a toy dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch

STATS = {
    "toy": {
        "action": {
            "q01": [-1.0] * 7,
            "q99": [1.0] * 7,
            "min": [-1.0] * 7,
            "max": [1.0] * 7,
            "mask": [True] * 6 + [False],
        }
    }
}


def toy_episode(i: int, length: int = 8) -> dict:
    """A red block pushed left or right by the first action dim; the instruction says which way."""
    rng = np.random.default_rng(i)
    direction = -1.0 if i % 2 == 0 else 1.0
    action = np.zeros((length, 7), np.float32)
    action[:, 0] = direction * rng.uniform(0.5, 1.0, length)
    action[:, 6] = np.where(np.arange(length) < length // 2, -1.0, 1.0)
    frames = np.full((length, 256, 256, 3), 200, np.uint8)
    for t in range(length):
        x = int(np.clip(128 + 8 * action[: t + 1, 0].sum(), 20, 235))
        frames[t, 100:132, x - 16 : x + 16] = (220, 30, 30)
    return {
        "image": frames,
        "wrist_image": frames[:, ::-1].copy(),
        "state": rng.normal(size=(length, 8)).astype(np.float32),
        "joint_state": rng.normal(size=(length, 7)).astype(np.float32),
        "action": action,
        "language_instruction": "push the red block " + ("left" if direction < 0 else "right"),
        "file_path": f"/toy/push_demo_{i:03d}.hdf5",
    }


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory):
    """An upstream-layout tiny OpenVLA checkpoint."""
    from stamo_vla.vla import build_tiny

    path = tmp_path_factory.mktemp("bad_inputs") / "base"
    build_tiny(save_dir=path, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_base_dir):
    """A plain LoRA adapter (target none) saved for the tiny base."""
    from stamo_vla.adapter import StaMoAdapterConfig, attach, save_adapter
    from stamo_vla.vla import OpenVLAForActionPrediction

    base = OpenVLAForActionPrediction.from_pretrained(tiny_base_dir)
    model = attach(base, StaMoAdapterConfig(target="none", lora_rank=4))
    path = tiny_base_dir.parent / "adapter"
    save_adapter(model, path, dataset_statistics=STATS)
    return path


@pytest.fixture(scope="session")
def toy_rlds_root(tmp_path_factory):
    """A 4-episode labeled dataset ("toy_push_no_noops") and a 4-episode action-free one ("toy_video")."""
    from stamo_vla.data.rlds_writer import write_rlds_dataset

    root = tmp_path_factory.mktemp("bad_inputs_data")
    write_rlds_dataset((toy_episode(i) for i in range(4)), root, "toy_push_no_noops")
    video = []
    for i in range(100, 104):
        ep = toy_episode(i)
        ep["action"] = np.full_like(ep["action"], np.nan)
        ep["file_path"] = f"/toy/video_{i:03d}.hdf5"
        video.append(ep)
    write_rlds_dataset(video, root, "toy_video")
    return root


def finetune_args(tmp_path, data_root, *extra: str, dataset: str = "toy_push_no_noops") -> list[str]:
    """Command-line arguments of a 2-core-CPU tiny fine-tuning run (target none unless overridden)."""
    return [
        "--config",
        "tiny",
        "--data.data_root_dir",
        str(data_root),
        "--data.dataset_names",
        f"[{dataset}]",
        "--data.shuffle_buffer_size",
        "16",
        "--run_dir",
        str(tmp_path / "runs" / "toy"),
        "--batch_size",
        "2",
        "--log_steps",
        "1",
        "--adapter.target",
        "none",
        *extra,
    ]


@pytest.fixture(scope="session")
def make_episode():
    return toy_episode


@pytest.fixture
def finetune_cfg(tmp_path, toy_rlds_root):
    """Build a tiny FinetuneConfig in this test's tmp_path: ``finetune_cfg("--max_steps", "3", ...)``."""
    from stamo_vla.configs import parse_config
    from stamo_vla.training.finetune_config import FinetuneConfig

    def build(*extra: str, dataset: str = "toy_push_no_noops"):
        args = finetune_args(tmp_path, toy_rlds_root, *extra, dataset=dataset)
        return parse_config(FinetuneConfig, args, prefix="finetune_")

    return build


@pytest.fixture
def finetune_argv(tmp_path, toy_rlds_root):
    """Command-line arguments of a tiny fine-tuning run in this test's tmp_path: ``finetune_argv("--max_steps", "3")``."""
    return lambda *extra: finetune_args(tmp_path, toy_rlds_root, *extra)


class ToyModel(torch.nn.Module):
    """A linear layer with the training loop's interface: ``forward(batch) -> (loss, metrics)`` over
    ``{"x": (B, 2), "scale": optional float}``, and ``save_pretrained``."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 2)  # a weight (decayed) and a bias (never decayed)

    def forward(self, batch):
        loss = (self.w(batch["x"]) * batch.get("scale", 1.0)).pow(2).mean()
        return loss, {"toy_loss": loss.item()}

    def save_pretrained(self, directory):
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(directory / "w.safetensors"))


@pytest.fixture
def toy_model():
    """The `ToyModel` class: ``model = toy_model()``."""
    return ToyModel
